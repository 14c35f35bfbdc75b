//! `chaos-ebpf cleanup`: finds what chaos-ebpf left behind, removes it, and verifies.
//!
//! What can be left: netlink (cls_bpf) filters and the clsact qdiscs added for them (they
//! survive a SIGKILL, unlike TCX links), TCX links of a hung (stopped) run, state files of
//! dead runs, and lab namespaces. Experiments that are running normally are left alone
//! unless `--all`.

use std::fs;

use anyhow::Result;
use aya::programs::{
    tc::{self, SchedClassifierLink, TcHandle},
    TcAttachType,
};
use chaos_ebpf_common::names;
use serde::Serialize;

use crate::{
    bpfsys,
    error::require_root,
    lab::LAB_PREFIX,
    netlink,
    netns::{self, Netns, NetnsId},
    state::{self, InstanceState, ProcessState},
};

#[derive(Debug, Default, Serialize)]
struct Report {
    removed: Vec<String>,
    /// Experiments still running, left alone.
    active: Vec<String>,
    /// What could not be removed.
    remaining: Vec<String>,
    clean: bool,
}

fn hook(name: &str) -> TcAttachType {
    if name == "ingress" {
        TcAttachType::Ingress
    } else {
        TcAttachType::Egress
    }
}

/// Removes the netlink filters and clsact qdiscs a run recorded.
fn revert_instance(instance: &InstanceState, report: &mut Report) {
    let Ok(ns) = Netns::open(&instance.netns) else {
        // The namespace is gone, and its devices with their filters and qdiscs.
        return;
    };
    let Ok(_inside) = ns.enter() else {
        report.remaining.push(format!("cannot enter {}", instance.netns.display()));
        return;
    };
    for f in &instance.netlink_filters {
        match SchedClassifierLink::attached(&f.iface, hook(&f.hook), f.priority, TcHandle::from(f.handle), None) {
            Ok(link) => {
                use aya::programs::links::Link as _;
                match link.detach() {
                    Ok(()) => report.removed.push(format!(
                        "netlink filter {} {} prio {} in {}",
                        f.iface,
                        f.hook,
                        f.priority,
                        instance.netns.display()
                    )),
                    Err(_) => {} // already gone; the name scan below double-checks
                }
            }
            Err(_) => {} // interface gone
        }
    }
    for iface in &instance.fq_installed {
        let Ok(index) = nix_ifindex(iface) else { continue };
        // Only our fq: if someone replaced it meanwhile, theirs stays.
        if matches!(netlink::root_qdisc(index), Ok(Some(q)) if q.kind == "fq") {
            match netlink::delete_root_qdisc(index) {
                Ok(true) => report
                    .removed
                    .push(format!("sch_fq root qdisc on {iface} in {} (default restored)", instance.netns.display())),
                Ok(false) => {}
                Err(e) => report.remaining.push(format!("sch_fq on {iface} in {}: {e}", instance.netns.display())),
            }
        }
    }
    for iface in &instance.interfaces {
        let Ok(index) = nix_ifindex(iface) else { continue };
        match crate::loader::release_clsact(instance.netns_id, index) {
            Ok(true) => report.removed.push(format!("clsact qdisc on {iface} in {}", instance.netns.display())),
            Ok(false) => {}
            Err(e) => report.remaining.push(format!("clsact qdisc on {iface} in {}: {e}", instance.netns.display())),
        }
    }
}

/// clsact qdiscs chaos-ebpf added and nobody released (their state file is gone too):
/// deleted once no filter is left on them; markers of vanished namespaces are dropped.
fn sweep_clsact_markers(report: &mut Report) {
    let namespaces = netns::all_namespaces();
    for (marker, id, ifindex) in state::clsact_markers() {
        let Some(ns) = namespaces.iter().find(|n| n.id == id) else {
            let _ = fs::remove_file(&marker);
            continue;
        };
        let Ok(_inside) = ns.enter() else { continue };
        match crate::loader::release_clsact(id, ifindex) {
            Ok(true) => report.removed.push(format!("clsact qdisc on ifindex {ifindex} in {}", ns.path.display())),
            Ok(false) => {}
            Err(e) => report.remaining.push(format!("clsact qdisc on ifindex {ifindex} in {}: {e}", ns.path.display())),
        }
    }
}

fn nix_ifindex(name: &str) -> std::io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(index)
    }
}

/// Removes chaos-ebpf netlink filters found by name on every interface of every
/// namespace, except where a running experiment owns them. Returns what it found.
/// (Removing by name is also the only query aya offers, so verification runs it again
/// and expects to find nothing.)
fn sweep_netlink(protected: &[(NetnsId, String)], report: &mut Report) -> Vec<String> {
    let mut found = Vec::new();
    for ns in netns::all_namespaces() {
        let Ok(_inside) = ns.enter() else { continue };
        let Ok(interfaces) = netns::interfaces() else {
            continue;
        };
        for iface in interfaces {
            if protected.iter().any(|(id, name)| *id == ns.id && *name == iface.name) {
                continue;
            }
            for (attach, prog) in
                [(TcAttachType::Ingress, names::PROG_INGRESS), (TcAttachType::Egress, names::PROG_EGRESS)]
            {
                let what = format!("netlink filter {prog} on {} in {}", iface.name, ns.path.display());
                match tc::qdisc_detach_program(&iface.name, attach, prog) {
                    Ok(()) => {
                        found.push(what.clone());
                        report.removed.push(what);
                    }
                    Err(tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(_) => {} // no clsact qdisc on this interface
                }
            }
        }
    }
    found
}

pub fn run(all: bool, json: bool) -> Result<i32> {
    require_root("cleanup")?;
    let mut report = Report::default();
    let mut keep_programs: Vec<u32> = Vec::new();
    let mut keep_ifaces: Vec<(NetnsId, String)> = Vec::new();
    let mut any_running = false;

    for (path, state) in state::read_all() {
        let state = match state {
            Ok(s) => s,
            Err(e) => {
                report.remaining.push(format!("{e:#}"));
                continue;
            }
        };
        let process = state::process_state(state.pid);
        match process {
            ProcessState::Running if !all => {
                any_running = true;
                report.active.push(format!(
                    "pid {} running: {} (stop it with Ctrl-C/SIGTERM, or `cleanup --all`)",
                    state.pid, state.command
                ));
                for i in &state.instances {
                    keep_programs.extend(&i.program_ids);
                    keep_ifaces.extend(i.interfaces.iter().map(|n| (i.netns_id, n.clone())));
                }
            }
            _ => {
                // Gone, stopped (hung: its leases may have run out already, but its
                // attachments stay until removed), or --all.
                for link in bpfsys::our_links() {
                    if state.instances.iter().any(|i| i.program_ids.contains(&link.program_id)) {
                        match bpfsys::detach_link(link.link_id) {
                            Ok(()) => report.removed.push(format!(
                                "TCX link {} ({}) of pid {} ({:?})",
                                link.link_id, link.program, state.pid, process
                            )),
                            Err(e) => report.remaining.push(format!("TCX link {}: {e}", link.link_id)),
                        }
                    }
                }
                for instance in &state.instances {
                    revert_instance(instance, &mut report);
                }
                if process == ProcessState::Gone {
                    if fs::remove_file(&path).is_ok() {
                        report.removed.push(format!("state file {}", path.display()));
                    }
                } else {
                    report.active.push(format!(
                        "pid {} ({:?}) still holds its (now detached) programs; they unload when it exits",
                        state.pid, process
                    ));
                }
            }
        }
    }
    // Attachments no state file accounts for (a lost state file, a killed run).
    for link in bpfsys::our_links() {
        if keep_programs.contains(&link.program_id) {
            continue;
        }
        match bpfsys::detach_link(link.link_id) {
            Ok(()) => report.removed.push(format!("stray TCX link {} ({})", link.link_id, link.program)),
            Err(e) => report.remaining.push(format!("stray TCX link {}: {e}", link.link_id)),
        }
    }
    sweep_netlink(&keep_ifaces, &mut report);
    sweep_clsact_markers(&mut report);
    if !any_running {
        if let Ok(entries) = fs::read_dir(netns::NETNS_RUN_DIR) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(LAB_PREFIX) {
                    let ok = std::process::Command::new("ip")
                        .args(["netns", "del", &name])
                        .status()
                        .is_ok_and(|s| s.success());
                    if ok {
                        report.removed.push(format!("lab namespace {name}"));
                    } else {
                        report.remaining.push(format!("lab namespace {name}"));
                    }
                }
            }
        }
    }

    // Verify: nothing of ours attached outside running experiments.
    let stray: Vec<String> = bpfsys::our_links()
        .into_iter()
        .filter(|l| !keep_programs.contains(&l.program_id))
        .map(|l| format!("TCX link {} ({}) still attached", l.link_id, l.program))
        .collect();
    report.remaining.extend(stray);
    let mut verify = Report::default();
    let late = sweep_netlink(&keep_ifaces, &mut verify);
    report.remaining.extend(late.into_iter().map(|w| format!("{w} reappeared")));
    report.clean = report.remaining.is_empty();

    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if report.removed.is_empty() {
            println!("nothing to remove");
        }
        for r in &report.removed {
            println!("removed {r}");
        }
        for a in &report.active {
            println!("left alone: {a}");
        }
        for r in &report.remaining {
            println!("NOT removed: {r}");
        }
        println!("{}", if report.clean { "clean" } else { "NOT clean" });
    }
    Ok(if report.clean { 0 } else { crate::error::EXIT_FAILED })
}
