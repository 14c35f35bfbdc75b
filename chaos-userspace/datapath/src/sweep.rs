//! The crash sweep behind `chaos-ebpf cleanup`, and the collection of dead runs that
//! every run, `status` and `cleanup` do first.
//!
//! What can be left: netlink (cls_bpf) filters and the clsact qdiscs added for them (they
//! survive a SIGKILL, unlike TCX links), device settings, sch_fq qdiscs and segmenter
//! pairs (devices.rs), the ledger records of dead runs, and the TCX links of a stopped
//! run. (Lab namespaces are the lab's to sweep.)
//!
//! A run is live while it holds its ledger lock (ledger.rs); a kernel object is a live
//! run's when a live run holds it open (bpfsys::holders), so an object is never taken
//! for a stray because its run has not written its record yet. Live runs are left
//! alone, stopped ones too unless `--force`.

use std::{collections::BTreeMap, fs};

use aya::programs::{
    tc::{SchedClassifierLink, TcHandle},
    TcAttachType,
};
use chaos_ebpf_common::names;
use serde::Serialize;

use crate::{
    attach::AttachMode,
    bpfsys, devices,
    instance::{remove_attachments, Removal},
    ledger::{self, InstanceState, ProcessState, RunState},
    netlink,
    netns::{self, Interface, Netns},
};

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub removed: Vec<String>,
    /// Runs that are alive (running or stopped), left alone.
    pub active: Vec<String>,
    /// What could not be removed.
    pub remaining: Vec<String>,
    pub clean: bool,
    /// Live runs seen (running or stopped, forced or not).
    #[serde(skip)]
    pub live_runs: usize,
}

/// A dead run whose record was collected.
#[derive(Debug, Serialize)]
pub struct DeadRun {
    pub pid: u32,
    pub command: String,
    /// When it last renewed its leases (wall clock, ms): about when it died.
    pub last_seen_unix_ms: u64,
    /// What it had left and was removed now.
    pub leftovers: Vec<String>,
}

fn hook(name: &str) -> TcAttachType {
    if name == "ingress" {
        TcAttachType::Ingress
    } else {
        TcAttachType::Egress
    }
}

/// Removes the netlink filters a dead or forced run recorded (those still in place) and
/// the clsact qdiscs it added, with the same code a run's own revert uses.
fn revert_instance(instance: &InstanceState, removed: &mut Vec<String>, remaining: &mut Vec<String>) {
    let Ok(ns) = Netns::open(&instance.netns) else {
        // The namespace is gone, and its devices with their filters and qdiscs.
        return;
    };
    if ns.id != instance.netns_id {
        return;
    }
    let inside = ns.run(|| {
        let mut removals = Vec::new();
        for f in &instance.netlink_filters {
            let present = netlink::clsact_filters(f.ifindex, f.hook == "ingress")
                .is_ok_and(|list| list.iter().any(|x| x.priority == f.priority && x.handle == f.handle));
            if !present {
                continue;
            }
            // An error here means the interface is gone, and the filter with it.
            if let Ok(link) =
                SchedClassifierLink::attached(&f.iface, hook(&f.hook), f.priority, TcHandle::from(f.handle), None)
            {
                let iface =
                    Interface { name: f.iface.clone(), index: f.ifindex, hw_type: netns::ARPHRD_ETHER, up: true };
                removals.push(Removal { iface, hook: hook(&f.hook), program: None, link });
            }
        }
        let (mut done, mut left) = (Vec::new(), Vec::new());
        remove_attachments(AttachMode::Netlink, instance.netns_id, removals, &mut done, &mut left);
        (done, left)
    });
    let Ok((done, left)) = inside else {
        remaining.push(format!("cannot enter {}", instance.netns.display()));
        return;
    };
    let place = instance.netns.display();
    removed.extend(done.into_iter().map(|d| format!("{d} in {place}")));
    remaining.extend(left.into_iter().map(|d| format!("{d} in {place}")));
}

/// Device records: takes dead runs off them and restores what no live run needs.
fn sweep_devices(removed: &mut Vec<String>, remaining: &mut Vec<String>) {
    let records = devices::records();
    if records.is_empty() {
        return;
    }
    let namespaces = netns::all_namespaces();
    for (path, id, ifindex) in records {
        let Some(ns) = namespaces.iter().find(|n| n.id == id) else {
            // The namespace is gone, and the device with it.
            let _ = fs::remove_file(&path);
            continue;
        };
        let Ok(released) = ns.run(|| devices::release(id, ifindex)) else { continue };
        match released {
            Ok(done) => removed.extend(done.into_iter().map(|d| format!("{d} in {} (restored)", ns.path.display()))),
            Err(e) => remaining.push(format!("settings of ifindex {ifindex} in {}: {e:#}", ns.path.display())),
        }
    }
}

/// clsact qdiscs chaos-ebpf added and nobody released: deleted once no filter is left on
/// them; markers of vanished namespaces are dropped.
fn sweep_clsact_markers(removed: &mut Vec<String>, remaining: &mut Vec<String>) {
    let markers = ledger::clsact_markers();
    if markers.is_empty() {
        return;
    }
    let namespaces = netns::all_namespaces();
    for (marker, id, ifindex) in markers {
        let Some(ns) = namespaces.iter().find(|n| n.id == id) else {
            let _ = fs::remove_file(&marker);
            continue;
        };
        let Ok(released) = ns.run(|| crate::instance::release_clsact(id, ifindex)) else { continue };
        match released {
            Ok(true) => removed.push(format!("clsact qdisc on ifindex {ifindex} in {}", ns.path.display())),
            Ok(false) => {}
            Err(e) => remaining.push(format!("clsact qdisc on ifindex {ifindex} in {}: {e}", ns.path.display())),
        }
    }
}

/// Finds the dead runs, removes what they left, and forgets their records; then takes
/// dead runs off the shared device records. Every run, `status` and `cleanup` call this
/// first. Live runs are never touched.
pub fn collect_dead(remaining: &mut Vec<String>) -> Vec<DeadRun> {
    let mut dead = Vec::new();
    for (pid, _, record) in ledger::read_all() {
        let (process, lock) = ledger::liveness(pid);
        if process != ProcessState::Dead {
            continue;
        }
        let mut leftovers = Vec::new();
        let state = record.unwrap_or_else(|_| RunState { pid, ..RunState::default() });
        for instance in &state.instances {
            revert_instance(instance, &mut leftovers, remaining);
        }
        if let Some(lock) = lock {
            lock.forget();
        }
        dead.push(DeadRun { pid, command: state.command, last_seen_unix_ms: state.renewed_unix_ms, leftovers });
    }
    let mut restored = Vec::new();
    sweep_devices(&mut restored, remaining);
    sweep_clsact_markers(&mut restored, remaining);
    if !restored.is_empty() {
        match dead.last_mut() {
            Some(last) => last.leftovers.extend(restored),
            None => {
                dead.push(DeadRun { pid: 0, command: "(no record)".into(), last_seen_unix_ms: 0, leftovers: restored })
            }
        }
    }
    dead
}

/// Live runs by pid, with their state.
fn live_runs() -> BTreeMap<u32, (ProcessState, RunState)> {
    let mut live = BTreeMap::new();
    for (pid, _, record) in ledger::read_all() {
        let (process, _) = ledger::liveness(pid);
        if process != ProcessState::Dead {
            live.insert(pid, (process, record.unwrap_or_else(|_| RunState { pid, ..RunState::default() })));
        }
    }
    live
}

/// Whether any of `pids` is a live run that is not forced: its objects stay. Asked at
/// the moment of each decision, so a run that started after cleanup did is seen too.
pub fn held_by_live_run(pids: Option<&Vec<u32>>, force: bool) -> bool {
    !force && pids.is_some_and(|pids| pids.iter().any(|p| ledger::liveness(*p).0 != ProcessState::Dead))
}

/// chaos-ebpf netlink filters on every interface of every namespace whose program no
/// live run holds (or every one, forced); removed unless `dry`. The filters are listed
/// before their holders are: a program is held from its load on, before any filter of
/// it exists, so a run that is starting cannot fall between the two looks.
fn sweep_netlink(force: bool, dry: bool, report: &mut Report) -> Vec<String> {
    let mut candidates = Vec::new();
    for ns in netns::all_namespaces() {
        let _ = ns.run(|| {
            let Ok(interfaces) = netns::interfaces() else { return };
            for iface in interfaces {
                for ingress in [true, false] {
                    let Ok(filters) = netlink::clsact_filters(iface.index, ingress) else { continue };
                    for f in filters {
                        if matches!(f.program_name.as_deref(), Some(n) if names::PROGRAMS.contains(&n)) {
                            candidates.push((ns.path.clone(), iface.name.clone(), ingress, f));
                        }
                    }
                }
            }
        });
    }
    if candidates.is_empty() {
        return Vec::new();
    }
    let holders = bpfsys::holders();
    let mut found = Vec::new();
    for (path, iface, ingress, f) in candidates {
        if held_by_live_run(f.program_id.and_then(|id| holders.programs.get(&id)), force) {
            continue;
        }
        let hook_name = if ingress { "ingress" } else { "egress" };
        let what = format!("netlink filter on {iface} {hook_name} prio {} in {}", f.priority, path.display());
        found.push(what.clone());
        if dry {
            continue;
        }
        let Ok(ns) = Netns::open(&path) else { continue };
        let attach = if ingress { TcAttachType::Ingress } else { TcAttachType::Egress };
        let detached = ns.run(|| {
            use aya::programs::links::Link as _;
            SchedClassifierLink::attached(&iface, attach, f.priority, TcHandle::from(f.handle), None)
                .map_err(|e| e.to_string())
                .and_then(|link| link.detach().map_err(|e| e.to_string()))
        });
        match detached {
            Ok(Ok(())) => report.removed.push(what),
            Ok(Err(e)) => report.remaining.push(format!("{what}: {e}")),
            Err(e) => report.remaining.push(format!("{what}: {e:#}")),
        }
    }
    found
}

/// Attached TCX links running chaos-ebpf programs that no live run holds (or every
/// one, forced): pinned ones, or those of a process that is not a run. Links are listed
/// before their holders, so a link created meanwhile is seen with its holder.
fn stray_links(force: bool) -> Vec<bpfsys::OurLink> {
    let links = bpfsys::our_links();
    if links.is_empty() {
        return links;
    }
    let holders = bpfsys::holders();
    links.into_iter().filter(|l| !held_by_live_run(holders.links.get(&l.link_id), force)).collect()
}

/// Removes what dead runs left (and, with `force`, what live ones attached). Call
/// [`verify`] after anything else the caller sweeps.
pub fn sweep(force: bool) -> Report {
    let mut report = Report::default();
    let dead = collect_dead(&mut report.remaining);
    for d in dead {
        if d.pid != 0 {
            report.removed.push(format!("record of dead run pid {} ({})", d.pid, d.command));
        }
        report.removed.extend(d.leftovers);
    }
    let live = live_runs();
    for (pid, (process, state)) in &live {
        match (process, force) {
            (_, false) => {
                report.active.push(match process {
                    ProcessState::Stopped => format!(
                        "pid {pid} is alive but stopped (SIGSTOP): its faults ended when its lease ran out, its programs stay attached until it resumes or exits: `kill -CONT {pid}` to let it finish, or `chaos-ebpf cleanup --force` to detach them ({})",
                        state.command
                    ),
                    _ => format!(
                        "pid {pid} is running: {} (stop it with Ctrl-C or SIGTERM, or `chaos-ebpf cleanup --force`)",
                        state.command
                    ),
                });
            }
            (_, true) => {
                for instance in &state.instances {
                    revert_instance(instance, &mut report.removed, &mut report.remaining);
                }
                report.active.push(format!(
                    "pid {pid} ({process:?}) forced: its attachments were removed; it still holds its programs until it exits"
                ));
            }
        }
    }
    for link in stray_links(force) {
        match bpfsys::detach_link(link.link_id) {
            Ok(()) => report.removed.push(format!("TCX link {} ({})", link.link_id, link.program)),
            Err(e) => report.remaining.push(format!("TCX link {}: {e}", link.link_id)),
        }
    }
    sweep_netlink(force, false, &mut report);
    report.live_runs = live.len();
    report
}

/// Looks again: nothing of ours attached outside the live runs left alone, or it goes to
/// `remaining`; then sets `clean`.
pub fn verify(force: bool, report: &mut Report) {
    report.remaining.extend(
        stray_links(force).into_iter().map(|l| format!("TCX link {} ({}) still attached", l.link_id, l.program)),
    );
    let mut verify = Report::default();
    let late = sweep_netlink(force, true, &mut verify);
    report.remaining.extend(late.into_iter().map(|w| format!("{w} still there")));
    report.clean = report.remaining.is_empty();
}
