//! Scenario files: parse (serde, unknown fields rejected), then validate (pure), each
//! error with file:line:column and a fix. The result is a `Plan` (plan.rs).
//!
//! ```yaml
//! name: lab-demo
//! seed: 42
//! lab: { nodes: 2, traffic: { from: n1, to: n2, rate: 200 } }
//! targets:
//!   n1: netns:chaos-lab-n1
//! steps:
//!   - { name: baseline, fault: none, duration: 3s }
//!   - { name: lossy, fault: loss, target: n1, probability: 0.3, duration: 5s }
//! ```

use std::{
    collections::BTreeMap,
    io::Read,
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::Path,
    str::FromStr,
    time::Duration,
};

use serde::Deserialize;

use crate::{
    lab::LabSpec,
    locate::{locate, Seg},
    plan::{Attach, Plan, PlannedFault, PlannedStep, Protect},
    spec::{self, Direction, FaultKind, PartitionMode, PortRange, Problem, Proto, RawFault, TargetSpec},
};

/// Most steps one scenario may have; a typo'd generator should not plan a year.
const MAX_STEPS: usize = 1000;

/// Largest scenario file read (1 MiB); the largest sample is under 2 KB.
pub const MAX_SCENARIO_BYTES: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<String>,
    description: Option<String>,
    seed: Option<u64>,
    lease: Option<String>,
    attach: Option<Attach>,
    /// Extra protected port ranges (`tcp:22`, `udp:53`) on top of the defaults.
    #[serde(default)]
    protect: Vec<String>,
    /// Drop the default protected list (SSH, the Kubernetes API server).
    #[serde(default)]
    force: bool,
    lab: Option<LabSpec>,
    #[serde(default)]
    targets: BTreeMap<String, String>,
    steps: Vec<RawStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: Option<String>,
    fault: String,
    target: Option<String>,
    duration: String,
    probability: Option<f64>,
    burst: Option<RawBurst>,
    mode: Option<String>,
    #[serde(default)]
    peers: Vec<String>,
    proto: Option<String>,
    ports: Option<String>,
    direction: Option<String>,
    #[serde(default)]
    shadow: bool,
    delay: Option<String>,
    jitter: Option<String>,
    distribution: Option<String>,
    rate: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBurst {
    enter: f64,
    exit: f64,
    loss: Option<f64>,
}

/// Reads and validates a scenario file: a regular file of at most `MAX_SCENARIO_BYTES`.
pub fn load(path: &Path) -> Result<Plan, Problem> {
    let file = crate::spec::shorten(&path.display().to_string(), 120);
    let source = read_regular_file(path).map_err(|(problem, fix)| Problem::located(&file, 0, 0, problem, fix))?;
    parse(&file, &source)
}

/// The text of a regular file, read without blocking: opened with O_NONBLOCK so that a
/// FIFO without a writer cannot hang the open, then refused by type (FIFO, device,
/// directory, socket) before anything is read, and read to at most the size limit (a
/// file that grows meanwhile is refused, not read without end).
fn read_regular_file(path: &Path) -> Result<String, (String, &'static str)> {
    let fix = "give the path of a YAML scenario file (see scenarios/ for examples)";
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| (format!("cannot open the scenario: {e}"), fix))?;
    let meta = opened.metadata().map_err(|e| (format!("cannot stat the scenario: {e}"), fix))?;
    let kind = meta.file_type();
    let not_regular = if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if kind.is_char_device() || kind.is_block_device() {
        Some("a device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        None
    };
    if let Some(what) = not_regular {
        return Err((
            format!("the scenario is {what}, not a regular file"),
            "save the scenario to a regular file and give its path (pipes and devices are not read)",
        ));
    }
    let too_big = |size: u64| {
        (
            format!("the scenario is {size} bytes; at most {MAX_SCENARIO_BYTES} (1 MiB)"),
            "a scenario is a few KB: split it, or use wider prefixes instead of long peer lists",
        )
    };
    if meta.len() > MAX_SCENARIO_BYTES {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::new();
    opened
        .take(MAX_SCENARIO_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| (format!("cannot read the scenario: {e}"), fix))?;
    if bytes.len() as u64 > MAX_SCENARIO_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        (format!("the scenario is not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()), fix)
    })
}

pub fn parse(file: &str, source: &str) -> Result<Plan, Problem> {
    if source.len() as u64 > MAX_SCENARIO_BYTES {
        return Err(Problem::located(
            file,
            0,
            0,
            format!("the scenario is {} bytes; at most {MAX_SCENARIO_BYTES} (1 MiB)", source.len()),
            "a scenario is a few KB: split it",
        ));
    }
    // Bounded first: serde_yaml would build deep or alias-bombed documents in full.
    crate::locate::check_costs(source).map_err(|e| e.in_file(file))?;
    let raw: RawScenario = serde_yaml::from_str(source).map_err(|e| {
        let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        let message = e.to_string();
        // serde_yaml appends " at line L column C"; the position is printed up front.
        let problem = message.split(" at line ").next().unwrap_or(&message);
        let problem = crate::spec::shorten(problem, 200);
        Problem::located(file, line, column, problem.clone(), fix_for_serde(&problem))
    })?;
    let validator = Validator { file, source };
    let plan = validator.validate(raw)?;
    plan.check_limits().map_err(|e| match e.at.step {
        Some(i) => validator.error(&[Seg::Key("steps"), Seg::Index(i), Seg::Key(e.at.field)], e.problem, e.fix),
        None => validator.error(&[Seg::Key(e.at.field)], e.problem, e.fix),
    })?;
    Ok(plan)
}

fn fix_for_serde(problem: &str) -> String {
    if problem.contains("unknown field") {
        "remove or correct the field; the accepted fields are listed in the message and in docs/scenarios.md".into()
    } else if problem.contains("missing field") {
        "add the field (see docs/scenarios.md)".into()
    } else if problem.contains("invalid type") {
        "give the value the type the message asks for (a duration such as 30s is a string)".into()
    } else {
        "fix the YAML syntax at this position".into()
    }
}

struct Validator<'a> {
    file: &'a str,
    source: &'a str,
}

impl Validator<'_> {
    fn error(&self, path: &[Seg], problem: impl Into<String>, fix: impl Into<String>) -> Problem {
        let (line, column) = locate(self.source, path);
        Problem::located(self.file, line, column, problem, fix)
    }

    fn parse_at<T: FromStr<Err = Problem>>(&self, path: &[Seg], text: &str) -> Result<T, Problem> {
        text.parse::<T>().map_err(|e| self.error(path, e.problem, e.fix))
    }

    fn duration_at(&self, path: &[Seg], text: &str) -> Result<Duration, Problem> {
        spec::parse_duration(text).map_err(|e| self.error(path, e.problem, e.fix))
    }

    fn validate(&self, raw: RawScenario) -> Result<Plan, Problem> {
        let lease = match &raw.lease {
            None => crate::plan::DEFAULT_LEASE,
            Some(text) => {
                let d = spec::parse_duration(text).map_err(|e| self.error(&[Seg::Key("lease")], e.problem, e.fix))?;
                if d < Duration::from_millis(300) || d > Duration::from_secs(300) {
                    return Err(self.error(
                        &[Seg::Key("lease")],
                        format!("lease {} is outside 300ms..5m", spec::shorten(text, 40)),
                        "a lease is how long faults outlive a hung chaos-ebpf; 1s-30s is typical",
                    ));
                }
                d
            }
        };
        let mut protect = if raw.force { Vec::new() } else { Protect::defaults() };
        for (i, text) in raw.protect.iter().enumerate() {
            protect.push(self.parse_at(&[Seg::Key("protect"), Seg::Index(i)], text)?);
        }
        if let Some(lab) = &raw.lab {
            lab.validate().map_err(|e| self.error(&[Seg::Key("lab"), Seg::Key(e.at.field)], e.problem, e.fix))?;
        }
        let mut targets = BTreeMap::new();
        for (name, text) in &raw.targets {
            let spec: TargetSpec = text.parse().map_err(|e: Problem| {
                let (line, column) = locate_target(self.source, name);
                Problem::located(
                    self.file,
                    line,
                    column,
                    format!("target '{}': {}", spec::shorten(name, 40), e.problem),
                    e.fix,
                )
            })?;
            targets.insert(name.clone(), spec);
        }
        if raw.steps.is_empty() {
            return Err(self.error(
                &[Seg::Key("steps")],
                "the scenario has no steps",
                "add at least one step with a fault and a duration",
            ));
        }
        if raw.steps.len() > MAX_STEPS {
            return Err(self.error(
                &[Seg::Key("steps")],
                format!("{} steps; at most {MAX_STEPS}", raw.steps.len()),
                "split the scenario",
            ));
        }
        let mut steps = Vec::new();
        let mut start = Duration::ZERO;
        let mut next_rule_id = 1;
        for (i, step) in raw.steps.into_iter().enumerate() {
            let at = |key: &'static str| [Seg::Key("steps"), Seg::Index(i), Seg::Key(key)];
            let duration =
                spec::parse_duration(&step.duration).map_err(|e| self.error(&at("duration"), e.problem, e.fix))?;
            if duration.is_zero() {
                return Err(self.error(
                    &at("duration"),
                    "a step of zero duration does nothing",
                    "give a duration such as 10s",
                ));
            }
            let name = step.name.clone().unwrap_or_else(|| format!("step-{}", i + 1));
            let mut faults = Vec::new();
            if step.fault != "none" {
                let kind: FaultKind = step.fault.parse().map_err(|e: Problem| {
                    self.error(&at("fault"), e.problem, format!("{} (or none for a pause)", e.fix))
                })?;
                let target = match &step.target {
                    None => {
                        return Err(self.error(
                            &at("fault"),
                            format!("step '{}' has no target", spec::shorten(&name, 40)),
                            "add target: NAME (from targets:) or KIND:VALUE",
                        ))
                    }
                    Some(t) => match targets.get(t) {
                        Some(spec) => spec.clone(),
                        None if t.contains(':') => self.parse_at(&at("target"), t)?,
                        None => {
                            let known = spec::list_some(targets.keys().map(|k| spec::shorten(k, 20)), 5);
                            return Err(self.error(
                                &at("target"),
                                format!("unknown target '{}'", spec::shorten(t, 40)),
                                format!(
                                    "use one of the names under targets: ({}) or write KIND:VALUE ({})",
                                    known,
                                    TargetSpec::KINDS
                                ),
                            ));
                        }
                    },
                };
                let mut peers = Vec::new();
                for (j, text) in step.peers.iter().enumerate() {
                    peers.push(
                        self.parse_at(&[Seg::Key("steps"), Seg::Index(i), Seg::Key("peers"), Seg::Index(j)], text)?,
                    );
                }
                let raw_fault = RawFault {
                    kind: Some(kind),
                    target: Some(target),
                    probability: step.probability,
                    burst_enter: step.burst.as_ref().map(|b| b.enter),
                    burst_exit: step.burst.as_ref().map(|b| b.exit),
                    burst_loss: step.burst.as_ref().and_then(|b| b.loss),
                    mode: step.mode.as_deref().map(|m| self.parse_at::<PartitionMode>(&at("mode"), m)).transpose()?,
                    peers,
                    proto: step.proto.as_deref().map(|p| self.parse_at::<Proto>(&at("proto"), p)).transpose()?,
                    ports: step.ports.as_deref().map(|p| self.parse_at::<PortRange>(&at("ports"), p)).transpose()?,
                    direction: step
                        .direction
                        .as_deref()
                        .map(|d| self.parse_at::<Direction>(&at("direction"), d))
                        .transpose()?,
                    shadow: step.shadow,
                    delay: step.delay.as_deref().map(|d| self.duration_at(&at("delay"), d)).transpose()?,
                    jitter: step.jitter.as_deref().map(|d| self.duration_at(&at("jitter"), d)).transpose()?,
                    distribution: step
                        .distribution
                        .as_deref()
                        .map(|d| self.parse_at(&at("distribution"), d))
                        .transpose()?,
                    rate: step
                        .rate
                        .as_deref()
                        .map(|r| spec::parse_rate(r).map_err(|e| self.error(&at("rate"), e.problem, e.fix)))
                        .transpose()?,
                };
                let fault = raw_fault.validate().map_err(|e| {
                    let key = match e.at.field {
                        "fault" | "target" | "probability" | "burst" | "mode" | "proto" | "ports" | "direction" => {
                            e.at.field
                        }
                        _ => "fault",
                    };
                    self.error(&at(key), e.problem, e.fix)
                })?;
                faults.push(PlannedFault { rule_id: next_rule_id, spec: fault });
                next_rule_id += 1;
            } else if step.target.is_some() || step.probability.is_some() || step.mode.is_some() {
                return Err(self.error(
                    &at("fault"),
                    "a 'none' step is a pause and takes no fault parameters",
                    "remove them, or name a fault",
                ));
            }
            let next = start.checked_add(duration).filter(|end| *end <= spec::MAX_DURATION).ok_or_else(|| {
                self.error(
                    &at("duration"),
                    format!("the steps up to '{}' last longer than the maximum of 7 days", spec::shorten(&name, 40)),
                    "shorten the steps; a scenario runs at most 7d",
                )
            })?;
            steps.push(PlannedStep::simple(name, start, duration, faults));
            start = next;
        }
        Ok(Plan {
            name: raw.name.unwrap_or_else(|| "scenario".into()),
            description: raw.description,
            seed: raw.seed,
            lease,
            attach: raw.attach.unwrap_or(Attach::Auto),
            protect,
            lab: raw.lab,
            steps,
            hypothesis: None,
            abort: Vec::new(),
        })
    }
}

/// Position of `targets: { NAME: ... }`'s value (names are user keys, not static).
fn locate_target(source: &str, name: &str) -> (usize, usize) {
    for (i, line) in source.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(name) {
            if rest.trim_start().starts_with(':') {
                return (i + 1, line.len() - trimmed.len() + 1);
            }
        }
    }
    locate(source, &[Seg::Key("targets")])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> Problem {
        parse("s.yaml", src).unwrap_err()
    }

    #[test]
    fn accepts_a_full_scenario() {
        let plan = parse(
            "s.yaml",
            "name: demo\nseed: 7\ntargets:\n  a: netns:x\nsteps:\n  - {name: calm, fault: none, duration: 1s}\n  - fault: loss\n    target: a\n    probability: 0.25\n    duration: 2s\n  - fault: partition\n    target: a\n    mode: new\n    peers: [192.0.2.2/32]\n    duration: 500ms\n",
        )
        .unwrap();
        assert_eq!(plan.seed, Some(7));
        assert_eq!(plan.steps.len(), 3);
        assert_eq!(plan.steps[2].start, Duration::from_secs(3));
        assert_eq!(plan.steps[1].faults[0].rule_id, 1);
        assert_eq!(plan.steps[2].faults[0].rule_id, 2);
        assert_eq!(plan.total_duration(), Duration::from_millis(3500));
    }

    #[test]
    fn sample_scenarios_are_valid() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scenarios");
        let mut count = 0;
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            load(&entry.path()).unwrap_or_else(|e| panic!("{e}"));
            count += 1;
        }
        assert!(count > 0);
    }

    #[test]
    fn errors_name_the_position_and_the_fix() {
        let e = err("steps:\n  - fault: loss\n    target: netns:a\n    probability: 1.5\n    duration: 1s\n");
        assert_eq!((e.at.line, e.at.column), (4, 18), "{e}");
        assert!(e.problem.contains("outside 0..1"), "{e}");

        let e = err("steps:\n  - fault: loss\n    target: nowhere\n    probability: 0.5\n    duration: 1s\n");
        assert_eq!((e.at.line, e.at.column), (3, 13), "{e}");
        assert!(e.problem.contains("unknown target"), "{e}");

        let e = err("steps:\n  - fault: loss\n    colour: red\n    duration: 1s\n");
        assert_eq!(e.at.line, 3, "{e}");
        assert!(e.problem.contains("unknown field `colour`"), "{e}");

        let e = err("steps: [\n");
        assert!(e.fix.contains("syntax"), "{e}");

        let e = err("steps:\n  - fault: jitter\n    duration: 1s\n");
        assert!(e.problem.contains("unknown fault"), "{e}");

        let e = err("steps:\n  - fault: loss\n    target: netns:a\n    probability: 0.1\n    duration: soon\n");
        assert_eq!((e.at.line, e.at.column), (5, 15), "{e}");

        let e = err("targets:\n  a: host:x\nsteps:\n  - {fault: none, duration: 1s}\n");
        assert_eq!(e.at.line, 2, "{e}");
    }

    /// Every line of an error as the CLI prints it stays short.
    fn assert_short(e: &Problem) {
        for line in e.to_string().lines() {
            assert!(line.len() <= 300, "line of {} chars: {}", line.len(), &line[..200]);
        }
    }

    fn fails_fast(src: &str) -> Problem {
        let start = std::time::Instant::now();
        let e = err(src);
        assert!(start.elapsed() < Duration::from_secs(1), "took {:?}: {e}", start.elapsed());
        assert_short(&e);
        e
    }

    #[test]
    fn alias_bombs_and_deep_nesting_fail_fast() {
        // Ten levels of ten aliases each: 10^10 nodes once expanded, 600 bytes of text.
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            bomb += &format!("a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 10].join(", "));
        }
        bomb += "steps: [{fault: none, duration: 1s}]\n";
        let e = fails_fast(&bomb);
        assert!(e.problem.contains("aliases"), "{e}");

        // 400 KB of nested brackets (82 s of CPU in libyaml before this check).
        let e = fails_fast(&format!("steps: {}{}\n", "[".repeat(200_000), "]".repeat(200_000)));
        assert!(e.problem.contains("nests deeper"), "{e}");
        let e = fails_fast(&format!("steps: {}1{}\n", "{a: ".repeat(100_000), "}".repeat(100_000)));
        assert!(e.problem.contains("nests deeper"), "{e}");
        let mut block = String::from("steps:\n");
        for depth in 0..100 {
            block += &format!("{}- \n", "  ".repeat(depth));
        }
        fails_fast(&block);

        // An alias inside the node it names.
        let e = fails_fast("steps: &s [*s]\n");
        assert!(e.problem.contains("alias"), "{e}");
        // A few aliases that expand to little are fine.
        let ok =
            "targets: {a: netns:x}\nsteps:\n  - &p {fault: loss, target: a, probability: 0.1, duration: 1s}\n  - *p\n";
        assert_eq!(parse("s.yaml", ok).unwrap().steps.len(), 2);
    }

    #[test]
    fn tags_are_refused() {
        for src in ["steps:\n  - fault: !foo loss\n    duration: 1s\n", "steps: !!seq []\n", "!x {steps: []}\n"] {
            let e = fails_fast(src);
            assert!(e.problem.contains("tag"), "{e}");
        }
    }

    #[test]
    fn durations_and_sums_are_bounded() {
        for duration in ["1e20", "1e19", "8d", "169h", "99999999999999999999s", "inf", "NaN"] {
            let e = fails_fast(&format!("steps:\n  - {{fault: none, duration: {duration}}}\n"));
            assert_eq!(e.at.line, 2, "{e}");
        }
        let e = fails_fast(&format!("steps:\n{}", "  - {fault: none, duration: 100h}\n".repeat(3)));
        assert!(e.problem.contains("7 days"), "{e}");
        let e = fails_fast("lease: 1e20\nsteps: [{fault: none, duration: 1s}]\n");
        assert_eq!(e.at.line, 1, "{e}");
        let plan = parse("s.yaml", "steps: [{fault: none, duration: 7d}]\n").unwrap();
        assert_eq!(plan.total_duration(), spec::MAX_DURATION);
    }

    #[test]
    fn limits_are_checked_before_anything_runs() {
        let peers: Vec<String> = (0..4097).map(|i| format!("10.{}.{}.1", i / 256, i % 256)).collect();
        let e = fails_fast(&format!(
            "steps:\n  - fault: partition\n    target: netns:a\n    peers: [{}]\n    duration: 1s\n",
            peers.join(", ")
        ));
        assert!(e.problem.contains("4097 peers") && e.problem.contains("4096"), "{e}");
        assert_eq!(e.at.line, 4, "{e}");
        let e = fails_fast(
            "protect: [tcp:1, tcp:2, tcp:3, tcp:4, tcp:5, tcp:6, tcp:7]\nsteps: [{fault: none, duration: 1s}]\n",
        );
        assert!(e.problem.contains("9 protected port ranges"), "{e}");
        // With force the defaults go, and 7 fit.
        parse(
            "s.yaml",
            "force: true\nprotect: [tcp:1, tcp:2, tcp:3, tcp:4, tcp:5, tcp:6, tcp:7]\nsteps: [{fault: none, duration: 1s}]\n",
        )
        .unwrap();
        // Long user text is shortened in messages.
        let e = fails_fast(&format!("steps:\n  - {{fault: loss, target: {}, duration: 1s}}\n", "x".repeat(100_000)));
        assert!(e.problem.contains("unknown target"), "{e}");
    }

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = std::env::temp_dir().join(format!("chaos-scenario-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        struct Remove(std::path::PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _remove = Remove(dir.clone());
        let fifo = dir.join("fifo");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let big = dir.join("big.yaml");
        std::fs::write(&big, format!("# {}\nsteps: [{{fault: none, duration: 1s}}]\n", "x".repeat(1 << 20))).unwrap();
        for (path, expect) in [
            (fifo.as_path(), "FIFO"),
            (Path::new("/dev/zero"), "device"),
            (dir.as_path(), "directory"),
            (big.as_path(), "at most 1048576"),
        ] {
            let start = std::time::Instant::now();
            let e = load(path).unwrap_err();
            assert!(start.elapsed() < Duration::from_secs(1), "{}: {:?}", path.display(), start.elapsed());
            assert!(e.problem.contains(expect), "{e}");
            assert_short(&e);
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Pieces of YAML and of scenario values, good and bad, to string together.
        fn token() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec![
                    "[",
                    "]",
                    "{",
                    "}",
                    ": ",
                    ", ",
                    "\n",
                    "  ",
                    "- ",
                    "&a ",
                    "*a",
                    "&b ",
                    "*b",
                    "!foo ",
                    "!!str ",
                    "'",
                    "\"",
                    "#",
                    "---\n",
                    "? ",
                    "|\n",
                    "steps",
                    "fault",
                    "loss",
                    "none",
                    "delay",
                    "rate",
                    "partition",
                    "blackhole",
                    "target",
                    "targets",
                    "duration",
                    "probability",
                    "peers",
                    "protect",
                    "lease",
                    "ports",
                    "proto",
                    "tcp",
                    "udp",
                    "direction",
                    "egress",
                    "mode",
                    "burst",
                    "jitter",
                    "netns:a",
                    "cgroup:../..",
                    "pid:0",
                    "iface:eth0",
                    "1e20",
                    "1e19",
                    "-1",
                    "NaN",
                    "inf",
                    "0",
                    "1s",
                    "7d",
                    "8d",
                    "500ms",
                    "1m30s",
                    "0.5",
                    "1.5",
                    "30%",
                    "192.0.2.0/24",
                    "::/0",
                    "fd00::1/129",
                    "1-65535",
                    "9-1",
                    "10mbit",
                    "tcp:22",
                ])
                .prop_map(str::to_owned),
                "[a-z0-9:./\\-]{0,12}",
                any::<u64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|n| n.to_string()),
            ]
        }

        /// A scenario with one step whose values are drawn from odd ones.
        fn scenario() -> impl Strategy<Value = String> {
            (token(), token(), token(), token(), token(), prop::collection::vec(token(), 0..5)).prop_map(
                |(fault, target, duration, value, lease, peers)| {
                    format!(
                        "lease: {lease}\ntargets: {{t: {target}}}\nsteps:\n  - fault: {fault}\n    target: {target}\n    duration: {duration}\n    probability: {value}\n    delay: {value}\n    ports: {value}\n    peers: [{}]\n",
                        peers.join(", ")
                    )
                },
            )
        }

        fn check(src: &str) {
            let start = std::time::Instant::now();
            let result = parse("s.yaml", src);
            assert!(start.elapsed() < Duration::from_secs(1), "took {:?} on {src:?}", start.elapsed());
            if let Err(e) = result {
                assert_short(&e);
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn token_soup_never_panics_or_hangs(tokens in prop::collection::vec(token(), 0..200)) {
                check(&tokens.concat());
            }

            #[test]
            fn odd_values_never_panic_or_hang(src in scenario()) {
                check(&src);
            }

            #[test]
            fn repeated_structures_stay_bounded(piece in token(), times in 1usize..50_000) {
                // Long repetitions of one piece: nesting, aliases, huge scalars.
                check(&format!("steps: {}", piece.repeat(times)));
            }

            #[test]
            fn cli_values_never_panic(text in prop_oneof!["\\PC{0,64}", token(), "[0-9.e+-]{1,30}[a-z]{0,3}"]) {
                let start = std::time::Instant::now();
                let messages: Vec<String> = [
                    spec::parse_duration(&text).err(),
                    spec::parse_rate(&text).err(),
                    spec::parse_probability(&text).err(),
                    text.parse::<spec::Cidr>().err(),
                    text.parse::<PortRange>().err(),
                    text.parse::<TargetSpec>().err(),
                    text.parse::<crate::plan::Protect>().err(),
                ]
                .into_iter()
                .flatten()
                .map(|e| format!("{}\n  fix: {}", e.problem, e.fix))
                .collect();
                prop_assert!(start.elapsed() < Duration::from_millis(100));
                for m in messages {
                    prop_assert!(m.lines().all(|l| l.len() <= 300), "{}", m);
                }
                if let Ok(d) = spec::parse_duration(&text) {
                    prop_assert!(d <= spec::MAX_DURATION);
                }
            }
        }
    }
}
