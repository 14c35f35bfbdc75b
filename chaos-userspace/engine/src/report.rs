//! What a run reports: `run::run` returns a [`RunReport`], which the CLI writes as
//! report.json and renders as report.md, junit.xml and report.html. Times inside a run
//! are seconds from its start (`*_s`), so that two runs of one scenario compare line by
//! line; wall-clock stamps are ms since the epoch (`*_unix_ms`).

use chaos_ebpf_common::RuleCounters;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub scenario: String,
    pub seed: u64,
    pub started_unix_ms: u64,
    pub ended_unix_ms: u64,
    /// The wall-clock time of the timeline's zero (after the programs loaded): every
    /// `*_s` time of the report counts from here.
    #[serde(default)]
    pub faults_start_unix_ms: u64,
    pub interrupted: bool,
    /// Why the run stopped early, when a fault could not run its course (a lapsed lease,
    /// a detached program, a vanished target): the run then exits 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// The guard that stopped the run, when one fired: the run then exits 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortReport>,
    pub steps: Vec<StepReport>,
    /// The steady-state hypothesis, when the scenario has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypothesis: Option<HypothesisReport>,
    /// The counters of every rule in force, read at intervals (for charts over time).
    #[serde(default)]
    pub samples: Vec<CounterSample>,
    /// Time from the end of the faults to everything removed, in ms.
    pub revert_ms: f64,
    /// Every attachment and program of this run was verified gone after the revert.
    pub clean: bool,
    /// What the revert could not remove or restore (`cleanup` is the fix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revert_problems: Vec<String>,
    /// What the targets were when the run resolved them.
    #[serde(default)]
    pub topology: Vec<TargetSnapshot>,
    /// Everything the run created in the kernel, and whether it was verified gone.
    #[serde(default)]
    pub cleanup: Vec<CreatedObject>,
}

/// A target as resolved: the namespace, the interfaces the programs attach to (with
/// their addresses) and the cgroup a rule filters on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetSnapshot {
    /// As the scenario wrote it (`netns:chaos-lab-n1`).
    pub target: String,
    pub netns: String,
    pub interfaces: Vec<InterfaceSnapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InterfaceSnapshot {
    pub name: String,
    pub ifindex: u32,
    pub addresses: Vec<String>,
}

/// One kernel object (or setting) the run created or changed, and the proof that it is
/// gone (or restored) after the revert.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedObject {
    /// `program`, `tcx-link`, `tc-filter`, `clsact-qdisc`, `sch_fq`, `device-setting`,
    /// `segmenter-pair`, `ledger-record`.
    pub kind: String,
    /// Which one (a program id, a device and the setting).
    pub what: String,
    pub netns: String,
    pub gone: bool,
    /// How it was checked (`no program with id 812 in BPF_PROG_GET_NEXT_ID`).
    pub proof: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    pub name: String,
    /// The seed the step's rules decided with.
    pub seed: u64,
    /// Where the plan put the step (its first window's start, its last window's end).
    pub planned_start_s: f64,
    pub planned_end_s: f64,
    /// Time from the step's first window start to its last window's end, as it ran.
    pub seconds: f64,
    pub windows: Vec<WindowReport>,
    /// One per rule and namespace; counters summed over the step's windows.
    pub rules: Vec<RuleReport>,
    /// The lab probe's packets during the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeCounts>,
    /// An action step's action: what it resolved to and did, and its undo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<crate::action::ActionReport>,
    /// Every window ran from its planned start to its planned end (and an action was
    /// applied, undone and verified).
    pub ran_its_course: bool,
}

/// A window as planned and as it ran (None: it never started, or never ended in time).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowReport {
    pub planned_start_s: f64,
    pub planned_end_s: f64,
    pub intensity: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleReport {
    pub rule_id: u32,
    pub fault: String,
    pub target: String,
    pub netns: String,
    pub counters: RuleCounters,
    /// When the rule was first and last in force (wall clock, ms since the epoch).
    pub active_from_unix_ms: u64,
    pub active_to_unix_ms: u64,
    /// Why it ended: "completed", "interrupted", or what cut it short.
    pub ended: String,
    /// Whether it was in force for all of its step's windows.
    pub ran_its_course: bool,
}

/// Probe packets so far: sent, delivered to the far node, and echoed back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeCounts {
    pub sent: u64,
    pub delivered: u64,
    pub echoed: u64,
}

impl ProbeCounts {
    pub fn since(&self, earlier: &ProbeCounts) -> ProbeCounts {
        ProbeCounts {
            sent: self.sent - earlier.sent,
            delivered: self.delivered - earlier.delivered,
            echoed: self.echoed - earlier.echoed,
        }
    }
}

/// One rule's counters at one moment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CounterSample {
    pub t_s: f64,
    pub step: String,
    pub rule_id: u32,
    pub netns: String,
    pub seen: u64,
    pub matched: u64,
    pub dropped: u64,
    pub delayed: u64,
}

/// When a probe check ran, relative to the faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckPhase {
    /// Before the first fault: the steady state.
    Before,
    /// While faults are (or may be) in force.
    During,
    /// After the revert: recovery.
    After,
}

impl CheckPhase {
    pub fn name(self) -> &'static str {
        match self {
            CheckPhase::Before => "before",
            CheckPhase::During => "during",
            CheckPhase::After => "after",
        }
    }
}

/// One check of one probe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeSample {
    pub probe: String,
    /// `http`, `tcp`, `dns`, `command` or `prometheus`.
    pub kind: String,
    pub phase: CheckPhase,
    /// When the check started, from the start of the run.
    pub t_s: f64,
    pub ok: bool,
    pub latency_ms: f64,
    /// What failed (or the value a Prometheus query returned), shortened.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Steady before, checks during (judged by the guards), recovered after.
    Passed,
    Failed,
    /// The run stopped before the hypothesis could be judged.
    NotJudged,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HypothesisReport {
    pub verdict: Verdict,
    /// Why it failed (or was not judged), in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Every probe passed before the first fault.
    pub steady_before: bool,
    /// Seconds from the end of the revert until every probe passed again (None: not
    /// within the recovery deadline, or not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_after_s: Option<f64>,
    pub probes: Vec<ProbeSummary>,
    pub samples: Vec<ProbeSample>,
}

/// A probe's checks in one phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeSummary {
    pub probe: String,
    pub kind: String,
    pub phase: CheckPhase,
    pub checks: u64,
    pub failures: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

/// A guard that fired and the revert that followed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AbortReport {
    /// The guard's kind (`error-rate`, `latency`, `prometheus`, `wall-clock`).
    pub guard: String,
    /// What it saw, in one line.
    pub reason: String,
    /// When it fired, from the start of the run.
    pub fired_s: f64,
    /// From the guard firing to every fault removed, in ms.
    pub revert_ms: f64,
}
