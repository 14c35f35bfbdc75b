//! The scenario file as serde reads it (unknown fields rejected), before validation.
//! The JSON Schema of scenario files (scenarios/chaos-ebpf.schema.json) is derived from
//! these types, so the schema and the parser cannot disagree on a field's name or type.
//! Values with units (durations, rates, addresses) are strings here; scenario.rs parses
//! them with positions.

use std::collections::BTreeMap;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::{
    action::ActionKind,
    lab::{ClusterSpec, LabSpec},
    plan::Attach,
};

/// The schema of a duration field: YAML gives a bare number (seconds) to a string field
/// as its text, so the schema allows both.
struct DurationText;

impl JsonSchema for DurationText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "500ms, 30s, 5m, 1h, 2d, 1m30s, or a number of seconds; at most 7d",
            "type": ["string", "number"]
        })
    }
}

/// The schema of `ports`: a port number or a range `LO-HI`.
struct PortsText;

impl JsonSchema for PortsText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Ports".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "a port (443) or an inclusive range (8000-8100)",
            "type": ["string", "integer"]
        })
    }
}

/// The one version of the format. A file without it (or with another value) is refused,
/// so that a later version's file is never read with this version's meaning.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
pub enum ApiVersion {
    #[serde(rename = "chaos-ebpf/v1")]
    V1,
}

/// A chaos-ebpf scenario: targets, steps on a timeline, and optionally a steady-state
/// hypothesis and abort guards. See docs/scenarios.md.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "chaos-ebpf scenario (chaos-ebpf/v1)")]
pub struct RawScenario {
    /// Always `chaos-ebpf/v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: ApiVersion,
    pub name: Option<String>,
    pub description: Option<String>,
    /// The run's seed; each step's seed derives from it and the step's name.
    pub seed: Option<u64>,
    /// How long faults outlive a hung run (300ms..5m).
    #[schemars(with = "Option<DurationText>")]
    pub lease: Option<String>,
    pub attach: Option<Attach>,
    /// Extra protected port ranges (`tcp:22`, `udp:53`) on top of the defaults.
    #[serde(default)]
    pub protect: Vec<String>,
    /// Drop the default protected list (SSH, the Kubernetes API server).
    #[serde(default)]
    pub force: bool,
    pub lab: Option<LabSpec>,
    /// The containers that the lab's roles (`leader`, `node:NAME`, ...) name, instead of
    /// the cluster lab's members.
    pub cluster: Option<ClusterSpec>,
    /// Names for targets (`iface:NAME`, `netns:NAME`, `cgroup:PATH`, `pid:PID`,
    /// `container:NAME`).
    #[serde(default)]
    pub targets: BTreeMap<String, String>,
    /// Named peer sets: lists of addresses and prefixes a step's `peers` may name.
    #[serde(default)]
    pub peers: BTreeMap<String, Vec<String>>,
    /// Named groups of nodes for partition matrices: lab nodes (`node:n3`, `node:n1-n8`),
    /// addresses or prefixes, `cgroup:PATH`.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    pub hypothesis: Option<RawHypothesis>,
    /// Conditions that stop the run and revert every fault at once.
    #[serde(default)]
    pub abort: Vec<RawGuard>,
    pub steps: Vec<RawStep>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    /// Unique within the scenario; `after` and `with` refer to it (default `step-N`).
    pub name: Option<String>,
    /// loss | partition | blackhole | delay | rate | tls-refuse | none (a pause). A step has a fault
    /// or an action.
    pub fault: Option<String>,
    /// kill | pause | surge | cert-expiry: an action on cluster-lab members (`node:n2`,
    /// `leader`, `followers`, `minority`, `majority`), a process (`pid:N`) or a Docker
    /// container (`container:NAME`; kill and pause).
    pub action: Option<String>,
    /// A partition matrix over named groups: a fault of its own (no `fault:`, no
    /// target), one form of cut, ring, bridge, majority-minority or halves.
    pub partition: Option<RawPartition>,
    /// One target: a name from `targets` or `KIND:VALUE`.
    pub target: Option<String>,
    /// Several targets: the fault is installed on each (one rule each).
    pub targets: Option<Vec<String>>,
    /// How long the step lasts (optional with `repeat`, which derives it).
    #[schemars(with = "Option<DurationText>")]
    pub duration: Option<String>,
    /// Start when this step ends (default: when the step before it in the file ends).
    pub after: Option<String>,
    /// Start when this step starts (in parallel).
    pub with: Option<String>,
    /// Start this long after the anchor (`after`, `with` or the previous step).
    #[schemars(with = "Option<DurationText>")]
    pub offset: Option<String>,
    /// The step's own seed (default: derived from the run's seed and the step's name).
    pub seed: Option<u64>,
    /// 0 < intensity <= 1 (default 1), or a ramp `{from, to, steps}`.
    pub intensity: Option<RawIntensity>,
    /// A duty cycle: `{on, off, count}`.
    pub repeat: Option<RawRepeat>,
    pub probability: Option<f64>,
    pub burst: Option<RawBurst>,
    pub mode: Option<String>,
    /// Addresses, prefixes and names of peer sets.
    #[serde(default)]
    pub peers: Vec<String>,
    pub proto: Option<String>,
    #[schemars(with = "Option<PortsText>")]
    pub ports: Option<String>,
    pub direction: Option<String>,
    #[serde(default)]
    pub shadow: bool,
    #[schemars(with = "Option<DurationText>")]
    pub delay: Option<String>,
    #[schemars(with = "Option<DurationText>")]
    pub jitter: Option<String>,
    pub distribution: Option<String>,
    /// A rate fault's bytes per second (`10mbit`), or a surge's nodes per second (`5/s`).
    pub rate: Option<String>,
    /// kill: the signal (default SIGKILL; name or number).
    pub signal: Option<String>,
    /// kill: SIGTERM, then SIGKILL after this grace period (instead of `signal`).
    #[schemars(with = "Option<DurationText>")]
    pub grace: Option<String>,
    /// kill: start the member again when the step ends.
    #[serde(default)]
    pub restart: bool,
    /// kill of the leader: another member must lead within this long (default 30s), or
    /// the step fails.
    #[serde(rename = "leader-within")]
    #[schemars(with = "Option<DurationText>")]
    pub leader_within: Option<String>,
    /// surge: nodes that join (and leave) per cycle.
    pub count: Option<u32>,
    /// surge: join/leave cycles (default 1).
    pub cycles: Option<u32>,
    /// cert-expiry: the certificate expires this long after it is loaded (default: it
    /// has expired already).
    #[serde(rename = "expires-in")]
    #[schemars(with = "Option<DurationText>")]
    pub expires_in: Option<String>,
    /// tls-refuse: the ALPN protocols to refuse (`h2` or a list).
    pub alpn: Option<RawOneOrMany>,
    /// tls-refuse: the TLS versions to refuse (`[1.3]`, `[1.0, 1.1]`).
    #[serde(rename = "tls-versions")]
    pub tls_versions: Option<Vec<RawTlsVersion>>,
}

/// Which groups cannot reach which: `groups` with `cut`, or one shorthand.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawPartition {
    /// The groups of the matrix (names from the top-level `groups:`), with `cut`.
    pub groups: Option<Vec<String>>,
    /// Pairs of groups cut from each other: `[a, b]` both ways, `[a, "->", b]` only
    /// packets from a to b.
    pub cut: Option<Vec<Vec<String>>>,
    /// Groups in a ring: each reaches only its two neighbours (at least 4 groups).
    pub ring: Option<Vec<String>>,
    /// Two sides cut from each other, and a group that reaches both.
    pub bridge: Option<RawBridge>,
    /// The minority cut from the majority: of groups, or of a set of nodes.
    pub majority_minority: Option<RawMajorityMinority>,
    /// A set of nodes split into two halves cut from each other.
    pub halves: Option<RawHalves>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBridge {
    /// The two groups cut from each other.
    pub sides: Vec<String>,
    /// The group that reaches both sides.
    pub via: String,
}

/// `groups: [a, b, c, d, e]` (the last `minority` groups are the minority), or `of:`
/// nodes (the last `minority` nodes).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMajorityMinority {
    pub groups: Option<Vec<String>>,
    /// Group names and node members whose nodes are split.
    pub of: Option<RawOneOrMany>,
    /// How many groups (or nodes) are the minority; default (N-1)/2.
    pub minority: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHalves {
    /// Group names and node members whose nodes are split.
    pub of: RawOneOrMany,
    /// Shuffle the nodes before splitting, with the step's seed (default: in order).
    #[serde(default)]
    pub shuffle: bool,
}

/// One value or a list of them.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawOneOrMany {
    One(String),
    Many(Vec<String>),
}

impl RawOneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            RawOneOrMany::One(one) => vec![one.clone()],
            RawOneOrMany::Many(many) => many.clone(),
        }
    }
}

/// A TLS version: YAML reads `1.3` as a number, `"1.3"` as text; both are accepted.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawTlsVersion {
    Number(f64),
    Text(String),
}

impl RawTlsVersion {
    pub fn text(&self) -> String {
        match self {
            RawTlsVersion::Number(x) => format!("{x:.1}"),
            RawTlsVersion::Text(s) => s.clone(),
        }
    }
}

impl RawStep {
    /// The parameters of a packet fault (besides its targets), each with whether it is given.
    pub fn fault_fields(&self) -> [(&'static str, bool); 16] {
        [
            ("probability", self.probability.is_some()),
            ("burst", self.burst.is_some()),
            ("mode", self.mode.is_some()),
            ("peers", !self.peers.is_empty()),
            ("proto", self.proto.is_some()),
            ("ports", self.ports.is_some()),
            ("direction", self.direction.is_some()),
            ("shadow", self.shadow),
            ("delay", self.delay.is_some()),
            ("jitter", self.jitter.is_some()),
            ("distribution", self.distribution.is_some()),
            ("rate", self.rate.is_some()),
            ("alpn", self.alpn.is_some()),
            ("tls-versions", self.tls_versions.is_some()),
            ("intensity", self.intensity.is_some()),
            ("repeat", self.repeat.is_some()),
        ]
    }

    /// The parameters of actions, each with the action it belongs to and whether it is given.
    pub fn action_fields(&self) -> [(&'static str, ActionKind, bool); 7] {
        [
            ("signal", ActionKind::Kill, self.signal.is_some()),
            ("grace", ActionKind::Kill, self.grace.is_some()),
            ("restart", ActionKind::Kill, self.restart),
            ("leader-within", ActionKind::Kill, self.leader_within.is_some()),
            ("count", ActionKind::Surge, self.count.is_some()),
            ("cycles", ActionKind::Surge, self.cycles.is_some()),
            ("expires-in", ActionKind::CertExpiry, self.expires_in.is_some()),
        ]
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBurst {
    pub enter: f64,
    pub exit: f64,
    pub loss: Option<f64>,
}

/// A fixed intensity or a ramp.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RawIntensity {
    Fixed(f64),
    Ramp(RawRamp),
}

/// `steps` consecutive windows of equal length, intensities evenly spaced from `from` to `to`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRamp {
    pub from: f64,
    pub to: f64,
    pub steps: u32,
}

/// Faults on for `on`, off for `off`, `count` times (or as many as `duration` holds).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRepeat {
    #[schemars(with = "DurationText")]
    pub on: String,
    #[schemars(with = "DurationText")]
    pub off: String,
    pub count: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawHypothesis {
    /// Between two checks of one probe (default 1s).
    #[schemars(with = "Option<DurationText>")]
    pub interval: Option<String>,
    /// Before the first fault every probe must pass once within this (default 10s).
    #[schemars(with = "Option<DurationText>")]
    pub steady_within: Option<String>,
    /// After the revert every probe must pass again within this (default 30s).
    #[schemars(with = "Option<DurationText>")]
    pub recovery: Option<String>,
    pub probes: Vec<RawProbe>,
}

/// A probe: a name, a timeout and exactly one of http, tcp, dns, command, prometheus.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawProbe {
    pub name: String,
    /// One check fails when it takes longer (default 2s).
    #[schemars(with = "Option<DurationText>")]
    pub timeout: Option<String>,
    pub http: Option<RawHttp>,
    pub tcp: Option<RawTcp>,
    pub dns: Option<RawDns>,
    pub command: Option<RawCommand>,
    pub prometheus: Option<RawPrometheusProbe>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// `http://HOST[:PORT]/PATH` (https is not supported yet).
    pub url: String,
    /// The expected status (default 200).
    pub status: Option<u16>,
    /// A check slower than this fails.
    #[schemars(with = "Option<DurationText>")]
    pub latency: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTcp {
    /// `IP:PORT` (`[IPv6]:PORT`).
    pub connect: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    pub name: String,
    /// `IP:PORT` of the DNS server.
    pub server: String,
    /// An address the answer must contain.
    pub expect: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawCommand {
    /// The program and its arguments (no shell).
    pub run: Vec<String>,
    /// The expected exit code (default 0).
    pub exit: Option<i32>,
    pub output_contains: Option<String>,
}

/// An instant query; exactly one of below, at-most, above, at-least.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawPrometheusProbe {
    /// `http://HOST:PORT` of the Prometheus server.
    pub url: String,
    pub query: String,
    pub below: Option<f64>,
    pub at_most: Option<f64>,
    pub above: Option<f64>,
    pub at_least: Option<f64>,
}

/// One guard: exactly one key.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawGuard {
    pub error_rate: Option<RawErrorRate>,
    pub latency: Option<RawLatencyGuard>,
    pub prometheus: Option<RawPrometheusGuard>,
    /// The run lasts at most this long.
    #[schemars(with = "Option<DurationText>")]
    pub wall_clock: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawErrorRate {
    pub probe: String,
    /// The share of failed checks (0..1) above which the run stops.
    pub above: f64,
    /// Over this window.
    #[serde(rename = "for")]
    #[schemars(with = "DurationText")]
    pub window: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawLatencyGuard {
    pub probe: String,
    /// How far the p95 may rise over its value before the faults: `50%`.
    pub p95_above_baseline: String,
    #[serde(rename = "for")]
    #[schemars(with = "DurationText")]
    pub window: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPrometheusGuard {
    pub url: String,
    /// Stops the run when it returns a sample for the whole window.
    pub query: String,
    #[serde(rename = "for")]
    #[schemars(with = "DurationText")]
    pub window: String,
}
