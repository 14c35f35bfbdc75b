//! The timeline of an experiment: which faults are in force and which actions are due
//! at a moment, counted from the creation of the resource (the same instant on every
//! node), and when the experiment ends.

use std::time::Duration;

use chaos_model::Problem;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::crd::{ChaosExperimentSpec, PodAction, PodFault};

/// Most steps of an experiment (the CRD says so too).
pub const MAX_STEPS: usize = 16;

/// What is due at one moment.
pub struct Schedule<'a> {
    /// The faults in force: a key naming each (`faults[0]`, `steps[1].faults[0]`), which
    /// also seeds its rule id, and the fault.
    pub faults: Vec<(String, &'a PodFault)>,
    /// The actions whose time has come: their index in spec.actions followed by every
    /// step's actions, the step's name, the action.
    pub actions: Vec<(u32, Option<&'a str>, &'a PodAction)>,
    /// The next start or end of a step, when one is still ahead.
    pub next: Option<Timestamp>,
}

/// A step's start and end offsets (no end: until the experiment ends).
fn window(at: Option<&str>, duration: Option<&str>) -> (Duration, Option<Duration>) {
    // Checked by check_spec before anything is scheduled; a bad text counts as zero.
    let parse = |text: &str| chaos_model::spec::parse_duration(text).unwrap_or_default();
    let start = at.map(parse).unwrap_or_default();
    (start, duration.map(|d| start + parse(d)))
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d).ok().and_then(|d| t.checked_add(d).ok()).unwrap_or(Timestamp::MAX)
}

pub fn at(spec: &ChaosExperimentSpec, created: Timestamp, now: Timestamp) -> Schedule<'_> {
    let mut faults: Vec<(String, &PodFault)> =
        spec.faults.iter().enumerate().map(|(i, f)| (format!("faults[{i}]"), f)).collect();
    let mut actions: Vec<(u32, Option<&str>, &PodAction)> =
        spec.actions.iter().enumerate().map(|(i, a)| (i as u32, None, a)).collect();
    let mut next: Option<Timestamp> = None;
    let mut index = spec.actions.len() as u32;
    for (s, step) in spec.steps.iter().enumerate() {
        let (start, end) = window(step.at.as_deref(), step.duration.as_deref());
        let (start, end) = (plus(created, start), end.map(|e| plus(created, e)));
        for boundary in [Some(start), end].into_iter().flatten().filter(|b| *b > now) {
            next = Some(next.map_or(boundary, |n| n.min(boundary)));
        }
        if now >= start && end.is_none_or(|end| now < end) {
            faults.extend(step.faults.iter().enumerate().map(|(i, f)| (format!("steps[{s}].faults[{i}]"), f)));
        }
        for action in &step.actions {
            if now >= start {
                actions.push((index, Some(step.name.as_str()), action));
            }
            index += 1;
        }
    }
    Schedule { faults, actions, next }
}

/// When the experiment ends: after `duration`, or without one, with its last step when
/// every fault is in a step with a duration. None: when the resource is deleted.
pub fn end(spec: &ChaosExperimentSpec, created: Timestamp) -> Option<Timestamp> {
    if let Some(d) = &spec.duration {
        return Some(plus(created, chaos_model::spec::parse_duration(d).ok()?));
    }
    if spec.steps.is_empty() || !spec.faults.is_empty() {
        return None;
    }
    let mut last = Duration::ZERO;
    for step in &spec.steps {
        match window(step.at.as_deref(), step.duration.as_deref()) {
            (_, Some(end)) => last = last.max(end),
            (start, None) if step.faults.is_empty() => last = last.max(start),
            (_, None) => return None,
        }
    }
    Some(plus(created, last))
}

/// The steps' own fields; their faults and actions are checked with spec.faults' and
/// spec.actions' checks by the caller.
pub fn check(spec: &ChaosExperimentSpec) -> Result<(), Problem> {
    if spec.steps.len() > MAX_STEPS {
        return Err(Problem::new(
            format!("spec.steps: {} steps; at most {MAX_STEPS}", spec.steps.len()),
            "split the experiment into several",
        ));
    }
    for (s, step) in spec.steps.iter().enumerate() {
        let field = |key: &str, e: Problem| Problem::new(format!("spec.steps[{s}].{key}: {}", e.problem), e.fix);
        if let Some(at) = &step.at {
            chaos_model::spec::parse_duration(at).map_err(|e| field("at", e))?;
        }
        if let Some(d) = &step.duration {
            let d = chaos_model::spec::parse_duration(d).map_err(|e| field("duration", e))?;
            if d.is_zero() {
                return Err(field("duration", Problem::new("a duration of zero", "give one above zero, such as 10s")));
            }
        }
        if step.faults.is_empty() && step.actions.is_empty() {
            return Err(Problem::new(
                format!("spec.steps[{s}]: step '{}' has neither a fault nor an action", step.name),
                "add a fault (e.g. {kind: partition}) or an action (e.g. {kind: pod-delete}), or remove the step",
            ));
        }
        if spec.steps[..s].iter().any(|other| other.name == step.name) {
            return Err(Problem::new(
                format!("spec.steps[{s}].name: '{}' names two steps", step.name),
                "give each step its own name",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::crd::{ExperimentStep, Mode, PodSelector};

    fn spec(steps: Vec<ExperimentStep>) -> ChaosExperimentSpec {
        ChaosExperimentSpec {
            selector: PodSelector::default(),
            mode: Mode::All,
            value: None,
            seed: 1,
            duration: None,
            faults: Vec::new(),
            actions: Vec::new(),
            leader: None,
            steps,
            hypothesis: None,
            abort: Vec::new(),
        }
    }

    fn step(name: &str, at: &str, duration: Option<&str>, faults: usize, actions: usize) -> ExperimentStep {
        let fault: PodFault = serde_json::from_str(r#"{"kind":"partition"}"#).unwrap();
        let action = PodAction { kind: "pod-delete".into(), signal: None, container: None };
        ExperimentStep {
            name: name.into(),
            at: Some(at.into()),
            duration: duration.map(Into::into),
            faults: vec![fault; faults],
            actions: vec![action; actions],
        }
    }

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    #[test]
    fn steps_start_end_and_fire_at_their_offsets() {
        let spec = spec(vec![
            step("a", "0s", Some("10s"), 1, 1),
            step("b", "5s", Some("10s"), 2, 0),
            step("c", "20s", None, 0, 2),
        ]);
        let keys = |now| at(&spec, t(0), t(now)).faults.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        let due = |now| {
            at(&spec, t(0), t(now)).actions.into_iter().map(|(i, s, _)| (i, s.unwrap().to_owned())).collect::<Vec<_>>()
        };
        assert_eq!(keys(0), ["steps[0].faults[0]"]);
        assert_eq!(keys(5), ["steps[0].faults[0]", "steps[1].faults[0]", "steps[1].faults[1]"]);
        assert_eq!(keys(10), ["steps[1].faults[0]", "steps[1].faults[1]"]);
        assert!(keys(15).is_empty());
        assert_eq!(due(0), [(0, "a".to_owned())]);
        assert_eq!(due(20), [(0, "a".to_owned()), (1, "c".to_owned()), (2, "c".to_owned())]);
        assert_eq!(at(&spec, t(0), t(0)).next, Some(t(5)));
        assert_eq!(at(&spec, t(0), t(12)).next, Some(t(15)));
        assert_eq!(at(&spec, t(0), t(21)).next, None);
        // The last step (actions only) starts at 20 s: the experiment ends then.
        assert_eq!(end(&spec, t(0)), Some(t(20)));
    }

    #[test]
    fn the_end_is_the_duration_or_the_last_step() {
        let mut s = spec(vec![step("a", "2s", Some("3s"), 1, 0)]);
        assert_eq!(end(&s, t(0)), Some(t(5)));
        s.steps.push(step("b", "1s", None, 1, 0));
        assert_eq!(end(&s, t(0)), None, "a step's fault without a duration lasts until the resource is deleted");
        s.duration = Some("1m".into());
        assert_eq!(end(&s, t(0)), Some(t(60)));
    }

    #[test]
    fn bad_steps_name_the_field() {
        let bad = |steps: Vec<ExperimentStep>, needle: &str| {
            let p = check(&spec(steps)).unwrap_err();
            assert!(p.problem.contains(needle), "{p:?}");
        };
        bad(vec![step("a", "soon", None, 1, 0)], "spec.steps[0].at");
        bad(vec![step("a", "1s", Some("0s"), 1, 0)], "spec.steps[0].duration: a duration of zero");
        bad(vec![step("a", "1s", None, 0, 0)], "spec.steps[0]: step 'a' has neither");
        bad(vec![step("a", "1s", None, 1, 0), step("a", "2s", None, 1, 0)], "spec.steps[1].name");
        assert!(check(&spec(vec![step("a", "1s", Some("2s"), 1, 1)])).is_ok());
    }
}
