//! The agent's one kernel thread: it owns the instances (one per network namespace,
//! loaded once), the devices it prepared and the faults in force, and does every map
//! write and namespace switch (setns never happens on the async threads). Requests
//! arrive on a channel; between them the thread sleeps until the next lease ends, when
//! it reaps the faults whose client stopped renewing.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

use anyhow::Result;
use chaos_datapath::{
    devices,
    instance::{Capacity, Instance},
    ledger::{self, Phase, RuleState, RunRecord, RunState},
    netns::NetnsId,
    resolve as target, AttachMode,
};
use chaos_ebpf_common::{ProtectedPorts, RuleCounters};
use chaos_engine::network::{self, HeldDevice};
use chaos_model::{plan::Protect, spec::FaultSpec};
use tokio::sync::oneshot;

use crate::{
    api::{self, ApiError, Applied, ApplyRequest, FaultInfo, FaultList, Health, Prepared, Renewed, Reverted, RuleInfo},
    metrics::AgentMetrics,
};

/// What the API asks of the kernel thread; each carries where the answer goes.
pub enum Command {
    Apply(Box<ApplyRequest>, oneshot::Sender<Result<Applied, ApiError>>),
    Prepare(String, oneshot::Sender<Result<Prepared, ApiError>>),
    Renew(u64, u64, oneshot::Sender<Result<Renewed, ApiError>>),
    Revert(u64, oneshot::Sender<Result<Reverted, ApiError>>),
    List(oneshot::Sender<FaultList>),
    Health(oneshot::Sender<Health>),
    /// Unload the programs of every namespace no fault uses (those given at start stay):
    /// the Kubernetes controller's pods come and go, and a deleted pod's namespace must
    /// not be held by the agent.
    ForgetIdle(oneshot::Sender<usize>),
    /// Revert everything and stop; the answer says what could not be removed.
    Shutdown(oneshot::Sender<Vec<String>>),
}

struct FaultRule {
    netns: NetnsId,
    slot: u32,
    rule_id: u32,
    interfaces: Vec<String>,
}

struct Fault {
    kind: &'static str,
    description: String,
    target: String,
    seed: u64,
    lease: Duration,
    expires: Instant,
    applied_unix_ms: u64,
    rules: Vec<FaultRule>,
}

/// The devices prepared for the rules of one namespace's instance. When the last fault
/// there ends, their settings are restored (one segment per buffer, GRO, sch_fq) but
/// their segmenter pairs stay until the agent stops: the instance stays attached to
/// them, so the next fault neither attaches nor creates anything, and the instance's
/// segmenter map never names a deleted pair.
#[derive(Default)]
struct DeviceGroup {
    devices: Vec<HeldDevice>,
    /// Whether settings beyond the segmenter pairs are in place (a fault is in force).
    acquired: bool,
}

pub struct Core {
    mode: AttachMode,
    protected: Vec<ProtectedPorts>,
    judge_bit: u32,
    instances: BTreeMap<NetnsId, Instance>,
    groups: BTreeMap<NetnsId, DeviceGroup>,
    faults: BTreeMap<u64, Fault>,
    next_id: u64,
    record: Option<RunRecord>,
    run_state: RunState,
    metrics: Arc<AgentMetrics>,
    /// Namespaces given at start (`--netns`): kept loaded while the agent runs.
    managed: BTreeSet<NetnsId>,
    /// The size of each instance's maps (its peer trie: --max-peers; its flow table:
    /// --flow-table).
    capacity: Capacity,
}

/// The agent's protected ports: SSH and the Kubernetes API server, for every fault.
pub fn protected() -> Vec<ProtectedPorts> {
    Protect::defaults().iter().map(Protect::entry).collect()
}

impl Core {
    /// Records the agent in the ledger (after collecting dead runs' leftovers) and loads
    /// an instance into each of `netns`.
    pub fn start(
        command: String,
        netns: &[PathBuf],
        metrics: Arc<AgentMetrics>,
        capacity: Capacity,
    ) -> Result<(Core, Vec<String>)> {
        let mode = AttachMode::Auto.resolve()?;
        let mut notices = Vec::new();
        let mut problems = Vec::new();
        for dead in chaos_datapath::sweep::collect_dead(&mut problems) {
            if !dead.leftovers.is_empty() {
                notices.push(format!("removed what a dead run (pid {}) left: {}", dead.pid, dead.leftovers.join("; ")));
            }
        }
        notices.extend(problems);
        let mut run_state = RunState {
            pid: std::process::id(),
            command,
            seed: 0,
            lease_ms: api::MAX_LEASE.as_millis() as u64,
            phase: Phase::Running,
            started_unix_ms: ledger::unix_ms(),
            renewed_unix_ms: ledger::unix_ms(),
            instances: Vec::new(),
            rules: Vec::new(),
            judge_bit: None,
        };
        let record = RunRecord::create(&run_state)?;
        let judge_bit = devices::with_ledger_lock(|| {
            let bit = ledger::free_judge_bit();
            run_state.judge_bit = Some(bit);
            record.write(&run_state)?;
            Ok(bit)
        })?;
        let mut core = Core {
            mode,
            protected: protected(),
            judge_bit,
            instances: BTreeMap::new(),
            groups: BTreeMap::new(),
            faults: BTreeMap::new(),
            next_id: 1,
            managed: BTreeSet::new(),
            record: Some(record),
            run_state,
            metrics,
            capacity,
        };
        for path in netns {
            core.manage(path)?;
        }
        Ok((core, notices))
    }

    /// A core that touches no kernel (API tests).
    #[cfg(test)]
    pub fn detached(metrics: Arc<AgentMetrics>) -> Core {
        Core {
            mode: AttachMode::Tcx,
            protected: protected(),
            judge_bit: 0,
            instances: BTreeMap::new(),
            groups: BTreeMap::new(),
            faults: BTreeMap::new(),
            next_id: 1,
            managed: BTreeSet::new(),
            record: None,
            run_state: RunState::default(),
            metrics,
            capacity: Capacity::default(),
        }
    }

    /// Serves commands until `Shutdown` (or until every sender is gone), reaping lapsed
    /// faults at their lease's end.
    pub fn serve(mut self, commands: mpsc::Receiver<Command>) {
        loop {
            let next_lapse = self.faults.values().map(|f| f.expires).min();
            let command = match next_lapse {
                Some(at) => match commands.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(command) => Some(command),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
                None => match commands.recv() {
                    Ok(command) => Some(command),
                    Err(_) => break,
                },
            };
            self.reap();
            match command {
                None => {}
                Some(Command::Apply(request, reply)) => {
                    let _ = reply.send(self.apply(*request));
                }
                Some(Command::Prepare(target, reply)) => {
                    let _ = reply.send(self.prepare(&target));
                }
                Some(Command::Renew(id, lease_ms, reply)) => {
                    let _ = reply.send(self.renew(id, lease_ms));
                }
                Some(Command::Revert(id, reply)) => {
                    let _ = reply.send(self.revert(id, "reverted"));
                }
                Some(Command::List(reply)) => {
                    let _ = reply.send(self.list());
                }
                Some(Command::ForgetIdle(reply)) => {
                    let _ = reply.send(self.forget_idle());
                }
                Some(Command::Health(reply)) => {
                    let _ = reply.send(self.health());
                }
                Some(Command::Shutdown(reply)) => {
                    let _ = reply.send(self.shutdown());
                    return;
                }
            }
        }
        self.shutdown();
    }

    /// The instance of a namespace, loaded on first use.
    fn instance(&mut self, path: &Path, id: NetnsId) -> Result<&mut Instance> {
        if !self.instances.contains_key(&id) {
            let instance = network::load_instance(path, id, self.mode, &self.protected, self.judge_bit, self.capacity)?;
            log(&format!("loaded the programs into {}", path.display()));
            self.instances.insert(id, instance);
            self.metrics.instances(self.instances.len());
            self.write_ledger();
        }
        Ok(self.instances.get_mut(&id).expect("inserted above"))
    }

    fn apply(&mut self, request: ApplyRequest) -> Result<Applied, ApiError> {
        let started = Instant::now();
        let spec = request.fault.to_spec()?;
        let lease = api::lease(request.lease_ms)?;
        let seed = request.seed.unwrap_or_else(random_seed);
        let id = self.next_id;
        let rule_id = match request.rule_id {
            Some(rule_id) => rule_id,
            None => u32::try_from(id).map_err(|_| ApiError::new(503, "fault ids ran out", "restart the agent"))?,
        };
        self.next_id += 1;
        let applied = self.install(id, rule_id, &spec, seed, lease).map_err(|e| {
            self.metrics.apply_failed();
            log(&format!("apply of {} failed: {e:#}", describe(&spec)));
            ApiError::from_error(&e)
        })?;
        let apply_us = started.elapsed().as_micros() as u64;
        self.metrics.applied(started.elapsed(), self.faults.len());
        log(&format!(
            "applied fault {id}: {} (seed {seed}, lease {} ms) in {apply_us} us",
            describe(&spec),
            lease.as_millis()
        ));
        Ok(Applied {
            id,
            fault: describe(&spec),
            target: spec.target.to_string(),
            seed,
            lease_ms: lease.as_millis() as u64,
            apply_us,
            rules: applied,
        })
    }

    /// Loads the programs into every namespace of `target` and attaches them (no rule,
    /// no device setting): the first fault there is then as fast as any later one.
    fn prepare(&mut self, text: &str) -> Result<Prepared, ApiError> {
        let started = Instant::now();
        let spec: chaos_model::spec::TargetSpec = text
            .parse()
            .map_err(|p: chaos_model::Problem| ApiError::new(400, format!("target: {}", p.problem), p.fix))?;
        let mut loaded = 0;
        let mut namespaces = Vec::new();
        let result = (|| -> Result<()> {
            let target = chaos_engine::run::target_of(&spec)?;
            for r in target::resolve(&target)? {
                let fresh = !self.instances.contains_key(&r.netns.id);
                let instance = self.instance(&r.netns.path, r.netns.id)?;
                if fresh {
                    instance.check_room(&r.interfaces)?;
                    loaded += 1;
                }
                let group = self.groups.entry(r.netns.id).or_default();
                let instance = self.instances.get_mut(&r.netns.id).expect("loaded above");
                network::attach_target(instance, &r, &group.devices)?;
                namespaces.push(r.netns.path.display().to_string());
            }
            Ok(())
        })();
        self.write_ledger();
        result.map_err(|e| {
            log(&format!("prepare of {text} failed: {e:#}"));
            ApiError::from_error(&e)
        })?;
        let prepare_us = started.elapsed().as_micros() as u64;
        log(&format!("prepared {text}: {} namespace(s), {loaded} loaded now, in {prepare_us} us", namespaces.len()));
        Ok(Prepared { namespaces, loaded, prepare_us })
    }

    /// Resolves the fault's targets, prepares devices and attachments, installs one rule
    /// per namespace; on an error, removes what it installed.
    fn install(
        &mut self,
        id: u64,
        rule_id: u32,
        spec: &FaultSpec,
        seed: u64,
        lease: Duration,
    ) -> Result<Vec<RuleInfo>> {
        let target = chaos_engine::run::target_of(&spec.target)?;
        let targets = target::resolve(&target)?;
        let targets = network::acting_targets(spec, &target, targets)?;
        let mut fault = Fault {
            kind: spec.kind.name(),
            description: describe(spec),
            target: spec.target.to_string(),
            seed,
            lease,
            expires: Instant::now() + lease,
            applied_unix_ms: ledger::unix_ms(),
            rules: Vec::new(),
        };
        let mut result = Ok(());
        for r in &targets {
            result = self.install_on(&mut fault, rule_id, spec, r);
            if result.is_err() {
                break;
            }
        }
        fault.expires = Instant::now() + lease;
        let infos = fault.rules.iter().map(|r| self.rule_info(r)).collect();
        self.faults.insert(id, fault);
        if let Err(e) = result {
            self.remove_fault(id);
            return Err(e);
        }
        self.write_ledger();
        Ok(infos)
    }

    fn install_on(&mut self, fault: &mut Fault, rule_id: u32, spec: &FaultSpec, r: &target::Resolved) -> Result<()> {
        let fresh = !self.instances.contains_key(&r.netns.id);
        let instance = self.instance(&r.netns.path, r.netns.id)?;
        if fresh {
            instance.check_room(&r.interfaces)?;
        }
        let group = self.groups.entry(r.netns.id).or_default();
        group.acquired = true;
        // Only what is not in place yet (a second fault on a device costs no device work).
        for (netns, iface, needs) in network::fault_devices(spec, r)? {
            if !network::holds(&group.devices, &netns, &iface, needs) {
                network::hold_device(&mut group.devices, &netns, &iface, needs)?;
            }
        }
        let instance = self.instances.get_mut(&r.netns.id).expect("loaded above");
        network::attach_target(instance, r, &group.devices)?;
        let slot = instance.free_slot()?;
        let rule = network::rule_for(spec, fault.seed, rule_id, r);
        instance.install(slot, &rule, &network::peer_entries(spec), fault.lease)?;
        fault.rules.push(FaultRule {
            netns: r.netns.id,
            slot,
            rule_id,
            interfaces: r.interfaces.iter().map(|i| i.name.clone()).collect(),
        });
        Ok(())
    }

    fn rule_info(&self, r: &FaultRule) -> RuleInfo {
        let instance = self.instances.get(&r.netns);
        RuleInfo {
            netns: instance.map(|i| i.netns.path.display().to_string()).unwrap_or_default(),
            rule_id: r.rule_id,
            slot: r.slot,
            interfaces: r.interfaces.clone(),
            counters: instance.and_then(|i| i.counters(r.slot).ok()).unwrap_or_default(),
        }
    }

    fn renew(&mut self, id: u64, lease_ms: u64) -> Result<Renewed, ApiError> {
        let lease = api::lease(lease_ms)?;
        let fault = self.faults.get_mut(&id).ok_or_else(|| ApiError::not_found(id))?;
        for r in &fault.rules {
            let instance = self.instances.get_mut(&r.netns).expect("a fault's instance stays loaded");
            instance.renew(r.slot, lease).map_err(|e| ApiError::from_error(&e.context("renewing a lease")))?;
        }
        fault.lease = lease;
        fault.expires = Instant::now() + lease;
        self.write_ledger();
        Ok(Renewed { id, lease_ms })
    }

    fn revert(&mut self, id: u64, why: &str) -> Result<Reverted, ApiError> {
        let started = Instant::now();
        if !self.faults.contains_key(&id) {
            return Err(ApiError::not_found(id));
        }
        let (fault, rules, problems) = self.remove_fault(id);
        let mut counters = RuleCounters::default();
        for r in &rules {
            counters.add(&r.counters);
        }
        let revert_us = started.elapsed().as_micros() as u64;
        self.metrics.reverted(why == "lapsed", self.faults.len());
        log(&format!(
            "{why} fault {id}: {} in {revert_us} us: seen {} matched {} dropped {} delayed {}{}",
            fault.description,
            counters.seen,
            counters.matched,
            counters.dropped,
            counters.delayed,
            if problems.is_empty() { String::new() } else { format!("; problems: {}", problems.join("; ")) }
        ));
        if !problems.is_empty() {
            return Err(ApiError::new(
                500,
                format!("fault {id} is off but not all of it was removed: {}", problems.join("; ")),
                "run `chaos-ebpf cleanup` once the agent stopped",
            ));
        }
        Ok(Reverted { id, fault: fault.description, target: fault.target, counters, rules, revert_us })
    }

    /// Removes a fault's rules (final counters read first) and, when it was the last
    /// fault of a namespace, releases the devices prepared for it.
    fn remove_fault(&mut self, id: u64) -> (Fault, Vec<RuleInfo>, Vec<String>) {
        let fault = self.faults.remove(&id).expect("checked by the caller");
        let mut infos = Vec::new();
        let mut problems = Vec::new();
        for r in &fault.rules {
            infos.push(self.rule_info(r));
            if let Some(instance) = self.instances.get_mut(&r.netns) {
                if let Err(e) = instance.remove(r.slot) {
                    problems.push(format!("removing rule {} in {}: {e:#}", r.rule_id, instance.netns.path.display()));
                }
            }
        }
        let namespaces: Vec<NetnsId> = fault.rules.iter().map(|r| r.netns).collect();
        for netns in namespaces {
            if !self.faults.values().any(|f| f.rules.iter().any(|r| r.netns == netns)) {
                problems.extend(self.release_group(netns, false));
            }
        }
        self.write_ledger();
        (fault, infos, problems)
    }

    /// Restores the devices prepared for a namespace's rules (a device another
    /// namespace's faults still need stays as it is): their settings, keeping the
    /// segmenter pairs; or, when the agent stops (`entirely`), everything.
    fn release_group(&mut self, netns: NetnsId, entirely: bool) -> Vec<String> {
        let in_use: Vec<(NetnsId, u32)> = self
            .groups
            .iter()
            .filter(|(id, g)| **id != netns && g.acquired)
            .flat_map(|(_, g)| g.devices.iter().map(|h| (h.netns.id, h.iface.index)))
            .collect();
        let Some(group) = self.groups.get_mut(&netns) else { return Vec::new() };
        if !group.acquired && !entirely {
            return Vec::new();
        }
        group.acquired = false;
        let mut problems = Vec::new();
        if entirely {
            for h in std::mem::take(&mut group.devices) {
                if let Err(e) = network::release_device(&h) {
                    problems.push(format!("{e:#}"));
                }
            }
            return problems;
        }
        for h in &mut group.devices {
            if in_use.contains(&(h.netns.id, h.iface.index)) {
                continue;
            }
            if let Err(e) = network::relax_device(h) {
                problems.push(format!("{e:#}"));
            }
            // What is in place now: the segmenter pair at most.
            h.needs = devices::Needs { segmenter: h.needs.segmenter, ..devices::Needs::default() };
        }
        problems
    }

    /// Loads the programs into a namespace the agent manages from its start and attaches
    /// them to its interfaces, each with its segmenter pair: the first fault there then
    /// only writes maps and device settings.
    fn manage(&mut self, path: &Path) -> Result<()> {
        let target = target::Target::Netns(path.display().to_string());
        for r in target::resolve(&target)? {
            let fresh = !self.instances.contains_key(&r.netns.id);
            let instance = self.instance(&r.netns.path, r.netns.id)?;
            if fresh {
                instance.check_room(&r.interfaces)?;
            }
            self.managed.insert(r.netns.id);
            let group = self.groups.entry(r.netns.id).or_default();
            let needs = devices::Needs { segmenter: true, ..devices::Needs::default() };
            for iface in &r.interfaces {
                network::hold_device(&mut group.devices, &r.netns, iface, needs)?;
            }
            let instance = self.instances.get_mut(&r.netns.id).expect("loaded above");
            network::attach_target(instance, &r, &group.devices)?;
        }
        self.write_ledger();
        Ok(())
    }

    /// Unloads the instances of namespaces without a fault that were not given at start;
    /// returns how many.
    fn forget_idle(&mut self) -> usize {
        let idle: Vec<NetnsId> = self
            .instances
            .keys()
            .filter(|id| !self.managed.contains(id))
            .filter(|id| !self.faults.values().any(|f| f.rules.iter().any(|r| r.netns == **id)))
            .copied()
            .collect();
        for id in &idle {
            if let Some(mut instance) = self.instances.remove(id) {
                let path = instance.netns.path.display().to_string();
                match instance.shutdown() {
                    Ok(()) => log(&format!("unloaded the programs from {path} (no fault there)")),
                    Err(e) => warn(&format!("unloading the programs from {path}: {e:#}")),
                }
            }
            for problem in self.release_group(*id, true) {
                warn(&problem);
            }
            self.groups.remove(id);
        }
        if !idle.is_empty() {
            self.metrics.instances(self.instances.len());
            self.write_ledger();
        }
        idle.len()
    }

    /// Reverts the faults whose lease ended (the kernel stopped acting on them already).
    fn reap(&mut self) {
        let now = Instant::now();
        let lapsed: Vec<u64> = self.faults.iter().filter(|(_, f)| f.expires <= now).map(|(id, _)| *id).collect();
        for id in lapsed {
            let _ = self.revert(id, "lapsed");
        }
    }

    fn list(&self) -> FaultList {
        let now = Instant::now();
        let faults = self
            .faults
            .iter()
            .map(|(id, f)| {
                let rules: Vec<RuleInfo> = f.rules.iter().map(|r| self.rule_info(r)).collect();
                let mut counters = RuleCounters::default();
                for r in &rules {
                    counters.add(&r.counters);
                }
                FaultInfo {
                    id: *id,
                    kind: f.kind.to_owned(),
                    fault: f.description.clone(),
                    target: f.target.clone(),
                    seed: f.seed,
                    lease_ms: f.lease.as_millis() as u64,
                    lease_left_ms: f.expires.saturating_duration_since(now).as_millis() as u64,
                    applied_unix_ms: f.applied_unix_ms,
                    counters,
                    rules,
                }
            })
            .collect();
        FaultList { faults }
    }

    fn health(&self) -> Health {
        Health {
            status: "ok".into(),
            pid: std::process::id(),
            namespaces: self.instances.values().map(|i| i.netns.path.display().to_string()).collect(),
            programs_loaded: self.instances.len() * chaos_ebpf_common::names::PROGRAMS.len(),
            faults: self.faults.len(),
        }
    }

    /// Reverts every fault, detaches and unloads every instance, restores the devices
    /// and removes the ledger record.
    fn shutdown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let ids: Vec<u64> = self.faults.keys().copied().collect();
        for id in ids {
            if let Err(e) = self.revert(id, "stopped") {
                problems.push(e.problem);
            }
        }
        self.run_state.phase = Phase::Reverting;
        self.write_ledger();
        for (_, mut instance) in std::mem::take(&mut self.instances) {
            if let Err(e) = instance.shutdown() {
                problems.push(format!("{e:#}"));
            }
        }
        let groups: Vec<NetnsId> = self.groups.keys().copied().collect();
        for netns in groups {
            problems.extend(self.release_group(netns, true));
        }
        self.metrics.instances(0);
        if problems.is_empty() {
            // A clean exit forgets the record; otherwise it stays for `cleanup`.
            self.record.take();
        }
        problems
    }

    /// The agent's record in the ledger: its instances and the rules in force, each
    /// ending at its lease.
    fn write_ledger(&mut self) {
        let Some(record) = &self.record else { return };
        let now = Instant::now();
        let now_ms = ledger::unix_ms();
        self.run_state.instances = self.instances.values().filter_map(|i| i.state().ok()).collect();
        self.run_state.rules = self
            .faults
            .values()
            .flat_map(|f| {
                let ends = now_ms + f.expires.saturating_duration_since(now).as_millis() as u64;
                f.rules.iter().map(move |r| RuleState {
                    rule_id: r.rule_id,
                    slot: r.slot,
                    netns_id: r.netns,
                    fault: f.description.clone(),
                    started_unix_ms: f.applied_unix_ms,
                    ends_unix_ms: ends,
                })
            })
            .collect();
        self.run_state.renewed_unix_ms = now_ms;
        if let Err(e) = record.write(&self.run_state) {
            warn(&format!("writing the ledger record: {e:#}"));
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        if !self.instances.is_empty() || !self.faults.is_empty() {
            self.shutdown();
        }
    }
}

/// What a fault does, as `plan` describes it, cut to a line: a fault with a million
/// peers would otherwise put megabytes into every answer, log line and ledger write.
fn describe(spec: &FaultSpec) -> String {
    const MAX_DESCRIPTION: usize = 400;
    /// Peers named; a million formatted only to be cut took a tenth of a second.
    const NAMED_PEERS: usize = 16;
    if spec.peers.len() <= NAMED_PEERS {
        return chaos_model::spec::shorten(&spec.describe(), MAX_DESCRIPTION);
    }
    let mut named = spec.clone();
    named.peers.truncate(NAMED_PEERS);
    let text = format!("{},... ({} peers)", named.describe(), spec.peers.len());
    chaos_model::spec::shorten(&text, MAX_DESCRIPTION)
}

/// `--log-level warn`: only problems are logged, not every event.
static WARNINGS_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How much the agent logs: every event (false, the default) or only problems (true).
pub fn set_warnings_only(only: bool) {
    WARNINGS_ONLY.store(only, std::sync::atomic::Ordering::Relaxed);
}

/// One line on stderr per event (the agent's log), unless only warnings are wanted.
pub fn log(line: &str) {
    if !WARNINGS_ONLY.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("chaos-ebpf agent: {line}");
    }
}

/// A problem, on stderr at every log level.
pub fn warn(line: &str) {
    eprintln!("chaos-ebpf agent: warning: {line}");
}

fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes)).is_err() {
        return ledger::unix_ms() ^ u64::from(std::process::id());
    }
    u64::from_ne_bytes(bytes)
}
