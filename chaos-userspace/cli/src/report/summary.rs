//! What every report says first: the run's outcome and its times, in words.

use chaos_engine::report::{RunReport, Verdict};

/// `2026-11-27T15:46:59.123Z`.
pub fn utc(unix_ms: u64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(unix_ms as i128 * 1_000_000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => format!("{unix_ms} ms since the epoch"),
    }
}

/// The run's outcome in one word and the reasons it failed (none when it passed): the
/// revert not verified clean, a fault cut short, an interruption, a guard that fired, a
/// failed hypothesis.
pub fn outcome(report: &RunReport) -> (&'static str, Vec<String>) {
    let mut reasons = Vec::new();
    if report.interrupted {
        reasons.push("interrupted".to_owned());
    }
    if let Some(failed) = &report.failed {
        reasons.push(format!("a fault did not run its course: {failed}"));
    }
    if let Some(abort) = &report.abort {
        reasons.push(format!("aborted by the {} guard: {}", abort.guard, abort.reason));
    }
    if let Some(h) = &report.hypothesis {
        match h.verdict {
            Verdict::Passed => {}
            Verdict::Failed => reasons.push(format!(
                "hypothesis failed{}",
                h.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
            )),
            Verdict::NotJudged => reasons.push(format!(
                "hypothesis not judged{}",
                h.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
            )),
        }
    }
    if !report.clean {
        reasons.push("the revert is not verified clean".to_owned());
    }
    (if reasons.is_empty() { "passed" } else { "failed" }, reasons)
}

/// The hypothesis verdict as written in the reports.
pub fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Passed => "passed",
        Verdict::Failed => "failed",
        Verdict::NotJudged => "not judged",
    }
}
