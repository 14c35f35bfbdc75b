//! Scenario files: parse (serde, unknown fields rejected), then validate (pure), each
//! error with file:line:column and a fix. The result is a `Plan` (plan.rs).
//!
//! ```yaml
//! apiVersion: chaos-ebpf/v1
//! name: lab-demo
//! seed: 42
//! lab: { nodes: 2, traffic: { from: n1, to: n2, rate: 200 } }
//! targets:
//!   n1: netns:chaos-lab-n1
//! steps:
//!   - { name: baseline, fault: none, duration: 3s }
//!   - { name: lossy, fault: loss, target: n1, probability: 0.3, duration: 5s }
//! ```

mod matrix;
mod raw;
pub mod timeline;

/// The hypothesis and guards as written, for documents that embed them (the Kubernetes
/// ChaosExperiment): checked by [`hypothesis_and_guards`].
pub use raw::{RawGuard, RawHypothesis};

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
    action::{ActionKind, ActionSpec, ActionTarget, LabSelector, PlannedAction, Signal},
    hypothesis::{Compare, Guard, Hypothesis, ProbeCheck, ProbeSpec},
    locate::{locate, Seg},
    plan::{Attach, Plan, PlannedFault, PlannedStep, Protect, Window},
    spec::{self, Cidr, Direction, FaultKind, PartitionMode, PortRange, Problem, Proto, RawFault, TargetSpec},
};
use raw::{RawIntensity, RawScenario, RawStep};

/// The version of the format this crate reads.
pub const API_VERSION: &str = "chaos-ebpf/v1";

/// The JSON Schema of scenario files, derived from the types that parse them (checked
/// in as scenarios/chaos-ebpf.schema.json; `cargo xtask schema` writes it).
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(RawScenario);
    serde_json::to_string_pretty(&schema).expect("a schema serialises") + "\n"
}

/// Most steps one scenario may have; a typo'd generator should not plan a year.
const MAX_STEPS: usize = 1000;

/// Largest scenario file read (1 MiB); the largest sample is under 2 KB.
pub const MAX_SCENARIO_BYTES: u64 = 1 << 20;

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
    check_api_version(file, source)?;
    let raw: RawScenario = serde_yaml::from_str(source).map_err(|e| {
        let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        let message = e.to_string();
        // serde_yaml appends " at line L column C"; the position is printed up front.
        let problem = message.split(" at line ").next().unwrap_or(&message);
        let (problem, line, column) = if problem.contains("untagged enum RawIntensity") {
            // serde_yaml places this at the step; its path (`steps[N]: ...`) names which.
            let step = problem.strip_prefix("steps[").and_then(|r| r.split(']').next()?.parse::<usize>().ok());
            let (line, column) = match step {
                Some(i) => locate(source, &[Seg::Key("steps"), Seg::Index(i), Seg::Key("intensity")]),
                None => (line, column),
            };
            ("intensity is neither a number nor a ramp".to_owned(), line, column)
        } else if problem.contains("untagged enum RawOneOrMany") {
            // `of:` of halves and majority-minority, `alpn:`: one name or a list.
            let at = problem.split(": ").next().unwrap_or("the value");
            (format!("{} is neither a name nor a list of names", crate::spec::shorten(at, 80)), line, column)
        } else {
            (crate::spec::shorten(problem, 200), line, column)
        };
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

/// The version comes first: a file of another version (or of none) is refused before
/// its fields are read with this version's meaning.
fn check_api_version(file: &str, source: &str) -> Result<(), Problem> {
    #[derive(Deserialize)]
    struct Header {
        #[serde(rename = "apiVersion")]
        api_version: Option<serde_yaml::Value>,
    }
    let fix = format!("add `apiVersion: {API_VERSION}` as the first line (docs/scenarios.md describes this version)");
    match serde_yaml::from_str::<Header>(source) {
        Ok(Header { api_version: None }) => Err(Problem::located(
            file,
            1,
            1,
            format!("the scenario has no apiVersion; this chaos-ebpf reads {API_VERSION}"),
            fix,
        )),
        Ok(Header { api_version: Some(serde_yaml::Value::String(v)) }) if v == API_VERSION => Ok(()),
        Ok(Header { api_version: Some(other) }) => {
            let shown = match other {
                serde_yaml::Value::String(s) => s,
                other => serde_yaml::to_string(&other).unwrap_or_default().trim().to_owned(),
            };
            let (line, column) = locate(source, &[Seg::Key("apiVersion")]);
            Err(Problem::located(
                file,
                line,
                column,
                format!("apiVersion '{}' is not one this chaos-ebpf reads ({API_VERSION})", spec::shorten(&shown, 40)),
                format!("write `apiVersion: {API_VERSION}` and check the file against docs/scenarios.md"),
            ))
        }
        // Not a mapping, or not YAML: the full parse below says what is wrong.
        Err(_) => Ok(()),
    }
}

fn fix_for_serde(problem: &str) -> String {
    if problem.contains("unknown field") {
        "remove or correct the field; the accepted fields are listed in the message and in docs/scenarios.md".into()
    } else if problem.contains("missing field") {
        "add the field (see docs/scenarios.md)".into()
    } else if problem.contains("intensity is neither") {
        "write intensity: 0.5 (0 < x <= 1) or a ramp intensity: {from: 0.1, to: 1, steps: 5}".into()
    } else if problem.contains("neither a name nor a list") {
        "write one name or a list of them (of: [node:n1-n8], alpn: [h2, http/1.1])".into()
    } else if problem.contains("invalid type") {
        "give the value the type the message asks for (a duration such as 30s is a string)".into()
    } else {
        "fix the YAML syntax at this position".into()
    }
}

/// Most steps of a ramp.
const MAX_RAMP_STEPS: u32 = 100;
/// Most probes of a hypothesis, and guards.
const MAX_PROBES: usize = 64;
const MAX_GUARDS: usize = 64;

struct Validator<'a> {
    file: &'a str,
    /// Empty when the document is not YAML text (see [`hypothesis_and_guards`]): then
    /// errors name the field's path instead of a line and column.
    source: &'a str,
}

/// The checks of a scenario's `hypothesis` and `abort` on the same fields embedded in
/// another document: each problem starts with the field's path under `prefix` (such as
/// `spec.hypothesis.probes[0].tcp.connect: ...`).
pub fn hypothesis_and_guards(
    prefix: &str,
    hypothesis: Option<&RawHypothesis>,
    guards: &[RawGuard],
) -> Result<(Option<Hypothesis>, Vec<Guard>), Problem> {
    let validator = Validator { file: prefix, source: "" };
    let hypothesis = hypothesis.map(|h| validator.hypothesis(h)).transpose()?;
    let guards = validator.guards(guards, hypothesis.as_ref())?;
    Ok((hypothesis, guards))
}

/// `prefix.key[3].other`: a path as a reader writes it.
fn dotted(prefix: &str, path: &[Seg]) -> String {
    let mut out = prefix.to_owned();
    for seg in path {
        match seg {
            Seg::Key(key) => {
                out.push('.');
                out.push_str(key);
            }
            Seg::Name(name) => {
                out.push('.');
                out.push_str(&spec::shorten(name, 40));
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A path into the document, built from pieces.
fn path(parts: &[Seg]) -> Vec<Seg> {
    parts.to_vec()
}

/// What a step becomes before the timeline places it.
struct Draft {
    name: String,
    seed: Option<u64>,
    faults: Vec<PlannedFault>,
    action: Option<PlannedAction>,
    matrix: Option<crate::matrix::MatrixSpec>,
    /// Relative to the step's start; the last ends at `length`.
    windows: Vec<timeline::RelWindow>,
    length: Duration,
}

impl Validator<'_> {
    fn error(&self, path: &[Seg], problem: impl Into<String>, fix: impl Into<String>) -> Problem {
        if self.source.is_empty() {
            return Problem::new(format!("{}: {}", dotted(self.file, path), problem.into()), fix);
        }
        let (line, column) = locate(self.source, path);
        Problem::located(self.file, line, column, problem, fix)
    }

    fn parse_at<T: FromStr<Err = Problem>>(&self, path: &[Seg], text: &str) -> Result<T, Problem> {
        text.parse::<T>().map_err(|e| self.error(path, e.problem, e.fix))
    }

    fn duration_at(&self, path: &[Seg], text: &str) -> Result<Duration, Problem> {
        spec::parse_duration(text).map_err(|e| self.error(path, e.problem, e.fix))
    }

    /// A duration that must not be zero (`what` names it in the message).
    fn positive_at(&self, path: &[Seg], text: &str, what: &str) -> Result<Duration, Problem> {
        let d = self.duration_at(path, text)?;
        if d.is_zero() {
            return Err(self.error(path, format!("{what} of zero"), "give a duration above zero, such as 1s"));
        }
        Ok(d)
    }

    fn validate(&self, raw: RawScenario) -> Result<Plan, Problem> {
        // check_api_version refused any other before serde read the file.
        let raw::ApiVersion::V1 = raw.api_version;
        let lease = match &raw.lease {
            None => crate::plan::DEFAULT_LEASE,
            Some(text) => {
                let d = self.duration_at(&[Seg::Key("lease")], text)?;
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
        if let Some(cluster) = &raw.cluster {
            cluster
                .validate()
                .map_err(|e| self.error(&[Seg::Key("cluster"), Seg::Key(e.at.field)], e.problem, e.fix))?;
        }
        let mut targets = BTreeMap::new();
        for (name, text) in &raw.targets {
            let spec: TargetSpec = text.parse().map_err(|e: Problem| {
                self.error(
                    &[Seg::Key("targets"), Seg::Name(name.clone())],
                    format!("target '{}': {}", spec::shorten(name, 40), e.problem),
                    e.fix,
                )
            })?;
            targets.insert(name.clone(), spec);
        }
        let peer_sets = self.peer_sets(&raw.peers)?;
        let groups = self.groups(&raw.groups)?;
        let hypothesis = raw.hypothesis.as_ref().map(|h| self.hypothesis(h)).transpose()?;
        let abort = self.guards(&raw.abort, hypothesis.as_ref())?;
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
        // Names first: `after` and `with` may name a later step.
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        for (i, step) in raw.steps.iter().enumerate() {
            let name = step.name.clone().unwrap_or_else(|| format!("step-{}", i + 1));
            if name.is_empty() {
                return Err(self.error(
                    &[Seg::Key("steps"), Seg::Index(i), Seg::Key("name")],
                    "a step name is empty",
                    "give the step a name, or drop name: for step-N",
                ));
            }
            if let Some(first) = index.insert(name.clone(), i) {
                return Err(self.error(
                    &[Seg::Key("steps"), Seg::Index(i), Seg::Key("name")],
                    format!("step name '{}' is used by step {} too", spec::shorten(&name, 40), first + 1),
                    "give every step its own name: after:, with:, seeds and reports name steps by it",
                ));
            }
        }
        let mut next_rule_id = 1;
        let mut drafts = Vec::with_capacity(raw.steps.len());
        let mut window_count = 0usize;
        let mut matrix_members = 0usize;
        for (i, step) in raw.steps.iter().enumerate() {
            let draft = self.step(i, step, &targets, &peer_sets, &groups, &mut next_rule_id)?;
            window_count += draft.windows.len();
            matrix_members += draft.matrix.as_ref().map_or(0, |m| m.matrix.member_count());
            if matrix_members > crate::matrix::MAX_MEMBERS_IN_ALL {
                return Err(self.error(
                    &[Seg::Key("steps"), Seg::Index(i), Seg::Key("partition")],
                    format!(
                        "the partition matrices up to this step have more than {} members in all",
                        crate::matrix::MAX_MEMBERS_IN_ALL
                    ),
                    "use fewer matrix steps (repeat: turns one on and off), or prefixes instead of many members",
                ));
            }
            if window_count > timeline::MAX_WINDOWS {
                return Err(self.error(
                    &[Seg::Key("steps"), Seg::Index(i)],
                    format!("the steps up to this one have more than {} windows", timeline::MAX_WINDOWS),
                    "use fewer duty cycles or ramp steps",
                ));
            }
            drafts.push(draft);
        }
        let mut anchors = Vec::with_capacity(drafts.len());
        let mut offsets = Vec::with_capacity(drafts.len());
        for (i, step) in raw.steps.iter().enumerate() {
            anchors.push(self.anchor(i, step, &index)?);
            offsets.push(
                step.offset
                    .as_deref()
                    .map(|o| self.duration_at(&[Seg::Key("steps"), Seg::Index(i), Seg::Key("offset")], o))
                    .transpose()?
                    .unwrap_or_default(),
            );
        }
        let lengths: Vec<Duration> = drafts.iter().map(|d| d.length).collect();
        let starts = timeline::starts(&anchors, &offsets, &lengths).map_err(|cycle| {
            let names: Vec<String> = cycle.iter().map(|&s| spec::shorten(&drafts[s].name, 20)).collect();
            let at = cycle
                .iter()
                .copied()
                .find(|&s| raw.steps[s].after.is_some() || raw.steps[s].with.is_some())
                .unwrap_or(cycle[0]);
            let key = if raw.steps[at].with.is_some() { "with" } else { "after" };
            self.error(
                &[Seg::Key("steps"), Seg::Index(at), Seg::Key(key)],
                format!(
                    "steps {} -> {} wait for each other in a cycle",
                    spec::list_some(names.iter(), 6).replace(", ", " -> "),
                    names[0]
                ),
                "anchor one of them on a step outside the cycle, or drop its after:/with: so it follows the step before it",
            )
        })?;
        let mut steps = Vec::with_capacity(drafts.len());
        for (i, (draft, start)) in drafts.into_iter().zip(starts).enumerate() {
            let end = start.saturating_add(draft.length);
            if end > spec::MAX_DURATION {
                return Err(self.error(
                    &[Seg::Key("steps"), Seg::Index(i), Seg::Key("duration")],
                    format!(
                        "step '{}' ends at {}, after the maximum of 7 days",
                        spec::shorten(&draft.name, 40),
                        spec::format_duration(end.min(spec::MAX_DURATION * 1000))
                    ),
                    "shorten the steps; a scenario runs at most 7d",
                ));
            }
            let windows = draft
                .windows
                .iter()
                .map(|w| Window { start: start + w.start, end: start + w.end, intensity: w.intensity })
                .collect();
            steps.push(PlannedStep {
                name: draft.name,
                start,
                duration: draft.length,
                seed: draft.seed,
                faults: draft.faults,
                action: draft.action,
                matrix: draft.matrix,
                windows,
            });
        }
        Ok(Plan {
            name: raw.name.unwrap_or_else(|| "scenario".into()),
            description: raw.description,
            seed: raw.seed,
            lease,
            attach: raw.attach.unwrap_or(Attach::Auto),
            protect,
            lab: raw.lab,
            cluster: raw.cluster,
            steps,
            hypothesis,
            abort,
        })
    }

    fn peer_sets(&self, raw: &BTreeMap<String, Vec<String>>) -> Result<BTreeMap<String, Vec<Cidr>>, Problem> {
        let mut sets = BTreeMap::new();
        for (name, list) in raw {
            let at = |j: Option<usize>| {
                let mut p = path(&[Seg::Key("peers"), Seg::Name(name.clone())]);
                p.extend(j.map(Seg::Index));
                p
            };
            if name.parse::<Cidr>().is_ok() {
                return Err(self.error(
                    &at(None),
                    format!(
                        "peer set name '{}' is an address, so steps could not tell them apart",
                        spec::shorten(name, 40)
                    ),
                    "name the set with a word (east, clients)",
                ));
            }
            if list.is_empty() {
                return Err(self.error(
                    &at(None),
                    format!("peer set '{}' is empty", spec::shorten(name, 40)),
                    "list addresses or prefixes in it, or remove it",
                ));
            }
            let mut cidrs = Vec::with_capacity(list.len());
            for (j, text) in list.iter().enumerate() {
                cidrs.push(self.parse_at::<Cidr>(&at(Some(j)), text)?);
            }
            sets.insert(name.clone(), cidrs);
        }
        Ok(sets)
    }

    /// Where step `i` starts from.
    fn anchor(&self, i: usize, step: &RawStep, index: &BTreeMap<String, usize>) -> Result<timeline::Anchor, Problem> {
        let at = |key: &'static str| [Seg::Key("steps"), Seg::Index(i), Seg::Key(key)];
        let (key, name) = match (&step.after, &step.with) {
            (Some(_), Some(_)) => {
                return Err(self.error(
                    &at("with"),
                    "a step starts either after a step or with one, not both",
                    "keep after: (start when it ends) or with: (start when it starts); offset: shifts either",
                ))
            }
            (Some(n), None) => ("after", n),
            (None, Some(n)) => ("with", n),
            (None, None) => {
                return Ok(if i == 0 { timeline::Anchor::RunStart } else { timeline::Anchor::EndOf(i - 1) });
            }
        };
        let Some(&j) = index.get(name) else {
            let known = spec::list_some(index.keys().map(|k| spec::shorten(k, 20)), 6);
            return Err(self.error(
                &at(key),
                format!("{key}: names step '{}', which the scenario does not have", spec::shorten(name, 40)),
                format!("name one of the steps: {known}"),
            ));
        };
        if j == i {
            return Err(self.error(
                &at(key),
                format!("step '{}' cannot start {key} itself", spec::shorten(name, 40)),
                "name another step, or drop the field so it follows the step before it",
            ));
        }
        Ok(if key == "after" { timeline::Anchor::EndOf(j) } else { timeline::Anchor::StartOf(j) })
    }

    /// One step: its faults (one per target), its windows and its length.
    fn step(
        &self,
        i: usize,
        step: &RawStep,
        targets: &BTreeMap<String, TargetSpec>,
        peer_sets: &BTreeMap<String, Vec<Cidr>>,
        groups: &matrix::Groups,
        next_rule_id: &mut u32,
    ) -> Result<Draft, Problem> {
        let at = |key: &'static str| [Seg::Key("steps"), Seg::Index(i), Seg::Key(key)];
        let name = step.name.clone().unwrap_or_else(|| format!("step-{}", i + 1));
        let duration =
            step.duration.as_deref().map(|d| self.positive_at(&at("duration"), d, "a step duration")).transpose()?;
        if step.partition.is_some() {
            return self.matrix_step(i, step, name, duration, groups);
        }
        let fault = match (&step.fault, &step.action) {
            (Some(_), Some(_)) => {
                return Err(self.error(
                    &at("action"),
                    "a step gives both fault and action",
                    "split it into two steps (with: runs them together)",
                ))
            }
            (None, None) => {
                return Err(self.error(
                    &[Seg::Key("steps"), Seg::Index(i)],
                    format!("step '{}' has neither fault nor action", spec::shorten(&name, 40)),
                    format!(
                        "add fault: (one of {}, or none for a pause), partition: (a matrix) or action: ({})",
                        FaultKind::NAMES,
                        ActionKind::NAMES
                    ),
                ))
            }
            (None, Some(action)) => return self.action_step(i, step, name, action, duration, targets),
            (Some(fault), None) => fault,
        };
        if let Some((key, _, _)) = step.action_fields().into_iter().find(|(_, _, set)| *set) {
            return Err(self.error(
                &at(key),
                format!("{key} belongs to an action step, not a fault"),
                "remove it, or use it with action: (kill, pause, surge, cert-expiry)",
            ));
        }
        if fault == "none" {
            let targets = [("target", step.target.is_some()), ("targets", step.targets.is_some())];
            if let Some((key, _)) = targets.into_iter().chain(step.fault_fields()).find(|(_, set)| *set) {
                return Err(self.error(
                    &at(key),
                    format!("a 'none' step is a pause and takes no {key}"),
                    "remove it, or name a fault",
                ));
            }
            let length =
                duration.ok_or_else(|| self.error(&at("fault"), "a pause needs a duration", "add duration: 5s"))?;
            return Ok(Draft {
                name,
                seed: step.seed,
                faults: Vec::new(),
                action: None,
                matrix: None,
                windows: timeline::windows(&timeline::Shape::Constant(1.0), length),
                length,
            });
        }
        let kind: FaultKind = fault
            .parse()
            .map_err(|e: Problem| self.error(&at("fault"), e.problem, format!("{} (or none for a pause)", e.fix)))?;
        let (shape, length) = self.shape(i, step, duration)?;
        let windows = timeline::windows(&shape, length);

        // Targets, as written: one, or a list.
        let named: Vec<(&String, Vec<Seg>)> = match (&step.target, &step.targets) {
            (Some(_), Some(_)) => {
                return Err(self.error(
                    &at("targets"),
                    "a step gives target and targets",
                    "list every target under targets: [a, b] and drop target:",
                ))
            }
            (Some(t), None) => vec![(t, at("target").to_vec())],
            (None, Some(list)) => {
                if list.is_empty() {
                    return Err(self.error(&at("targets"), "targets: is empty", "name at least one target"));
                }
                list.iter()
                    .enumerate()
                    .map(|(j, t)| (t, path(&[Seg::Key("steps"), Seg::Index(i), Seg::Key("targets"), Seg::Index(j)])))
                    .collect()
            }
            (None, None) => {
                return Err(self.error(
                    &at("fault"),
                    format!("step '{}' has no target", spec::shorten(&name, 40)),
                    "add target: NAME (from targets:) or KIND:VALUE, or targets: [a, b]",
                ))
            }
        };
        let mut resolved: Vec<(TargetSpec, Vec<Seg>)> = Vec::with_capacity(named.len());
        for (t, t_path) in named {
            let spec = match targets.get(t) {
                Some(spec) => spec.clone(),
                None if t.contains(':') || LabSelector::from_word(t).is_some() => self.parse_at(&t_path, t)?,
                None => {
                    let known = spec::list_some(targets.keys().map(|k| spec::shorten(k, 20)), 5);
                    return Err(self.error(
                        &t_path,
                        format!("unknown target '{}'", spec::shorten(t, 40)),
                        format!(
                            "use one of the names under targets: ({}) or write KIND:VALUE ({})",
                            known,
                            TargetSpec::KINDS
                        ),
                    ));
                }
            };
            if resolved.iter().any(|(s, _)| *s == spec) {
                return Err(self.error(
                    &t_path,
                    format!("target {spec} is listed twice in this step"),
                    "list each target once",
                ));
            }
            resolved.push((spec, t_path));
        }

        let mut peers: Vec<Cidr> = Vec::new();
        let mut lab_peers: Vec<LabSelector> = Vec::new();
        for (j, text) in step.peers.iter().enumerate() {
            let p_path = [Seg::Key("steps"), Seg::Index(i), Seg::Key("peers"), Seg::Index(j)];
            if !peer_sets.contains_key(text) {
                if let Some(selector) = LabSelector::parse(text) {
                    let selector = selector.map_err(|e| self.error(&p_path, e.problem, e.fix))?;
                    if !lab_peers.contains(&selector) {
                        lab_peers.push(selector);
                    }
                    continue;
                }
            }
            let found = match peer_sets.get(text) {
                Some(set) => set.clone(),
                None => vec![text.parse::<Cidr>().map_err(|e| {
                    let fix = if peer_sets.is_empty() {
                        e.fix
                    } else {
                        format!(
                            "{}, or name a peer set ({})",
                            e.fix,
                            spec::list_some(peer_sets.keys().map(|k| spec::shorten(k, 20)), 5)
                        )
                    };
                    self.error(
                        &p_path,
                        format!("'{}' is neither an address or prefix nor a peer set", spec::shorten(text, 60)),
                        fix,
                    )
                })?],
            };
            for c in found {
                if !peers.contains(&c) {
                    peers.push(c);
                }
            }
        }
        let raw_fault = RawFault {
            kind: Some(kind),
            target: None,
            probability: step.probability,
            burst_enter: step.burst.as_ref().map(|b| b.enter),
            burst_exit: step.burst.as_ref().map(|b| b.exit),
            burst_loss: step.burst.as_ref().and_then(|b| b.loss),
            // `mode` is the partition mode, or for tls-refuse how a connection ends.
            mode: match kind {
                FaultKind::TlsRefuse => None,
                _ => step.mode.as_deref().map(|m| self.parse_at::<PartitionMode>(&at("mode"), m)).transpose()?,
            },
            tls_mode: match kind {
                FaultKind::TlsRefuse => step.mode.as_deref().map(|m| self.parse_at(&at("mode"), m)).transpose()?,
                _ => None,
            },
            alpn: step.alpn.as_ref().map(|a| a.to_vec()).unwrap_or_default(),
            tls_versions: step
                .tls_versions
                .iter()
                .flatten()
                .map(|v| self.parse_at::<spec::TlsVersion>(&at("tls-versions"), &v.text()))
                .collect::<Result<_, _>>()?,
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
            distribution: step.distribution.as_deref().map(|d| self.parse_at(&at("distribution"), d)).transpose()?,
            rate: step
                .rate
                .as_deref()
                .map(|r| spec::parse_rate(r).map_err(|e| self.error(&at("rate"), e.problem, e.fix)))
                .transpose()?,
        };
        let mut faults = Vec::with_capacity(resolved.len());
        for (target, t_path) in resolved {
            let fault =
                RawFault { target: Some(target), ..raw_fault.clone() }.validate().map_err(|e| match e.at.field {
                    "target" => self.error(&t_path, e.problem, e.fix),
                    "fault" | "probability" | "burst" | "mode" | "proto" | "ports" | "direction" | "alpn"
                    | "tls-versions" => self.error(&at(e.at.field), e.problem, e.fix),
                    _ => self.error(&at("fault"), e.problem, e.fix),
                })?;
            for w in &windows {
                fault.check_intensity(w.intensity).map_err(|e| self.error(&at("intensity"), e.problem, e.fix))?;
            }
            faults.push(PlannedFault {
                rule_id: *next_rule_id,
                spec: fault,
                lab_peers: lab_peers.clone(),
                matrix: None,
            });
            *next_rule_id += 1;
        }
        Ok(Draft { name, seed: step.seed, faults, action: None, matrix: None, windows, length })
    }

    /// An action step: one window over the step's duration, the action applied when it
    /// opens and undone (restart, thaw, original certificate) when it closes.
    fn action_step(
        &self,
        i: usize,
        step: &RawStep,
        name: String,
        action: &str,
        duration: Option<Duration>,
        targets: &BTreeMap<String, TargetSpec>,
    ) -> Result<Draft, Problem> {
        let at = |key: &'static str| [Seg::Key("steps"), Seg::Index(i), Seg::Key(key)];
        let kind: ActionKind = self.parse_at(&at("action"), action)?;
        // A surge's `rate` is nodes per second; every other fault parameter is foreign here,
        // and so are the parameters of other actions.
        let foreign =
            step.fault_fields().into_iter().filter(|(key, _)| !(*key == "rate" && kind == ActionKind::Surge)).chain(
                step.action_fields().into_iter().filter(|(_, owner, _)| *owner != kind).map(|(k, _, set)| (k, set)),
            );
        if let Some((key, _)) = foreign.into_iter().find(|(_, set)| *set) {
            return Err(self.error(
                &at(key),
                format!("a {} action takes no {key}", kind.name()),
                "remove it (see docs/faults.md for each action's parameters)",
            ));
        }
        let length = duration.ok_or_else(|| {
            self.error(
                &at("action"),
                format!("a {} step needs a duration", kind.name()),
                match kind {
                    ActionKind::Kill => "add duration: 10s (with restart: true the member comes back when it ends)",
                    ActionKind::Pause => "add duration: 5s (how long the target stays frozen)",
                    ActionKind::Surge => "add duration: 30s (the time the surge's cycles may take)",
                    ActionKind::CertExpiry => "add duration: 10s (how long the member runs with the bad certificate)",
                },
            )
        })?;
        let spec = match kind {
            ActionKind::Kill => {
                let grace =
                    step.grace.as_deref().map(|g| self.positive_at(&at("grace"), g, "a grace period")).transpose()?;
                if grace.is_some() && step.signal.is_some() {
                    return Err(self.error(
                        &at("grace"),
                        "a kill gives both signal and grace",
                        "grace sends SIGTERM, then SIGKILL after it; drop signal: (or grace: for one signal)",
                    ));
                }
                let signal = step.signal.as_deref().map(|s| self.parse_at::<Signal>(&at("signal"), s)).transpose()?;
                let leader_within = step
                    .leader_within
                    .as_deref()
                    .map(|d| self.positive_at(&at("leader-within"), d, "a leader election bound"))
                    .transpose()?
                    .unwrap_or(crate::action::DEFAULT_LEADER_WITHIN);
                ActionSpec::Kill { signal: signal.unwrap_or(Signal::KILL), grace, restart: step.restart, leader_within }
            }
            ActionKind::Pause => ActionSpec::Pause,
            ActionKind::Surge => {
                let count = step.count.ok_or_else(|| {
                    self.error(&at("action"), "a surge needs a count of nodes", "add count: 5 (1..50 per cycle)")
                })?;
                // The lab's surge starts at most 50 nodes per cycle (one port each).
                if !(1..=50).contains(&count) {
                    return Err(self.error(
                        &at("count"),
                        format!("count {count} is outside 1..50"),
                        "use 1..50 nodes per cycle",
                    ));
                }
                let cycles = step.cycles.unwrap_or(1);
                if !(1..=100).contains(&cycles) {
                    return Err(self.error(
                        &at("cycles"),
                        format!("cycles {cycles} is outside 1..100"),
                        "use 1..100 cycles",
                    ));
                }
                let rate = match step.rate.as_deref() {
                    None => 5.0,
                    Some(text) => {
                        let number = text.trim().strip_suffix("/s").unwrap_or(text.trim());
                        match number.trim().parse::<f64>() {
                            Ok(r) if r.is_finite() && (0.1..=100.0).contains(&r) => r,
                            _ => {
                                return Err(self.error(
                                    &at("rate"),
                                    format!("'{}' is not a surge rate", spec::shorten(text, 30)),
                                    "write nodes per second, 0.1/s to 100/s (e.g. rate: 5/s)",
                                ))
                            }
                        }
                    }
                };
                ActionSpec::Surge { count, rate, cycles }
            }
            ActionKind::CertExpiry => ActionSpec::CertExpiry {
                expires_in: step
                    .expires_in
                    .as_deref()
                    .map(|d| self.positive_at(&at("expires-in"), d, "an expiry"))
                    .transpose()?,
            },
        };
        let written: Vec<(&String, Vec<Seg>)> = match (&step.target, &step.targets) {
            (Some(_), Some(_)) => {
                return Err(self.error(&at("targets"), "a step gives target and targets", "keep one of them"))
            }
            (Some(t), None) => vec![(t, at("target").to_vec())],
            (None, Some(list)) => list
                .iter()
                .enumerate()
                .map(|(j, t)| (t, path(&[Seg::Key("steps"), Seg::Index(i), Seg::Key("targets"), Seg::Index(j)])))
                .collect(),
            (None, None) => Vec::new(),
        };
        let mut action_targets = Vec::with_capacity(written.len());
        for (t, t_path) in written {
            let target = match targets.get(t) {
                Some(spec) => spec.clone(),
                None => self.parse_at::<TargetSpec>(&t_path, t)?,
            };
            let target = match (target, kind) {
                (TargetSpec::Lab(selector), _) => ActionTarget::Lab(selector),
                (TargetSpec::Pid(pid), ActionKind::Kill | ActionKind::Pause) => ActionTarget::Pid(pid),
                (TargetSpec::Container(name), ActionKind::Kill | ActionKind::Pause) => ActionTarget::Container(name),
                (other, _) => return Err(self.error(
                    &t_path,
                    format!("a {} action cannot act on {other}", kind.name()),
                    match kind {
                        ActionKind::Kill | ActionKind::Pause => {
                            "name lab members (node:n2, leader, followers, minority, majority), a process (pid:1234) or a container (container:NAME)"
                        }
                        _ => "name lab members (node:n2, leader, followers, minority, majority)",
                    },
                )),
            };
            if !action_targets.contains(&target) {
                action_targets.push(target);
            }
        }
        match (kind, action_targets.is_empty()) {
            (ActionKind::Surge, false) => {
                return Err(self.error(
                    &at("target"),
                    "a surge adds workload nodes and takes no target",
                    "remove target: (the new nodes run on the lab's members in turn)",
                ))
            }
            (ActionKind::Surge, true) => {}
            (_, true) => {
                return Err(self.error(
                    &at("action"),
                    format!("step '{}' has no target", spec::shorten(&name, 40)),
                    format!("add target: ({})", LabSelector::WORDS),
                ))
            }
            (_, false) => {}
        }
        Ok(Draft {
            name,
            seed: step.seed,
            faults: Vec::new(),
            action: Some(PlannedAction { spec, targets: action_targets }),
            matrix: None,
            windows: timeline::windows(&timeline::Shape::Constant(1.0), length),
            length,
        })
    }

    /// The shape of a step's windows and its length, from duration, intensity and repeat.
    fn shape(
        &self,
        i: usize,
        step: &RawStep,
        duration: Option<Duration>,
    ) -> Result<(timeline::Shape, Duration), Problem> {
        use timeline::Shape;
        let at = |key: &'static str| path(&[Seg::Key("steps"), Seg::Index(i), Seg::Key(key)]);
        let sub = |key: &'static str, inner: &'static str| {
            path(&[Seg::Key("steps"), Seg::Index(i), Seg::Key(key), Seg::Key(inner)])
        };
        let check = |p: Vec<Seg>, x: f64| -> Result<f64, Problem> {
            if x.is_finite() && x > 0.0 && x <= 1.0 {
                Ok(x)
            } else {
                Err(self.error(
                    &p,
                    format!("intensity {x} is outside 0 < x <= 1"),
                    "give an intensity above 0 and at most 1 (1 is the fault as written)",
                ))
            }
        };
        let Some(repeat) = &step.repeat else {
            let length = duration.ok_or_else(|| {
                self.error(
                    &at("fault"),
                    "the step has no duration",
                    "add duration: 10s (or a repeat: {on, off, count})",
                )
            })?;
            let shape = match &step.intensity {
                None => Shape::Constant(1.0),
                Some(RawIntensity::Fixed(x)) => Shape::Constant(check(at("intensity"), *x)?),
                Some(RawIntensity::Ramp(r)) => {
                    check(sub("intensity", "from"), r.from)?;
                    check(sub("intensity", "to"), r.to)?;
                    if !(2..=MAX_RAMP_STEPS).contains(&r.steps) {
                        return Err(self.error(
                            &sub("intensity", "steps"),
                            format!("a ramp of {} steps; a ramp has 2..{MAX_RAMP_STEPS}", r.steps),
                            "give steps: 5 (windows of equal length from `from` to `to`)",
                        ));
                    }
                    if length.as_nanos() < u128::from(r.steps) * 1_000_000 {
                        return Err(self.error(
                            &sub("intensity", "steps"),
                            format!(
                                "{} ramp steps in {} leaves windows under 1ms",
                                r.steps,
                                spec::format_duration(length)
                            ),
                            "use fewer steps or a longer duration",
                        ));
                    }
                    Shape::Ramp { from: r.from, to: r.to, steps: r.steps }
                }
            };
            return Ok((shape, length));
        };
        let intensity = match &step.intensity {
            None => 1.0,
            Some(RawIntensity::Fixed(x)) => check(at("intensity"), *x)?,
            Some(RawIntensity::Ramp(_)) => {
                return Err(self.error(
                    &at("intensity"),
                    "a ramp inside a duty cycle is not supported",
                    "give the duty cycle one intensity (intensity: 0.5), or ramp in a step of its own",
                ))
            }
        };
        let on = self.positive_at(&sub("repeat", "on"), &repeat.on, "an on period")?;
        let off = self.positive_at(&sub("repeat", "off"), &repeat.off, "an off period")?;
        let too_many = |p: Vec<Seg>, n: u64| {
            self.error(
                &p,
                format!("{n} duty cycles; a step has at most {}", timeline::MAX_WINDOWS_PER_STEP),
                "use longer on and off periods",
            )
        };
        let (count, length) = match (repeat.count, duration) {
            (Some(0), _) => {
                return Err(self.error(&sub("repeat", "count"), "a duty cycle of 0 periods", "give count: 1 or more"))
            }
            (Some(count), given) => {
                if count as usize > timeline::MAX_WINDOWS_PER_STEP {
                    return Err(too_many(sub("repeat", "count"), u64::from(count)));
                }
                let derived =
                    timeline::repeat_length(on, off, count).filter(|d| *d <= spec::MAX_DURATION).ok_or_else(|| {
                        self.error(
                            &sub("repeat", "count"),
                            "the duty cycle lasts longer than the maximum of 7 days",
                            "use fewer or shorter periods",
                        )
                    })?;
                if let Some(d) = given {
                    if d != derived {
                        return Err(self.error(
                            &at("duration"),
                            format!(
                                "duration {} disagrees with the duty cycle: {count} x {} on, with {} off between, is {}",
                                spec::format_duration(d),
                                spec::format_duration(on),
                                spec::format_duration(off),
                                spec::format_duration(derived)
                            ),
                            "drop duration (the cycle gives it), or drop count so that cycles fill the duration",
                        ));
                    }
                }
                (count, derived)
            }
            (None, Some(d)) => {
                let n = timeline::repeat_count_within(on, off, d);
                if n as usize > timeline::MAX_WINDOWS_PER_STEP {
                    return Err(too_many(at("duration"), n));
                }
                (n as u32, d)
            }
            (None, None) => {
                return Err(self.error(
                    &at("repeat"),
                    "a duty cycle needs a count or a duration",
                    "add count: 3 to repeat: (the duration follows), or a duration for the cycles to fill",
                ))
            }
        };
        let shape = Shape::Repeat { on, off, count, intensity };
        // The step ends with its last window (a duration that ends in an off period is cut there).
        let end = timeline::windows(&shape, length).last().map_or(length, |w| w.end);
        Ok((shape, end))
    }

    fn hypothesis(&self, raw: &RawHypothesis) -> Result<Hypothesis, Problem> {
        let at = |key: &'static str| path(&[Seg::Key("hypothesis"), Seg::Key(key)]);
        let duration_or = |key: &'static str, text: &Option<String>, default: u64, what: &str| {
            text.as_deref()
                .map(|t| self.positive_at(&at(key), t, what))
                .transpose()
                .map(|d| d.unwrap_or(Duration::from_secs(default)))
        };
        let interval = duration_or("interval", &raw.interval, 1, "a probe interval")?;
        let steady_within = duration_or("steady-within", &raw.steady_within, 10, "a steady-within time")?;
        let recovery = duration_or("recovery", &raw.recovery, 30, "a recovery time")?;
        if raw.probes.is_empty() {
            return Err(self.error(
                &at("probes"),
                "the hypothesis has no probes",
                "add a probe, e.g. - {name: api, tcp: {connect: \"127.0.0.1:8080\"}}",
            ));
        }
        if raw.probes.len() > MAX_PROBES {
            return Err(self.error(
                &at("probes"),
                format!("{} probes; at most {MAX_PROBES}", raw.probes.len()),
                "probe fewer things",
            ));
        }
        let mut probes: Vec<ProbeSpec> = Vec::with_capacity(raw.probes.len());
        for (j, probe) in raw.probes.iter().enumerate() {
            let p =
                |key: &'static str| path(&[Seg::Key("hypothesis"), Seg::Key("probes"), Seg::Index(j), Seg::Key(key)]);
            let q = |key: &'static str, inner: &'static str| {
                path(&[Seg::Key("hypothesis"), Seg::Key("probes"), Seg::Index(j), Seg::Key(key), Seg::Key(inner)])
            };
            if probe.name.is_empty() || probe.name.len() > 64 || probe.name.chars().any(char::is_control) {
                return Err(self.error(
                    &p("name"),
                    format!(
                        "probe name '{}' is empty, longer than 64 or has control characters",
                        spec::shorten(&probe.name, 40)
                    ),
                    "name the probe with a short word (api, ping)",
                ));
            }
            if probes.iter().any(|other| other.name == probe.name) {
                return Err(self.error(
                    &p("name"),
                    format!("two probes are named '{}'", spec::shorten(&probe.name, 40)),
                    "give every probe its own name: guards and reports name probes by it",
                ));
            }
            let timeout = match &probe.timeout {
                None => Duration::from_secs(2),
                Some(t) => self.positive_at(&p("timeout"), t, "a probe timeout")?,
            };
            let kinds = [
                ("http", probe.http.is_some()),
                ("tcp", probe.tcp.is_some()),
                ("dns", probe.dns.is_some()),
                ("command", probe.command.is_some()),
                ("prometheus", probe.prometheus.is_some()),
            ];
            let set: Vec<&str> = kinds.iter().filter(|(_, s)| *s).map(|(k, _)| *k).collect();
            match set.as_slice() {
                [] => {
                    return Err(self.error(
                        &path(&[Seg::Key("hypothesis"), Seg::Key("probes"), Seg::Index(j)]),
                        format!("probe '{}' has no check", spec::shorten(&probe.name, 40)),
                        "add one of http, tcp, dns, command, prometheus",
                    ))
                }
                [_] => (),
                [_, second, ..] => {
                    let key = kinds.iter().map(|(k, _)| *k).find(|k| k == second).unwrap_or("name");
                    return Err(self.error(
                        &p(key),
                        format!(
                            "probe '{}' has {} checks ({})",
                            spec::shorten(&probe.name, 40),
                            set.len(),
                            set.join(", ")
                        ),
                        "give each probe one check; make another probe for the other",
                    ));
                }
            };
            let check = if let Some(h) = &probe.http {
                self.http_url(&q("http", "url"), &h.url)?;
                let status = h.status.unwrap_or(200);
                if !(100..=599).contains(&status) {
                    return Err(self.error(
                        &q("http", "status"),
                        format!("status {status} is not an HTTP status"),
                        "give a status of 100..599, such as 200",
                    ));
                }
                let max_latency = h
                    .latency
                    .as_deref()
                    .map(|l| self.positive_at(&q("http", "latency"), l, "a latency bound"))
                    .transpose()?;
                ProbeCheck::Http { url: h.url.clone(), status, max_latency }
            } else if let Some(t) = &probe.tcp {
                ProbeCheck::Tcp { connect: self.socket_addr(&q("tcp", "connect"), &t.connect)? }
            } else if let Some(d) = &probe.dns {
                if d.name.is_empty() || d.name.len() > 253 {
                    return Err(self.error(
                        &q("dns", "name"),
                        "the DNS name is empty or too long",
                        "give a name such as example.com",
                    ));
                }
                let expect = d
                    .expect
                    .as_deref()
                    .map(|e| {
                        e.parse::<std::net::IpAddr>().map_err(|_| {
                            self.error(
                                &q("dns", "expect"),
                                format!("'{}' is not an IP address", spec::shorten(e, 60)),
                                "give the address the answer must contain, such as 192.0.2.1",
                            )
                        })
                    })
                    .transpose()?;
                ProbeCheck::Dns {
                    name: d.name.clone(),
                    server: self.socket_addr(&q("dns", "server"), &d.server)?,
                    expect,
                }
            } else if let Some(c) = &probe.command {
                if c.run.first().is_none_or(String::is_empty) {
                    return Err(self.error(
                        &q("command", "run"),
                        "the command is empty",
                        "give the program and its arguments as a list: run: [ping, -c1, 192.0.2.2]",
                    ));
                }
                ProbeCheck::Command {
                    argv: c.run.clone(),
                    exit: c.exit.unwrap_or(0),
                    output_contains: c.output_contains.clone(),
                }
            } else if let Some(pr) = &probe.prometheus {
                self.http_url(&q("prometheus", "url"), &pr.url)?;
                if pr.query.trim().is_empty() {
                    return Err(self.error(
                        &q("prometheus", "query"),
                        "the query is empty",
                        "give a PromQL expression",
                    ));
                }
                let compares = [
                    (Compare::Below, pr.below),
                    (Compare::AtMost, pr.at_most),
                    (Compare::Above, pr.above),
                    (Compare::AtLeast, pr.at_least),
                ];
                let given: Vec<(Compare, f64)> = compares.iter().filter_map(|(c, v)| v.map(|v| (*c, v))).collect();
                let [(compare, threshold)] = given.as_slice() else {
                    return Err(self.error(
                        &p("prometheus"),
                        format!("the query's result needs exactly one comparison; {} given", given.len()),
                        "add one of below, at-most, above, at-least with a number",
                    ));
                };
                if !threshold.is_finite() {
                    return Err(self.error(
                        &q("prometheus", compare.name()),
                        "the threshold is not a finite number",
                        "give a number",
                    ));
                }
                ProbeCheck::Prometheus {
                    url: pr.url.clone(),
                    query: pr.query.clone(),
                    compare: *compare,
                    threshold: *threshold,
                }
            } else {
                unreachable!("one check is set")
            };
            probes.push(ProbeSpec { name: probe.name.clone(), timeout, check });
        }
        Ok(Hypothesis { interval, steady_within, recovery, probes })
    }

    fn guards(&self, raw: &[RawGuard], hypothesis: Option<&Hypothesis>) -> Result<Vec<Guard>, Problem> {
        if raw.len() > MAX_GUARDS {
            return Err(self.error(
                &[Seg::Key("abort")],
                format!("{} guards; at most {MAX_GUARDS}", raw.len()),
                "merge guards",
            ));
        }
        let mut guards = Vec::with_capacity(raw.len());
        for (j, g) in raw.iter().enumerate() {
            let item = path(&[Seg::Key("abort"), Seg::Index(j)]);
            let q = |key: &'static str, inner: &'static str| {
                path(&[Seg::Key("abort"), Seg::Index(j), Seg::Key(key), Seg::Key(inner)])
            };
            let probe = |key: &'static str, name: &str| -> Result<String, Problem> {
                let known = hypothesis.map(|h| h.probes.iter().any(|p| p.name == name)).unwrap_or(false);
                if known {
                    return Ok(name.to_owned());
                }
                let fix = match hypothesis {
                    None => "add the probe under hypothesis: probes: (the scenario has no hypothesis)".to_owned(),
                    Some(h) => format!(
                        "name one of the probes: {}",
                        spec::list_some(h.probes.iter().map(|p| spec::shorten(&p.name, 20)), 6)
                    ),
                };
                Err(self.error(
                    &q(key, "probe"),
                    format!("guard names probe '{}', which is not defined", spec::shorten(name, 40)),
                    fix,
                ))
            };
            let set = [g.error_rate.is_some(), g.latency.is_some(), g.prometheus.is_some(), g.wall_clock.is_some()];
            let count = set.iter().filter(|s| **s).count();
            if count != 1 {
                return Err(self.error(
                    &item,
                    format!("an abort guard has {count} conditions; each list item has exactly one"),
                    "write one of error-rate, latency, prometheus, wall-clock per item (- {wall-clock: 5m})",
                ));
            }
            let guard = if let Some(e) = &g.error_rate {
                if !(e.above.is_finite() && (0.0..1.0).contains(&e.above)) {
                    return Err(self.error(
                        &q("error-rate", "above"),
                        format!("error rate {} is outside 0 <= x < 1", e.above),
                        "give the share of failed checks that stops the run, such as 0.5",
                    ));
                }
                Guard::ErrorRate {
                    probe: probe("error-rate", &e.probe)?,
                    above: e.above,
                    window: self.positive_at(&q("error-rate", "for"), &e.window, "a guard window")?,
                }
            } else if let Some(l) = &g.latency {
                let text = l.p95_above_baseline.trim();
                let percent = text
                    .strip_suffix('%')
                    .unwrap_or(text)
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|p| p.is_finite() && *p > 0.0);
                let Some(percent) = percent else {
                    return Err(self.error(
                        &q("latency", "p95-above-baseline"),
                        format!("'{}' is not a percentage above 0", spec::shorten(text, 40)),
                        "write how far the p95 latency may rise over its value before the faults, such as 50%",
                    ));
                };
                Guard::Latency {
                    probe: probe("latency", &l.probe)?,
                    percent,
                    window: self.positive_at(&q("latency", "for"), &l.window, "a guard window")?,
                }
            } else if let Some(p) = &g.prometheus {
                self.http_url(&q("prometheus", "url"), &p.url)?;
                if p.query.trim().is_empty() {
                    return Err(self.error(
                        &q("prometheus", "query"),
                        "the query is empty",
                        "give a PromQL expression",
                    ));
                }
                Guard::Prometheus {
                    url: p.url.clone(),
                    query: p.query.clone(),
                    window: self.positive_at(&q("prometheus", "for"), &p.window, "a guard window")?,
                }
            } else if let Some(w) = &g.wall_clock {
                let mut p = item.clone();
                p.push(Seg::Key("wall-clock"));
                Guard::WallClock { max: self.positive_at(&p, w, "a wall-clock limit")? }
            } else {
                unreachable!("one condition is set")
            };
            guards.push(guard);
        }
        Ok(guards)
    }

    /// `http://HOST[:PORT][/PATH]`; https is refused (not supported yet).
    fn http_url(&self, at: &[Seg], url: &str) -> Result<(), Problem> {
        let shown = spec::shorten(url, 80);
        if url.starts_with("https://") {
            return Err(self.error(
                at,
                format!("'{shown}': https is not supported yet"),
                "use an http:// URL, or a command probe running curl for a TLS endpoint",
            ));
        }
        let bad = || {
            self.error(
                at,
                format!("'{shown}' is not an http:// URL"),
                "write http://HOST[:PORT]/PATH, such as http://127.0.0.1:8080/health",
            )
        };
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() || authority.contains('@') {
            return Err(bad());
        }
        if let Some(port) = port {
            if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
                return Err(bad());
            }
        }
        Ok(())
    }

    fn socket_addr(&self, at: &[Seg], text: &str) -> Result<std::net::SocketAddr, Problem> {
        text.parse().map_err(|_| {
            self.error(
                at,
                format!("'{}' is not IP:PORT", spec::shorten(text, 60)),
                "write an address and port such as 127.0.0.1:8080 or [::1]:53 (names are not resolved)",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file with its version appended (so that the lines of the tests' snippets stay
    /// where they are written).
    fn parse_v1(src: &str) -> Result<Plan, Problem> {
        parse("s.yaml", &format!("{src}\napiVersion: chaos-ebpf/v1\n"))
    }

    fn err(src: &str) -> Problem {
        parse_v1(src).unwrap_err()
    }

    #[test]
    fn accepts_a_full_scenario() {
        let plan = parse_v1(
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

    /// Loads every .yaml file of `dir` (relative to the repository), panicking on the
    /// first error; how many there were.
    fn load_every_yaml(dir: &str) -> usize {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(dir);
        let mut count = 0;
        for entry in
            std::fs::read_dir(dir).unwrap().flatten().filter(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        {
            load(&entry.path()).unwrap_or_else(|e| panic!("{e}"));
            count += 1;
        }
        count
    }

    #[test]
    fn sample_scenarios_are_valid() {
        assert!(load_every_yaml("scenarios") > 0);
    }

    #[test]
    fn compose_stack_samples_are_valid() {
        let count = load_every_yaml("deploy/compose/scenarios");
        assert!(count >= 4, "{count} samples in deploy/compose/scenarios");
    }

    #[test]
    fn a_cluster_of_containers_is_checked() {
        let steps = "steps:\n  - {name: k, action: kill, target: leader, duration: 1s}\n";
        let plan = parse_v1(&format!("cluster:\n  containers: app=etcd\n  etcd-metrics-port: 12379\n{steps}")).unwrap();
        let cluster = plan.cluster.expect("cluster");
        assert_eq!(cluster.label().unwrap(), ("app", "etcd"));
        assert_eq!(cluster.etcd_metrics_port(), 12379);
        assert_eq!(cluster.workload_label().unwrap(), None);
        let plan = parse_v1(&format!(
            "cluster:\n  containers: app=etcd\n  certs: /pki\n  workload: app=node\n  workload-port: 9200\n{steps}"
        ))
        .unwrap();
        let cluster = plan.cluster.expect("cluster");
        assert_eq!(cluster.workload_label().unwrap(), Some(("app", "node")));
        assert_eq!((cluster.certs.as_deref(), cluster.workload_port()), (Some("/pki"), 9200));
        let e = err(&format!("cluster:\n  containers: etcd\n{steps}"));
        assert!(e.problem.contains("not a label KEY=VALUE") && e.at.line == 2, "{e:?}");
        let e = err(&format!("cluster:\n  containers: a=b\n  workload: node\n{steps}"));
        assert!(e.problem.contains("not a label KEY=VALUE") && e.at.line == 3, "{e:?}");
        let e = err(&format!("cluster:\n  containers: a=b\n  etcd-metrics-port: 0\n{steps}"));
        assert!(e.problem.contains("port 0"), "{e:?}");
        let e = err(&format!("cluster:\n  containers: a=b\n  workload-port: 9100\n{steps}"));
        assert!(e.problem.contains("without workload"), "{e:?}");
        let e = err(&format!("cluster:\n  containers: a=b\n  certs: pki\n{steps}"));
        assert!(e.problem.contains("not an absolute path"), "{e:?}");
        let e = err(&format!("cluster:\n  containers: a=b\n  nodes: 3\n{steps}"));
        assert!(e.problem.contains("nodes"), "{e:?}");
    }

    /// Every ```yaml block of docs/scenarios.md is a whole valid file, so the reference
    /// cannot drift from the parser.
    #[test]
    fn docs_examples_are_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/scenarios.md");
        let text = std::fs::read_to_string(path).unwrap();
        let mut blocks = 0;
        let mut rest = text.as_str();
        while let Some(start) = rest.find("```yaml\n") {
            let body = &rest[start + 8..];
            let end = body.find("```").expect("closed block");
            let line = text[..text.len() - rest.len() + start].lines().count() + 2;
            parse(&format!("docs/scenarios.md:{line}"), &body[..end]).unwrap_or_else(|e| panic!("{e}"));
            blocks += 1;
            rest = &body[end + 3..];
        }
        assert!(blocks >= 8, "only {blocks} yaml blocks");
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

    const HEAD: &str = "apiVersion: chaos-ebpf/v1\ntargets: {a: netns:x, b: netns:y, r: netns:z}\n";

    /// A file of HEAD and `rest` (HEAD is 2 lines: `rest` starts on line 3).
    fn v1(rest: &str) -> Result<Plan, Problem> {
        parse("s.yaml", &format!("{HEAD}{rest}"))
    }

    /// The error of a bad file, with its position and a word of its message.
    fn bad(rest: &str, line: usize, column: usize, word: &str) -> Problem {
        let e = v1(rest).expect_err(rest);
        assert_eq!((e.at.line, e.at.column), (line, column), "{e}");
        assert!(e.problem.contains(word) || e.fix.contains(word), "'{word}' not in: {e}");
        assert_short(&e);
        e
    }

    #[test]
    fn the_version_comes_first() {
        let e = parse("s.yaml", "steps: [{fault: none, duration: 1s}]\n").unwrap_err();
        assert_eq!((e.at.line, e.at.column), (1, 1), "{e}");
        assert!(e.fix.contains("apiVersion: chaos-ebpf/v1"), "{e}");
        // Even a file with other problems is first told its version.
        let e = parse("s.yaml", "colour: red\nsteps: []\n").unwrap_err();
        assert!(e.problem.contains("no apiVersion"), "{e}");
        for other in ["chaos-ebpf/v2", "1", "[v1]"] {
            let e = parse("s.yaml", &format!("name: x\napiVersion: {other}\nsteps: [{{fault: none, duration: 1s}}]\n"))
                .unwrap_err();
            assert_eq!(e.at.line, 2, "{e}");
            assert!(e.problem.contains("not one this chaos-ebpf reads"), "{e}");
        }
        bad("colour: red\nsteps: [{fault: none, duration: 1s}]\n", 3, 1, "unknown field `colour`");
        bad("steps:\n  - {fault: none, duration: 1s, colour: red}\n", 4, 33, "unknown field `colour`");
    }

    #[test]
    fn several_targets_and_peer_sets_expand() {
        let plan = v1("peers: {east: [192.0.2.0/25], west: [192.0.2.128/25, fd00::/64]}\nsteps:\n  - {fault: none, duration: 1s}\n  - fault: partition\n    targets: [a, b, netns:w]\n    peers: [east, 198.51.100.7, west, 192.0.2.0/25]\n    duration: 2s\n  - {fault: loss, target: r, probability: 0.1, duration: 1s}\n").unwrap();
        let faults = &plan.steps[1].faults;
        assert_eq!(faults.iter().map(|f| f.rule_id).collect::<Vec<_>>(), [1, 2, 3]);
        let targets: Vec<String> = faults.iter().map(|f| f.spec.target.to_string()).collect();
        assert_eq!(targets, ["netns:x", "netns:y", "netns:w"]);
        let peers: Vec<String> = faults[0].spec.peers.iter().map(ToString::to_string).collect();
        assert_eq!(peers, ["192.0.2.0/25", "198.51.100.7/32", "192.0.2.128/25", "fd00::/64"], "merged, in order");
        assert!(faults.iter().all(|f| f.spec.peers == faults[0].spec.peers));
        assert_eq!(plan.steps[2].faults[0].rule_id, 4);

        bad(
            "steps:\n  - {fault: loss, target: a, targets: [b], probability: 0.1, duration: 1s}\n",
            4,
            30,
            "target and targets",
        );
        bad(
            "steps:\n  - {fault: loss, targets: [a, nowhere], probability: 0.1, duration: 1s}\n",
            4,
            32,
            "unknown target",
        );
        bad("steps:\n  - {fault: loss, targets: [a, a], probability: 0.1, duration: 1s}\n", 4, 32, "twice");
        bad("steps:\n  - {fault: loss, targets: [], probability: 0.1, duration: 1s}\n", 4, 19, "empty");
        bad("peers: {east: [192.0.2.0/25]}\nsteps:\n  - fault: partition\n    target: a\n    peers: [east, north]\n    duration: 1s\n", 7, 19, "east");
        bad("peers: {east: [192.0.2.0/33]}\nsteps: [{fault: none, duration: 1s}]\n", 3, 16, "prefix length");
        bad("peers: {10.0.0.1: [192.0.2.0/24]}\nsteps: [{fault: none, duration: 1s}]\n", 3, 9, "is an address");
        // A partition-both on a cgroup fails for the one target that cannot do it.
        bad("steps:\n  - {fault: partition, targets: [a, cgroup:/x], duration: 1s}\n", 4, 6, "egress only");
    }

    fn windows(plan: &Plan, step: usize) -> Vec<(u64, u64, f64)> {
        plan.steps[step]
            .windows
            .iter()
            .map(|w| (w.start.as_millis() as u64, w.end.as_millis() as u64, w.intensity))
            .collect()
    }

    #[test]
    fn steps_chain_run_in_parallel_and_repeat() {
        let plan = v1("steps:\n  - {name: one, fault: loss, target: a, probability: 0.5, duration: 6s}\n  - {name: two, with: one, offset: 2s, fault: loss, target: b, probability: 0.5, intensity: 0.5, duration: 3s}\n  - {name: three, after: one, fault: partition, target: a, repeat: {on: 2s, off: 1s, count: 3}}\n  - {name: four, fault: delay, target: r, delay: 100ms, intensity: {from: 0.1, to: 1, steps: 4}, duration: 8s}\n  - {name: five, after: two, fault: loss, target: b, probability: 0.2, repeat: {on: 1s, off: 3s}, duration: 10s}\n").unwrap();
        assert_eq!(windows(&plan, 0), [(0, 6000, 1.0)]);
        assert_eq!(windows(&plan, 1), [(2000, 5000, 0.5)]);
        assert_eq!(windows(&plan, 2), [(6000, 8000, 1.0), (9000, 11000, 1.0), (12000, 14000, 1.0)]);
        assert_eq!(plan.steps[2].duration, Duration::from_secs(8), "derived from the cycle");
        assert_eq!(
            windows(&plan, 3),
            [(14000, 16000, 0.1), (16000, 18000, 0.4), (18000, 20000, 0.7), (20000, 22000, 1.0)]
        );
        // Cycles that fill 10s after 'two' ends at 5s; the step ends with its last window.
        assert_eq!(windows(&plan, 4), [(5000, 6000, 1.0), (9000, 10000, 1.0), (13000, 14000, 1.0)]);
        assert_eq!(plan.steps[4].end(), Duration::from_secs(14));
        assert_eq!(plan.total_duration(), Duration::from_secs(22));
        // The map entries: one per distinct intensity, scaled.
        let entries = plan.entries(7);
        let ramp: Vec<u64> = entries.iter().filter(|e| e.step == "four").map(|e| e.rule.delay_ns).collect();
        assert_eq!(ramp, [10_000_000, 40_000_000, 70_000_000, 100_000_000]);
        let two = entries.iter().find(|e| e.step == "two").unwrap();
        assert_eq!(two.rule.loss_threshold, chaos_ebpf_common::probability_threshold(0.25));
        assert_eq!(two.seed, plan.steps[1].seed(7));
        // Steps one and two overlap on different targets: one rule each at most.
        let peak = plan.peak_use();
        assert_eq!(peak.rules, 1);

        // A step may name a later one.
        let plan = v1("steps:\n  - {name: x, fault: none, duration: 1s}\n  - {name: y, after: z, fault: none, duration: 1s}\n  - {name: z, after: x, fault: none, duration: 2s}\n").unwrap();
        let starts: Vec<u64> = plan.steps.iter().map(|s| s.start.as_secs()).collect();
        assert_eq!(starts, [0, 3, 1]);

        let one = "  - {name: one, fault: none, duration: 1s}\n";
        bad(
            &format!("steps:\n{one}  - {{name: two, after: nine, fault: none, duration: 1s}}\n"),
            5,
            24,
            "does not have",
        );
        bad(&format!("steps:\n{one}  - {{name: two, with: two, fault: none, duration: 1s}}\n"), 5, 23, "itself");
        bad(
            &format!("steps:\n{one}  - {{name: two, with: one, after: one, fault: none, duration: 1s}}\n"),
            5,
            23,
            "not both",
        );
        let e = bad(
            "steps:\n  - {name: one, after: three, fault: none, duration: 1s}\n  - {name: two, fault: none, duration: 1s}\n  - {name: three, fault: none, duration: 1s}\n",
            4,
            24,
            "cycle",
        );
        assert!(e.problem.contains("one -> three -> two -> one"), "{e}");
        bad(&format!("steps:\n{one}{one}"), 5, 12, "used by step 1");
        bad("steps:\n  - {fault: none, duration: 1s, offset: soon}\n", 4, 41, "not a duration");
    }

    #[test]
    fn tls_refuse_steps() {
        use chaos_ebpf_common::{action, tls};
        let plan = v1("steps:\n  - {fault: tls-refuse, target: a, alpn: [h2, h3], tls-versions: [1.3, \"1.0\"], mode: drop, duration: 1s}\n  - {fault: tls-refuse, target: a, alpn: h2, ports: 8443, duration: 1s}\n").unwrap();
        let rule = |i: usize| plan.steps[i].faults[0].spec.rule(1, 1, 0, 0);
        let (drop, reset) = (&rule(0), &rule(1));
        assert_eq!((drop.action, drop.tls_mode, reset.tls_mode), (action::TLS_REFUSE, tls::MODE_DROP, tls::MODE_RESET));
        assert_eq!(drop.tls_versions, tls::V1_3 | tls::V1_0);
        assert_eq!(drop.tls_alpn[..3], [tls::alpn_digest_of(b"h2").unwrap(), tls::alpn_digest_of(b"h3").unwrap(), 0]);
        assert_eq!((drop.proto, drop.port_lo, drop.port_hi), (6, 443, 443), "tcp/443 by default");
        assert_eq!((reset.port_lo, reset.tls_versions), (8443, 0));
        let err = |step: &str| v1(&format!("steps:\n  - {{{step}, duration: 1s}}\n")).expect_err(step);
        for (step, word) in [
            ("fault: tls-refuse, target: a", "needs something to refuse"),
            ("fault: tls-refuse, target: a, alpn: h2, mode: both", "use reset"),
            ("fault: tls-refuse, target: a, tls-versions: [1.4]", "1.0, 1.1, 1.2 or 1.3"),
            ("fault: tls-refuse, target: a, alpn: h2, proto: udp", "blackhole"),
            ("fault: tls-refuse, target: a, alpn: [a, b, c, d, e]", "at most 4"),
            ("fault: tls-refuse, target: a, alpn: \"a very long protocol\"", "printable ASCII"),
            ("fault: loss, target: a, probability: 0.1, alpn: h2", "does not apply"),
            ("fault: partition, target: a, mode: reset", "unknown partition mode"),
        ] {
            let e = err(step);
            assert!(e.problem.contains(word) || e.fix.contains(word), "'{word}' not in: {e}");
            assert_short(&e);
        }
    }

    #[test]
    fn step_seeds_override_the_derived_one() {
        let plan = v1("seed: 42\nsteps:\n  - {name: own, seed: 1234, fault: loss, target: a, probability: 0.1, duration: 1s}\n  - {name: derived, fault: loss, target: a, probability: 0.1, duration: 1s}\n").unwrap();
        assert_eq!(plan.steps[0].seed(42), 1234);
        let derived = plan.steps[1].seed(42);
        assert_ne!(derived, 42);
        assert_ne!(derived, plan.steps[1].seed(43), "derived from the run's seed");
        let entries = plan.entries(42);
        assert_eq!(
            (entries[0].seed, entries[0].rule.loss_threshold),
            (1234, chaos_ebpf_common::probability_threshold(0.1))
        );
        assert_eq!(entries[1].seed, derived);
        assert!(plan.render_text(42, true).contains("own  (seed 1234, the step's own)"));
    }

    #[test]
    fn action_steps_and_lab_members() {
        let plan = v1(concat!(
            "steps:\n",
            "  - {name: k, action: kill, target: leader, grace: 2s, restart: true, duration: 5s}\n",
            "  - {name: p, action: pause, targets: [node:n2, pid:1], duration: 2s}\n",
            "  - {name: s, action: surge, count: 3, rate: 2/s, cycles: 2, duration: 20s}\n",
            "  - {name: c, action: cert-expiry, target: node:n3, expires-in: 30s, duration: 5s}\n",
            "  - {name: cut, fault: partition, target: minority, peers: [majority, 192.0.2.9], duration: 1s}\n",
        ))
        .unwrap();
        let action = |i: usize| plan.steps[i].action.clone().unwrap();
        assert_eq!(
            action(0).spec,
            ActionSpec::Kill {
                signal: Signal::KILL,
                grace: Some(Duration::from_secs(2)),
                restart: true,
                leader_within: Duration::from_secs(30)
            }
        );
        assert_eq!(action(0).targets, [ActionTarget::Lab(LabSelector::Leader)]);
        assert_eq!(action(1).targets, [ActionTarget::Lab(LabSelector::Node("n2".into())), ActionTarget::Pid(1)]);
        assert_eq!(action(2).spec, ActionSpec::Surge { count: 3, rate: 2.0, cycles: 2 });
        assert!(action(2).targets.is_empty());
        assert_eq!(action(3).spec, ActionSpec::CertExpiry { expires_in: Some(Duration::from_secs(30)) });
        let cut = &plan.steps[4].faults[0];
        assert_eq!(cut.spec.target, TargetSpec::Lab(LabSelector::Minority));
        assert_eq!(cut.lab_peers, [LabSelector::Majority]);
        assert_eq!(cut.spec.peers.len(), 1);
        assert!(plan.steps.iter().take(4).all(|s| s.faults.is_empty() && s.windows.len() == 1));

        bad("steps: [{fault: loss, action: kill, target: leader, duration: 1s}]\n", 3, 31, "both fault and action");
        bad("steps: [{duration: 1s}]\n", 3, 10, "neither fault nor action");
        bad("steps: [{action: reboot, target: leader, duration: 1s}]\n", 3, 18, "unknown action");
        bad("steps: [{action: kill, duration: 1s}]\n", 3, 18, "no target");
        bad("steps: [{action: kill, target: leader}]\n", 3, 18, "needs a duration");
        bad("steps: [{action: pause, target: leader, signal: HUP, duration: 1s}]\n", 3, 49, "takes no signal");
        bad(
            "steps: [{action: kill, target: leader, signal: HUP, grace: 1s, duration: 1s}]\n",
            3,
            60,
            "both signal and grace",
        );
        bad("steps: [{action: kill, target: leader, signal: SIGFOO, duration: 1s}]\n", 3, 48, "not a signal");
        bad("steps: [{action: surge, target: leader, count: 2, duration: 1s}]\n", 3, 33, "takes no target");
        bad("steps: [{action: surge, count: 0, duration: 1s}]\n", 3, 32, "outside 1..50");
        bad("steps: [{action: surge, count: 2, rate: fast, duration: 1s}]\n", 3, 41, "surge rate");
        bad("steps: [{action: cert-expiry, target: pid:1, duration: 1s}]\n", 3, 39, "cannot act on pid:1");
        bad("steps: [{action: kill, target: leader, probability: 0.1, duration: 1s}]\n", 3, 53, "takes no probability");
        bad(
            "steps: [{fault: loss, target: leader, probability: 0.1, restart: true, duration: 1s}]\n",
            3,
            66,
            "action step",
        );
        bad("steps: [{fault: partition, target: 'node:x/y', duration: 1s}]\n", 3, 36, "lab member");
    }

    #[test]
    fn bad_intensities_ramps_and_repeats() {
        let loss = "fault: loss, target: a, probability: 0.5";
        bad(&format!("steps:\n  - {{{loss}, duration: 1s, intensity: 1.5}}\n"), 4, 73, "outside 0 < x <= 1");
        bad(&format!("steps:\n  - {{{loss}, duration: 1s, intensity: 0}}\n"), 4, 73, "outside 0 < x <= 1");
        bad(&format!("steps:\n  - {{{loss}, duration: 1s, intensity: high}}\n"), 4, 73, "neither a number nor a ramp");
        bad("steps:\n  - {fault: partition, target: a, duration: 1s, intensity: 0.5}\n", 4, 60, "no magnitude");
        bad("steps:\n  - {fault: rate, target: a, rate: 1mbit, duration: 1s, intensity: {from: 0.5, to: 1, steps: 2}}\n", 4, 57, "no magnitude");
        bad("steps:\n  - {fault: none, duration: 1s, intensity: 0.5}\n", 4, 44, "pause");
        bad(
            &format!("steps:\n  - {{{loss}, duration: 1s, intensity: {{from: 0.5, to: 2, steps: 3}}}}\n"),
            4,
            89,
            "outside",
        );
        bad(
            &format!("steps:\n  - {{{loss}, duration: 1s, intensity: {{from: 0.5, to: 1, steps: 1}}}}\n"),
            4,
            99,
            "2..100",
        );
        bad(
            &format!("steps:\n  - {{{loss}, duration: 1s, intensity: {{from: 0.5, to: 1, stairs: 1}}}}\n"),
            4,
            62,
            "neither",
        );
        bad(
            &format!(
                "steps:\n  - {{{loss}, repeat: {{on: 1s, off: 1s}}, intensity: {{from: 0.5, to: 1, steps: 2}}}}\n"
            ),
            4,
            75,
            "ramp inside a duty cycle",
        );
        bad(&format!("steps:\n  - {{{loss}, repeat: {{on: 1s, off: 1s}}}}\n"), 4, 48, "count or a duration");
        bad(&format!("steps:\n  - {{{loss}, repeat: {{on: 1s, off: 0s, count: 2}}}}\n"), 4, 70, "off period of zero");
        bad(&format!("steps:\n  - {{{loss}, repeat: {{on: 1s, off: 1s, count: 0}}}}\n"), 4, 81, "0 periods");
        bad(
            &format!("steps:\n  - {{{loss}, duration: 5s, repeat: {{on: 1s, off: 1s, count: 2}}}}\n"),
            4,
            58,
            "disagrees",
        );
        bad(&format!("steps:\n  - {{{loss}, duration: 7d, repeat: {{on: 1ms, off: 1ms}}}}\n"), 4, 58, "duty cycles");
        bad(
            &format!("steps:\n  - {{{loss}, repeat: {{on: 1s, off: 1s, count: 2, phase: 1}}}}\n"),
            4,
            84,
            "unknown field `phase`",
        );
        bad(&format!("steps:\n  - {{{loss}}}\n"), 4, 13, "no duration");
        // Durations that agree are fine; 7 days of cycles is the limit.
        v1(&format!("steps:\n  - {{{loss}, duration: 5s, repeat: {{on: 1s, off: 1s, count: 3}}}}\n")).unwrap();
        bad(
            &format!("steps:\n  - {{{loss}, duration: 7d}}\n  - {{{loss}, repeat: {{on: 1s, off: 1s, count: 1}}}}\n"),
            5,
            6,
            "7 days",
        );
    }

    /// Embedded in another document (a ChaosExperiment), the same checks name the path.
    #[test]
    fn embedded_hypothesis_problems_name_the_path() {
        let raw = |yaml: &str| -> RawHypothesis { serde_yaml::from_str(yaml).unwrap() };
        let guards = |yaml: &str| -> Vec<RawGuard> { serde_yaml::from_str(yaml).unwrap() };
        let ok = raw("probes: [{name: p, tcp: {connect: \"192.0.2.1:80\"}}]");
        let (h, g) =
            hypothesis_and_guards("spec", Some(&ok), &guards("[{error-rate: {probe: p, above: 0.5, for: 2s}}]"))
                .unwrap();
        assert_eq!(h.unwrap().probes[0].name, "p");
        assert_eq!(g.len(), 1);
        let e = hypothesis_and_guards("spec", Some(&ok), &guards("[{error-rate: {probe: q, above: 0.5, for: 2s}}]"))
            .unwrap_err();
        assert!(e.problem.starts_with("spec.abort[0].error-rate.probe: guard names probe 'q'"), "{}", e.problem);
        assert!(e.fix.contains("p"), "{}", e.fix);
        let e = hypothesis_and_guards("spec", Some(&raw("interval: 0s\nprobes: [{name: p, tcp: {connect: x}}]")), &[])
            .unwrap_err();
        assert!(e.problem.starts_with("spec.hypothesis.interval: "), "{}", e.problem);
        let e = hypothesis_and_guards(
            "spec",
            None,
            &guards("[{wall-clock: 1m, error-rate: {probe: p, above: 0.5, for: 2s}}]"),
        )
        .unwrap_err();
        assert!(e.problem.starts_with("spec.abort[0]: an abort guard has 2 conditions"), "{}", e.problem);
    }

    #[test]
    fn hypothesis_and_guards_are_validated() {
        let steps = "steps: [{fault: none, duration: 1s}]\n";
        let plan = v1(&format!("hypothesis:\n  probes:\n    - {{name: p, tcp: {{connect: \"127.0.0.1:80\"}}}}\n    - {{name: c, timeout: 5s, command: {{run: [true]}}}}\n    - {{name: q, prometheus: {{url: \"http://[::1]:9090\", query: up, at-least: 1}}}}\nabort:\n  - {{error-rate: {{probe: p, above: 0.5, for: 3s}}}}\n  - {{latency: {{probe: c, p95-above-baseline: 50%, for: 2s}}}}\n  - {{wall-clock: 1m}}\n{steps}")).unwrap();
        let h = plan.hypothesis.as_ref().unwrap();
        assert_eq!(
            (h.interval, h.steady_within, h.recovery),
            (Duration::from_secs(1), Duration::from_secs(10), Duration::from_secs(30))
        );
        assert_eq!(h.probes[0].timeout, Duration::from_secs(2));
        assert_eq!(
            h.probes[1].check,
            ProbeCheck::Command { argv: vec!["true".into()], exit: 0, output_contains: None }
        );
        assert_eq!(
            h.probes[2].check,
            ProbeCheck::Prometheus {
                url: "http://[::1]:9090".into(),
                query: "up".into(),
                compare: Compare::AtLeast,
                threshold: 1.0
            }
        );
        assert_eq!(plan.abort[1], Guard::Latency { probe: "c".into(), percent: 50.0, window: Duration::from_secs(2) });
        assert_eq!(plan.abort[2], Guard::WallClock { max: Duration::from_secs(60) });

        let probe = |p: &str| format!("hypothesis:\n  probes:\n    - {p}\n{steps}");
        bad(&probe("{name: p, http: {url: \"https://x/\"}}"), 5, 29, "https is not supported");
        bad(&probe("{name: p, http: {url: \"ftp://x/\"}}"), 5, 29, "not an http:// URL");
        bad(&probe("{name: p, http: {url: \"http://:80/\"}}"), 5, 29, "not an http:// URL");
        bad(&probe("{name: p, http: {url: \"http://x:99999/\"}}"), 5, 29, "not an http:// URL");
        bad(&probe("{name: p, http: {url: \"http://x/\", status: 999}}"), 5, 50, "not an HTTP status");
        bad(&probe("{name: p, tcp: {connect: \"localhost:80\"}}"), 5, 32, "not IP:PORT");
        bad(&probe("{name: p, dns: {name: x, server: \"1.1.1.1\"}}"), 5, 40, "not IP:PORT");
        bad(&probe("{name: p, dns: {name: x, server: \"1.1.1.1:53\", expect: nope}}"), 5, 62, "not an IP address");
        bad(&probe("{name: p, command: {run: []}}"), 5, 27, "empty");
        bad(&probe("{name: p}"), 5, 8, "no check");
        bad(&probe("{name: p, tcp: {connect: \"1.1.1.1:1\"}, command: {run: [x]}}"), 5, 46, "2 checks");
        bad(&probe("{name: p, prometheus: {url: \"http://x\", query: up}}"), 5, 17, "exactly one comparison");
        bad(&probe("{name: p, tcp: {connect: \"1.1.1.1:1\"}, timeout: 0s}"), 5, 55, "timeout of zero");
        bad(&probe("{name: p, tcp: {connect: \"1.1.1.1:1\", colour: red}}"), 5, 45, "unknown field `colour`");
        bad(&format!("hypothesis:\n  probes:\n    - {{name: p, command: {{run: [x]}}}}\n    - {{name: p, command: {{run: [y]}}}}\n{steps}"), 6, 14, "two probes are named 'p'");
        bad(&format!("hypothesis:\n  probes: []\n{steps}"), 4, 3, "no probes");
        bad(
            &format!("hypothesis:\n  interval: 0s\n  probes: [{{name: p, command: {{run: [x]}}}}]\n{steps}"),
            4,
            13,
            "zero",
        );

        let guarded =
            |g: &str| format!("hypothesis:\n  probes: [{{name: p, command: {{run: [x]}}}}]\nabort:\n  - {g}\n{steps}");
        bad(&guarded("{error-rate: {probe: q, above: 0.5, for: 3s}}"), 6, 26, "probe 'q', which is not defined");
        bad(&guarded("{error-rate: {probe: p, above: 1.5, for: 3s}}"), 6, 36, "outside 0 <= x < 1");
        bad(&guarded("{latency: {probe: p, p95-above-baseline: lots, for: 3s}}"), 6, 46, "not a percentage");
        bad(&guarded("{prometheus: {url: \"https://p\", query: up, for: 3s}}"), 6, 24, "https is not supported");
        bad(&guarded("{wall-clock: 1m, error-rate: {probe: p, above: 0.5, for: 3s}}"), 6, 6, "2 conditions");
        bad(&guarded("{wall-clock: never}"), 6, 18, "not a duration");
        bad(&guarded("{kill: p}"), 6, 6, "unknown field `kill`");
        // Without a hypothesis a guard on a probe says where to define it.
        let e =
            bad(&format!("abort: [{{error-rate: {{probe: p, above: 0.5, for: 3s}}}}]\n{steps}"), 3, 30, "not defined");
        assert!(e.fix.contains("no hypothesis"), "{e}");
    }

    #[test]
    fn peaks_count_overlapping_windows() {
        // 5 faults on one target with 5 more in parallel: 10 on the same packets at once.
        let mut src = String::from("steps:\n");
        for i in 0..5 {
            src += &format!(
                "  - {{name: s{i}, {}fault: loss, target: a, probability: 0.1, duration: 2s}}\n",
                if i == 0 { "" } else { "with: s0, " }
            );
        }
        for i in 0..5 {
            src += &format!(
                "  - {{name: t{i}, with: s0, offset: 1s, fault: loss, target: a, probability: 0.1, duration: 2s}}\n"
            );
        }
        let e = bad(&src, 13, 45, "10 faults without peers in force at once on netns:x (at 1s");
        assert!(e.problem.contains("at most 8"), "{e}");
        // Sequential windows and other targets do not add up; touching windows do not overlap.
        let mut src = String::from("steps:\n");
        for i in 0..5 {
            src += &format!(
                "  - {{name: s{i}, {}fault: loss, target: a, probability: 0.1, duration: 2s}}\n",
                if i == 0 { "" } else { "with: s0, " }
            );
        }
        for i in 0..5 {
            src += &format!(
                "  - {{name: t{i}, with: s0, offset: 2s, fault: loss, target: a, probability: 0.1, duration: 2s}}\n"
            );
        }
        for i in 0..5 {
            src += &format!("  - {{name: u{i}, with: s0, fault: loss, target: b, probability: 0.1, duration: 2s}}\n");
        }
        let plan = v1(&src).unwrap();
        let peak = plan.peak_use();
        assert_eq!((peak.rules, peak.rules_from, peak.rules_until), (5, Duration::ZERO, Duration::from_secs(2)));
        assert!(plan
            .render_text(1, true)
            .contains("peak: 5 of 8 faults on the same packets at once (on netns:x at 0ms..2s), 0 of 4194304 peers"));
    }

    #[test]
    fn plans_are_deterministic() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scenarios/game-day.yaml");
        let render = || {
            let plan = load(Path::new(path)).unwrap();
            (
                plan.render_text(99, true),
                serde_json::to_string(&plan).unwrap(),
                serde_json::to_string(&plan.entries(99)).unwrap(),
            )
        };
        let first = render();
        assert_eq!(first, render());
        let (text, json, _) = first;
        // The timeline, windows, seeds, probes, guards, entries and the peak are shown.
        for needle in [
            "8s ..      18s  flapping-link",
            "window 11s .. 12s at intensity 1",
            "window 20s .. 22s at intensity 0.4",
            "rule 4 [loss-ramp] intensity 0.7",
            "probe n2-pings-n1",
            "wall-clock: the run lasts longer than 120s",
            "peak: 1 of 8 faults on the same packets at once",
        ] {
            assert!(text.contains(needle), "'{needle}' not in:\n{text}");
        }
        let plan = load(Path::new(path)).unwrap();
        let seed = plan.steps[1].seed(99);
        assert!(text.contains(&format!("n1-lossy  (seed {seed})")), "{text}");
        assert!(json.contains("\"peak\":{\"rules\":1"), "{json}");
        // Different seeds, different per-step seeds.
        assert_ne!(plan.render_text(98, true), text);
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
        assert_eq!(parse_v1(ok).unwrap().steps.len(), 2);
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
        let plan = parse_v1("steps: [{fault: none, duration: 7d}]\n").unwrap();
        assert_eq!(plan.total_duration(), spec::MAX_DURATION);
    }

    #[test]
    fn limits_are_checked_before_anything_runs() {
        // Nine faults without peers on one target at once: one more than can act on the
        // same packets.
        let e = fails_fast(&format!(
            "steps:\n  - {{name: s0, fault: loss, target: netns:a, probability: 0.1, duration: 1s}}\n{}",
            (1..9)
                .map(|i| format!(
                    "  - {{name: s{i}, with: s0, fault: loss, target: netns:a, probability: 0.1, duration: 1s}}\n"
                ))
                .collect::<String>()
        ));
        assert!(e.problem.contains("9 faults without peers") && e.problem.contains("at most 8"), "{e}");
        assert_eq!(e.at.line, 10, "{e}");
        let e = fails_fast(
            "protect: [tcp:1, tcp:2, tcp:3, tcp:4, tcp:5, tcp:6, tcp:7]\nsteps: [{fault: none, duration: 1s}]\n",
        );
        assert!(e.problem.contains("9 protected port ranges"), "{e}");
        // With force the defaults go, and 7 fit.
        parse_v1(
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
                    "apiVersion: chaos-ebpf/v1\n",
                    "after",
                    "with",
                    "offset",
                    "intensity",
                    "repeat",
                    "on",
                    "off",
                    "count",
                    "from",
                    "to",
                    "seed",
                    "hypothesis",
                    "probes",
                    "abort",
                    "error-rate",
                    "wall-clock",
                    "command",
                    "run",
                    "http",
                    "url",
                    "http://127.0.0.1:1/",
                    "https://x",
                    "127.0.0.1:80",
                    "step-1",
                    "a",
                    "{from: 0.1, to: 1, steps: 3}",
                    "{on: 1s, off: 1s, count: 3}",
                    "{on: 1ms, off: 1ms}",
                    "groups",
                    "cut",
                    "ring",
                    "bridge",
                    "majority-minority",
                    "halves",
                    "shuffle",
                    "sides",
                    "via",
                    "minority",
                    "of",
                    "\"->\"",
                    "node:n1-n8",
                    "node:n9-n1",
                    "node:n0-n99999",
                    "cgroup:/a",
                    "pod:x",
                    "198.18.0.0/15",
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
                        "apiVersion: chaos-ebpf/v1\nlease: {lease}\ntargets: {{t: {target}}}\nsteps:\n  - fault: {fault}\n    target: {target}\n    duration: {duration}\n    probability: {value}\n    delay: {value}\n    ports: {value}\n    peers: [{}]\n",
                        peers.join(", ")
                    )
                },
            )
        }

        /// A v1 scenario whose timing, intensity, repeat, peer sets, probes and guards are
        /// drawn from odd values.
        fn timed_scenario() -> impl Strategy<Value = String> {
            (prop::collection::vec(token(), 12), any::<bool>()).prop_map(|(t, loss)| {
                let fault = if loss { "loss, probability: 0.5" } else { "partition" };
                format!(
                    "apiVersion: chaos-ebpf/v1\ntargets: {{a: netns:a, b: netns:b}}\npeers: {{east: [{}]}}\nhypothesis:\n  interval: {}\n  probes:\n    - {{name: {}, command: {{run: [{}]}}, timeout: {}}}\nabort:\n  - {{error-rate: {{probe: {}, above: {}, for: {}}}}}\n  - {{wall-clock: {}}}\nsteps:\n  - {{name: one, fault: {fault}, targets: [a, b], peers: [east], duration: {}, intensity: {}, repeat: {}}}\n  - {{name: two, fault: {fault}, target: a, after: {}, with: one, duration: 2s}}\n",
                    t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], t[10], t[11], t[2]
                )
            })
        }

        /// A scenario with groups and partition matrices whose names, members and
        /// forms are drawn from odd values.
        fn matrix_scenario() -> impl Strategy<Value = String> {
            prop::collection::vec(token(), 10).prop_map(|t| {
                format!(
                    "apiVersion: chaos-ebpf/v1\ngroups: {{a: [{}], b: [{}, node:n1-n4], c: [{}], {}: [node:n9]}}\nsteps:\n  - {{name: m, partition: {{groups: [a, b, {}], cut: [[a, {}], [{}, \"->\", c]]}}, duration: 1s}}\n  - {{name: r, partition: {{{}: [a, b, c, {}]}}, repeat: {}}}\n",
                    t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9]
                )
            })
        }

        fn check(src: &str) {
            let start = std::time::Instant::now();
            let result = parse_v1(src);
            assert!(start.elapsed() < Duration::from_secs(1), "took {:?} on {src:?}", start.elapsed());
            if let Err(e) = result {
                assert_short(&e);
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn token_soup_never_panics_or_hangs(tokens in prop::collection::vec(token(), 0..200), v1 in any::<bool>()) {
                let header = if v1 { "apiVersion: chaos-ebpf/v1\n" } else { "" };
                check(&format!("{header}{}", tokens.concat()));
            }

            #[test]
            fn odd_values_never_panic_or_hang(src in scenario()) {
                check(&src);
            }

            #[test]
            fn odd_timing_and_probes_never_panic_or_hang(src in timed_scenario()) {
                check(&src);
            }

            #[test]
            fn odd_groups_and_matrices_never_panic_or_hang(src in matrix_scenario()) {
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
