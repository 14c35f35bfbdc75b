//! Helpers of the engine's integration tests (hypothesis.rs, probe_spans.rs).

use std::{sync::atomic::AtomicBool, time::Duration};

use chaos_model::hypothesis::{Hypothesis, ProbeCheck, ProbeSpec};

pub static NOT_INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn probe(name: &str, check: ProbeCheck) -> ProbeSpec {
    ProbeSpec { name: name.into(), timeout: ms(1000), check }
}

pub fn hypothesis(probes: Vec<ProbeSpec>, interval: Duration, steady_within: Duration) -> Hypothesis {
    Hypothesis { interval, steady_within, recovery: Duration::from_secs(3), probes }
}
