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
    /// The clsact qdiscs the run added before the faults and deleted after them (netlink
    /// attach), per namespace: each change stops the device's transmit for a moment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qdisc_changes: Vec<QdiscChangeReport>,
    /// The agent that held the faults' rules, when the run went through one (no
    /// programs of its own then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// Clsact qdiscs added or deleted in one namespace. The kernel swaps a qdisc with the
/// device's transmit stopped and drops what is sent in that moment; TCX attach (Linux
/// 6.6 and later) changes no qdisc.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QdiscChangeReport {
    pub netns: String,
    /// `added` or `deleted`.
    pub change: String,
    pub devices: u32,
    /// The longest request, which returns once the transmit runs again: a bound on how
    /// long it was stopped.
    pub longest_ms: f64,
    /// The growth of the devices' tx_dropped meanwhile: what the kernel dropped, on
    /// kernels that count it there (6.12 does, 6.1 does not).
    pub tx_dropped: u64,
}

impl QdiscChangeReport {
    /// The line a run prints about it.
    pub fn line(&self) -> String {
        let qdiscs =
            if self.devices == 1 { "1 clsact qdisc".to_owned() } else { format!("{} clsact qdiscs", self.devices) };
        format!(
            "{} {qdiscs} in {} (netlink attach): each stopped its device's transmit for up to {:.1} ms, and the \
             kernel drops what is sent then: {} packets counted in tx_dropped (Linux 6.1 counts none). attach: tcx \
             (Linux 6.6 or later) changes no qdisc",
            self.change, self.netns, self.longest_ms, self.tx_dropped
        )
    }
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
    /// The lab probe's packets during the step, from the moment its rules were in force.
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
    /// Per probe, its longest outage: from a failed check to the next one that passed
    /// (for a probe of writes, the write availability gap).
    #[serde(default)]
    pub outages: Vec<Outage>,
    pub samples: Vec<ProbeSample>,
}

/// A probe's longest run of failed checks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outage {
    pub probe: String,
    /// The first failed check's start, from the start of the faults.
    pub from_s: f64,
    /// The next check that passed (None: none passed again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_s: Option<f64>,
    /// `to_s - from_s`, or up to the last check when none passed again.
    pub seconds: f64,
    pub failed_checks: u64,
}

impl HypothesisReport {
    /// Each probe's longest outage in `samples` (sorted by time), for probes that failed.
    pub fn longest_outages(samples: &[ProbeSample]) -> Vec<Outage> {
        let mut names: Vec<&str> = samples.iter().map(|s| s.probe.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let mut out = Vec::new();
        for name in names {
            let mine: Vec<&ProbeSample> = samples.iter().filter(|s| s.probe == name).collect();
            let mut best: Option<Outage> = None;
            let mut i = 0;
            while i < mine.len() {
                if mine[i].ok {
                    i += 1;
                    continue;
                }
                let from = mine[i].t_s;
                let mut j = i;
                while j < mine.len() && !mine[j].ok {
                    j += 1;
                }
                let to = mine.get(j).map(|s| s.t_s);
                let seconds = to.unwrap_or(mine[j - 1].t_s) - from;
                let outage =
                    Outage { probe: name.to_owned(), from_s: from, to_s: to, seconds, failed_checks: (j - i) as u64 };
                if best.as_ref().is_none_or(|b| outage.seconds > b.seconds) {
                    best = Some(outage);
                }
                i = j;
            }
            out.extend(best);
        }
        out
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(probe: &str, t_s: f64, ok: bool) -> ProbeSample {
        ProbeSample {
            probe: probe.into(),
            kind: "http".into(),
            phase: CheckPhase::During,
            t_s,
            ok,
            latency_ms: 1.0,
            detail: String::new(),
        }
    }

    #[test]
    fn the_longest_outage_runs_from_a_failure_to_the_next_pass() {
        let samples = vec![
            sample("a", 0.0, true),
            sample("a", 1.0, false),
            sample("a", 2.0, true),
            sample("a", 3.0, false),
            sample("a", 4.0, false),
            sample("a", 5.5, true),
            sample("b", 0.5, true),
            sample("c", 1.0, false),
            sample("c", 2.0, false),
        ];
        let outages = HypothesisReport::longest_outages(&samples);
        assert_eq!(outages.len(), 2, "{outages:?}");
        assert_eq!((outages[0].probe.as_str(), outages[0].from_s, outages[0].to_s), ("a", 3.0, Some(5.5)));
        assert_eq!((outages[0].seconds, outages[0].failed_checks), (2.5, 2));
        assert_eq!((outages[1].probe.as_str(), outages[1].to_s, outages[1].seconds), ("c", None, 1.0));
    }
}
