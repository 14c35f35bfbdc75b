//! When each step runs: its windows (plain, ramp, duty cycle) relative to its start, and
//! its start from its anchor (`after`, `with`, or the step before it in the file).
//! Pure arithmetic on `Duration`s, every sum bounded, so any input ends fast.

use std::time::Duration;

/// Most windows one step may have (a ramp's steps, a duty cycle's periods).
pub const MAX_WINDOWS_PER_STEP: usize = 1000;
/// Most windows a scenario may have in all.
pub const MAX_WINDOWS: usize = 10_000;

/// The shape of a step's windows.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// One window at one intensity.
    Constant(f64),
    /// `steps` windows of equal length, intensities evenly spaced from `from` to `to`.
    Ramp { from: f64, to: f64, steps: u32 },
    /// On for `on`, off for `off`, `count` times, at one intensity.
    Repeat { on: Duration, off: Duration, count: u32, intensity: f64 },
}

/// A window relative to the step's start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelWindow {
    pub start: Duration,
    pub end: Duration,
    pub intensity: f64,
}

/// The step's length when a duty cycle gives none: `count` periods without the last `off`.
pub fn repeat_length(on: Duration, off: Duration, count: u32) -> Option<Duration> {
    let count = u64::from(count);
    let ons = on.as_nanos().checked_mul(count as u128)?;
    let offs = off.as_nanos().checked_mul(count.saturating_sub(1) as u128)?;
    let total = ons.checked_add(offs)?;
    u64::try_from(total).ok().map(Duration::from_nanos)
}

/// How many periods of a duty cycle start within `duration` (the last may be cut short).
pub fn repeat_count_within(on: Duration, off: Duration, duration: Duration) -> u64 {
    let period = (on + off).as_nanos().max(1);
    duration.as_nanos().div_ceil(period) as u64
}

/// The windows of a step lasting `duration`, relative to its start; the caller checked
/// that the count is within `MAX_WINDOWS_PER_STEP`.
pub fn windows(shape: &Shape, duration: Duration) -> Vec<RelWindow> {
    match *shape {
        Shape::Constant(intensity) => vec![RelWindow { start: Duration::ZERO, end: duration, intensity }],
        Shape::Ramp { from, to, steps } => {
            let n = u128::from(steps.max(1));
            let at = |k: u128| Duration::from_nanos((duration.as_nanos() * k / n) as u64);
            (0..n)
                .map(|k| {
                    let intensity =
                        if n == 1 { from } else { round_intensity(from + (to - from) * k as f64 / (n - 1) as f64) };
                    RelWindow { start: at(k), end: at(k + 1), intensity }
                })
                .collect()
        }
        Shape::Repeat { on, off, count, intensity } => {
            let period = on + off;
            (0..u64::from(count))
                .map_while(|k| {
                    let start = Duration::from_nanos((period.as_nanos() * u128::from(k)) as u64);
                    (start < duration).then(|| RelWindow { start, end: (start + on).min(duration), intensity })
                })
                .collect()
        }
    }
}

/// Intensities of a ramp, rounded to 6 digits so that the plan prints them exactly
/// (0.1 + 0.9 * 2/4 is 0.5499999999999999 in f64).
fn round_intensity(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Where a step starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// The start of the run (the first step without after/with).
    RunStart,
    /// The end of step i.
    EndOf(usize),
    /// The start of step i.
    StartOf(usize),
}

impl Anchor {
    fn step(self) -> Option<usize> {
        match self {
            Anchor::RunStart => None,
            Anchor::EndOf(i) | Anchor::StartOf(i) => Some(i),
        }
    }
}

/// The start of every step, from its anchor, offset and the length of each step. Err:
/// the steps of a cycle, in the order followed, starting at the lowest index.
pub fn starts(anchors: &[Anchor], offsets: &[Duration], lengths: &[Duration]) -> Result<Vec<Duration>, Vec<usize>> {
    let n = anchors.len();
    let mut start: Vec<Option<Duration>> = vec![None; n];
    for first in 0..n {
        if start[first].is_some() {
            continue;
        }
        // Follow anchors until a step whose start is known (or the run's start); each
        // step has one anchor, so the path is a chain, and a repeat is a cycle.
        let mut path = vec![first];
        let mut on_path = vec![false; n];
        on_path[first] = true;
        loop {
            let last = *path.last().expect("non-empty");
            match anchors[last].step() {
                Some(next) if start[next].is_none() => {
                    if on_path[next] {
                        let from = path.iter().position(|&s| s == next).expect("on the path");
                        let mut cycle = path[from..].to_vec();
                        let lowest = cycle.iter().enumerate().min_by_key(|(_, s)| **s).map_or(0, |(i, _)| i);
                        cycle.rotate_left(lowest);
                        return Err(cycle);
                    }
                    on_path[next] = true;
                    path.push(next);
                }
                _ => break,
            }
        }
        for &step in path.iter().rev() {
            let base = match anchors[step] {
                Anchor::RunStart => Duration::ZERO,
                Anchor::EndOf(j) => start[j].expect("resolved").saturating_add(lengths[j]),
                Anchor::StartOf(j) => start[j].expect("resolved"),
            };
            start[step] = Some(base.saturating_add(offsets[step]));
        }
    }
    Ok(start.into_iter().map(|s| s.expect("every step resolved")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    #[test]
    fn duty_cycles_and_ramps() {
        let shape = Shape::Repeat { on: s(2), off: s(1), count: 3, intensity: 1.0 };
        let length = repeat_length(s(2), s(1), 3).unwrap();
        assert_eq!(length, s(8));
        let w: Vec<_> = windows(&shape, length).iter().map(|w| (w.start, w.end)).collect();
        assert_eq!(w, [(s(0), s(2)), (s(3), s(5)), (s(6), s(8))]);
        // Cycles that fill a duration: the last one cut short.
        assert_eq!(repeat_count_within(s(2), s(2), s(9)), 3);
        let shape = Shape::Repeat { on: s(2), off: s(2), count: 3, intensity: 0.5 };
        let w = windows(&shape, s(9));
        assert_eq!((w[2].start, w[2].end, w[2].intensity), (s(8), s(9), 0.5));

        let w = windows(&Shape::Ramp { from: 0.1, to: 1.0, steps: 5 }, s(10));
        let got: Vec<_> = w.iter().map(|w| (w.start, w.end, w.intensity)).collect();
        assert_eq!(
            got,
            [(s(0), s(2), 0.1), (s(2), s(4), 0.325), (s(4), s(6), 0.55), (s(6), s(8), 0.775), (s(8), s(10), 1.0)]
        );
        // Uneven splits still end exactly at the step's end, windows touching.
        let w = windows(&Shape::Ramp { from: 1.0, to: 0.5, steps: 3 }, Duration::from_millis(1000));
        assert_eq!(w[2].end, s(1));
        assert_eq!(w[0].end, w[1].start);
    }

    #[test]
    fn anchors_chain_and_cycles_are_found() {
        use Anchor::*;
        let lengths = [s(2), s(3), s(4), s(1)];
        let offsets = [Duration::ZERO, Duration::ZERO, s(1), Duration::ZERO];
        // 0 at 0; 1 after 0; 2 with 1 plus 1s; 3 after 2 (a later step may be named too).
        let got = starts(&[RunStart, EndOf(0), StartOf(1), EndOf(2)], &offsets, &lengths).unwrap();
        assert_eq!(got, [s(0), s(2), s(3), s(7)]);
        // Step 0 after step 2, which follows 1, which follows 0.
        let e = starts(&[EndOf(2), EndOf(0), EndOf(1), EndOf(2)], &offsets, &lengths).unwrap_err();
        assert_eq!(e, [0, 2, 1]);
        assert_eq!(starts(&[StartOf(0)], &[Duration::ZERO], &[s(1)]).unwrap_err(), [0]);
    }
}
