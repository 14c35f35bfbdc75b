//! Rules held by a resident agent (`chaos-ebpf agent`) instead of programs a run loads
//! itself: the run keeps its timeline, hypothesis, actions, report and artifacts, and
//! each fault window becomes one apply, lease renewals and one revert on the agent. The
//! CLI connects the agent's client (the engine does not know its API); what a plan
//! needs that the agent does not offer per fault keeps the run on its own programs
//! ([`why_not_remote`]).

use std::time::Duration;

use anyhow::Result;
use chaos_ebpf_common::RuleCounters;
use chaos_model::{
    plan::{Attach, Plan, Protect},
    spec::{FaultSpec, TargetSpec},
};

/// A fault the agent holds: its id there and its rules, one per namespace.
#[derive(Debug, Clone)]
pub struct RemoteFault {
    pub id: u64,
    pub rules: Vec<RemoteRule>,
}

/// One of a remote fault's rules: the namespace it acts in and its counters.
#[derive(Debug, Clone)]
pub struct RemoteRule {
    pub netns: String,
    pub counters: RuleCounters,
}

/// The agent, as a run uses it.
pub trait RemoteRules: Send + Sync {
    /// Where the rules are held, for notices and the report (e.g. "the agent at
    /// /run/chaos-ebpf/agent.sock (pid 42)").
    fn describe(&self) -> String;
    /// Applies a fault with the run's seed and rule id (the key of its drop decisions),
    /// in force until `lease` passes without a renewal.
    fn apply(&self, spec: &FaultSpec, seed: u64, rule_id: u32, lease: Duration) -> Result<RemoteFault>;
    /// Has the agent load its programs into the target's namespaces now, so that the
    /// first window there opens on time (loading takes about a second).
    fn prepare(&self, target: &TargetSpec) -> Result<()>;
    fn renew(&self, id: u64, lease: Duration) -> Result<()>;
    /// Reverts a fault; its final counters.
    fn revert(&self, id: u64) -> Result<Vec<RemoteRule>>;
    /// A fault's counters now.
    fn counters(&self, id: u64) -> Result<Vec<RemoteRule>>;
    /// The ids of every fault the agent holds now.
    fn held(&self) -> Result<Vec<u64>>;
}

/// The revert of a run's faults on the agent, verified: none of `ids` is held any more.
pub fn verify_reverted(remote: &dyn RemoteRules, ids: &[u64]) -> Result<()> {
    let held = remote.held()?;
    let left: Vec<String> = ids.iter().filter(|id| held.contains(id)).map(|id| id.to_string()).collect();
    if left.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("{} still holds fault(s) {} of this run", remote.describe(), left.join(", ")))
    }
}

/// Why a plan cannot go through the agent (None: it can): what the agent does not offer
/// per fault.
pub fn why_not_remote(plan: &Plan) -> Option<&'static str> {
    let faults = || plan.steps.iter().flat_map(|s| &s.faults);
    if plan.protect != Protect::defaults() {
        Some("the scenario's own protect list (the agent protects SSH and the API server for every fault)")
    } else if plan.attach != Attach::Auto {
        Some("an attach mode (the agent attaches as the kernel allows)")
    } else if plan.lab.is_some() {
        Some("an embedded lab (its namespaces end with the run; the agent would keep them loaded)")
    } else if plan.steps.iter().any(|s| s.matrix.is_some()) || faults().any(|f| f.matrix.is_some()) {
        Some("a partition matrix (the agent's API takes one peer set per fault)")
    } else if faults().any(|f| matches!(f.spec.target, TargetSpec::Lab(_)) || !f.lab_peers.is_empty()) {
        Some("a lab target (the agent does not know the lab)")
    } else if plan.steps.iter().any(|s| s.windows.windows(2).any(|w| w[0].end == w[1].start)) {
        Some("a ramp (its intensity changes the rules in place; the agent's API has no such change)")
    } else {
        None
    }
}
