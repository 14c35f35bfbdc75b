//! The local API's JSON: requests, answers and errors, shared by the server and the
//! client. A fault travels as the model's `FaultSpec` serialises it (what `plan
//! --output json` prints for a fault), and is validated again on arrival by the model's
//! own parsers, so the agent takes exactly the vocabulary `inject` and scenarios take.

use std::time::Duration;

use chaos_ebpf_common::RuleCounters;
use chaos_model::spec::{self, Cidr, FaultKind, FaultSpec, Problem, RawFault, TargetSpec};
use serde::{Deserialize, Serialize};

/// The API's version prefix.
pub const PREFIX: &str = "/v1";

/// Leases a client may ask for: as `inject --lease`.
pub const MIN_LEASE: Duration = Duration::from_millis(300);
pub const MAX_LEASE: Duration = Duration::from_secs(300);

/// POST /v1/faults
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    pub fault: FaultWire,
    /// The fault ends (in the kernel too) this long after the last renewal.
    pub lease_ms: u64,
    /// Seed of the drop decisions; drawn at random when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The rule id in the key of the drop decisions (with the seed): a scenario's own
    /// rule ids keep its drops the same through the agent as without it. The fault's id
    /// when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<u32>,
}

/// POST /v1/prepare: load the programs into a target's namespaces ahead of its faults,
/// so that the first apply there only writes maps and device settings (a run asks for
/// each of its targets before its first window; loading takes about a second).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareRequest {
    /// A target as a fault names it (`container:web`, `netns:/proc/42/ns/net`, ...).
    pub target: String,
}

/// 200 of POST /v1/prepare.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prepared {
    /// The namespaces whose programs are in place now (loaded now or before).
    pub namespaces: Vec<String>,
    /// How many of them were loaded by this request.
    pub loaded: usize,
    pub prepare_us: u64,
}

/// POST /v1/faults/{id}/renew
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub lease_ms: u64,
}

/// A fault as `FaultSpec` serialises it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultWire {
    pub kind: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<BurstWire>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default)]
    pub peers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortsWire>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    #[serde(default)]
    pub shadow: bool,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_bytes_per_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsWire>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurstWire {
    pub enter: f64,
    pub exit: f64,
    pub loss: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortsWire {
    pub lo: u16,
    pub hi: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsWire {
    #[serde(default)]
    pub alpn: Vec<String>,
    #[serde(default)]
    pub versions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// A problem with one field of the fault.
fn at(field: &str, e: Problem) -> Problem {
    Problem::new(format!("fault.{field}: {}", e.problem), e.fix)
}

fn seconds(field: &str, value: Option<f64>) -> Result<Option<Duration>, Problem> {
    value
        .map(|s| {
            Duration::try_from_secs_f64(s).map_err(|_| {
                Problem::new(format!("fault.{field}: {s} is not a duration in seconds"), "give seconds, e.g. 0.1")
            })
        })
        .transpose()
}

impl FaultWire {
    /// The fault as the client's `FaultSpec` serialises (an error when a field of
    /// FaultSpec has no place here yet).
    pub fn from_spec(spec: &FaultSpec) -> serde_json::Result<FaultWire> {
        serde_json::from_value(serde_json::to_value(spec)?)
    }

    /// Validates the fault with the model's parsers (the checks `inject` makes).
    pub fn to_spec(&self) -> Result<FaultSpec, Problem> {
        let kind: FaultKind = self.kind.parse().map_err(|e| at("kind", e))?;
        let target: TargetSpec = self.target.parse().map_err(|e| at("target", e))?;
        let mut raw = RawFault { kind: Some(kind), target: Some(target), ..RawFault::default() };
        raw.probability =
            self.probability.map(spec::check_probability).transpose().map_err(|e| at("probability", e))?;
        if let Some(b) = &self.burst {
            for (field, value) in [("burst.enter", b.enter), ("burst.exit", b.exit), ("burst.loss", b.loss)] {
                spec::check_probability(value).map_err(|e| at(field, e))?;
            }
            (raw.burst_enter, raw.burst_exit, raw.burst_loss) = (Some(b.enter), Some(b.exit), Some(b.loss));
        }
        raw.mode = self.mode.as_deref().map(str::parse).transpose().map_err(|e| at("mode", e))?;
        raw.peers =
            self.peers.iter().map(|p| p.parse::<Cidr>()).collect::<Result<_, _>>().map_err(|e| at("peers", e))?;
        raw.proto = self.proto.as_deref().map(str::parse).transpose().map_err(|e| at("proto", e))?;
        raw.ports = self
            .ports
            .as_ref()
            .map(|p| format!("{}-{}", p.lo, p.hi).parse())
            .transpose()
            .map_err(|e| at("ports", e))?;
        raw.direction = self.direction.as_deref().map(str::parse).transpose().map_err(|e| at("direction", e))?;
        raw.shadow = self.shadow;
        raw.delay = seconds("delay", self.delay)?;
        raw.jitter = seconds("jitter", self.jitter)?;
        raw.distribution =
            self.distribution.as_deref().map(str::parse).transpose().map_err(|e| at("distribution", e))?;
        raw.rate = self.rate_bytes_per_sec;
        if let Some(tls) = &self.tls {
            raw.alpn = tls.alpn.clone();
            raw.tls_versions =
                tls.versions.iter().map(|v| v.parse()).collect::<Result<_, _>>().map_err(|e| at("tls.versions", e))?;
            raw.tls_mode = tls.mode.as_deref().map(str::parse).transpose().map_err(|e| at("tls.mode", e))?;
        }
        raw.validate().map_err(|e| Problem::new(format!("fault.{}: {}", e.at.field, e.problem), e.fix))
    }
}

/// A lease asked for in ms, checked.
pub fn lease(ms: u64) -> Result<Duration, Problem> {
    let lease = Duration::from_millis(ms);
    if !(MIN_LEASE..=MAX_LEASE).contains(&lease) {
        return Err(Problem::new(
            format!("lease_ms {ms} is outside {}..{}", MIN_LEASE.as_millis(), MAX_LEASE.as_millis()),
            "give a lease of 300 to 300000 ms; 1000-30000 is typical, renewed every third of it",
        ));
    }
    Ok(lease)
}

/// One rule of a fault: the fault in one network namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleInfo {
    pub netns: String,
    pub rule_id: u32,
    pub slot: u32,
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub counters: RuleCounters,
}

/// 201 of POST /v1/faults.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    pub id: u64,
    /// What the fault does, as `plan` describes it.
    pub fault: String,
    pub target: String,
    pub seed: u64,
    pub lease_ms: u64,
    /// From the request's arrival at the agent's kernel thread to its rules in force.
    pub apply_us: u64,
    pub rules: Vec<RuleInfo>,
}

/// 200 of POST /v1/faults/{id}/renew.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Renewed {
    pub id: u64,
    pub lease_ms: u64,
}

/// 200 of DELETE /v1/faults/{id}: the final counters (summed over its rules).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reverted {
    pub id: u64,
    pub fault: String,
    pub target: String,
    pub counters: RuleCounters,
    pub rules: Vec<RuleInfo>,
    pub revert_us: u64,
}

/// A fault the agent holds (GET /v1/faults).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultInfo {
    pub id: u64,
    pub kind: String,
    pub fault: String,
    pub target: String,
    pub seed: u64,
    pub lease_ms: u64,
    pub lease_left_ms: u64,
    pub applied_unix_ms: u64,
    pub counters: RuleCounters,
    pub rules: Vec<RuleInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultList {
    pub faults: Vec<FaultInfo>,
}

/// GET /v1/health
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub pid: u32,
    pub namespaces: Vec<String>,
    pub programs_loaded: usize,
    pub faults: usize,
}

/// Every error: what is wrong and what to do (status 4xx for the request, 5xx for the
/// kernel or the agent).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub problem: String,
    pub fix: String,
}

impl ApiError {
    pub fn new(status: u16, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        ApiError { status, problem: problem.into(), fix: fix.into() }
    }

    pub fn not_found(id: u64) -> Self {
        ApiError::new(
            404,
            format!("no fault {id} (reverted, or its lease lapsed)"),
            "GET /v1/faults lists the faults the agent holds",
        )
    }

    /// A model or datapath problem is the request's (400); anything else the kernel's (500).
    pub fn from_error(e: &anyhow::Error) -> Self {
        for cause in e.chain() {
            if let Some(p) = cause.downcast_ref::<Problem>() {
                return ApiError::from(p.clone());
            }
            if let Some(chaos_datapath::Error::Unsupported { problem, fix }) = cause.downcast_ref() {
                return ApiError::new(400, problem.clone(), fix.clone());
            }
        }
        ApiError::new(
            500,
            spec::shorten(&format!("{e:#}"), 300),
            "see the agent's log; `chaos-ebpf cleanup` removes anything a failure left",
        )
    }
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        ApiError::new(400, p.problem, p.fix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of fault `inject` makes arrives as the same spec.
    #[test]
    fn faults_round_trip_through_the_wire() {
        let faults = [
            r#"{"kind":"loss","target":"netns:a","probability":0.3,"burst":{"enter":0.1,"exit":0.5,"loss":1.0},"peers":["192.0.2.2/32"],"proto":"udp","ports":{"lo":53,"hi":53}}"#,
            r#"{"kind":"partition","target":"netns:a","mode":"oneway","direction":"egress","peers":["fd00::2/128"]}"#,
            r#"{"kind":"blackhole","target":"pid:42","proto":"udp","ports":{"lo":443,"hi":443}}"#,
            r#"{"kind":"delay","target":"iface:eth1","delay":0.1,"jitter":0.01,"distribution":"normal"}"#,
            r#"{"kind":"rate","target":"cgroup:/x","rate_bytes_per_sec":125000,"shadow":true}"#,
            r#"{"kind":"tls-refuse","target":"netns:a","tls":{"alpn":["h2"],"versions":["1.3"],"mode":"drop"}}"#,
        ];
        for text in faults {
            let wire: FaultWire = serde_json::from_str(text).unwrap();
            let spec = wire.to_spec().unwrap_or_else(|e| panic!("{text}: {e}"));
            let again = FaultWire::from_spec(&spec).unwrap().to_spec().unwrap();
            assert_eq!(spec, again, "{text}");
        }
    }

    #[test]
    fn bad_faults_name_the_field() {
        let cases = [
            (r#"{"kind":"lose","target":"netns:a"}"#, "fault.kind"),
            (r#"{"kind":"loss","target":"netns:a","probability":2}"#, "fault.probability"),
            (r#"{"kind":"loss","target":"nowhere"}"#, "fault.target"),
            (r#"{"kind":"partition","target":"netns:a","peers":["300.1.1.1/32"]}"#, "fault.peers"),
            (r#"{"kind":"delay","target":"netns:a","delay":-1}"#, "fault.delay"),
            (r#"{"kind":"partition","target":"netns:a","probability":0.5}"#, "fault.probability"),
        ];
        for (text, field) in cases {
            let wire: FaultWire = serde_json::from_str(text).unwrap();
            let e = wire.to_spec().unwrap_err();
            assert!(e.problem.starts_with(field), "{text}: {}", e.problem);
            assert!(!e.fix.is_empty());
        }
        assert!(lease(100).is_err() && lease(301_000).is_err() && lease(1000).is_ok());
    }
}
