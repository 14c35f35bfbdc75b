//! One pass of the controller over every experiment: what this node's agent holds for
//! each, and what it changes to match the spec, the pods and the clock.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use chaos_model::Problem;
use k8s_openapi::{
    api::core::v1::{Pod, Service},
    jiff::Timestamp,
};
use kube::{
    api::Api,
    runtime::events::{Event, EventType, Recorder, Reporter},
    Client, Resource, ResourceExt,
};
use tokio::sync::Notify;

use super::{
    crd::{
        ActionRecord, ChaosExperiment, ChaosExperimentStatus, Condition, HypothesisStatus, LeaderSelector, NodeStatus,
        PinnedPod, PodAction, PodFault, PodInjection, PAUSED_ANNOTATION,
    },
    finalizer, patch_status,
    probing::{Probing, Stage},
    procfs,
    select::{self, Candidate},
    set_finalizer, steps, KubeOptions, LEASE,
};
use crate::{
    api::{FaultWire, PortsWire},
    core::{log, warn},
    server::Handle,
};

/// Events kept per node entry of a status.
const MAX_EVENTS: usize = 20;

/// The faults held for one pod.
struct Held {
    pod: Candidate,
    /// By the fault's key in the schedule (`faults[0]`, `steps[1].faults[0]`).
    faults: BTreeMap<String, HeldFault>,
    netns_inode: u64,
    from: Timestamp,
}

struct HeldFault {
    id: u64,
    /// The resolved peers when applied: a change re-applies.
    peers: Vec<String>,
}

/// What this agent knows of one experiment.
#[derive(Default)]
struct Experiment {
    held: BTreeMap<String, Held>,
    /// Pods released or failed, newest last, for the status.
    past: Vec<PodInjection>,
    events: VecDeque<String>,
    /// Events not yet published as Kubernetes Events.
    pending: Vec<(Happened, String)>,
    /// The pod actions done here (from the status when the agent starts).
    actions: Vec<ActionRecord>,
    /// Whether this node's finalizer is on the resource.
    finalizer: bool,
    /// The last status written, not written again when nothing changed.
    written: Option<serde_json::Value>,
    /// The hypothesis and guards checked on this node (started with the first pod
    /// chosen here).
    probing: Option<Probing>,
    /// What the status said of them when this agent started: kept until it checks again.
    hypothesis_before: Option<HypothesisStatus>,
    /// With a leader selector and faults: the pod that led when the faults began, their
    /// target while they last (the faults usually end its leadership).
    leader_pin: Option<Candidate>,
}

impl Experiment {
    fn event(&mut self, kind: Happened, line: String) {
        log(&line);
        self.pending.push((kind, line.clone()));
        let now = Timestamp::now();
        self.events.push_back(format!("{} {line}", now.round(k8s_openapi::jiff::Unit::Second).unwrap_or(now)));
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }
}

/// What an event says happened: its Kubernetes reason and type.
#[derive(Debug, Clone, Copy)]
enum Happened {
    Injected,
    NotInjected,
    Released,
    ActionDone,
    Waiting,
    Aborted,
}

impl Happened {
    fn event(self, note: String) -> Event {
        let (reason, warning) = match self {
            Happened::Injected => ("Injected", false),
            Happened::NotInjected => ("NotInjected", true),
            Happened::Released => ("Released", false),
            Happened::ActionDone => ("PodAction", false),
            Happened::Waiting => ("Waiting", true),
            Happened::Aborted => ("Aborted", true),
        };
        Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            // The API takes 1 kB at most.
            note: Some(chaos_model::spec::shorten(&note, 1000)),
            action: reason.into(),
            secondary: None,
        }
    }
}

pub struct Controller {
    client: Client,
    /// Notified by the hypothesis threads when their stage changes: a pass follows.
    wake: Arc<Notify>,
    /// Publishes the events as Kubernetes Events of the experiment (`kubectl describe`).
    recorder: Recorder,
    handle: Handle,
    options: KubeOptions,
    experiments: BTreeMap<(String, String), Experiment>,
}

/// What the spec and the clock say an experiment should be doing.
enum Wanted {
    Invalid(Problem),
    Paused,
    Finished,
    /// A guard fired (on this node or another): what it saw.
    Aborted(String),
    Running,
}

impl Controller {
    pub fn new(client: Client, handle: Handle, options: KubeOptions, wake: Arc<Notify>) -> Controller {
        let reporter = Reporter { controller: "chaos-ebpf-agent".into(), instance: Some(options.node.clone()) };
        let recorder = Recorder::new(client.clone(), reporter);
        Controller { client, wake, recorder, handle, options, experiments: BTreeMap::new() }
    }

    /// One pass; returns how long until a step of some experiment starts or ends.
    pub async fn pass(
        &mut self,
        experiments: &[Arc<ChaosExperiment>],
        pods: &[Arc<Pod>],
        services: &[Arc<Service>],
        node_labels: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Option<Duration> {
        let live: BTreeSet<(String, String)> =
            experiments.iter().map(|e| (e.namespace().unwrap_or_default(), e.name_any())).collect();
        // Experiments gone without our finalizer (it was never added: nothing selected
        // here) or removed by hand: release what is held.
        let gone: Vec<(String, String)> = self.experiments.keys().filter(|k| !live.contains(*k)).cloned().collect();
        for key in gone {
            if let Some(mut state) = self.experiments.remove(&key) {
                self.release_all(&mut state, "the experiment is gone").await;
            }
        }
        let now = Timestamp::now();
        let mut next: Option<Timestamp> = None;
        for experiment in experiments {
            if let Err(e) = self.reconcile(experiment, pods, services, node_labels).await {
                warn(&format!(
                    "reconciling {}/{}: {e:#}",
                    experiment.namespace().unwrap_or_default(),
                    experiment.name_any()
                ));
            }
            let boundary = steps::at(&experiment.spec, created(experiment), now).next;
            next = match (next, boundary) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        next.map(|n| Duration::try_from(n.duration_since(Timestamp::now())).unwrap_or_default())
    }

    async fn reconcile(
        &mut self,
        experiment: &ChaosExperiment,
        pods: &[Arc<Pod>],
        services: &[Arc<Service>],
        node_labels: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> anyhow::Result<()> {
        let namespace = experiment.namespace().unwrap_or_default();
        let name = experiment.name_any();
        let key = (namespace.clone(), name.clone());
        let api: Api<ChaosExperiment> = Api::namespaced(self.client.clone(), &namespace);
        let node = self.options.node.clone();
        let mut state = self.experiments.remove(&key).unwrap_or_else(|| {
            // A restarted agent: the actions it did before and the verdict are in its
            // status entry.
            let before = experiment.status.iter().flat_map(|s| s.nodes.iter()).find(|n| n.node == self.options.node);
            Experiment {
                actions: before.map(|n| n.actions.clone()).unwrap_or_default(),
                hypothesis_before: before.and_then(|n| n.hypothesis.clone()),
                leader_pin: before.and_then(|n| n.leader.as_ref()).and_then(|pinned| {
                    select::matching(pods, &experiment.spec.selector, &namespace, node_labels)
                        .into_iter()
                        .find(|c| c.uid == pinned.uid)
                }),
                ..Experiment::default()
            }
        });
        state.finalizer = experiment.finalizers().contains(&finalizer(&node));
        if experiment.metadata.deletion_timestamp.is_some() {
            // Its verdict would go with the resource: the probes stop now.
            state.probing = None;
            self.release_all(&mut state, "the experiment was deleted").await;
            if state.finalizer {
                set_finalizer(&api, &name, &node, false).await?;
                log(&format!("{namespace}/{name}: deleted; everything reverted on {node}, finalizer removed"));
            }
            return Ok(());
        }
        let (wanted, ends_at) = self.wanted(experiment, &state);
        let mut selected = 0;
        let mut problem = None;
        match &wanted {
            Wanted::Invalid(_) => self.release_all(&mut state, "the spec is not valid").await,
            Wanted::Paused => self.release_all(&mut state, "paused").await,
            Wanted::Finished => self.release_all(&mut state, "the experiment's time is over").await,
            Wanted::Aborted(why) => {
                state.event_once(Happened::Aborted, format!("aborted: {why}"));
                self.release_all(&mut state, "aborted").await
            }
            Wanted::Running => {
                let spec = &experiment.spec;
                let candidates = select::matching(pods, &spec.selector, &namespace, node_labels);
                let chosen = select::pick(candidates.clone(), spec.mode, spec.value, spec.seed);
                selected = chosen.len();
                let mine: Vec<Candidate> = chosen.iter().filter(|c| c.node == node).cloned().collect();
                if !mine.is_empty() && state.probing.is_none() {
                    state.probing = self.start_probing(experiment);
                }
                // Nothing is injected before the steady state is reached.
                let stage = state.probing.as_ref().map_or(Stage::During, Probing::stage);
                if let Stage::SteadyFailed(why) = &stage {
                    state.event_once(Happened::NotInjected, format!("nothing injected: {why}"));
                } else if stage == Stage::Steady {
                    state.event_once(Happened::Waiting, "checking the steady state before the first fault".into());
                } else {
                    let schedule = steps::at(spec, created(experiment), Timestamp::now());
                    if !schedule.actions.is_empty() {
                        self.act(&mut state, experiment, &schedule.actions, &candidates, &chosen, pods).await;
                    }
                    let mine = match &spec.leader {
                        Some(leader) if !schedule.faults.is_empty() => {
                            let pinned = self.pin_leader(&mut state, &candidates, leader, pods).await;
                            selected = usize::from(pinned.is_some());
                            pinned.into_iter().filter(|c| c.node == node).collect()
                        }
                        Some(_) => {
                            // No fault due: the next step's faults go to the leader then.
                            state.leader_pin = None;
                            Vec::new()
                        }
                        None => mine,
                    };
                    if !mine.is_empty() && !state.finalizer {
                        // Before anything is applied: a delete from here on waits for our revert.
                        match set_finalizer(&api, &name, &node, true).await {
                            Ok(()) => state.finalizer = true,
                            Err(e) => problem = Some(e),
                        }
                    }
                    if state.finalizer {
                        self.converge(&mut state, experiment, &schedule.faults, &mine, pods, services).await;
                    }
                }
            }
        }
        if matches!(wanted, Wanted::Finished | Wanted::Aborted(_) | Wanted::Invalid(_)) && state.held.is_empty() {
            if let Some(probing) = &state.probing {
                // The faults are gone for good: recovery is checked now.
                probing.reverted();
            }
        }
        let paused = state.actions.iter().any(|a| a.container_id.is_some() && a.resumed.is_none());
        if state.finalizer && state.held.is_empty() && !paused && !matches!(wanted, Wanted::Running) {
            match set_finalizer(&api, &name, &node, false).await {
                Ok(()) => state.finalizer = false,
                Err(e) => problem = Some(e),
            }
        }
        self.publish(&mut state, experiment);
        let status = self.status(&mut state, experiment, &wanted, ends_at, selected).await;
        if state.written.as_ref() != Some(&status) {
            match patch_status(&api, &name, &node, status.clone()).await {
                Ok(()) => state.written = Some(status),
                Err(e) => problem = Some(e),
            }
        }
        // Kept whatever failed: what is held must be renewed at the next pass.
        self.experiments.insert(key, state);
        problem.map_or(Ok(()), Err)
    }

    /// The experiment's phase from its spec, annotations, guards and the clock; and when
    /// it ends.
    fn wanted(&self, experiment: &ChaosExperiment, state: &Experiment) -> (Wanted, Option<Timestamp>) {
        if let Err(p) = check_spec(experiment, &self.options.namespaces) {
            return (Wanted::Invalid(p), None);
        }
        let ends_at = steps::end(&experiment.spec, created(experiment));
        // A guard that fired anywhere stops the experiment everywhere.
        let elsewhere = experiment
            .status
            .iter()
            .flat_map(|s| s.nodes.iter())
            .find_map(|n| Some(format!("{} (on {})", n.hypothesis.as_ref()?.aborted.as_ref()?, n.node)));
        if let Some(why) = state.probing.as_ref().and_then(Probing::aborted).or(elsewhere) {
            return (Wanted::Aborted(why), ends_at);
        }
        if ends_at.is_some_and(|end| Timestamp::now() >= end) {
            return (Wanted::Finished, ends_at);
        }
        let paused = experiment.annotations().get(PAUSED_ANNOTATION).is_some_and(|v| v == "true");
        (if paused { Wanted::Paused } else { Wanted::Running }, ends_at)
    }

    /// Applies the faults to the chosen pods of this node that do not have them (or
    /// whose namespace or peers changed), renews the others, releases pods no longer
    /// chosen.
    async fn converge(
        &mut self,
        state: &mut Experiment,
        experiment: &ChaosExperiment,
        faults: &[(String, &PodFault)],
        mine: &[Candidate],
        pods: &[Arc<Pod>],
        services: &[Arc<Service>],
    ) {
        // Between steps no fault is due: the pods are released.
        let wanted: BTreeSet<&str> =
            if faults.is_empty() { BTreeSet::new() } else { mine.iter().map(|c| c.uid.as_str()).collect() };
        let dropped: Vec<String> = state.held.keys().filter(|uid| !wanted.contains(uid.as_str())).cloned().collect();
        let why = if faults.is_empty() {
            "no fault is due now (its step ended)"
        } else {
            "no longer selected (deleted, not running, or not chosen)"
        };
        for uid in dropped {
            if let Some(held) = state.held.remove(&uid) {
                self.release(state, held, why).await;
            }
        }
        if faults.is_empty() {
            return;
        }
        let namespace = experiment.namespace().unwrap_or_default();
        // The peers are the experiment's, the same for every pod of the pass.
        let peers = match resolve_peers(faults.iter().map(|(_, f)| *f), pods, services, &namespace) {
            Ok(peers) => peers,
            Err(p) => {
                for pod in mine {
                    state.past_failed(pod, &p.problem);
                }
                return;
            }
        };
        let processes = procfs::PodProcesses::scan(&self.options.proc_root);
        for pod in mine {
            if host_network(pods, &pod.uid) {
                let why = "the pod uses the node's network namespace (hostNetwork): a fault there would hit the node";
                state.past_failed(pod, why);
                continue;
            }
            let Some(found) = processes.netns_of_pod(&pod.uid) else {
                state.past_failed(pod, "no process of the pod runs on this node yet (retried at the next pass)");
                continue;
            };
            if state.held.get(&pod.uid).is_some_and(|held| held.netns_inode != found.inode) {
                let held = state.held.remove(&pod.uid).expect("checked above");
                self.release(state, held, "its network namespace changed: applying again").await;
            }
            let target = format!("netns:{}", found.path.display());
            let mut held = state.held.remove(&pod.uid).unwrap_or_else(|| Held {
                pod: pod.clone(),
                faults: BTreeMap::new(),
                netns_inode: found.inode,
                from: Timestamp::now(),
            });
            let mut failure = None;
            let mut applied = Vec::new();
            for ((key, fault), peers) in faults.iter().zip(&peers) {
                if let Some(kept) = held.faults.get(key) {
                    if &kept.peers == peers && self.handle.renew(kept.id, LEASE).await.is_ok() {
                        continue;
                    }
                }
                // Applied before the old one goes, so that the pod is never without it.
                let wire = match wire_of(fault, &target, peers.clone()) {
                    Ok(wire) => wire,
                    Err(p) => {
                        failure = Some(format!("spec.{key}: {}", p.problem));
                        break;
                    }
                };
                let rule_id = rule_id(&namespace, &experiment.name_any(), key);
                match self.handle.apply(wire, LEASE, experiment.spec.seed, rule_id).await {
                    Ok(done) => {
                        if let Some(old) =
                            held.faults.insert(key.clone(), HeldFault { id: done.id, peers: peers.clone() })
                        {
                            let _ = self.handle.revert(old.id).await;
                        }
                        applied.push(key.clone());
                    }
                    Err(e) => {
                        failure = Some(format!("spec.{key}: {} ({})", e.problem, e.fix));
                        break;
                    }
                }
            }
            // Faults of steps that ended.
            let due: BTreeSet<&str> = faults.iter().map(|(key, _)| key.as_str()).collect();
            let ended: Vec<String> = held.faults.keys().filter(|k| !due.contains(k.as_str())).cloned().collect();
            for key in &ended {
                if let Some(old) = held.faults.remove(key) {
                    let _ = self.handle.revert(old.id).await;
                }
            }
            if let Some(why) = failure {
                self.release(state, held, "a fault could not be applied").await;
                state.past_failed(pod, &format!("not applied: {why}"));
                continue;
            }
            if !applied.is_empty() || !ended.is_empty() {
                let mut line = format!(
                    "{}/{}: in force in {}: {:?}",
                    pod.namespace,
                    pod.name,
                    found.path.display(),
                    held.faults.keys().collect::<Vec<_>>()
                );
                if !ended.is_empty() {
                    line.push_str(&format!(" (ended: {ended:?})"));
                }
                state.event(Happened::Injected, line);
                state.past.retain(|p| p.uid != pod.uid);
            }
            state.held.insert(pod.uid.clone(), held);
        }
    }

    /// The target of faults with a leader selector: the pod pinned when they began, as
    /// long as it matches; otherwise the one that leads now, pinned from here on.
    async fn pin_leader(
        &self,
        state: &mut Experiment,
        candidates: &[Candidate],
        leader: &LeaderSelector,
        pods: &[Arc<Pod>],
    ) -> Option<Candidate> {
        if let Some(pinned) = &state.leader_pin {
            // Gone (deleted, not running): no target, rather than the next leader.
            return candidates.iter().find(|c| c.uid == pinned.uid).cloned();
        }
        let pod = leader_or_wait(state, candidates, leader, pods, "faults").await?;
        state.event(Happened::Injected, format!("{}/{}: leads; the target of the faults", pod.namespace, pod.name));
        state.leader_pin = Some(pod.clone());
        Some(pod)
    }

    /// The check of the hypothesis and guards on this node, when the spec has any.
    fn start_probing(&self, experiment: &ChaosExperiment) -> Option<Probing> {
        let spec = &experiment.spec;
        if spec.hypothesis.is_none() && spec.abort.is_empty() {
            return None;
        }
        // Checked by check_spec before the experiment runs.
        let (hypothesis, guards) =
            chaos_model::scenario::hypothesis_and_guards("spec", spec.hypothesis.as_ref(), &spec.abort).ok()?;
        let name = format!("{}/{}", experiment.namespace().unwrap_or_default(), experiment.name_any());
        Some(Probing::start(name, hypothesis, guards, self.wake.clone()))
    }

    /// Publishes the pending events in the background: a slow API server must not hold
    /// up the pass that renews the leases.
    fn publish(&self, state: &mut Experiment, experiment: &ChaosExperiment) {
        if state.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut state.pending);
        let recorder = self.recorder.clone();
        let reference = experiment.object_ref(&());
        tokio::spawn(async move {
            for (kind, note) in pending {
                if let Err(e) = recorder.publish(&kind.event(note), &reference).await {
                    warn(&format!("publishing an event: {e}"));
                }
            }
        });
    }

    /// Does the due pod actions not done yet on the targets on this node: with a leader
    /// selector, the leading pod (once over the cluster: the next leader is not the
    /// target); otherwise the chosen pods (once per node, on the pods chosen then).
    async fn act(
        &self,
        state: &mut Experiment,
        experiment: &ChaosExperiment,
        due: &[(u32, Option<&str>, &PodAction)],
        candidates: &[Candidate],
        chosen: &[Candidate],
        pods: &[Arc<Pod>],
    ) {
        let spec = &experiment.spec;
        let node = &self.options.node;
        let recorded: Vec<(u32, &str)> = experiment
            .status
            .iter()
            .flat_map(|s| s.nodes.iter())
            .flat_map(|n| n.actions.iter().map(move |a| (a.index, n.node.as_str())))
            .chain(state.actions.iter().map(|a| (a.index, node.as_str())))
            .collect();
        let done =
            |index: u32| recorded.iter().any(|(i, n)| *i == index && (spec.leader.is_some() || *n == node.as_str()));
        let pending: Vec<&(u32, Option<&str>, &PodAction)> = due.iter().filter(|(i, _, _)| !done(*i)).collect();
        if pending.is_empty() {
            return;
        }
        let targets: Vec<Candidate> = match &spec.leader {
            Some(leader) => match leader_or_wait(state, candidates, leader, pods, "actions").await {
                Some(pod) => vec![pod],
                None => return,
            },
            None => chosen.to_vec(),
        };
        for &&(index, step, action) in &pending {
            for pod in targets.iter().filter(|c| &c.node == node) {
                if action.kind == "container-pause" && !state.finalizer {
                    // Before the pause: a delete from here on waits for the resume.
                    let api: Api<ChaosExperiment> =
                        Api::namespaced(self.client.clone(), &experiment.namespace().unwrap_or_default());
                    if let Err(e) = set_finalizer(&api, &experiment.name_any(), node, true).await {
                        state.event_once(Happened::Waiting, format!("{e:#}: the pause waits"));
                        return;
                    }
                    state.finalizer = true;
                }
                let (result, container_id) = self.perform(action, pod, pods).await;
                let kind = if result.starts_with("not ") { Happened::NotInjected } else { Happened::ActionDone };
                state.event(kind, format!("{}/{}: {} ({result})", pod.namespace, pod.name, action.kind));
                state.actions.push(ActionRecord {
                    index,
                    step: step.map(str::to_owned),
                    kind: action.kind.clone(),
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                    at: Timestamp::now().to_string(),
                    result,
                    container_id,
                    resumed: None,
                });
            }
        }
    }

    /// One pod action on one pod of this node; what happened.
    async fn perform(&self, action: &PodAction, pod: &Candidate, pods: &[Arc<Pod>]) -> (String, Option<String>) {
        if action.kind == "container-pause" {
            let Some((container, id)) = container_id(pods, &pod.uid, action.container.as_deref()) else {
                return ("not paused: the pod has no such running container".into(), None);
            };
            let pids = signal_container(&self.options.proc_root, &id, nix::sys::signal::Signal::SIGSTOP);
            if pids.is_empty() {
                return (format!("not paused: no process of container {container} on this node"), None);
            }
            return (format!("paused container {container} (SIGSTOP to pids {pids:?})"), Some(id));
        }
        let result = match action.kind.as_str() {
            "pod-delete" => {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
                match api.delete(&pod.name, &kube::api::DeleteParams::default()).await {
                    Ok(_) => "deleted".into(),
                    Err(e) => format!("not deleted: {e}"),
                }
            }
            "container-kill" => {
                let signal = signal_of(action.signal.as_deref()).expect("checked by check_spec");
                let Some((container, id)) = container_id(pods, &pod.uid, action.container.as_deref()) else {
                    return ("not killed: the pod has no such running container".into(), None);
                };
                let Some(pid) = procfs::container_pid(&self.options.proc_root, &id) else {
                    return (format!("not killed: no process of container {container} on this node"), None);
                };
                match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal) {
                    Ok(()) => format!("{signal} sent to container {container} (pid {pid})"),
                    Err(e) => format!("not killed: {signal} to pid {pid}: {e}"),
                }
            }
            other => format!("not done: unknown action {other}"),
        };
        (result, None)
    }

    /// Resumes the containers this node paused (SIGCONT), once each.
    fn resume_paused(&self, state: &mut Experiment, why: &str) {
        let mut resumed = Vec::new();
        for record in state.actions.iter_mut().filter(|a| a.resumed.is_none()) {
            let Some(id) = &record.container_id else { continue };
            let pids = signal_container(&self.options.proc_root, id, nix::sys::signal::Signal::SIGCONT);
            record.resumed = Some(Timestamp::now().to_string());
            resumed.push(format!("{}/{}: resumed ({why}; SIGCONT to pids {pids:?})", record.namespace, record.pod));
        }
        for line in resumed {
            state.event(Happened::ActionDone, line);
        }
    }

    async fn release(&self, state: &mut Experiment, held: Held, why: &str) {
        let mut dropped = 0;
        for fault in held.faults.values() {
            if let Ok(reverted) = self.handle.revert(fault.id).await {
                dropped += reverted.counters.dropped;
            }
        }
        // The pod's namespace may be gone with it: the programs there are unloaded, so
        // that the agent holds nothing of a deleted pod.
        self.handle.forget_idle().await;
        state.event(Happened::Released, format!("{}/{}: released ({why})", held.pod.namespace, held.pod.name));
        state.past.retain(|p| p.uid != held.pod.uid);
        state.past.push(PodInjection {
            namespace: held.pod.namespace.clone(),
            name: held.pod.name.clone(),
            uid: held.pod.uid.clone(),
            state: "Released".into(),
            from: Some(held.from.to_string()),
            to: Some(Timestamp::now().to_string()),
            message: Some(why.to_owned()),
            packets_dropped: dropped,
        });
        let excess = state.past.len().saturating_sub(MAX_EVENTS);
        state.past.drain(..excess);
    }

    async fn release_all(&self, state: &mut Experiment, why: &str) {
        self.resume_paused(state, why);
        for (_, held) in std::mem::take(&mut state.held) {
            self.release(state, held, why).await;
        }
    }

    /// The status this node writes: the top-level fields (the same on every node) and
    /// this node's entry.
    async fn status(
        &self,
        state: &mut Experiment,
        experiment: &ChaosExperiment,
        wanted: &Wanted,
        ends_at: Option<Timestamp>,
        selected: usize,
    ) -> serde_json::Value {
        let counters: BTreeMap<u64, chaos_ebpf_common::RuleCounters> = self
            .handle
            .list()
            .await
            .map(|l| l.faults.into_iter().map(|f| (f.id, f.counters)).collect())
            .unwrap_or_default();
        let mut pods: Vec<PodInjection> = state.past.clone();
        let mut seen = 0;
        for held in state.held.values() {
            let mut sum = chaos_ebpf_common::RuleCounters::default();
            for c in held.faults.values().filter_map(|f| counters.get(&f.id)) {
                sum.add(c);
            }
            seen += sum.seen;
            pods.push(PodInjection {
                namespace: held.pod.namespace.clone(),
                name: held.pod.name.clone(),
                uid: held.pod.uid.clone(),
                state: "Injected".into(),
                from: Some(held.from.to_string()),
                to: None,
                message: None,
                packets_dropped: sum.dropped,
            });
        }
        let dropped = pods.iter().map(|p| p.packets_dropped).sum();
        let (phase, valid) = match wanted {
            Wanted::Invalid(p) => ("Failed", Err(p)),
            Wanted::Paused => ("Paused", Ok(())),
            Wanted::Finished => ("Finished", Ok(())),
            Wanted::Aborted(_) => ("Aborted", Ok(())),
            Wanted::Running if matches!(state.probing.as_ref().map(Probing::stage), Some(Stage::SteadyFailed(_))) => {
                ("Failed", Ok(()))
            }
            Wanted::Running if selected == 0 => ("Pending", Ok(())),
            Wanted::Running => ("Running", Ok(())),
        };
        let condition = match valid {
            Ok(()) => Condition {
                type_: "Valid".into(),
                status: "True".into(),
                reason: "Accepted".into(),
                message: "the spec is valid".into(),
                last_transition_time: None,
            },
            Err(p) => Condition {
                type_: "Valid".into(),
                status: "False".into(),
                reason: "InvalidSpec".into(),
                message: format!("{}; fix: {}", p.problem, p.fix),
                last_transition_time: None,
            },
        };
        let node = NodeStatus {
            node: self.options.node.clone(),
            agent: Some(self.options.agent.clone()),
            pods,
            packets_seen: seen,
            packets_dropped: dropped,
            actions: state.actions.clone(),
            hypothesis: state.probing.as_ref().map(Probing::status).or_else(|| state.hypothesis_before.clone()),
            leader: state.leader_pin.as_ref().map(|c| PinnedPod {
                namespace: c.namespace.clone(),
                name: c.name.clone(),
                uid: c.uid.clone(),
            }),
            events: state.events.iter().cloned().collect(),
            updated: None,
        };
        // Fields left out are not this node's to set (server-side apply).
        let status = ChaosExperimentStatus {
            phase: Some(phase.into()),
            observed_generation: experiment.metadata.generation,
            ends_at: ends_at.map(|t| t.to_string()),
            selected_pods: Some(selected as u32),
            conditions: vec![condition],
            nodes: vec![node],
        };
        serde_json::to_value(status).unwrap_or_default()
    }
}

impl Experiment {
    /// An event, unless it is the last one already (a condition that lasts over passes).
    fn event_once(&mut self, kind: Happened, line: String) {
        if !self.events.back().is_some_and(|last| last.ends_with(&line)) {
            self.event(kind, line);
        }
    }

    /// A chosen pod that could not get its faults (kept in the status until it does).
    fn past_failed(&mut self, pod: &Candidate, why: &str) {
        if let Some(p) = self.past.iter_mut().find(|p| p.uid == pod.uid) {
            if p.state == "Failed" && p.message.as_deref() == Some(why) {
                return;
            }
        }
        self.event(Happened::NotInjected, format!("{}/{}: {why}", pod.namespace, pod.name));
        self.past.retain(|p| p.uid != pod.uid);
        self.past.push(PodInjection {
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            state: "Failed".into(),
            message: Some(why.to_owned()),
            ..PodInjection::default()
        });
    }
}

/// When the experiment's clock started: the creation of the resource, the same instant
/// for every node's agent.
fn created(experiment: &ChaosExperiment) -> Timestamp {
    experiment.metadata.creation_timestamp.as_ref().map_or_else(Timestamp::now, |t| t.0)
}

/// The pod that leads now; with none, a Waiting event (once) says that the `what` (faults
/// or actions) wait for a leader.
async fn leader_or_wait(
    state: &mut Experiment,
    candidates: &[Candidate],
    leader: &LeaderSelector,
    pods: &[Arc<Pod>],
    what: &str,
) -> Option<Candidate> {
    let pod = leader_of(candidates, leader, pods).await;
    if pod.is_none() {
        let why = format!("no matching pod says it leads ({}): the {what} wait for a leader", leader.describe());
        state.event_once(Happened::Waiting, why);
    }
    pod
}

/// The pod whose metrics say it leads; none when no pod or two say so.
async fn leader_of(candidates: &[Candidate], leader: &LeaderSelector, pods: &[Arc<Pod>]) -> Option<Candidate> {
    if let Some(key) = &leader.annotation {
        let mut claims = candidates.iter().filter(|c| annotated(pods, &c.uid, key));
        return match (claims.next(), claims.next()) {
            (Some(one), None) => Some(one.clone()),
            _ => None,
        };
    }
    let mut claims = Vec::new();
    for pod in candidates {
        let url = format!("http://{}/metrics", std::net::SocketAddr::new(pod.ip.parse().ok()?, leader.metrics_port));
        let body = tokio::task::spawn_blocking(move || {
            chaos_engine::hypothesis::http_get_ok_blocking(&url, std::time::Duration::from_secs(1))
        })
        .await
        .ok()
        .flatten();
        let leads = body.is_some_and(|body| {
            String::from_utf8_lossy(&body).lines().any(|l| {
                l.strip_prefix(leader.metric.as_str())
                    .and_then(|v| v.strip_prefix(' '))
                    .is_some_and(|v| v.trim().parse::<f64>().is_ok_and(|v| v == 1.0))
            })
        });
        if leads {
            claims.push(pod.clone());
        }
    }
    match claims.len() {
        1 => claims.pop(),
        _ => None,
    }
}

/// The pod with this UID in the watch cache.
fn pod_by_uid<'a>(pods: &'a [Arc<Pod>], uid: &str) -> Option<&'a Pod> {
    pods.iter().find(|p| p.metadata.uid.as_deref() == Some(uid)).map(|p| p.as_ref())
}

/// Whether the pod carries the annotation `key` with the value "true".
fn annotated(pods: &[Arc<Pod>], uid: &str, key: &str) -> bool {
    pod_by_uid(pods, uid).and_then(|p| p.metadata.annotations.as_ref()?.get(key)).is_some_and(|v| v == "true")
}

/// The container of a pod (by name, or its first) and its runtime id.
fn container_id(pods: &[Arc<Pod>], uid: &str, name: Option<&str>) -> Option<(String, String)> {
    let pod = pod_by_uid(pods, uid)?;
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let status = match name {
        Some(name) => statuses.iter().find(|s| s.name == name)?,
        None => {
            let first = &pod.spec.as_ref()?.containers.first()?.name;
            statuses.iter().find(|s| &s.name == first)?
        }
    };
    let id = status.container_id.as_deref()?.split_once("://")?.1.to_owned();
    Some((status.name.clone(), id))
}

/// Sends `signal` to every process of a container; the pids it reached.
fn signal_container(proc_root: &std::path::Path, id: &str, signal: nix::sys::signal::Signal) -> Vec<u32> {
    procfs::container_pids(proc_root, id)
        .into_iter()
        .filter(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), signal).is_ok())
        .collect()
}

/// A signal by name (SIGKILL when none is given).
fn signal_of(name: Option<&str>) -> Result<nix::sys::signal::Signal, Problem> {
    let name = name.unwrap_or("SIGKILL");
    let full = if name.starts_with("SIG") { name.to_owned() } else { format!("SIG{name}") };
    full.parse().map_err(|_| {
        Problem::new(
            format!("signal: '{}' is not a signal", chaos_model::spec::shorten(name, 20)),
            "give a signal name: SIGKILL, SIGTERM, SIGINT, SIGSTOP, ...",
        )
    })
}

fn host_network(pods: &[Arc<Pod>], uid: &str) -> bool {
    pod_by_uid(pods, uid).and_then(|p| p.spec.as_ref()?.host_network).unwrap_or(false)
}

/// A rule id per experiment and fault (its key in the schedule): the drop decisions' key
/// with the seed, so the same experiment and seed drop the same packets on every node
/// and after a restart.
fn rule_id(namespace: &str, name: &str, key: &str) -> u32 {
    let mut fnv: u32 = 0x811c_9dc5;
    for byte in namespace.bytes().chain([b'/']).chain(name.bytes()).chain([b'/']).chain(key.bytes()) {
        fnv = (fnv ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    fnv
}

/// The peers of each fault: its CIDRs, the IPs of its peer pods now, and the ClusterIPs
/// of the Services that select one of them (a pod that reaches a peer through its
/// Service sends to the ClusterIP: kube-proxy translates it only outside the pod).
fn resolve_peers<'a>(
    faults: impl Iterator<Item = &'a PodFault>,
    pods: &[Arc<Pod>],
    services: &[Arc<Service>],
    namespace: &str,
) -> Result<Vec<Vec<String>>, Problem> {
    faults
        .map(|fault| {
            let mut peers = fault.peers.clone();
            if let Some(peer_pods) = &fault.peer_pods {
                let selector = super::crd::PodSelector {
                    namespaces: peer_pods.namespaces.clone(),
                    label_selectors: peer_pods.label_selectors.clone(),
                    ..Default::default()
                };
                let matched = select::matching(pods, &selector, namespace, &BTreeMap::new());
                if matched.is_empty() {
                    return Err(Problem::new(
                        "peerPods matches no running pod with an IP (yet)",
                        "check the labels and namespaces of spec.faults[].peerPods",
                    ));
                }
                let uids: BTreeSet<&str> = matched.iter().map(|c| c.uid.as_str()).collect();
                let peer_pods: Vec<&Pod> = pods
                    .iter()
                    .filter(|p| p.metadata.uid.as_deref().is_some_and(|u| uids.contains(u)))
                    .map(|p| p.as_ref())
                    .collect();
                peers.extend(service_ips(services, &peer_pods));
                peers.extend(matched.into_iter().map(|c| c.ip));
            }
            peers.sort();
            peers.dedup();
            Ok(peers)
        })
        .collect()
}

/// The ClusterIPs of the Services (with a selector) that select one of `selected`.
fn service_ips(services: &[Arc<Service>], selected: &[&Pod]) -> Vec<String> {
    let mut ips = Vec::new();
    for service in services {
        let Some(spec) = &service.spec else { continue };
        let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else { continue };
        let selects = selected.iter().any(|pod| {
            pod.metadata.namespace == service.metadata.namespace
                && pod.metadata.labels.as_ref().is_some_and(|labels| select::has_all(labels, selector))
        });
        if selects {
            let addresses = spec.cluster_ips.iter().flatten().chain(spec.cluster_ip.iter());
            ips.extend(addresses.filter(|ip| ip.parse::<std::net::IpAddr>().is_ok()).cloned());
        }
    }
    ips
}

/// A fault of the spec as the agent's API takes it, on `target`.
fn wire_of(fault: &PodFault, target: &str, peers: Vec<String>) -> Result<FaultWire, Problem> {
    let seconds = |field: &str, text: &Option<String>| -> Result<Option<f64>, Problem> {
        text.as_deref()
            .map(|t| {
                chaos_model::spec::parse_duration(t)
                    .map(|d| d.as_secs_f64())
                    .map_err(|e| Problem::new(format!("{field}: {}", e.problem), e.fix))
            })
            .transpose()
    };
    let ports = fault
        .ports
        .as_deref()
        .map(|text| {
            let (lo, hi) = text.split_once('-').unwrap_or((text, text));
            match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
                (Ok(lo), Ok(hi)) if lo <= hi && lo > 0 => Ok(PortsWire { lo, hi }),
                _ => Err(Problem::new(
                    format!("ports: '{}' is not a port or a range", chaos_model::spec::shorten(text, 40)),
                    "give a port (5432) or a range (8000-8080) of 1-65535",
                )),
            }
        })
        .transpose()?;
    let wire = FaultWire {
        kind: fault.kind.clone(),
        target: target.to_owned(),
        probability: fault.probability,
        burst: None,
        mode: fault.mode.clone(),
        peers,
        proto: fault.proto.clone(),
        ports,
        direction: fault.direction.clone(),
        shadow: false,
        delay: seconds("delay", &fault.delay)?,
        jitter: seconds("jitter", &fault.jitter)?,
        distribution: None,
        rate_bytes_per_sec: None,
        tls: None,
    };
    // The model's own checks, so that a bad fault is named before any pod is touched.
    wire.to_spec().map_err(|p| Problem::new(p.problem.trim_start_matches("fault.").to_owned(), p.fix))?;
    Ok(wire)
}

/// The whole spec checked as the agent will use it: a bad one gets a `Valid=False`
/// condition naming the field, and nothing is applied.
pub fn check_spec(experiment: &ChaosExperiment, allowed: &[String]) -> Result<(), Problem> {
    let spec = &experiment.spec;
    select::check_mode(spec.mode, spec.value)?;
    if let Some(d) = &spec.duration {
        chaos_model::spec::parse_duration(d)
            .map_err(|e| Problem::new(format!("spec.duration: {}", e.problem), e.fix))?;
    }
    if spec.faults.is_empty() && spec.actions.is_empty() && spec.steps.is_empty() {
        return Err(Problem::new(
            "spec.faults: neither a fault, an action nor a step given",
            "add a fault (e.g. {kind: partition}), an action (e.g. {kind: pod-delete}) or steps",
        ));
    }
    steps::check(spec)?;
    let (hypothesis, _) = chaos_model::scenario::hypothesis_and_guards("spec", spec.hypothesis.as_ref(), &spec.abort)?;
    for (i, probe) in hypothesis.iter().flat_map(|h| h.probes.iter()).enumerate() {
        if matches!(probe.check, chaos_model::hypothesis::ProbeCheck::Command { .. }) {
            return Err(Problem::new(
                format!("spec.hypothesis.probes[{i}].command: a command probe would run as the agent, with its privileges, on the node"),
                "probe with http, tcp, dns or prometheus instead",
            ));
        }
    }
    if spec.leader.is_some() && (spec.mode != super::crd::Mode::All || spec.value.is_some()) {
        return Err(Problem::new(
            "spec.mode: a leader selector picks the one pod that leads among the matching pods; mode and value do not apply",
            "remove mode and value, or remove spec.leader",
        ));
    }
    let actions = spec.actions.iter().enumerate().map(|(i, a)| (format!("spec.actions[{i}]"), a));
    let step_actions = spec.steps.iter().enumerate().flat_map(|(s, step)| {
        step.actions.iter().enumerate().map(move |(i, a)| (format!("spec.steps[{s}].actions[{i}]"), a))
    });
    for (at, action) in actions.chain(step_actions) {
        match action.kind.as_str() {
            "pod-delete" if action.signal.is_none() && action.container.is_none() => {}
            "pod-delete" => {
                return Err(Problem::new(
                    format!("{at}: pod-delete takes no signal or container"),
                    "remove them, or use kind container-kill",
                ))
            }
            "container-pause" if action.signal.is_none() => {}
            "container-pause" => {
                return Err(Problem::new(
                    format!("{at}.signal: container-pause takes no signal (it is SIGSTOP, then SIGCONT)"),
                    "remove the signal, or use kind container-kill",
                ))
            }
            "container-kill" => {
                signal_of(action.signal.as_deref()).map_err(|p| Problem::new(format!("{at}.{}", p.problem), p.fix))?;
            }
            other => {
                return Err(Problem::new(
                    format!("{at}.kind: '{}' is not a pod action", chaos_model::spec::shorten(other, 40)),
                    "use pod-delete, container-kill or container-pause",
                ))
            }
        }
    }
    let own = experiment.namespace().unwrap_or_default();
    let faults: Vec<(String, &PodFault)> = spec
        .faults
        .iter()
        .enumerate()
        .map(|(i, f)| (format!("spec.faults[{i}]"), f))
        .chain(spec.steps.iter().enumerate().flat_map(|(s, step)| {
            step.faults.iter().enumerate().map(move |(i, f)| (format!("spec.steps[{s}].faults[{i}]"), f))
        }))
        .collect();
    let namespaces = spec
        .selector
        .namespaces
        .iter()
        .chain(faults.iter().flat_map(|(_, f)| f.peer_pods.iter().flat_map(|p| p.namespaces.iter())));
    for ns in namespaces.chain(std::iter::once(&own)) {
        if !allowed.is_empty() && !allowed.contains(ns) {
            return Err(Problem::new(
                format!("spec.selector.namespaces: namespace {ns} is not one the agents may act on"),
                format!("use one of {}, or install the chart with targetNamespaces including {ns}", allowed.join(", ")),
            ));
        }
    }
    for (at, fault) in faults {
        // A stand-in target and peer: the fault's own fields are what is checked here.
        let mut peers = fault.peers.clone();
        if fault.peer_pods.is_some() {
            peers.push("192.0.2.1/32".into());
        }
        wire_of(fault, "netns:/proc/1/ns/net", peers)
            .map_err(|p| Problem::new(format!("{at}.{}", p.problem), p.fix))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::crd::{ChaosExperimentSpec, Mode, PodSelector};

    fn experiment(faults: Vec<PodFault>) -> ChaosExperiment {
        let mut e = ChaosExperiment::new(
            "x",
            ChaosExperimentSpec {
                selector: PodSelector::default(),
                mode: Mode::All,
                value: None,
                seed: 1,
                duration: Some("30s".into()),
                faults,
                actions: Vec::new(),
                leader: None,
                steps: Vec::new(),
                hypothesis: None,
                abort: Vec::new(),
            },
        );
        e.metadata.namespace = Some("lab".into());
        e
    }

    fn fault(kind: &str) -> PodFault {
        PodFault {
            kind: kind.into(),
            probability: None,
            mode: None,
            peers: Vec::new(),
            peer_pods: None,
            proto: None,
            ports: None,
            direction: None,
            delay: None,
            jitter: None,
        }
    }

    #[test]
    fn bad_specs_name_the_field() {
        assert!(check_spec(&experiment(vec![fault("partition")]), &[]).is_ok());
        let mut loss = fault("loss");
        loss.probability = Some(1.5);
        let e = check_spec(&experiment(vec![fault("partition"), loss]), &[]).unwrap_err();
        assert!(e.problem.starts_with("spec.faults[1].probability"), "{}", e.problem);
        let mut ports = fault("blackhole");
        ports.ports = Some("99999".into());
        assert!(check_spec(&experiment(vec![ports]), &[]).unwrap_err().problem.starts_with("spec.faults[0].ports"));
        assert!(check_spec(&experiment(vec![fault("lose")]), &[])
            .unwrap_err()
            .problem
            .starts_with("spec.faults[0].kind"));
        let mut bad_duration = experiment(vec![fault("partition")]);
        bad_duration.spec.duration = Some("soon".into());
        assert!(check_spec(&bad_duration, &[]).unwrap_err().problem.starts_with("spec.duration"));
        let e = check_spec(&experiment(vec![fault("partition")]), &["other".into()]).unwrap_err();
        assert!(e.problem.contains("namespace lab"), "{}", e.problem);
        assert!(check_spec(&experiment(Vec::new()), &[]).unwrap_err().problem.starts_with("spec.faults"));
        let mut kill = experiment(Vec::new());
        kill.spec.actions =
            vec![PodAction { kind: "container-kill".into(), signal: Some("TERM".into()), container: None }];
        assert!(check_spec(&kill, &[]).is_ok());
        kill.spec.actions[0].signal = Some("SIGNOPE".into());
        assert!(check_spec(&kill, &[]).unwrap_err().problem.starts_with("spec.actions[0].signal"));
        kill.spec.actions[0] =
            PodAction { kind: "container-pause".into(), signal: Some("KILL".into()), container: None };
        assert!(check_spec(&kill, &[]).unwrap_err().problem.starts_with("spec.actions[0].signal"));
        kill.spec.actions[0].signal = None;
        assert!(check_spec(&kill, &[]).is_ok());
        kill.spec.actions[0].kind = "explode".into();
        assert!(check_spec(&kill, &[]).unwrap_err().problem.starts_with("spec.actions[0].kind"));
        let mut leader = experiment(vec![fault("partition")]);
        leader.spec.leader =
            Some(LeaderSelector { metrics_port: 2381, metric: "etcd_server_is_leader".into(), annotation: None });
        assert!(check_spec(&leader, &[]).is_ok(), "faults on the leader");
        leader.spec.mode = Mode::One;
        assert!(check_spec(&leader, &[]).unwrap_err().problem.starts_with("spec.mode: a leader selector"));
    }

    #[test]
    fn steps_hypothesis_and_guards_are_checked() {
        let with = |yaml: &str| {
            let mut e = experiment(Vec::new());
            let extra: ChaosExperimentSpec =
                serde_yaml::from_str(&format!("selector: {{}}\n{yaml}")).unwrap_or_else(|e| panic!("{yaml}: {e}"));
            (e.spec.steps, e.spec.hypothesis, e.spec.abort) = (extra.steps, extra.hypothesis, extra.abort);
            check_spec(&e, &[])
        };
        let steps = "steps:\n  - {name: cut, at: 2s, duration: 5s, faults: [{kind: partition}]}\n";
        assert!(with(steps).is_ok());
        let probe = "hypothesis:\n  probes: [{name: up, tcp: {connect: \"198.51.100.2:2379\"}}]\n";
        assert!(
            with(&format!("{steps}{probe}abort:\n  - {{error-rate: {{probe: up, above: 0.5, for: 2s}}}}\n")).is_ok()
        );
        let e = with(&format!("{steps}{probe}abort:\n  - {{error-rate: {{probe: down, above: 0.5, for: 2s}}}}\n"))
            .unwrap_err();
        assert!(e.problem.starts_with("spec.abort[0].error-rate.probe: guard names probe 'down'"), "{}", e.problem);
        let e =
            with(&format!("{steps}hypothesis:\n  interval: 0s\n  probes: [{{name: up, tcp: {{connect: \"x\"}}}}]\n"))
                .unwrap_err();
        assert!(e.problem.starts_with("spec.hypothesis.interval"), "{}", e.problem);
        let e = with(&format!("{steps}hypothesis:\n  probes: [{{name: sh, command: {{run: [rm, -rf, /]}}}}]\n"))
            .unwrap_err();
        assert!(e.problem.starts_with("spec.hypothesis.probes[0].command"), "{}", e.problem);
        let e = with("steps:\n  - {name: cut, faults: [{kind: partition, probability: 2}]}\n").unwrap_err();
        assert!(e.problem.starts_with("spec.steps[0].faults[0].probability"), "{}", e.problem);
        let e = with("steps:\n  - {name: kill, actions: [{kind: explode}]}\n").unwrap_err();
        assert!(e.problem.starts_with("spec.steps[0].actions[0].kind"), "{}", e.problem);
        let e = with("steps:\n  - {name: cut, at: later, faults: [{kind: partition}]}\n").unwrap_err();
        assert!(e.problem.starts_with("spec.steps[0].at"), "{}", e.problem);
    }

    /// The examples in deploy/kubernetes/examples parse as experiments and pass the
    /// agent's checks (the cluster test applies the leader-kill one).
    #[test]
    fn examples_are_valid() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/kubernetes/examples");
        let mut count = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let e: ChaosExperiment = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            check_spec(&e, &[]).unwrap_or_else(|p| panic!("{}: {} ({})", path.display(), p.problem, p.fix));
            count += 1;
        }
        assert!(count >= 3, "examples in {dir}");
    }

    #[test]
    fn services_of_peer_pods_are_peers() {
        let service = |ns: &str, selector: serde_json::Value, ip: &str| -> Arc<Service> {
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "s", "namespace": ns},
                    "spec": {"selector": selector, "clusterIP": ip}
                }))
                .unwrap(),
            )
        };
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "etcd-0", "namespace": "lab", "labels": {"app": "etcd", "member": "0"}}
        }))
        .unwrap();
        let services = [
            service("lab", serde_json::json!({"app": "etcd", "member": "0"}), "198.51.100.240"),
            service("lab", serde_json::json!({"app": "etcd", "member": "1"}), "198.51.100.241"),
            service("other", serde_json::json!({"app": "etcd"}), "198.51.100.250"),
            service("lab", serde_json::json!({"app": "etcd"}), "None"),
            service("lab", serde_json::json!({}), "198.51.100.251"),
        ];
        assert_eq!(service_ips(&services, &[&pod]), ["198.51.100.240"]);
    }

    #[test]
    fn a_leader_by_annotation_is_the_one_pod_that_has_it() {
        let pod = |uid: &str, leads: Option<&str>| -> Arc<Pod> {
            let annotations = leads.map(|v| serde_json::json!({"example.com/leader": v}));
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": uid, "namespace": "lab", "uid": uid, "annotations": annotations}
                }))
                .unwrap(),
            )
        };
        let candidate = |uid: &str| Candidate {
            namespace: "lab".into(),
            name: uid.into(),
            uid: uid.into(),
            node: "n".into(),
            ip: "198.51.100.2".into(),
        };
        let selector = LeaderSelector {
            metrics_port: 2381,
            metric: "etcd_server_is_leader".into(),
            annotation: Some("example.com/leader".into()),
        };
        let candidates = [candidate("a"), candidate("b"), candidate("c")];
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let lead = |pods: Vec<Arc<Pod>>| runtime.block_on(leader_of(&candidates, &selector, &pods)).map(|c| c.uid);
        assert_eq!(lead(vec![pod("a", Some("false")), pod("b", Some("true")), pod("c", None)]), Some("b".into()));
        assert_eq!(lead(vec![pod("a", Some("true")), pod("b", Some("true")), pod("c", None)]), None, "two claim it");
        assert_eq!(lead(vec![pod("a", None), pod("b", None), pod("c", None)]), None);
        // A pod that is not a candidate does not count.
        assert_eq!(lead(vec![pod("d", Some("true")), pod("b", Some("true"))]), Some("b".into()));
    }

    #[test]
    fn rule_ids_differ_per_fault_and_experiment() {
        assert_ne!(rule_id("lab", "a", "faults[0]"), rule_id("lab", "a", "faults[1]"));
        assert_ne!(rule_id("lab", "a", "faults[0]"), rule_id("lab", "a", "steps[0].faults[0]"));
        assert_ne!(rule_id("lab", "a", "faults[0]"), rule_id("lab", "b", "faults[0]"));
        assert_eq!(rule_id("lab", "a", "faults[3]"), rule_id("lab", "a", "faults[3]"));
    }
}
