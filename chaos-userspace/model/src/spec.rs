//! The fault model shared by `inject` and scenario files: what the user asked for, parsed
//! from strings and validated without touching the system (ripgrep's low/high args
//! split: parse, then validate, then resolve in chaos-datapath's `resolve.rs`).

use std::{fmt, net::IpAddr, str::FromStr, time::Duration};

use chaos_ebpf_common::{self as common, probability_threshold, Rule};
use serde::Serialize;

pub use crate::problem::Problem;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    Loss,
    Partition,
    Blackhole,
    Delay,
    Rate,
    /// Refuse TLS ClientHellos offering given ALPN protocols or TLS versions.
    #[serde(rename = "tls-refuse")]
    TlsRefuse,
}

impl FaultKind {
    pub const NAMES: &'static str = "loss, partition, blackhole, delay, rate, tls-refuse";

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Loss => "loss",
            FaultKind::Partition => "partition",
            FaultKind::Blackhole => "blackhole",
            FaultKind::Delay => "delay",
            FaultKind::Rate => "rate",
            FaultKind::TlsRefuse => "tls-refuse",
        }
    }

    /// Faults that set departure times, which only sch_fq on the egress device enforces
    /// (ingress: on the egress of the far end of the target's veth).
    pub fn needs_fq(self) -> bool {
        matches!(self, FaultKind::Delay | FaultKind::Rate)
    }
}

impl FromStr for FaultKind {
    type Err = Problem;
    fn from_str(s: &str) -> Result<Self, Problem> {
        match s {
            "loss" => Ok(FaultKind::Loss),
            "partition" => Ok(FaultKind::Partition),
            "blackhole" => Ok(FaultKind::Blackhole),
            "delay" => Ok(FaultKind::Delay),
            "rate" => Ok(FaultKind::Rate),
            "tls-refuse" => Ok(FaultKind::TlsRefuse),
            other => Err(Problem::new(
                format!("unknown fault '{}'", shorten(other, 60)),
                format!("use one of: {}", FaultKind::NAMES),
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionMode {
    /// Both directions cut.
    #[default]
    Both,
    /// One direction cut (`--direction egress` or `ingress`).
    Oneway,
    /// Only new TCP connections fail; established ones keep working.
    New,
}

impl FromStr for PartitionMode {
    type Err = Problem;
    fn from_str(s: &str) -> Result<Self, Problem> {
        match s {
            "both" => Ok(PartitionMode::Both),
            "oneway" | "one-way" => Ok(PartitionMode::Oneway),
            "new" | "new-connections" => Ok(PartitionMode::New),
            other => Err(Problem::new(
                format!("unknown partition mode '{}'", shorten(other, 60)),
                "use both, oneway (with --direction egress|ingress) or new (new TCP connections only)",
            )),
        }
    }
}

/// How a tls-refuse fault ends a refused connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// The ClientHello and the client's later packets vanish: the client times out.
    Drop,
    /// The client gets a TCP reset built from its ClientHello: it fails at once.
    #[default]
    Reset,
}

impl FromStr for TlsMode {
    type Err = Problem;
    fn from_str(s: &str) -> Result<Self, Problem> {
        match s {
            "drop" => Ok(TlsMode::Drop),
            "reset" => Ok(TlsMode::Reset),
            other => Err(Problem::new(
                format!("unknown tls-refuse mode '{}'", shorten(other, 60)),
                "use reset (the client gets a TCP reset at once) or drop (the connection goes silent, the client times out)",
            )),
        }
    }
}

/// A TLS version a tls-refuse fault refuses (1.0 .. 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TlsVersion {
    #[serde(rename = "1.0")]
    V1_0,
    #[serde(rename = "1.1")]
    V1_1,
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

impl TlsVersion {
    fn bit(self) -> u32 {
        match self {
            TlsVersion::V1_0 => common::tls::V1_0,
            TlsVersion::V1_1 => common::tls::V1_1,
            TlsVersion::V1_2 => common::tls::V1_2,
            TlsVersion::V1_3 => common::tls::V1_3,
        }
    }
}

impl FromStr for TlsVersion {
    type Err = Problem;
    fn from_str(s: &str) -> Result<Self, Problem> {
        let bare = s.trim().trim_start_matches("tls").trim_start_matches("TLS").trim_start_matches('v');
        match bare {
            "1.0" | "1" => Ok(TlsVersion::V1_0),
            "1.1" => Ok(TlsVersion::V1_1),
            "1.2" => Ok(TlsVersion::V1_2),
            "1.3" => Ok(TlsVersion::V1_3),
            _ => Err(Problem::new(format!("unknown TLS version '{}'", shorten(s, 60)), "use 1.0, 1.1, 1.2 or 1.3")),
        }
    }
}

/// An ALPN protocol name a tls-refuse fault refuses (`h2`, `http/1.1`, ...): 1 to 16
/// printable ASCII characters (the kernel compares names up to that length).
pub fn parse_alpn(s: &str) -> Result<String, Problem> {
    let ok = !s.is_empty() && s.len() <= common::tls::ALPN_NAME_MAX && s.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(s.to_owned())
    } else {
        Err(Problem::new(
            format!(
                "ALPN protocol '{}' is not 1 to {} printable ASCII characters",
                shorten(s, 60),
                common::tls::ALPN_NAME_MAX
            ),
            "give an ALPN protocol id such as h2, http/1.1 or h3",
        ))
    }
}

/// What a tls-refuse fault refuses and how.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TlsRefusal {
    pub alpn: Vec<String>,
    pub versions: Vec<TlsVersion>,
    pub mode: TlsMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Any,
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    fn code(self) -> u32 {
        match self {
            Proto::Any => common::proto::ANY,
            Proto::Tcp => common::proto::TCP,
            Proto::Udp => common::proto::UDP,
            Proto::Icmp => common::proto::ICMP,
        }
    }
}

impl FromStr for Proto {
    type Err = Problem;
    fn from_str(s: &str) -> Result<Self, Problem> {
        match s {
            "any" => Ok(Proto::Any),
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "icmp" => Ok(Proto::Icmp),
            other => Err(Problem::new(
                format!("unknown protocol '{}'", shorten(other, 60)),
                "use tcp, udp, icmp (ICMP and ICMPv6) or any",
            )),
        }
    }
}

/// Shape of the delay jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Uniform in [delay - jitter, delay + jitter].
    #[default]
    Uniform,
    /// Normal-ish around delay with standard deviation jitter (Irwin-Hall, bounded at
    /// about 3.5 jitter).
    Normal,
}

impl FromStr for Distribution {
    type Err = Problem;
    fn from_str(s: &str) -> Result<Self, Problem> {
        match s {
            "uniform" => Ok(Distribution::Uniform),
            "normal" => Ok(Distribution::Normal),
            other => Err(Problem::new(
                format!("unknown jitter distribution '{}'", shorten(other, 60)),
                "use uniform or normal",
            )),
        }
    }
}

/// A bandwidth like tc writes it: `100kbit`, `10mbit`, `1gbit` (or `bit`), as bytes/s.
pub fn parse_rate(s: &str) -> Result<u64, Problem> {
    let bad = || {
        Problem::new(
            format!("'{}' is not a rate", shorten(s, 60)),
            "write a bandwidth such as 500kbit, 10mbit or 1gbit",
        )
    };
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
    let value: f64 = t[..split].parse().map_err(|_| bad())?;
    let scale = match &t[split..] {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => return Err(bad()),
    };
    let bytes = value * scale / 8.0;
    if !(1000.0..=1.25e11).contains(&bytes) {
        return Err(Problem::new(
            format!("rate {} is outside 8kbit..1000gbit", shorten(s, 60)),
            "write a bandwidth such as 10mbit",
        ));
    }
    Ok(bytes as u64)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Egress,
    Ingress,
    Both,
}

impl Direction {
    pub fn bits(self) -> u32 {
        match self {
            Direction::Egress => common::direction::EGRESS,
            Direction::Ingress => common::direction::INGRESS,
            Direction::Both => common::direction::BOTH,
        }
    }
}

impl FromStr for Direction {
    type Err = Problem;
    fn from_str(s: &str) -> Result<Self, Problem> {
        match s {
            "egress" | "out" => Ok(Direction::Egress),
            "ingress" | "in" => Ok(Direction::Ingress),
            "both" => Ok(Direction::Both),
            other => Err(Problem::new(
                format!("unknown direction '{}'", shorten(other, 60)),
                "use egress (packets the target sends), ingress (packets it receives) or both",
            )),
        }
    }
}

/// Inclusive port range; matches when the source or the destination port is in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl FromStr for PortRange {
    type Err = Problem;
    fn from_str(s: &str) -> Result<Self, Problem> {
        let fix = "write a port (443) or an inclusive range (8000-8100), ports 1-65535";
        let port = |p: &str| -> Result<u16, Problem> {
            match p.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(Problem::new(format!("'{}' is not a port or port range", shorten(s, 60)), fix)),
                Ok(v) => Ok(v),
            }
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(Problem::new(
                format!("port range '{}' runs backwards", shorten(s, 60)),
                "write the lower port first",
            ));
        }
        Ok(PortRange { lo, hi })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// An IPv4 or IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// The prefix as the address trie stores it: the address as IPv6 (IPv4 mapped), the
    /// length counted in those 128 bits, and the family (part of the trie key, so `::/0`
    /// never covers IPv4 packets).
    pub fn prefix(&self) -> common::Prefix {
        match self.addr {
            IpAddr::V4(v4) => common::Prefix::new(common::family::IPV4, v4.to_ipv6_mapped().octets(), 96 + self.len),
            IpAddr::V6(v6) => common::Prefix::new(common::family::IPV6, v6.octets(), self.len),
        }
    }
}

impl FromStr for Cidr {
    type Err = Problem;
    fn from_str(s: &str) -> Result<Self, Problem> {
        let fix = "write an address or prefix such as 192.0.2.2, 198.51.100.0/24 or fd00::/8";
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| Problem::new(format!("'{}' is not an IP address or CIDR", shorten(s, 60)), fix))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(v) if v <= max => v,
                _ => return Err(Problem::new(format!("prefix length in '{}' must be 0-{max}", shorten(s, 60)), fix)),
            },
        };
        Ok(Cidr { addr, len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a fault is aimed at, as the user wrote it (`KIND:VALUE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// An interface in the tool's own network namespace.
    Iface(String),
    /// Every interface except lo in a named namespace (`ip netns`) or a namespace path.
    Netns(String),
    /// A cgroup v2 path, relative to the cgroup2 mount or absolute.
    Cgroup(String),
    /// The cgroup and network namespace of a process.
    Pid(u32),
    /// A Docker container by name or id: its network namespace, found through the
    /// Docker API when the fault starts.
    Container(String),
    /// The running Docker containers with a label (`container-label:KEY=VALUE`): one
    /// fault each, bound when the run starts.
    ContainerLabel { key: String, value: String },
    /// Members of the cluster lab (`node:n2`, `leader`, ...): their network namespaces,
    /// resolved when the run starts.
    Lab(crate::action::LabSelector),
}

/// Longest target value (a namespace or cgroup path); keeps error lines short.
const MAX_TARGET_LEN: usize = 256;
/// Linux interface names are at most IFNAMSIZ - 1 bytes.
const IFNAMSIZ: usize = 16;

impl TargetSpec {
    pub const KINDS: &'static str =
        "iface:NAME, netns:NAME, cgroup:PATH, pid:PID, container:NAME, container-label:KEY=VALUE, or a lab member (node:NAME, leader, followers, minority, majority)";

    /// Whether the kernel can tell this target's packets apart on ingress. A cgroup is
    /// known from the sending socket, which exists on egress only: at TC ingress the
    /// packet has not been assigned to a socket yet.
    pub fn egress_only(&self) -> bool {
        matches!(self, TargetSpec::Cgroup(_) | TargetSpec::Pid(_))
    }
}

impl FromStr for TargetSpec {
    type Err = Problem;
    fn from_str(s: &str) -> Result<Self, Problem> {
        let fix = format!("write the target as {}", TargetSpec::KINDS);
        if let Some(selector) = crate::action::LabSelector::parse(s) {
            return selector.map(TargetSpec::Lab);
        }
        let Some((kind, value)) = s.split_once(':') else {
            return Err(Problem::new(format!("target '{}' has no kind", shorten(s, 60)), fix));
        };
        if value.is_empty() {
            return Err(Problem::new(format!("target '{}' has no value after ':'", shorten(s, 60)), fix));
        }
        if value.len() > MAX_TARGET_LEN {
            return Err(Problem::new(
                format!("target '{}' is {} bytes long; at most {MAX_TARGET_LEN}", shorten(s, 60), value.len()),
                "give a shorter name or path (a symlink or bind mount can name a deep path)",
            ));
        }
        match kind {
            "iface" if value.len() > IFNAMSIZ - 1 || value.contains(['/', ' ', '\t', '\n', ':']) => Err(Problem::new(
                format!("'{}' is not an interface name", shorten(value, 60)),
                "interface names have at most 15 characters and no '/', ':' or spaces (see `ip link`)",
            )),
            "iface" => Ok(TargetSpec::Iface(value.to_owned())),
            "netns" => Ok(TargetSpec::Netns(value.to_owned())),
            "cgroup" => Ok(TargetSpec::Cgroup(value.to_owned())),
            "pid" => match value.parse::<u32>() {
                Ok(pid) if pid > 0 => Ok(TargetSpec::Pid(pid)),
                _ => Err(Problem::new(format!("'{}' is not a process id", shorten(value, 60)), "write pid:1234")),
            },
            "container" if !is_container_ref(value) => Err(Problem::new(
                format!("'{}' is not a container name or id", shorten(value, 60)),
                "write container:NAME or container:ID as `docker ps` shows them (letters, digits, '_', '.', '-')",
            )),
            "container" => Ok(TargetSpec::Container(value.to_owned())),
            "container-label" => match value.split_once('=') {
                Some((key, value)) if !key.is_empty() && !key.contains(char::is_whitespace) => {
                    Ok(TargetSpec::ContainerLabel { key: key.to_owned(), value: value.to_owned() })
                }
                _ => Err(Problem::new(
                    format!("'{}' is not a label selector", shorten(value, 60)),
                    "write container-label:KEY=VALUE (e.g. container-label:app=web), as `docker ps --filter label=...` takes it",
                )),
            },
            other => Err(Problem::new(format!("unknown target kind '{}'", shorten(other, 60)), fix)),
        }
    }
}

/// A Docker container name (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`, a leading '/' as the API
/// writes it) or id (hex).
fn is_container_ref(value: &str) -> bool {
    let name = value.strip_prefix('/').unwrap_or(value);
    name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetSpec::Iface(v) => write!(f, "iface:{v}"),
            TargetSpec::Netns(v) => write!(f, "netns:{v}"),
            TargetSpec::Cgroup(v) => write!(f, "cgroup:{v}"),
            TargetSpec::Pid(v) => write!(f, "pid:{v}"),
            TargetSpec::Container(v) => write!(f, "container:{v}"),
            TargetSpec::ContainerLabel { key, value } => write!(f, "container-label:{key}={value}"),
            TargetSpec::Lab(s) => write!(f, "{s}"),
        }
    }
}

impl Serialize for TargetSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A probability in [0, 1].
pub fn parse_probability(s: &str) -> Result<f64, Problem> {
    let fix = "write a probability between 0 and 1, e.g. 0.3 (or a percentage, 30%)";
    let value = match s.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<f64>().map(|v| v / 100.0),
        None => s.trim().parse::<f64>(),
    }
    .map_err(|_| Problem::new(format!("'{}' is not a probability", shorten(s, 60)), fix))?;
    check_probability(value).map_err(|_| Problem::new(format!("probability {} is outside 0..1", shorten(s, 60)), fix))
}

pub fn check_probability(value: f64) -> Result<f64, Problem> {
    if value.is_finite() && (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(Problem::new(
            format!("probability {value} is outside 0..1"),
            "write a probability between 0 and 1, e.g. 0.3",
        ))
    }
}

/// The longest duration any value may give (a fault, a step, a whole run): a week.
/// Longer is a typo, and bounding it here keeps every sum and deadline far from
/// overflow (`Instant + Duration`, milliseconds in u64).
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// `500ms`, `30s`, `5m`, `1h`, `1m30s`; a bare number is seconds. At most `MAX_DURATION`;
/// never panics (checked before any conversion that could overflow).
pub fn parse_duration(s: &str) -> Result<Duration, Problem> {
    let shown = shorten(s, 40);
    let bad =
        || Problem::new(format!("'{shown}' is not a duration"), "write a duration such as 500ms, 30s, 5m, 1h or 1m30s");
    let too_long = || {
        Problem::new(
            format!("duration '{shown}' is longer than the maximum of 7 days"),
            "give a duration of at most 7d (168h), such as 30s, 5m or 1h",
        )
    };
    // Seconds as f64, bounded before `Duration::from_secs_f64` (which panics on overflow).
    let to_duration = |secs: f64| -> Result<Duration, Problem> {
        if !secs.is_finite() || secs < 0.0 {
            Err(bad())
        } else if secs > MAX_DURATION.as_secs_f64() {
            Err(too_long())
        } else {
            Ok(Duration::from_secs_f64(secs))
        }
    };
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return to_duration(secs);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = total.checked_add(to_duration(value * scale)?).filter(|t| *t <= MAX_DURATION).ok_or_else(too_long)?;
    }
    Ok(total)
}

pub use chaos_ebpf_common::text::{list_some, shorten};

pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if d < Duration::from_secs(1) && d.as_nanos().is_multiple_of(1_000_000) {
        format!("{ms}ms")
    } else if d < Duration::from_secs(1) {
        format!("{}us", d.as_micros())
    } else if !ms.is_multiple_of(1000) {
        format!("{:.3}s", d.as_secs_f64())
    } else {
        format!("{}s", ms / 1000)
    }
}

/// Gilbert-Elliott burst loss parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Burst {
    /// Per-packet probability of moving from the good to the bad state.
    pub enter: f64,
    /// Per-packet probability of moving from the bad back to the good state.
    pub exit: f64,
    /// Loss probability in the bad state (the good state uses `probability`).
    pub loss: f64,
}

/// One fault, validated, not yet bound to a kernel object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultSpec {
    pub kind: FaultKind,
    pub target: TargetSpec,
    /// Loss probability (loss only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<Burst>,
    /// Partition mode (partition only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<PartitionMode>,
    pub peers: Vec<Cidr>,
    pub proto: Proto,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
    pub direction: Direction,
    pub shadow: bool,
    /// Delay: base delay, jitter and its shape.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_secs")]
    pub delay: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_secs")]
    pub jitter: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distribution: Option<Distribution>,
    /// Rate: bytes per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_bytes_per_sec: Option<u64>,
    /// tls-refuse: what it refuses and how.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsRefusal>,
}

fn ser_opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// The longest delay a rule may ask for; fq's horizon is set above it.
pub const MAX_DELAY: Duration = Duration::from_nanos(common::MAX_DELAY_NS);

/// What the user wrote for one fault, before validation; both the CLI and the scenario
/// file fill this in.
#[derive(Debug, Clone, Default)]
pub struct RawFault {
    pub kind: Option<FaultKind>,
    pub target: Option<TargetSpec>,
    pub probability: Option<f64>,
    pub burst_enter: Option<f64>,
    pub burst_exit: Option<f64>,
    pub burst_loss: Option<f64>,
    pub mode: Option<PartitionMode>,
    pub peers: Vec<Cidr>,
    pub proto: Option<Proto>,
    pub ports: Option<PortRange>,
    pub direction: Option<Direction>,
    pub shadow: bool,
    pub delay: Option<Duration>,
    pub jitter: Option<Duration>,
    pub distribution: Option<Distribution>,
    pub rate: Option<u64>,
    /// tls-refuse: ALPN protocols, TLS versions, mode (raw: checked in validate).
    pub alpn: Vec<String>,
    pub tls_versions: Vec<TlsVersion>,
    pub tls_mode: Option<TlsMode>,
}

impl RawFault {
    /// Checks the combination of fields; pure, touches nothing.
    pub fn validate(&self) -> Result<FaultSpec, Problem> {
        let kind = self
            .kind
            .ok_or_else(|| Problem::field("fault", "no fault given", format!("name one of: {}", FaultKind::NAMES)))?;
        let target = self.target.clone().ok_or_else(|| {
            Problem::field("target", "no target given", format!("add a target: {}", TargetSpec::KINDS))
        })?;
        let only = |field: &'static str, set: bool, owner: &str| -> Result<(), Problem> {
            if set {
                Err(Problem::field(
                    field,
                    format!("'{field}' does not apply to a {} fault", kind.name()),
                    format!("remove it, or use it with a {owner} fault"),
                ))
            } else {
                Ok(())
            }
        };
        let burst_set = self.burst_enter.is_some() || self.burst_exit.is_some() || self.burst_loss.is_some();
        if kind != FaultKind::Loss {
            only("probability", self.probability.is_some(), "loss")?;
            only("burst", burst_set, "loss")?;
        }
        if kind != FaultKind::Partition {
            only("mode", self.mode.is_some(), "partition")?;
        }
        if kind != FaultKind::Delay {
            only("delay", self.delay.is_some(), "delay")?;
            only("jitter", self.jitter.is_some() || self.distribution.is_some(), "delay")?;
        }
        if kind != FaultKind::Rate {
            only("rate", self.rate.is_some(), "rate")?;
        }
        if kind != FaultKind::TlsRefuse {
            only("alpn", !self.alpn.is_empty(), "tls-refuse")?;
            only("tls-versions", !self.tls_versions.is_empty(), "tls-refuse")?;
            only("mode", self.tls_mode.is_some(), "tls-refuse")?;
        }
        let mut proto = self.proto.unwrap_or_default();
        let mut ports = self.ports;
        let mut tls = None;
        if kind == FaultKind::TlsRefuse {
            // ClientHellos travel over TCP; QUIC's (UDP) are encrypted: block QUIC with a
            // blackhole on udp instead.
            if !matches!(proto, Proto::Any | Proto::Tcp) {
                return Err(Problem::field(
                    "proto",
                    "tls-refuse reads TLS ClientHellos, which travel over TCP",
                    "drop proto (tcp is implied); to block QUIC use a blackhole with proto udp and ports 443",
                ));
            }
            proto = Proto::Tcp;
            ports = Some(ports.unwrap_or(PortRange { lo: 443, hi: 443 }));
            if self.alpn.is_empty() && self.tls_versions.is_empty() {
                return Err(Problem::field(
                    "alpn",
                    "a tls-refuse fault needs something to refuse: ALPN protocols or TLS versions",
                    "add alpn: h2 (--alpn h2: ClientHellos offering HTTP/2) or tls-versions: [1.3] (--tls-versions 1.3)",
                ));
            }
            if self.alpn.len() > common::tls::MAX_RULE_ALPN {
                return Err(Problem::field(
                    "alpn",
                    format!(
                        "{} ALPN protocols given, at most {} fit in one rule",
                        self.alpn.len(),
                        common::tls::MAX_RULE_ALPN
                    ),
                    "name fewer protocols, or add a second tls-refuse step with the rest",
                ));
            }
            let mut alpn = Vec::new();
            for name in &self.alpn {
                let name = parse_alpn(name).map_err(|e| Problem::field("alpn", e.problem, e.fix))?;
                if !alpn.contains(&name) {
                    alpn.push(name);
                }
            }
            let mut versions = self.tls_versions.clone();
            versions.dedup();
            tls = Some(TlsRefusal { alpn, versions, mode: self.tls_mode.unwrap_or_default() });
        }
        let proto = proto;
        if ports.is_some() && !matches!(proto, Proto::Tcp | Proto::Udp) {
            return Err(Problem::field("ports", "a port range needs a protocol with ports", "add proto tcp or udp"));
        }
        let egress_only = target.egress_only();
        let default_direction = if egress_only || kind.needs_fq() { Direction::Egress } else { Direction::Both };
        let mut direction = self.direction.unwrap_or(default_direction);
        let mut probability = None;
        let mut burst = None;
        let mut mode = None;
        let (mut delay, mut jitter, mut distribution, mut rate) = (None, None, None, None);
        match kind {
            FaultKind::Loss => {
                let p = self.probability.ok_or_else(|| {
                    Problem::field(
                        "probability",
                        "a loss fault needs a probability",
                        "add probability 0.3 (any value 0..1)",
                    )
                })?;
                probability = Some(check_probability(p).map_err(|e| Problem::field("probability", e.problem, e.fix))?);
                if burst_set {
                    let (Some(enter), Some(exit)) = (self.burst_enter, self.burst_exit) else {
                        return Err(Problem::field(
                            "burst",
                            "burst loss needs both an enter and an exit probability",
                            "give burst enter and exit (e.g. enter 0.01, exit 0.3); loss in the bad state defaults to 1",
                        ));
                    };
                    let loss = self.burst_loss.unwrap_or(1.0);
                    for value in [enter, exit, loss] {
                        check_probability(value).map_err(|e| Problem::field("burst", e.problem, e.fix))?;
                    }
                    burst = Some(Burst { enter, exit, loss });
                }
            }
            FaultKind::Partition => {
                let m = self.mode.unwrap_or_default();
                mode = Some(m);
                match m {
                    PartitionMode::Both => {
                        if matches!(self.direction, Some(d) if d != Direction::Both) {
                            return Err(Problem::field(
                                "direction",
                                "a 'both' partition cuts both directions, so a direction contradicts it",
                                "use mode oneway with the direction to cut, or drop the direction",
                            ));
                        }
                        direction = Direction::Both;
                    }
                    PartitionMode::Oneway => match self.direction {
                        Some(Direction::Egress) | Some(Direction::Ingress) => {}
                        _ => {
                            return Err(Problem::field(
                                "direction",
                                "a one-way partition needs the direction to cut",
                                "add direction egress (the target cannot send) or ingress (it cannot receive)",
                            ))
                        }
                    },
                    PartitionMode::New => {
                        if matches!(proto, Proto::Udp | Proto::Icmp) {
                            return Err(Problem::field(
                                "proto",
                                "'new connections only' applies to TCP; UDP and ICMP have no connections",
                                "use proto tcp (or any), or mode both",
                            ));
                        }
                    }
                }
            }
            FaultKind::Delay => {
                let d = self.delay.ok_or_else(|| {
                    Problem::field(
                        "delay",
                        "a delay fault needs a delay",
                        "add delay 100ms (and optionally jitter 10ms)",
                    )
                })?;
                let j = self.jitter.unwrap_or_default();
                // The longest departure time a packet can get: uniform jitter adds at most
                // `jitter`, the normal one at most 3.47 `jitter` (the Irwin-Hall bound of
                // jitter_offset). sch_fq drops what lies beyond its horizon, so the whole
                // of it must stay within MAX_DELAY (the horizon is set 1 s past that).
                let normal = self.distribution == Some(Distribution::Normal);
                let spread = if normal { j.saturating_mul(7) / 2 } else { j };
                let longest = d.saturating_add(spread);
                if longest > MAX_DELAY {
                    return Err(Problem::field(
                        "delay",
                        format!(
                            "delay {} plus jitter reaches {} (jitter adds up to {}{}), beyond the {}s that sch_fq holds packets",
                            format_duration(d),
                            format_duration(longest),
                            if normal { "3.5 x " } else { "" },
                            format_duration(j),
                            MAX_DELAY.as_secs()
                        ),
                        format!("keep delay + {}jitter within {}s", if normal { "3.5 x " } else { "" }, MAX_DELAY.as_secs()),
                    ));
                }
                if d.is_zero() && j.is_zero() {
                    return Err(Problem::field("delay", "a delay of zero does nothing", "give a delay such as 100ms"));
                }
                delay = Some(d);
                jitter = self.jitter;
                distribution = self.jitter.map(|_| self.distribution.unwrap_or_default());
            }
            FaultKind::Rate => {
                rate = Some(
                    self.rate.ok_or_else(|| Problem::field("rate", "a rate fault needs a rate", "add rate 10mbit"))?,
                );
            }
            FaultKind::TlsRefuse => {}
            FaultKind::Blackhole => {
                if proto == Proto::Any {
                    return Err(Problem::field(
                        "proto",
                        "a blackhole drops one protocol (and port set); none was given",
                        "add proto udp and ports 443 (forces QUIC to fall back to TCP), or use a partition to cut everything",
                    ));
                }
            }
        }
        if kind.needs_fq() && direction == Direction::Both {
            return Err(Problem::field(
                "direction",
                format!("a {} fault acts on one direction at a time", kind.name()),
                "use direction egress (what the target sends) or ingress (what it receives, delayed on the far end of its veth); for both, run two faults",
            ));
        }
        if egress_only && direction != Direction::Egress {
            return Err(Problem::field(
                "direction",
                format!(
                    "{target} can be faulted on egress only: at TC ingress the kernel has not yet \
                     assigned the packet to a socket, so its cgroup is unknown"
                ),
                "use direction egress (or mode oneway with direction egress for a partition), or target the network namespace (netns:NAME) or interface",
            ));
        }
        Ok(FaultSpec {
            kind,
            target,
            probability,
            burst,
            mode,
            peers: self.peers.clone(),
            proto,
            ports,
            direction,
            shadow: self.shadow,
            delay,
            jitter,
            distribution,
            rate_bytes_per_sec: rate,
            tls,
        })
    }
}

impl FaultSpec {
    /// Whether an intensity below 1 means something for this fault: a loss probability
    /// and a delay scale; a rate cap, a partition and a blackhole do not (a rate scaled
    /// down would be a harsher fault, a partition has no magnitude).
    pub fn scales(&self) -> bool {
        matches!(self.kind, FaultKind::Loss | FaultKind::Delay)
    }

    /// Refuses an intensity other than 1 on a fault that has no magnitude to scale.
    pub fn check_intensity(&self, intensity: f64) -> Result<(), Problem> {
        if !(intensity.is_finite() && intensity > 0.0 && intensity <= 1.0) {
            return Err(Problem::field(
                "intensity",
                format!("intensity {intensity} is outside 0 < x <= 1"),
                "give an intensity above 0 and at most 1 (1 is the fault as written)",
            ));
        }
        if intensity != 1.0 && !self.scales() {
            return Err(Problem::field(
                "intensity",
                format!(
                    "a {} fault has no magnitude to scale, so intensity {intensity} means nothing",
                    self.kind.name()
                ),
                "intensity scales loss probabilities and delays; for a partial partition use a loss fault, for a gentler rate write a higher rate",
            ));
        }
        Ok(())
    }

    /// The fault at `intensity` (0 < x <= 1): loss probabilities times x (the burst's
    /// entering and loss probabilities too; its exit probability, which shortens bursts,
    /// stays), delay and jitter times x. Other faults are returned as they are
    /// (`check_intensity` refuses x != 1 for them).
    pub fn at_intensity(&self, intensity: f64) -> FaultSpec {
        let x = if intensity.is_finite() { intensity.clamp(0.0, 1.0) } else { 1.0 };
        let mut out = self.clone();
        if x == 1.0 || !self.scales() {
            return out;
        }
        let scale = |d: Duration| Duration::from_nanos((d.as_nanos() as f64 * x).round() as u64);
        // Rounded to 12 digits so that plans print 0.28, not 0.27999999999999997.
        let times = |p: f64| (p * x * 1e12).round() / 1e12;
        out.probability = self.probability.map(times);
        out.burst = self.burst.map(|b| Burst { enter: times(b.enter), exit: b.exit, loss: times(b.loss) });
        out.delay = self.delay.map(scale);
        out.jitter = self.jitter.map(scale);
        out
    }

    /// Departure times for what the target receives: EDT works on egress only, so the
    /// rule goes on the egress of the far end of the target's veths.
    pub fn acts_on_far_end(&self) -> bool {
        self.kind.needs_fq() && self.direction == Direction::Ingress
    }

    /// The map entry for this fault. `ifindex` and `cgroup_id` come from resolving the
    /// target (0 = any).
    pub fn rule(&self, seed: u64, rule_id: u32, ifindex: u32, cgroup_id: u64) -> Rule {
        let mut flags = 0;
        if self.shadow {
            flags |= common::flags::SHADOW;
        }
        if !self.peers.is_empty() {
            flags |= common::flags::PEERS;
        }
        let mut rule = Rule {
            seed,
            cgroup_id,
            rule_id,
            ifindex,
            directions: self.direction.bits(),
            proto: self.proto.code(),
            port_lo: self.ports.map_or(0, |p| p.lo),
            port_hi: self.ports.map_or(u16::MAX, |p| p.hi),
            ..Rule::default()
        };
        rule.action = match (self.kind, self.mode) {
            (FaultKind::Loss, _) => common::action::LOSS,
            (FaultKind::Partition, Some(PartitionMode::New)) => common::action::DROP_NEW_TCP,
            (FaultKind::Partition, _) | (FaultKind::Blackhole, _) => common::action::DROP,
            (FaultKind::Delay, _) => common::action::DELAY,
            (FaultKind::Rate, _) => common::action::RATE,
            (FaultKind::TlsRefuse, _) => common::action::TLS_REFUSE,
        };
        if let Some(tls) = &self.tls {
            for (slot, name) in rule.tls_alpn.iter_mut().zip(&tls.alpn) {
                // parse_alpn checked the length, so the digest exists.
                *slot = common::tls::alpn_digest_of(name.as_bytes()).unwrap_or(0);
            }
            rule.tls_versions = tls.versions.iter().fold(0, |bits, v| bits | v.bit());
            rule.tls_mode = match tls.mode {
                TlsMode::Drop => common::tls::MODE_DROP,
                TlsMode::Reset => common::tls::MODE_RESET,
            };
        }
        rule.delay_ns = self.delay.map_or(0, |d| d.as_nanos() as u64);
        rule.jitter_ns = self.jitter.map_or(0, |d| d.as_nanos() as u64);
        if self.distribution == Some(Distribution::Normal) {
            flags |= common::flags::JITTER_NORMAL;
        }
        rule.rate_bytes_per_sec = self.rate_bytes_per_sec.unwrap_or(0);
        if self.acts_on_far_end() {
            // There the target's peers are the packets' sources.
            rule.directions = common::direction::EGRESS;
            flags |= common::flags::PEER_IS_SOURCE;
        }
        if let Some(p) = self.probability {
            rule.loss_threshold = probability_threshold(p);
        }
        if let Some(b) = self.burst {
            flags |= common::flags::BURST;
            rule.burst_enter = probability_threshold(b.enter);
            rule.burst_exit = probability_threshold(b.exit);
            rule.burst_loss = probability_threshold(b.loss);
        }
        rule.flags = flags;
        rule
    }

    /// One line for progress output and status.
    pub fn describe(&self) -> String {
        let mut out = format!("{} on {}", self.kind.name(), self.target);
        if let Some(p) = self.probability {
            out += &format!(" p={p}");
        }
        if let Some(b) = self.burst {
            out += &format!(" burst(enter={} exit={} loss={})", b.enter, b.exit, b.loss);
        }
        if let Some(d) = self.delay {
            out += &format!(" delay={}", format_duration(d));
        }
        if let Some(j) = self.jitter {
            out += &format!(" jitter={}", format_duration(j));
            if self.distribution == Some(Distribution::Normal) {
                out += "(normal)";
            }
        }
        if let Some(r) = self.rate_bytes_per_sec {
            out += &format!(" rate={:.3}mbit", r as f64 * 8.0 / 1e6);
        }
        if let Some(m) = self.mode {
            out += &format!(" mode={}", serde_json::to_value(m).unwrap().as_str().unwrap_or(""));
        }
        if let Some(tls) = &self.tls {
            if !tls.alpn.is_empty() {
                out += &format!(" alpn={}", tls.alpn.join(","));
            }
            if !tls.versions.is_empty() {
                let v: Vec<String> = tls
                    .versions
                    .iter()
                    .map(|v| serde_json::to_value(v).unwrap().as_str().unwrap_or("").to_owned())
                    .collect();
                out += &format!(" tls-versions={}", v.join(","));
            }
            out += &format!(" mode={}", serde_json::to_value(tls.mode).unwrap().as_str().unwrap_or(""));
        }
        out += &format!(" dir={}", serde_json::to_value(self.direction).unwrap().as_str().unwrap_or(""));
        if self.proto != Proto::Any {
            out += &format!(" proto={}", serde_json::to_value(self.proto).unwrap().as_str().unwrap_or(""));
        }
        if let Some(ports) = self.ports {
            out += &format!(" ports={ports}");
        }
        if !self.peers.is_empty() {
            let peers: Vec<String> = self.peers.iter().map(ToString::to_string).collect();
            out += &format!(" peers={}", peers.join(","));
        }
        if self.shadow {
            out += " (shadow)";
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: FaultKind, target: &str) -> RawFault {
        RawFault { kind: Some(kind), target: Some(target.parse().unwrap()), ..RawFault::default() }
    }

    #[test]
    fn parses_values() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        for bad in ["", "s", "10x", "-1", "1.5.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(2 * 86400));
        assert_eq!(parse_duration("7d").unwrap(), MAX_DURATION);
        for too_long in ["1e20", "1e19", "604801", "7d1ms", "168h1s", "99999999999999999999h"] {
            assert!(parse_duration(too_long).unwrap_err().problem.contains("7 days"), "{too_long}");
        }
        assert!("iface:0123456789abcdef".parse::<TargetSpec>().is_err(), "16 characters");
        assert!("iface:0123456789abcde".parse::<TargetSpec>().is_ok(), "15 characters");
        assert!(format!("netns:{}", "a".repeat(300)).parse::<TargetSpec>().is_err());
        assert_eq!(parse_probability("30%").unwrap(), 0.3);
        assert!(parse_probability("1.5").is_err());
        assert!(parse_probability("NaN").is_err());
        assert_eq!("443".parse::<PortRange>().unwrap(), PortRange { lo: 443, hi: 443 });
        assert!("9-1".parse::<PortRange>().is_err());
        assert!("0".parse::<PortRange>().is_err());
        assert!("70000".parse::<PortRange>().is_err());
        let c: Cidr = "198.51.100.0/24".parse().unwrap();
        assert_eq!(c.len, 24);
        assert!("192.0.2.1/33".parse::<Cidr>().is_err());
        assert_eq!("fd00::1".parse::<Cidr>().unwrap().len, 128);
        assert_eq!("pid:42".parse::<TargetSpec>().unwrap(), TargetSpec::Pid(42));
        assert_eq!("container:web-1".parse::<TargetSpec>().unwrap(), TargetSpec::Container("web-1".into()));
        assert_eq!("container:web-1".parse::<TargetSpec>().unwrap().to_string(), "container:web-1");
        let label = "container-label:app=web".parse::<TargetSpec>().unwrap();
        assert_eq!(label, TargetSpec::ContainerLabel { key: "app".into(), value: "web".into() });
        assert_eq!(label.to_string(), "container-label:app=web");
        for bad in ["container-label:app", "container-label:=web"] {
            let e = bad.parse::<TargetSpec>().unwrap_err();
            assert!(e.problem.contains("not a label selector") && e.fix.contains("KEY=VALUE"), "{bad}: {e:?}");
        }
        for bad in ["container:-x", "container:a b", "container:a/b"] {
            let e = bad.parse::<TargetSpec>().unwrap_err();
            assert!(e.problem.contains("not a container name") && e.fix.contains("docker ps"), "{bad}: {e:?}");
        }
        for bad in ["veth0", "host:x", "pid:x", "netns:"] {
            assert!(bad.parse::<TargetSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn validates_combinations() {
        let mut r = raw(FaultKind::Loss, "netns:a");
        assert_eq!(r.validate().unwrap_err().at.field, "probability");
        r.probability = Some(0.3);
        let spec = r.validate().unwrap();
        assert_eq!(spec.direction, Direction::Both);

        let mut r = raw(FaultKind::Partition, "netns:a");
        r.probability = Some(0.3);
        assert_eq!(r.validate().unwrap_err().at.field, "probability");

        let mut r = raw(FaultKind::Partition, "netns:a");
        r.mode = Some(PartitionMode::Oneway);
        assert_eq!(r.validate().unwrap_err().at.field, "direction");
        r.direction = Some(Direction::Ingress);
        assert!(r.validate().is_ok());

        let r = raw(FaultKind::Blackhole, "iface:veth0");
        assert_eq!(r.validate().unwrap_err().at.field, "proto");

        // cgroup targets are egress-only; a 'both' partition cannot be done there.
        let r = raw(FaultKind::Partition, "cgroup:/x");
        assert_eq!(r.validate().unwrap_err().at.field, "direction");
        let mut r = raw(FaultKind::Loss, "pid:1");
        r.probability = Some(0.1);
        assert_eq!(r.validate().unwrap().direction, Direction::Egress);

        let mut r = raw(FaultKind::Loss, "netns:a");
        r.probability = Some(0.1);
        r.ports = Some(PortRange { lo: 1, hi: 2 });
        assert_eq!(r.validate().unwrap_err().at.field, "ports");
    }

    #[test]
    fn delay_and_jitter_stay_within_the_fq_horizon() {
        let mut r = raw(FaultKind::Delay, "netns:a");
        r.delay = Some(Duration::from_secs(9));
        r.jitter = Some(Duration::from_secs(1));
        assert!(r.validate().is_ok(), "9 s + 1 s uniform is exactly the limit");
        r.jitter = Some(Duration::from_millis(1001));
        let e = r.validate().unwrap_err();
        assert!(e.at.field == "delay" && e.problem.contains("10.001s"), "{e:?}");
        r.jitter = Some(Duration::from_millis(400));
        r.distribution = Some(Distribution::Normal);
        let e = r.validate().unwrap_err();
        assert!(e.problem.contains("3.5 x"), "normal jitter reaches 3.5 sd: {e:?}");
        r.jitter = Some(Duration::from_millis(280));
        assert!(r.validate().is_ok());
        // The bound used above covers the kernel's normal jitter.
        let jitter_ns = 280_000_000u64;
        assert!(hash_bound(jitter_ns) <= jitter_ns * 7 / 2);
    }

    /// The largest offset jitter_offset can give for a normal jitter.
    fn hash_bound(jitter_ns: u64) -> u64 {
        [0u64, u64::MAX]
            .iter()
            .map(|draw| common::hash::jitter_offset(*draw, jitter_ns, true).unsigned_abs())
            .max()
            .unwrap()
    }

    #[test]
    fn validates_delay_and_rate() {
        let mut r = raw(FaultKind::Delay, "netns:a");
        assert_eq!(r.validate().unwrap_err().at.field, "delay");
        r.delay = Some(Duration::from_millis(100));
        let spec = r.validate().unwrap();
        assert_eq!(spec.direction, Direction::Egress, "delay defaults to egress");
        r.direction = Some(Direction::Both);
        let e = r.validate().unwrap_err();
        assert!(e.at.field == "direction" && e.problem.contains("one direction"), "{e:?}");
        r.direction = Some(Direction::Ingress);
        let ingress = r.validate().unwrap();
        assert_eq!(ingress.direction, Direction::Ingress);
        let rule = ingress.rule(1, 1, 0, 0);
        assert_eq!(rule.directions, common::direction::EGRESS, "acts on the far end's egress");
        assert_eq!(rule.flags & common::flags::PEER_IS_SOURCE, common::flags::PEER_IS_SOURCE);
        r.direction = None;
        r.jitter = Some(Duration::from_millis(10));
        r.distribution = Some(Distribution::Normal);
        let rule = r.validate().unwrap().rule(1, 1, 0, 0);
        assert_eq!((rule.action, rule.delay_ns, rule.jitter_ns), (common::action::DELAY, 100_000_000, 10_000_000));
        assert_eq!(rule.flags & common::flags::JITTER_NORMAL, common::flags::JITTER_NORMAL);
        assert_eq!(rule.directions, common::direction::EGRESS);

        let mut r = raw(FaultKind::Rate, "netns:a");
        assert_eq!(r.validate().unwrap_err().at.field, "rate");
        r.rate = Some(parse_rate("10mbit").unwrap());
        assert_eq!(r.validate().unwrap().rule(1, 1, 0, 0).rate_bytes_per_sec, 1_250_000);
        r.delay = Some(Duration::from_millis(1));
        assert_eq!(r.validate().unwrap_err().at.field, "delay");
        assert!(parse_rate("10mb").is_err());
        assert!(parse_rate("1bit").is_err());
        assert_eq!(parse_rate("1gbit").unwrap(), 125_000_000);
        assert_eq!(format_duration(Duration::from_millis(100)), "100ms");
    }

    #[test]
    fn intensity_scales_magnitudes() {
        let mut r = raw(FaultKind::Loss, "netns:a");
        r.probability = Some(0.5);
        r.burst_enter = Some(0.2);
        r.burst_exit = Some(0.4);
        let loss = r.validate().unwrap();
        let half = loss.at_intensity(0.5);
        assert_eq!(half.probability, Some(0.25));
        assert_eq!(half.burst, Some(Burst { enter: 0.1, exit: 0.4, loss: 0.5 }));
        assert_eq!(loss.at_intensity(1.0), loss);
        let mut r = raw(FaultKind::Delay, "netns:a");
        r.delay = Some(Duration::from_millis(100));
        r.jitter = Some(Duration::from_millis(10));
        let delay = r.validate().unwrap().at_intensity(0.25);
        assert_eq!((delay.delay, delay.jitter), (Some(Duration::from_millis(25)), Some(Duration::from_micros(2500))));
        let mut r = raw(FaultKind::Rate, "netns:a");
        r.rate = Some(1_000_000);
        let rate = r.validate().unwrap();
        assert!(rate.check_intensity(1.0).is_ok());
        let e = rate.check_intensity(0.5).unwrap_err();
        assert!(e.problem.contains("no magnitude"), "{e:?}");
        for bad in [0.0, -1.0, 1.5, f64::NAN] {
            assert!(loss.check_intensity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn encodes_rules() {
        let mut r = raw(FaultKind::Partition, "netns:a");
        r.mode = Some(PartitionMode::New);
        r.peers = vec!["192.0.2.2".parse().unwrap()];
        let rule = r.validate().unwrap().rule(7, 3, 0, 0);
        assert_eq!(rule.action, common::action::DROP_NEW_TCP);
        assert_eq!(rule.flags, common::flags::PEERS);
        assert_eq!(rule.directions, common::direction::BOTH);
        assert_eq!((rule.port_lo, rule.port_hi), (0, u16::MAX));

        let mut r = raw(FaultKind::Loss, "netns:a");
        r.probability = Some(0.5);
        r.burst_enter = Some(0.1);
        r.burst_exit = Some(0.5);
        r.proto = Some(Proto::Udp);
        r.ports = Some("443".parse().unwrap());
        let rule = r.validate().unwrap().rule(1, 1, 5, 0);
        assert_eq!(rule.loss_threshold, 1 << 63);
        assert_eq!(rule.burst_loss, u64::MAX);
        assert_eq!(rule.flags, common::flags::BURST);
        assert_eq!((rule.proto, rule.port_lo, rule.port_hi, rule.ifindex), (17, 443, 443, 5));

        let prefix = "198.51.100.7/24".parse::<Cidr>().unwrap().prefix();
        assert_eq!((prefix.family, prefix.len), (common::family::IPV4, 96 + 24));
        assert_eq!(&prefix.addr[10..], &[0xff, 0xff, 198, 51, 100, 0], "host bits cleared");
        // `::/0` covers the IPv6 family only: the family is part of the trie key.
        let prefix = "::/0".parse::<Cidr>().unwrap().prefix();
        assert_eq!((prefix.family, prefix.len, prefix.addr), (common::family::IPV6, 0, [0; 16]));
    }
}
