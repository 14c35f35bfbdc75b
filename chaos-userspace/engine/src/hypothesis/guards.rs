//! The abort guards judged from probe samples (error rate, latency), the record of
//! every sample they read, and the first guard that fired. The Prometheus guard's task
//! and the wall-clock check (hypothesis.rs) write their firing here too, so that the
//! first guard to fire is the one reported.

use std::collections::HashMap;

use chaos_model::hypothesis::Guard;

use crate::report::{AbortReport, CheckPhase, ProbeSample};

/// Passing checks of a probe before the faults that a latency guard's baseline needs.
pub const BASELINE_CHECKS: usize = 5;

/// Every sample so far, the latency baselines, and the first guard that fired.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    /// In the order the checks completed.
    pub samples: Vec<ProbeSample>,
    /// The error-rate and latency guards (the others are not judged from samples).
    guards: Vec<Guard>,
    /// A probe's p95 latency (ms) over its passing checks before the faults.
    baselines: HashMap<String, f64>,
    /// When each probe's first During check started (its windows are full from then on + window).
    first_during: HashMap<String, f64>,
    pub fired: Option<AbortReport>,
}

impl Watch {
    pub fn new(guards: &[Guard]) -> Watch {
        let guards =
            guards.iter().filter(|g| matches!(g, Guard::ErrorRate { .. } | Guard::Latency { .. })).cloned().collect();
        Watch { guards, ..Watch::default() }
    }

    /// The probes a latency guard watches (they need a baseline before the faults).
    pub fn latency_probes(&self) -> Vec<String> {
        self.guards
            .iter()
            .filter_map(|g| match g {
                Guard::Latency { probe, .. } => Some(probe.clone()),
                _ => None,
            })
            .collect()
    }

    /// Takes the baselines of the latency guards from the passing checks so far (the
    /// steady state's): called when the faults start.
    pub fn set_baselines(&mut self) {
        for guard in &self.guards {
            if let Guard::Latency { probe, .. } = guard {
                let latencies: Vec<f64> = self
                    .samples
                    .iter()
                    .filter(|s| s.phase == CheckPhase::Before && s.ok && &s.probe == probe)
                    .map(|s| s.latency_ms)
                    .collect();
                if let Some(p95) = percentile(&latencies, 0.95) {
                    self.baselines.insert(probe.clone(), p95);
                }
            }
        }
    }

    /// Records a sample, and judges the guards on it when it is a During one.
    pub fn record(&mut self, sample: ProbeSample) {
        let during = sample.phase == CheckPhase::During;
        if during {
            self.first_during.entry(sample.probe.clone()).or_insert(sample.t_s);
        }
        self.samples.push(sample);
        if during && self.fired.is_none() {
            let last = self.samples.last().expect("pushed above");
            self.fired = self.judge(last);
        }
    }

    /// Records a guard's firing unless another fired first.
    pub fn fire(&mut self, report: AbortReport) {
        if self.fired.is_none() {
            self.fired = Some(report);
        }
    }

    /// The first error-rate or latency guard that `last` (the newest During sample of
    /// its probe) makes fire. Error rate: the share of failed checks among those that
    /// started within the window up to `last`, above the threshold. Latency: the p95 of
    /// the window's checks (failed ones too: a timeout is slowness) above the baseline
    /// (the p95 of the passing checks before the faults) by more than the percent; not
    /// judged without a baseline. Neither is judged before the probe has been checked
    /// During for a whole window.
    fn judge(&self, last: &ProbeSample) -> Option<AbortReport> {
        // Judged as `last` completes: the guard fires then.
        let judged_at = last.t_s + last.latency_ms / 1000.0;
        for guard in &self.guards {
            match guard {
                Guard::ErrorRate { probe, above, window } if probe == &last.probe => {
                    let Some(in_window) = self.window(last, window.as_secs_f64()) else { continue };
                    let failed = in_window.iter().filter(|s| !s.ok).count();
                    let share = failed as f64 / in_window.len() as f64;
                    if share > *above {
                        let last_failure = in_window.iter().find(|s| !s.ok).map(|s| s.detail.as_str()).unwrap_or("");
                        return Some(fired(
                            guard,
                            judged_at,
                            format!(
                                "probe {probe}: {failed} of {} checks failed over the last {} ({:.0} %, above {:.0} %); last failure: {last_failure}",
                                in_window.len(),
                                super::probes::secs(*window),
                                share * 100.0,
                                above * 100.0
                            ),
                        ));
                    }
                }
                Guard::Latency { probe, percent, window } if probe == &last.probe => {
                    let Some(&baseline) = self.baselines.get(probe) else { continue };
                    let Some(in_window) = self.window(last, window.as_secs_f64()) else { continue };
                    let latencies: Vec<f64> = in_window.iter().map(|s| s.latency_ms).collect();
                    let p95 = percentile(&latencies, 0.95).unwrap_or(0.0);
                    let bound = baseline * (1.0 + percent / 100.0);
                    if p95 > bound {
                        return Some(fired(
                            guard,
                            judged_at,
                            format!(
                                "probe {probe}: p95 latency {p95:.1} ms over the last {}, above the baseline p95 {baseline:.1} ms + {percent} % ({bound:.1} ms)",
                                super::probes::secs(*window)
                            ),
                        ));
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// The During samples of `last`'s probe within `window` seconds up to it (newest
    /// first), once the probe has been checked During for at least `window`.
    fn window<'a>(&'a self, last: &'a ProbeSample, window: f64) -> Option<Vec<&'a ProbeSample>> {
        let first = *self.first_during.get(&last.probe)?;
        if last.t_s - first < window {
            return None;
        }
        if window <= 0.0 {
            return Some(vec![last]);
        }
        // A probe's checks never overlap, so its samples are in order of their start:
        // walking back from the newest, the window ends at the first one too old.
        let in_window = self
            .samples
            .iter()
            .rev()
            .filter(|s| s.phase == CheckPhase::During && s.probe == last.probe)
            .take_while(|s| s.t_s > last.t_s - window)
            .collect();
        Some(in_window)
    }
}

/// An abort report of `guard` at `t_s`; the engine fills in `revert_ms`.
pub(crate) fn fired(guard: &Guard, t_s: f64, reason: String) -> AbortReport {
    AbortReport { guard: guard.kind().to_owned(), reason: one_line_long(&reason), fired_s: t_s, revert_ms: 0.0 }
}

/// A reason on one line, bounded (a guard's reason quotes a probe's detail, so it may be
/// longer than one detail).
pub(crate) fn one_line_long(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    chaos_ebpf_common::text::shorten(&joined, 2 * super::probes::DETAIL_MAX + 100)
}

/// The nearest-rank percentile (`q` in 0..=1) of `values`; None when there are none.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sample(probe: &str, phase: CheckPhase, t_s: f64, ok: bool, latency_ms: f64) -> ProbeSample {
        ProbeSample {
            probe: probe.into(),
            kind: "http".into(),
            phase,
            t_s,
            ok,
            latency_ms,
            detail: if ok { String::new() } else { "status 503, expected 200".into() },
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.95), Some(95.0));
        assert_eq!(percentile(&values, 0.5), Some(50.0));
        assert_eq!(percentile(&[7.0], 0.95), Some(7.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.0), Some(1.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    /// The error-rate guard waits for a full window, then fires on the first sample
    /// that puts the failed share above the threshold, and only on its own probe.
    #[test]
    fn error_rate_fires_once_the_window_is_full_and_the_share_is_above() {
        let guard = Guard::ErrorRate { probe: "api".into(), above: 0.5, window: Duration::from_secs(1) };
        let mut watch = Watch::new(&[guard]);
        // Every check of another probe fails: not this guard's business.
        for i in 0..20 {
            watch.record(sample("other", CheckPhase::During, i as f64 * 0.1, false, 1.0));
        }
        assert!(watch.fired.is_none());
        // All checks fail, but for less than the window: not judged yet.
        for i in 0..10 {
            watch.record(sample("api", CheckPhase::During, i as f64 * 0.1, false, 1.0));
            assert!(watch.fired.is_none(), "fired at check {i} before the window was full");
        }
        watch.record(sample("api", CheckPhase::During, 1.0, false, 1.0));
        let fired = watch.fired.clone().expect("fired with a full window of failures");
        // Fired as the check that started at 1.0 s ended, 1 ms later.
        assert_eq!(fired.guard, "error-rate");
        assert!((fired.fired_s - 1.001).abs() < 1e-9, "{fired:?}");
        assert!(fired.reason.contains("10 of 10 checks failed"), "{}", fired.reason);
        assert!(fired.reason.contains("status 503"), "{}", fired.reason);
    }

    #[test]
    fn error_rate_at_the_threshold_does_not_fire() {
        let guard = Guard::ErrorRate { probe: "api".into(), above: 0.5, window: Duration::from_secs(1) };
        let mut watch = Watch::new(&[guard]);
        // Every other check fails: exactly 50 %, not above.
        for i in 0..40 {
            watch.record(sample("api", CheckPhase::During, i as f64 * 0.1, i % 2 == 0, 1.0));
        }
        assert!(watch.fired.is_none(), "{:?}", watch.fired);
        // Before and After samples are never judged.
        let mut watch = Watch::new(&[Guard::ErrorRate { probe: "api".into(), above: 0.0, window: Duration::ZERO }]);
        watch.record(sample("api", CheckPhase::Before, 0.0, false, 1.0));
        watch.record(sample("api", CheckPhase::After, 5.0, false, 1.0));
        assert!(watch.fired.is_none());
    }

    /// The latency guard compares the window's p95 with the p95 of the passing checks
    /// before the faults.
    #[test]
    fn latency_fires_above_the_baseline_by_the_percent() {
        let guard = Guard::Latency { probe: "api".into(), percent: 100.0, window: Duration::from_millis(500) };
        let mut watch = Watch::new(&[guard]);
        for i in 0..5 {
            watch.record(sample("api", CheckPhase::Before, i as f64 * 0.1, true, 10.0));
        }
        // A failed check before the faults (a slow timeout) is not part of the baseline.
        watch.record(sample("api", CheckPhase::Before, 0.6, false, 2000.0));
        watch.set_baselines();
        // 19 ms is within 10 ms + 100 %.
        for i in 0..20 {
            watch.record(sample("api", CheckPhase::During, 1.0 + i as f64 * 0.1, true, 19.0));
        }
        assert!(watch.fired.is_none(), "{:?}", watch.fired);
        for i in 20..30 {
            watch.record(sample("api", CheckPhase::During, 1.0 + i as f64 * 0.1, true, 25.0));
        }
        let fired = watch.fired.clone().expect("p95 25 ms is above 20 ms");
        assert_eq!(fired.guard, "latency");
        assert!(fired.reason.contains("p95 latency 25.0 ms"), "{}", fired.reason);
        assert!(fired.reason.contains("baseline p95 10.0 ms"), "{}", fired.reason);
    }

    #[test]
    fn the_first_guard_to_fire_is_kept() {
        let mut watch = Watch::new(&[Guard::ErrorRate { probe: "api".into(), above: 0.1, window: Duration::ZERO }]);
        watch.fire(AbortReport { guard: "wall-clock".into(), reason: "late".into(), fired_s: 3.0, revert_ms: 0.0 });
        watch.record(sample("api", CheckPhase::During, 4.0, false, 1.0));
        assert_eq!(watch.fired.as_ref().map(|f| f.guard.as_str()), Some("wall-clock"));
    }
}
