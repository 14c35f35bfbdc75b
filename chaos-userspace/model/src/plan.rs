//! The validated experiment: a timeline of steps, each with its faults and the exact map
//! entries they become. `chaos-ebpf plan` prints this without touching the kernel; `run`
//! and `inject` execute it (chaos-engine's run.rs).

use std::{collections::BTreeMap, fmt::Write as _, str::FromStr, time::Duration};

use chaos_ebpf_common::{self as common, ProtectedPorts};
use serde::{Deserialize, Serialize};

use crate::{
    hypothesis::{Guard, Hypothesis},
    lab::LabSpec,
    spec::{self, shorten, FaultSpec, PortRange, Problem},
};

/// How the run hooks its programs into TC (the datapath's attach modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Attach {
    /// TCX when the kernel has it (>= 6.6), netlink otherwise.
    Auto,
    /// bpf_link based TCX: links vanish with the process, so a crash reverts at once.
    Tcx,
    /// Legacy clsact + cls_bpf filters (kernels < 6.6): removed explicitly on exit, by the
    /// lease after a crash, and by `cleanup`.
    Netlink,
}

impl FromStr for Attach {
    type Err = Problem;
    fn from_str(s: &str) -> Result<Self, Problem> {
        match s {
            "auto" => Ok(Attach::Auto),
            "tcx" => Ok(Attach::Tcx),
            "netlink" => Ok(Attach::Netlink),
            _ => {
                Err(Problem::new(format!("unknown attach mode '{}'", spec::shorten(s, 40)), "use auto, tcx or netlink"))
            }
        }
    }
}

/// How long a rule outlives its last renewal. The runner renews every third of it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3);

/// A protected port range: traffic with this source or destination port is never
/// faulted unless forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Protect {
    pub proto: &'static str,
    pub ports: PortRange,
}

impl Protect {
    /// SSH and the Kubernetes API server.
    pub fn defaults() -> Vec<Protect> {
        vec![
            Protect { proto: "tcp", ports: PortRange { lo: 22, hi: 22 } },
            Protect { proto: "tcp", ports: PortRange { lo: 6443, hi: 6443 } },
        ]
    }

    pub fn entry(&self) -> ProtectedPorts {
        let proto = if self.proto == "udp" { common::proto::UDP } else { common::proto::TCP };
        ProtectedPorts { proto, port_lo: self.ports.lo, port_hi: self.ports.hi }
    }
}

impl FromStr for Protect {
    type Err = Problem;
    fn from_str(s: &str) -> Result<Self, Problem> {
        let (proto, ports) = match s.split_once(':') {
            Some(("tcp", p)) => ("tcp", p),
            Some(("udp", p)) => ("udp", p),
            _ => {
                return Err(Problem::new(
                    format!("'{}' is not a protected port range", shorten(s, 60)),
                    "write tcp:PORT, tcp:LO-HI or udp:PORT (e.g. tcp:22)",
                ))
            }
        };
        Ok(Protect { proto, ports: ports.parse()? })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedFault {
    pub rule_id: u32,
    pub spec: FaultSpec,
    /// Peers named as lab members (`peers: [majority]`): their addresses join
    /// `spec.peers` when the run starts and the lab is asked who they are.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lab_peers: Vec<crate::action::LabSelector>,
    /// A partition matrix bound to the addresses of its members (the fault a matrix step
    /// becomes when the run starts): one rule for all its groups and cuts.
    #[serde(skip)]
    pub matrix: Option<std::sync::Arc<crate::matrix::BoundMatrix>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    pub name: String,
    /// When the step begins (its first window), from the start of the run.
    #[serde(serialize_with = "ser_secs")]
    pub start: Duration,
    /// From its start to the end of its last window.
    #[serde(serialize_with = "ser_secs")]
    pub duration: Duration,
    /// The step's own seed when the file gives one; otherwise `seed()` derives it from the
    /// run's seed and the step's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// One fault per target (and peer set): each its own rule.
    pub faults: Vec<PlannedFault>,
    /// An action step's action (its `faults` are empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<crate::action::PlannedAction>,
    /// A partition matrix step's matrix (its `faults` are empty): applied as one update
    /// when each window opens, healed as one when it closes. `expand` with the step's
    /// seed gives the groups and cut pairs (`matrix::PartitionMatrix`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matrix: Option<crate::matrix::MatrixSpec>,
    /// When the faults are in force, in order and not overlapping: one window for a plain
    /// step, one per `on` period of a duty cycle, and consecutive windows of rising (or
    /// falling) intensity for a ramp. A step without faults (a pause) has one window too.
    pub windows: Vec<Window>,
}

/// A period in which a step's faults are in force at one intensity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Window {
    /// From the start of the run.
    #[serde(serialize_with = "ser_secs")]
    pub start: Duration,
    #[serde(serialize_with = "ser_secs")]
    pub end: Duration,
    /// 0 < intensity <= 1: scales the fault's magnitude (`FaultSpec::at_intensity`).
    pub intensity: f64,
}

impl PlannedFault {
    /// Whether its target or peers name cluster-lab members (bound when a run starts).
    pub fn names_lab_members(&self) -> bool {
        matches!(self.spec.target, crate::spec::TargetSpec::Lab(_)) || !self.lab_peers.is_empty()
    }
}

impl PlannedStep {
    /// The seed the step's rules decide with: the file's, or one derived from the run's
    /// seed and the step's name, so that adding or moving a step changes no other
    /// step's decisions.
    pub fn seed(&self, run_seed: u64) -> u64 {
        self.seed.unwrap_or_else(|| {
            // Chained over 8-byte words of the name; the length word keeps "a" and "a\0" apart.
            let mut h = run_seed;
            for chunk in self.name.as_bytes().chunks(8) {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                h = common::siphash24(h, 0x7374_6570, &[u64::from_le_bytes(word), chunk.len() as u64]);
            }
            h
        })
    }

    /// The end of the step's last window, from the start of the run.
    pub fn end(&self) -> Duration {
        self.start + self.duration
    }

    /// A step with one window of full intensity from `start` for `duration`.
    pub fn simple(name: String, start: Duration, duration: Duration, faults: Vec<PlannedFault>) -> PlannedStep {
        PlannedStep {
            name,
            start,
            duration,
            seed: None,
            faults,
            action: None,
            matrix: None,
            windows: vec![Window { start, end: start + duration, intensity: 1.0 }],
        }
    }
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Serialized with its total duration and peak use (`Plan::peak_use`) added, for
/// `plan --output json`.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub description: Option<String>,
    /// None: the runner draws one and prints it, so the run can be repeated.
    pub seed: Option<u64>,
    pub lease: Duration,
    pub attach: Attach,
    pub protect: Vec<Protect>,
    pub lab: Option<LabSpec>,
    /// Containers the lab's roles name instead of the cluster lab's members.
    pub cluster: Option<crate::lab::ClusterSpec>,
    pub steps: Vec<PlannedStep>,
    /// Probes of the steady state: before the faults, during them, after recovery.
    pub hypothesis: Option<Hypothesis>,
    /// Guards that stop the run and revert every fault at once.
    pub abort: Vec<Guard>,
}

/// The most rules and peers in force at once on one target, over the whole timeline
/// (windows of parallel steps overlap), and when. `rules` counts the faults without
/// peers: they act on every packet of their target, so they all stack on the same
/// packets, and at most DISPATCH_WIDTH can (faults with peers stack only where their
/// peers overlap, which `preflight` checks once targets resolve).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PeakUse {
    pub rules: usize,
    pub max_rules: u32,
    /// The target the peak is on, and from when to when it lasts (first such period).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub rules_target: String,
    #[serde(serialize_with = "ser_secs")]
    pub rules_from: Duration,
    #[serde(serialize_with = "ser_secs")]
    pub rules_until: Duration,
    pub peers: usize,
    pub max_peers: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub peers_target: String,
    #[serde(serialize_with = "ser_secs")]
    pub peers_from: Duration,
    #[serde(serialize_with = "ser_secs")]
    pub peers_until: Duration,
    /// The step whose window starts the peak (for error positions).
    #[serde(skip)]
    pub rules_step: Option<usize>,
    #[serde(skip)]
    pub peers_step: Option<usize>,
}

impl PeakUse {
    /// `peak: 3 of 8 faults on the same packets at once (on netns:x at 4s..6s), 2 of
    /// 4194304 peers (...)`.
    pub fn describe(&self) -> String {
        let when = |target: &str, from: Duration, until: Duration| {
            if target.is_empty() {
                String::new()
            } else {
                format!(
                    " (on {} at {}..{})",
                    shorten(target, 60),
                    spec::format_duration(from),
                    spec::format_duration(until)
                )
            }
        };
        format!(
            "peak: {} of {} faults on the same packets at once{}, {} of {} peers{}",
            self.rules,
            self.max_rules,
            when(&self.rules_target, self.rules_from, self.rules_until),
            self.peers,
            self.max_peers,
            when(&self.peers_target, self.peers_from, self.peers_until)
        )
    }
}

#[derive(Serialize)]
struct PlanView<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: &'a Option<String>,
    seed: Option<u64>,
    #[serde(serialize_with = "ser_secs")]
    lease: Duration,
    attach: Attach,
    protect: &'a [Protect],
    #[serde(skip_serializing_if = "Option::is_none")]
    lab: &'a Option<LabSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: &'a Option<crate::lab::ClusterSpec>,
    #[serde(serialize_with = "ser_secs")]
    total: Duration,
    steps: &'a [PlannedStep],
    peak: PeakUse,
    #[serde(skip_serializing_if = "Option::is_none")]
    hypothesis: &'a Option<Hypothesis>,
    #[serde(skip_serializing_if = "<[Guard]>::is_empty")]
    abort: &'a [Guard],
}

impl Serialize for Plan {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        PlanView {
            name: &self.name,
            description: &self.description,
            seed: self.seed,
            lease: self.lease,
            attach: self.attach,
            protect: &self.protect,
            lab: &self.lab,
            cluster: &self.cluster,
            total: self.total_duration(),
            steps: &self.steps,
            peak: self.peak_use(),
            hypothesis: &self.hypothesis,
            abort: &self.abort,
        }
        .serialize(s)
    }
}

impl Plan {
    /// From the start of the run to the end of the last step's last window.
    pub fn total_duration(&self) -> Duration {
        self.steps.iter().map(PlannedStep::end).max().unwrap_or_default()
    }

    /// The most rules and peers in force at once on one target. Each window of a step
    /// puts the step's faults in force from its start to its end (half-open: a window
    /// ending when another starts does not overlap it). Targets are counted by how they
    /// are written; `preflight` counts again per network namespace once they resolve.
    pub fn peak_use(&self) -> PeakUse {
        // Per target: (time, 0 = end / 1 = start, rules, peers, step).
        type Event = (Duration, u8, usize, usize, usize);
        let mut events: BTreeMap<String, Vec<Event>> = BTreeMap::new();
        for (i, step) in self.steps.iter().enumerate() {
            for fault in &step.faults {
                let list = events.entry(fault.spec.target.to_string()).or_default();
                let stacked = usize::from(fault.spec.peers.is_empty());
                for w in &step.windows {
                    list.push((w.start, 1, stacked, fault.spec.peers.len(), i));
                    list.push((w.end, 0, stacked, fault.spec.peers.len(), i));
                }
            }
        }
        let mut peak = PeakUse {
            max_rules: common::DISPATCH_WIDTH as u32,
            max_peers: common::MAX_PEERS_LIMIT,
            ..PeakUse::default()
        };
        for (target, mut list) in events {
            list.sort_unstable();
            let (mut rules, mut peers) = (0usize, 0usize);
            let mut k = 0;
            while k < list.len() {
                let time = list[k].0;
                let mut started = None;
                while k < list.len() && list[k].0 == time {
                    let (_, kind, r, p, step) = list[k];
                    if kind == 1 {
                        rules += r;
                        peers += p;
                        started = Some(step);
                    } else {
                        rules -= r;
                        peers -= p;
                    }
                    k += 1;
                }
                let until = list.get(k).map_or(time, |e| e.0);
                if rules > peak.rules {
                    (peak.rules, peak.rules_from, peak.rules_until) = (rules, time, until);
                    peak.rules_target = target.clone();
                    peak.rules_step = started;
                }
                if peers > peak.peers {
                    (peak.peers, peak.peers_from, peak.peers_until) = (peers, time, until);
                    peak.peers_target = target.clone();
                    peak.peers_step = started;
                }
            }
        }
        peak
    }

    /// Every limit that does not depend on the machine: protected ranges (one map of
    /// `MAX_PROTECTED` entries), faults stacked on the same packets of one target (at
    /// most `DISPATCH_WIDTH`), their peers (one LPM trie of up to `MAX_PEERS_LIMIT`
    /// entries per namespace), and the total duration. `preflight` checks the same per
    /// namespace once targets resolve. A plan that asks for more than the kernel maps
    /// hold, found before anything is touched: a problem with a field (`protect`,
    /// `peers`, `duration`, `fault`) and the step it is in.
    pub fn check_limits(&self) -> Result<(), Problem> {
        if self.protect.len() > common::MAX_PROTECTED as usize {
            return Err(Problem::field(
                "protect",
                format!(
                    "{} protected port ranges (the 2 defaults tcp:22 and tcp:6443 count); at most {}",
                    self.protect.len(),
                    common::MAX_PROTECTED
                ),
                "merge adjacent ranges (tcp:8000-8100), or drop the defaults with force",
            ));
        }
        if let Some((i, step)) = self.steps.iter().enumerate().find(|(_, s)| s.end() > spec::MAX_DURATION) {
            return Err(Problem::field(
                "duration",
                format!("step '{}' ends after the maximum of 7 days", shorten(&step.name, 40)),
                "shorten the steps; a run lasts at most 7d",
            )
            .in_step(i));
        }
        let peak = self.peak_use();
        let name = |i: Option<usize>| i.and_then(|i| self.steps.get(i)).map_or("", |s| s.name.as_str());
        if peak.rules > common::DISPATCH_WIDTH {
            let problem = Problem::field(
                "fault",
                format!(
                    "{} faults without peers in force at once on {} (at {}, step '{}'); at most {} can act on the same packets",
                    peak.rules,
                    shorten(&peak.rules_target, 60),
                    spec::format_duration(peak.rules_from),
                    shorten(name(peak.rules_step), 40),
                    common::DISPATCH_WIDTH
                ),
                "spread the faults over time (after: instead of with:), merge them, or give them peers",
            );
            return Err(match peak.rules_step {
                Some(i) => problem.in_step(i),
                None => problem,
            });
        }
        if peak.peers > common::MAX_PEERS_LIMIT as usize {
            let problem = Problem::field(
                "peers",
                format!(
                    "{} peers in force at once on {} (at {}, step '{}'); at most {} fit one network namespace",
                    peak.peers,
                    shorten(&peak.peers_target, 60),
                    spec::format_duration(peak.peers_from),
                    shorten(name(peak.peers_step), 40),
                    common::MAX_PEERS_LIMIT
                ),
                "cover the peers with wider prefixes (192.0.2.0/24 instead of 256 addresses)",
            );
            return Err(match peak.peers_step {
                Some(i) => problem.in_step(i),
                None => problem,
            });
        }
        Ok(())
    }

    /// The seed to use: the plan's, or one drawn from the clock.
    pub fn seed_or_random(&self) -> u64 {
        self.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            // Mixed so that runs a few ns apart still differ in every bit.
            common::siphash24(t.as_nanos() as u64, std::process::id() as u64, &[0])
        })
    }

    /// The map entries of every fault, one per distinct intensity of its step's windows,
    /// each decided with the step's seed; target filters are filled in at run time.
    pub fn entries(&self, seed: u64) -> Vec<PlannedEntry> {
        let mut out = Vec::new();
        for step in &self.steps {
            let step_seed = step.seed(seed);
            let mut intensities: Vec<f64> = Vec::new();
            for w in &step.windows {
                if !intensities.iter().any(|x| x.to_bits() == w.intensity.to_bits()) {
                    intensities.push(w.intensity);
                }
            }
            for f in &step.faults {
                for &intensity in &intensities {
                    let spec = f.spec.at_intensity(intensity);
                    let rule = spec.rule(step_seed, f.rule_id, 0, 0);
                    out.push(PlannedEntry {
                        step: step.name.clone(),
                        rule_id: f.rule_id,
                        intensity,
                        seed: step_seed,
                        fault: spec.describe(),
                        rule: RuleView::from(&rule),
                        peers: spec
                            .peers
                            .iter()
                            .map(|p| {
                                let len = common::AddrKeyData::HEADER_BITS + p.prefix().len as u32;
                                format!(
                                    "{p} -> trie prefix {len} (64 role and family bits + {} address bits)",
                                    len - 64
                                )
                            })
                            .collect(),
                    });
                }
            }
        }
        out
    }

    /// The plan for people: settings, the timeline (every step with its seed, windows and
    /// intensities, and its faults), the hypothesis and guards, every map entry, and the
    /// peak use against the limits. The same plan and seed give the same bytes.
    pub fn render_text(&self, seed: u64, seed_given: bool) -> String {
        let mut out = String::new();
        let d = spec::format_duration;
        let _ =
            writeln!(out, "scenario {}: {} steps, {} in all", self.name, self.steps.len(), d(self.total_duration()));
        let _ = writeln!(
            out,
            "seed {seed}{}; lease {}; attach {:?}",
            if seed_given { "" } else { " (none in the file: drawn now, a run draws its own and prints it)" },
            d(self.lease),
            self.attach
        );
        let protect: Vec<String> = self.protect.iter().map(|p| format!("{}:{}", p.proto, p.ports)).collect();
        let _ = writeln!(
            out,
            "protected: {}",
            if protect.is_empty() { "nothing (force)".into() } else { protect.join(", ") }
        );
        if let Some(lab) = &self.lab {
            let _ = writeln!(out, "lab: {}", lab.describe());
        }
        if let Some(cluster) = &self.cluster {
            let _ = writeln!(out, "cluster: {}", cluster.describe());
        }
        let _ = writeln!(out, "\ntimeline:");
        for step in &self.steps {
            let _ = writeln!(
                out,
                "  {:>8} .. {:>8}  {}  (seed {}{})",
                d(step.start),
                d(step.end()),
                step.name,
                step.seed(seed),
                if step.seed.is_some() { ", the step's own" } else { "" }
            );
            if let Some(spec) = &step.matrix {
                describe_matrix(&mut out, spec, step.seed(seed));
            } else if step.faults.is_empty() {
                let _ = writeln!(out, "                        (no fault)");
                continue;
            }
            for f in &step.faults {
                match &f.matrix {
                    Some(m) => {
                        let _ = writeln!(
                            out,
                            "                        rule {}: the matrix ({} prefixes), dropped at the ingress of {}",
                            f.rule_id,
                            m.prefixes(),
                            f.spec.target
                        );
                    }
                    None => {
                        let _ = writeln!(out, "                        rule {}: {}", f.rule_id, f.spec.describe());
                    }
                }
            }
            for w in &step.windows {
                let _ = writeln!(
                    out,
                    "                        window {} .. {} at intensity {}",
                    d(w.start),
                    d(w.end),
                    w.intensity
                );
            }
        }
        if let Some(h) = &self.hypothesis {
            let _ = writeln!(
                out,
                "\nhypothesis: every probe passes once within {} before the faults, is checked every {} while they are in force, and passes again within {} after",
                d(h.steady_within),
                d(h.interval),
                d(h.recovery)
            );
            for p in &h.probes {
                let _ = writeln!(out, "  probe {} (timeout {}): {}", p.name, d(p.timeout), p.check.describe());
            }
        }
        if !self.abort.is_empty() {
            let _ = writeln!(out, "\nabort when:");
            for g in &self.abort {
                let _ = writeln!(out, "  {}", g.describe());
            }
        }
        let _ = writeln!(
            out,
            "\nmap entries (CHAOS_RULES; ifindex and cgroup filled in when targets resolve at run time;\n\
             peer-is-source rules go on the far end of the target's veths):"
        );
        for e in self.entries(seed) {
            let r = &e.rule;
            let _ = writeln!(
                out,
                "  rule {} [{}] intensity {}: action={} flags={} directions={} proto={} ports={}-{} loss_threshold={:#018x}{}",
                e.rule_id,
                e.step,
                e.intensity,
                r.action,
                r.flags,
                r.directions,
                r.proto,
                r.port_lo,
                r.port_hi,
                r.loss_threshold,
                r.extras()
            );
            for p in &e.peers {
                let _ = writeln!(out, "      peer {p}");
            }
        }
        let _ = writeln!(out, "\n{}", self.peak_use().describe());
        out
    }
}

/// Most groups, and most cuts, the plan lists one by one; beyond, it gives counts.
const MATRIX_LINES: usize = 12;

/// A matrix step in the timeline: its form and counts, then its groups and cuts when
/// they are few. Shuffled halves are shown as `seed` splits them.
fn describe_matrix(out: &mut String, spec: &crate::matrix::MatrixSpec, seed: u64) {
    let pad = "                        ";
    let matrix = spec.expand(seed);
    let _ = writeln!(out, "{pad}partition matrix ({}): {}", spec.form.name(), matrix.counts());
    let groups = matrix.groups();
    for (i, g) in groups.iter().enumerate().take(MATRIX_LINES) {
        let _ = writeln!(out, "{pad}  group {i} {}: {}", shorten(&g.name, 40), g.summary());
    }
    if groups.len() > MATRIX_LINES {
        let _ = writeln!(out, "{pad}  ... and {} more groups", groups.len() - MATRIX_LINES);
    }
    let cuts = matrix.cuts_text();
    if cuts.len() <= MATRIX_LINES {
        let _ = writeln!(out, "{pad}  cut: {}", cuts.join(", "));
    } else {
        let shown: Vec<&str> = cuts.iter().take(MATRIX_LINES).map(String::as_str).collect();
        let _ = writeln!(out, "{pad}  cut: {}, ... and {} more", shown.join(", "), cuts.len() - MATRIX_LINES);
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedEntry {
    pub step: String,
    pub rule_id: u32,
    /// The intensity this entry is for (one entry per distinct intensity of the step).
    pub intensity: f64,
    /// The step's seed, which the rule decides with.
    pub seed: u64,
    pub fault: String,
    pub rule: RuleView,
    pub peers: Vec<String>,
}

/// The `Rule` map value with named action and flags, for people and JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleView {
    pub action: String,
    pub flags: String,
    pub directions: String,
    pub proto: u32,
    pub port_lo: u16,
    pub port_hi: u16,
    pub loss_threshold: u64,
    pub burst_enter: u64,
    pub burst_exit: u64,
    pub burst_loss: u64,
    pub delay_ns: u64,
    pub jitter_ns: u64,
    pub rate_bytes_per_sec: u64,
    pub ifindex: u32,
    pub cgroup_id: u64,
}

impl RuleView {
    /// The fields only some actions use, when set.
    fn extras(&self) -> String {
        let mut out = String::new();
        if self.burst_enter != 0 {
            out += &format!(
                " burst_enter={:#x} burst_exit={:#x} burst_loss={:#x}",
                self.burst_enter, self.burst_exit, self.burst_loss
            );
        }
        for (name, value) in [
            ("delay_ns", self.delay_ns),
            ("jitter_ns", self.jitter_ns),
            ("rate_bytes_per_sec", self.rate_bytes_per_sec),
        ] {
            if value != 0 {
                out += &format!(" {name}={value}");
            }
        }
        out
    }
}

impl From<&common::Rule> for RuleView {
    fn from(r: &common::Rule) -> Self {
        let action = match r.action {
            common::action::LOSS => "loss",
            common::action::DROP => "drop",
            common::action::DROP_NEW_TCP => "drop-new-tcp",
            common::action::DELAY => "delay",
            common::action::RATE => "rate",
            common::action::TLS_REFUSE => "tls-refuse",
            _ => "none",
        };
        let mut flags = Vec::new();
        for (bit, name) in [
            (common::flags::SHADOW, "shadow"),
            (common::flags::PEERS, "peers"),
            (common::flags::BURST, "burst"),
            (common::flags::JITTER_NORMAL, "jitter-normal"),
            (common::flags::PEER_IS_SOURCE, "peer-is-source"),
        ] {
            if r.flags & bit != 0 {
                flags.push(name);
            }
        }
        let directions = match r.directions {
            common::direction::EGRESS => "egress",
            common::direction::INGRESS => "ingress",
            _ => "both",
        };
        RuleView {
            action: action.into(),
            flags: if flags.is_empty() { "-".into() } else { flags.join("|") },
            directions: directions.into(),
            proto: r.proto,
            port_lo: r.port_lo,
            port_hi: r.port_hi,
            loss_threshold: r.loss_threshold,
            burst_enter: r.burst_enter,
            burst_exit: r.burst_exit,
            burst_loss: r.burst_loss,
            delay_ns: r.delay_ns,
            jitter_ns: r.jitter_ns,
            rate_bytes_per_sec: r.rate_bytes_per_sec,
            ifindex: r.ifindex,
            cgroup_id: r.cgroup_id,
        }
    }
}
