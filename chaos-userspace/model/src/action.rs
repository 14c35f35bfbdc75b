//! Actions: what a step does besides packets (kill, pause, surge, cert-expiry), and the
//! lab selectors that name cluster-lab members by role (`node:n2`, `leader`, `followers`,
//! `minority`, `majority`). Pure: the engine carries them out through the lab.

use std::{fmt, str::FromStr, time::Duration};

use serde::Serialize;

use crate::spec::{shorten, Problem};

/// Members of the cluster lab (`chaos-ebpf lab up`), named or by role.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LabSelector {
    /// One member by name (`node:n2`).
    Node(String),
    /// Whoever leads (asked through etcd's API when resolved).
    Leader,
    /// Every member but the leader.
    Followers,
    /// (N-1)/2 members, the leader first: cut off, they cannot make progress.
    Minority,
    /// The other members: a quorum.
    Majority,
}

impl LabSelector {
    pub const WORDS: &'static str = "node:NAME, leader, followers, minority or majority";

    /// The bare words of a selector; `node:NAME` is parsed by `TargetSpec`.
    pub fn from_word(word: &str) -> Option<LabSelector> {
        match word {
            "leader" => Some(LabSelector::Leader),
            "followers" => Some(LabSelector::Followers),
            "minority" => Some(LabSelector::Minority),
            "majority" => Some(LabSelector::Majority),
            _ => None,
        }
    }

    /// Whether it means something only while a member leads.
    pub fn needs_leader(&self) -> bool {
        !matches!(self, LabSelector::Node(_))
    }

    /// A selector as written in a scenario: a bare word or `node:NAME`.
    pub fn parse(text: &str) -> Option<Result<LabSelector, Problem>> {
        if let Some(name) = text.strip_prefix("node:") {
            return Some(node_name(name).map(LabSelector::Node));
        }
        LabSelector::from_word(text).map(Ok)
    }

    /// Picks members from `members` (names, in order) given who leads; `None` when the
    /// selection is empty (with why).
    pub fn select(&self, members: &[String], leader: Option<&str>) -> Result<Vec<String>, String> {
        let n = members.len();
        let minority_size = n.saturating_sub(1) / 2;
        let mut by_role: Vec<String> = Vec::with_capacity(n);
        if let Some(l) = leader.filter(|l| members.iter().any(|m| m == l)) {
            by_role.push(l.to_owned());
        }
        by_role.extend(members.iter().filter(|m| Some(m.as_str()) != leader).cloned());
        let chosen: Vec<String> = match self {
            LabSelector::Node(name) => {
                if !members.contains(name) {
                    return Err(format!("the lab has no member {name} (it has {})", members.join(", ")));
                }
                vec![name.clone()]
            }
            LabSelector::Leader => match leader {
                Some(l) => vec![l.to_owned()],
                None => return Err("the lab has no leader now".to_owned()),
            },
            LabSelector::Followers => {
                if leader.is_none() {
                    return Err("the lab has no leader now, so no followers".to_owned());
                }
                by_role[1..].to_vec()
            }
            LabSelector::Minority => by_role[..minority_size].to_vec(),
            LabSelector::Majority => by_role[minority_size..].to_vec(),
        };
        if chosen.is_empty() {
            return Err(format!("a lab of {n} members has no {self}"));
        }
        Ok(chosen)
    }
}

fn node_name(name: &str) -> Result<String, Problem> {
    if name.is_empty()
        || name.len() > 32
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(Problem::new(
            format!("'{}' is not a lab member's name", shorten(name, 40)),
            "write node:n2 (members are n1..nN; `chaos-ebpf lab status` lists them)",
        ));
    }
    Ok(name.to_owned())
}

impl fmt::Display for LabSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabSelector::Node(n) => write!(f, "node:{n}"),
            LabSelector::Leader => f.write_str("leader"),
            LabSelector::Followers => f.write_str("followers"),
            LabSelector::Minority => f.write_str("minority"),
            LabSelector::Majority => f.write_str("majority"),
        }
    }
}

impl Serialize for LabSelector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What an action is aimed at: lab members, or a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionTarget {
    Lab(LabSelector),
    Pid(u32),
    /// A Docker container (name or id), acted on through the Docker API.
    Container(String),
}

impl fmt::Display for ActionTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActionTarget::Lab(s) => s.fmt(f),
            ActionTarget::Pid(p) => write!(f, "pid:{p}"),
            ActionTarget::Container(c) => write!(f, "container:{c}"),
        }
    }
}

impl Serialize for ActionTarget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionKind {
    Kill,
    Pause,
    Surge,
    CertExpiry,
}

impl ActionKind {
    pub const NAMES: &'static str = "kill, pause, surge, cert-expiry";

    pub fn name(self) -> &'static str {
        match self {
            ActionKind::Kill => "kill",
            ActionKind::Pause => "pause",
            ActionKind::Surge => "surge",
            ActionKind::CertExpiry => "cert-expiry",
        }
    }
}

impl FromStr for ActionKind {
    type Err = Problem;
    fn from_str(s: &str) -> Result<Self, Problem> {
        match s {
            "kill" => Ok(ActionKind::Kill),
            "pause" => Ok(ActionKind::Pause),
            "surge" => Ok(ActionKind::Surge),
            "cert-expiry" => Ok(ActionKind::CertExpiry),
            other => Err(Problem::new(
                format!("unknown action '{}'", shorten(other, 40)),
                format!("use one of: {}", ActionKind::NAMES),
            )),
        }
    }
}

/// A signal by name (`SIGKILL`, `KILL`, `term`) or number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(pub i32);

const SIGNALS: [(&str, i32); 8] =
    [("HUP", 1), ("INT", 2), ("QUIT", 3), ("KILL", 9), ("USR1", 10), ("USR2", 12), ("TERM", 15), ("STOP", 19)];

impl Signal {
    pub const KILL: Signal = Signal(9);
    pub const TERM: Signal = Signal(15);

    pub fn name(self) -> String {
        SIGNALS.iter().find(|(_, n)| *n == self.0).map_or_else(|| self.0.to_string(), |(name, _)| format!("SIG{name}"))
    }
}

impl FromStr for Signal {
    type Err = Problem;
    fn from_str(s: &str) -> Result<Self, Problem> {
        let upper = s.trim().to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some((_, n)) = SIGNALS.iter().find(|(name, _)| *name == bare) {
            return Ok(Signal(*n));
        }
        match bare.parse::<i32>() {
            Ok(n) if (1..=31).contains(&n) => Ok(Signal(n)),
            _ => Err(Problem::new(
                format!("'{}' is not a signal", shorten(s, 30)),
                "write SIGKILL, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 or a number 1..31",
            )),
        }
    }
}

impl Serialize for Signal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.name())
    }
}

/// An action, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum ActionSpec {
    /// Sends `signal`, or with `grace` SIGTERM then SIGKILL after the grace period; with
    /// `restart`, starts the member again when the step ends.
    Kill {
        signal: Signal,
        #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_secs")]
        grace: Option<Duration>,
        restart: bool,
        /// When the killed member led: another must lead within this long.
        #[serde(serialize_with = "ser_secs")]
        leader_within: Duration,
    },
    /// Frozen (SIGSTOP) for the step, thawed (SIGCONT) when it ends.
    Pause,
    /// `count` extra workload nodes join at `rate` per second and leave, `cycles` times.
    Surge { count: u32, rate: f64, cycles: u32 },
    /// The member runs with a certificate that has expired (or expires `expires_in` after
    /// it is loaded) for the step; the original comes back when it ends.
    CertExpiry {
        #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_secs")]
        expires_in: Option<Duration>,
    },
}

/// How long a kill of the leader waits for another leader by default.
pub const DEFAULT_LEADER_WITHIN: Duration = Duration::from_secs(30);

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn ser_opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

impl ActionSpec {
    pub fn kind(&self) -> ActionKind {
        match self {
            ActionSpec::Kill { .. } => ActionKind::Kill,
            ActionSpec::Pause => ActionKind::Pause,
            ActionSpec::Surge { .. } => ActionKind::Surge,
            ActionSpec::CertExpiry { .. } => ActionKind::CertExpiry,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ActionSpec::Kill { signal, grace, restart, .. } => {
                let how = match grace {
                    Some(g) => format!("SIGTERM, SIGKILL after {}", crate::spec::format_duration(*g)),
                    None => signal.name(),
                };
                format!("kill ({how}){}", if *restart { ", restarted when the step ends" } else { "" })
            }
            ActionSpec::Pause => "pause (SIGSTOP, SIGCONT when the step ends)".to_owned(),
            ActionSpec::Surge { count, rate, cycles } => {
                format!("surge ({count} nodes join at {rate}/s and leave, {cycles} cycles)")
            }
            ActionSpec::CertExpiry { expires_in } => match expires_in {
                Some(d) => {
                    format!("cert-expiry (a certificate expiring {} after load)", crate::spec::format_duration(*d))
                }
                None => "cert-expiry (an expired certificate)".to_owned(),
            },
        }
    }
}

/// An action step's action and its targets (none for a surge, which adds nodes).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedAction {
    #[serde(flatten)]
    pub spec: ActionSpec,
    pub targets: Vec<ActionTarget>,
}

impl PlannedAction {
    /// Whether it acts through the cluster lab (a surge, or lab members as targets).
    pub fn needs_lab(&self) -> bool {
        matches!(self.spec, ActionSpec::Surge { .. }) || self.targets.iter().any(|t| matches!(t, ActionTarget::Lab(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("n{i}")).collect()
    }

    #[test]
    fn roles_split_the_members() {
        let m = names(3);
        assert_eq!(LabSelector::Leader.select(&m, Some("n2")).unwrap(), ["n2"]);
        assert_eq!(LabSelector::Followers.select(&m, Some("n2")).unwrap(), ["n1", "n3"]);
        assert_eq!(LabSelector::Minority.select(&m, Some("n2")).unwrap(), ["n2"]);
        assert_eq!(LabSelector::Majority.select(&m, Some("n2")).unwrap(), ["n1", "n3"]);
        let five = names(5);
        assert_eq!(LabSelector::Minority.select(&five, Some("n4")).unwrap(), ["n4", "n1"]);
        assert_eq!(LabSelector::Majority.select(&five, Some("n4")).unwrap(), ["n2", "n3", "n5"]);
        assert!(LabSelector::Minority.select(&names(2), Some("n1")).unwrap_err().contains("no minority"));
        assert!(LabSelector::Leader.select(&m, None).unwrap_err().contains("no leader"));
        assert!(LabSelector::Node("n7".into()).select(&m, None).unwrap_err().contains("no member n7"));
    }

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!("SIGKILL".parse::<Signal>().unwrap(), Signal(9));
        assert_eq!("term".parse::<Signal>().unwrap(), Signal(15));
        assert_eq!("2".parse::<Signal>().unwrap(), Signal(2));
        assert!("SIGFOO".parse::<Signal>().is_err());
        assert!("0".parse::<Signal>().is_err());
        assert_eq!(Signal(9).name(), "SIGKILL");
    }
}
