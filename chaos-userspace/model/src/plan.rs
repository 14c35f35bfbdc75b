//! The validated experiment: a timeline of steps, each with its faults and the exact map
//! entries they become. `chaos-ebpf plan` prints this without touching the kernel; `run`
//! and `inject` execute it (chaos-engine's run.rs).

use std::{fmt::Write as _, str::FromStr, time::Duration};

use chaos_ebpf_common::{self as common, ProtectedPorts};
use serde::{Deserialize, Serialize};

use crate::{
    hypothesis::{Guard, Hypothesis},
    lab::LabSpec,
    spec::{self, shorten, FaultSpec, PortRange, Problem},
};

/// How the run hooks its programs into TC (the datapath's attach modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
            windows: vec![Window { start, end: start + duration, intensity: 1.0 }],
        }
    }
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// None: the runner draws one and prints it, so the run can be repeated.
    pub seed: Option<u64>,
    #[serde(serialize_with = "ser_secs")]
    pub lease: Duration,
    pub attach: Attach,
    pub protect: Vec<Protect>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lab: Option<LabSpec>,
    pub steps: Vec<PlannedStep>,
    /// Probes of the steady state: before the faults, during them, after recovery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hypothesis: Option<Hypothesis>,
    /// Guards that stop the run and revert every fault at once.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub abort: Vec<Guard>,
}

impl Plan {
    /// From the start of the run to the end of the last step's last window.
    pub fn total_duration(&self) -> Duration {
        self.steps.iter().map(PlannedStep::end).max().unwrap_or_default()
    }

    /// Every limit that does not depend on the machine: protected ranges (one map of
    /// `MAX_PROTECTED` entries), faults active at once (each installs one rule per
    /// namespace it resolves to, `MAX_RULES` slots), peers of the faults active at once
    /// (one LPM trie of `MAX_PEERS` entries per namespace), and the total duration.
    /// `preflight` checks the same per namespace once targets resolve.
    /// A plan that asks for more than the kernel maps hold, found before anything is
    /// touched: a problem with a field (`protect`, `peers`, `duration`, `fault`) and the
    /// step it is in.
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
        let mut total = Duration::ZERO;
        for (i, step) in self.steps.iter().enumerate() {
            total = total.checked_add(step.duration).filter(|t| *t <= spec::MAX_DURATION).ok_or_else(|| {
                Problem::field(
                    "duration",
                    format!("the steps up to '{}' last longer than the maximum of 7 days", shorten(&step.name, 40)),
                    "shorten the steps; a run lasts at most 7d",
                )
                .in_step(i)
            })?;
            if step.faults.len() > common::MAX_RULES as usize {
                return Err(Problem::field(
                    "fault",
                    format!(
                        "step '{}' has {} faults at once; at most {} rules fit one network namespace",
                        shorten(&step.name, 40),
                        step.faults.len(),
                        common::MAX_RULES
                    ),
                    "spread the faults over more steps",
                )
                .in_step(i));
            }
            let peers: usize = step.faults.iter().map(|f| f.spec.peers.len()).sum();
            if peers > common::MAX_PEERS as usize {
                return Err(Problem::field(
                    "peers",
                    format!(
                        "step '{}' lists {peers} peers; at most {} fit one network namespace",
                        shorten(&step.name, 40),
                        common::MAX_PEERS
                    ),
                    "cover the peers with wider prefixes (192.0.2.0/24 instead of 256 addresses)",
                )
                .in_step(i));
            }
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

    /// The map entries of every fault, with target filters shown as resolved at run time.
    pub fn entries(&self, seed: u64) -> Vec<PlannedEntry> {
        self.steps
            .iter()
            .flat_map(|step| step.faults.iter().map(move |f| (step, f)))
            .map(|(step, f)| {
                let rule = f.spec.rule(seed, f.rule_id, 0, 0);
                PlannedEntry {
                    step: step.name.clone(),
                    rule_id: f.rule_id,
                    fault: f.spec.describe(),
                    rule: RuleView::from(&rule),
                    peers: f
                        .spec
                        .peers
                        .iter()
                        .map(|p| {
                            let (len, _) = p.trie_entry(0);
                            format!("{p} -> trie prefix {len} (32 slot bits + {} address bits)", len - 32)
                        })
                        .collect(),
                }
            })
            .collect()
    }

    pub fn render_text(&self, seed: u64, seed_given: bool) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {}: {} steps, {} in all",
            self.name,
            self.steps.len(),
            spec::format_duration(self.total_duration())
        );
        let _ = writeln!(
            out,
            "seed {seed}{}; lease {}; attach {:?}",
            if seed_given { "" } else { " (none in the file: drawn now, a run draws its own and prints it)" },
            spec::format_duration(self.lease),
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
        let _ = writeln!(out, "\ntimeline:");
        for step in &self.steps {
            let end = step.start + step.duration;
            let _ = writeln!(
                out,
                "  {:>8} .. {:>8}  {}",
                spec::format_duration(step.start),
                spec::format_duration(end),
                step.name
            );
            if step.faults.is_empty() {
                let _ = writeln!(out, "                        (no fault)");
            }
            for f in &step.faults {
                let _ = writeln!(out, "                        rule {}: {}", f.rule_id, f.spec.describe());
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
                "  rule {} [{}]: action={} flags={} directions={} proto={} ports={}-{} loss_threshold={:#018x}{}",
                e.rule_id,
                e.step,
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
        out
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedEntry {
    pub step: String,
    pub rule_id: u32,
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
