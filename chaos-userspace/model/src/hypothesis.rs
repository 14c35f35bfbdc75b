//! The steady-state hypothesis and the abort guards of a scenario, validated: what the
//! engine's checker (chaos-engine's hypothesis.rs) probes and when it stops a run.
//!
//! ```yaml
//! hypothesis:
//!   interval: 500ms        # how often every probe runs while the faults are in force
//!   recovery: 10s          # after the revert, every probe must pass again within this
//!   probes:
//!     - { name: api, http: { url: "http://127.0.0.1:8080/health", status: 200, latency: 200ms } }
//!     - { name: port, tcp: { connect: "127.0.0.1:8080" } }
//! abort:
//!   - { error-rate: { probe: api, above: 0.5, for: 3s } }
//!   - { wall-clock: 5m }
//! ```

use std::{net::SocketAddr, time::Duration};

use serde::Serialize;

/// The probes and when they run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hypothesis {
    /// Between two checks of one probe while the faults are in force.
    #[serde(serialize_with = "ser_secs")]
    pub interval: Duration,
    /// Before the first fault: every probe must pass once within this.
    #[serde(serialize_with = "ser_secs")]
    pub steady_within: Duration,
    /// After the revert: every probe must pass again within this.
    #[serde(serialize_with = "ser_secs")]
    pub recovery: Duration,
    pub probes: Vec<ProbeSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeSpec {
    /// Unique within the scenario; guards and reports name probes by it.
    pub name: String,
    /// One check fails when it takes longer than this.
    #[serde(serialize_with = "ser_secs")]
    pub timeout: Duration,
    pub check: ProbeCheck,
}

/// What one check of a probe does, and what counts as passing.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeCheck {
    /// An HTTP GET: passes on the expected status within the latency bound.
    Http {
        url: String,
        status: u16,
        #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_secs")]
        max_latency: Option<Duration>,
    },
    /// A TCP connection: passes when the handshake completes.
    Tcp { connect: SocketAddr },
    /// A DNS lookup of `name` (A/AAAA) at `server`: passes on an answer (containing
    /// `expect` when given).
    Dns {
        name: String,
        server: SocketAddr,
        #[serde(skip_serializing_if = "Option::is_none")]
        expect: Option<std::net::IpAddr>,
    },
    /// A command (argv, no shell): passes on the exit code (and output containing a text).
    Command {
        argv: Vec<String>,
        exit: i32,
        #[serde(skip_serializing_if = "Option::is_none")]
        output_contains: Option<String>,
    },
    /// A Prometheus instant query: passes when its first sample compares true.
    Prometheus { url: String, query: String, compare: Compare, threshold: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compare {
    Below,
    AtMost,
    Above,
    AtLeast,
}

impl Compare {
    /// The scenario key: below, at-most, above, at-least.
    pub fn name(self) -> &'static str {
        match self {
            Compare::Below => "below",
            Compare::AtMost => "at-most",
            Compare::Above => "above",
            Compare::AtLeast => "at-least",
        }
    }

    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Compare::Below => value < threshold,
            Compare::AtMost => value <= threshold,
            Compare::Above => value > threshold,
            Compare::AtLeast => value >= threshold,
        }
    }
}

/// A condition that stops the run: every fault is reverted at once and the run exits 1.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Guard {
    /// The share of failed checks of `probe` over the last `window` is above `above`
    /// (0..1), judged once the window is full.
    ErrorRate {
        probe: String,
        above: f64,
        #[serde(serialize_with = "ser_secs")]
        window: Duration,
    },
    /// The p95 latency of `probe` over the last `window` is above its p95 before the
    /// faults by more than `percent` %.
    Latency {
        probe: String,
        percent: f64,
        #[serde(serialize_with = "ser_secs")]
        window: Duration,
    },
    /// A Prometheus expression returns a sample (is true) for `window` without a break.
    Prometheus {
        url: String,
        query: String,
        #[serde(serialize_with = "ser_secs")]
        window: Duration,
    },
    /// The run lasts longer than this from its start.
    WallClock {
        #[serde(serialize_with = "ser_secs")]
        max: Duration,
    },
}

impl ProbeCheck {
    /// One line for `plan`: what the check does and what passes.
    pub fn describe(&self) -> String {
        let fmt = crate::spec::format_duration;
        let short = |t: &str| crate::spec::shorten(t, 80);
        match self {
            ProbeCheck::Http { url, status, max_latency } => {
                let mut out = format!("http GET {} expects status {status}", short(url));
                if let Some(l) = max_latency {
                    out += &format!(" within {}", fmt(*l));
                }
                out
            }
            ProbeCheck::Tcp { connect } => format!("tcp connect to {connect}"),
            ProbeCheck::Dns { name, server, expect } => {
                let mut out = format!("dns lookup of {} at {server}", short(name));
                if let Some(e) = expect {
                    out += &format!(" expects {e}");
                }
                out
            }
            ProbeCheck::Command { argv, exit, output_contains } => {
                let mut out = format!("command {} expects exit {exit}", short(&argv.join(" ")));
                if let Some(t) = output_contains {
                    out += &format!(" and output containing '{}'", short(t));
                }
                out
            }
            ProbeCheck::Prometheus { url, query, compare, threshold } => {
                format!("prometheus {} query '{}' {} {threshold}", short(url), short(query), compare.name())
            }
        }
    }
}

impl Guard {
    /// One line for `plan`: when the run stops.
    pub fn describe(&self) -> String {
        let fmt = crate::spec::format_duration;
        match self {
            Guard::ErrorRate { probe, above, window } => {
                format!("error-rate: probe {probe} fails more than {above} of its checks over {}", fmt(*window))
            }
            Guard::Latency { probe, percent, window } => {
                format!(
                    "latency: the p95 of probe {probe} over {} is {percent}% above its p95 before the faults",
                    fmt(*window)
                )
            }
            Guard::Prometheus { url, query, window } => format!(
                "prometheus: {} query '{}' returns a sample for {}",
                crate::spec::shorten(url, 80),
                crate::spec::shorten(query, 80),
                fmt(*window)
            ),
            Guard::WallClock { max } => format!("wall-clock: the run lasts longer than {}", fmt(*max)),
        }
    }

    /// A short name for reports, spans and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Guard::ErrorRate { .. } => "error-rate",
            Guard::Latency { .. } => "latency",
            Guard::Prometheus { .. } => "prometheus",
            Guard::WallClock { .. } => "wall-clock",
        }
    }
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn ser_opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}
