//! The run directory's artifacts beyond spans.jsonl and report.json, written from the
//! run's data once the run has ended: report.md, junit.xml, report.html, cleanup.json,
//! topology.json, plan.json, scenario.yaml, digest.txt, meta.json and RUN_DIR.tar.gz
//! next to the directory (events.jsonl is written while the run goes on, by the
//! observer in events.rs). docs/telemetry.md describes each file.

pub mod bundle;
pub mod digest;
pub mod events;
pub mod html;
pub mod junit;
pub mod markdown;
pub mod summary;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chaos_engine::report::RunReport;
use chaos_model::plan::Plan;
use serde::Serialize;

pub use summary::{outcome, utc, verdict_name};

/// What `run` and `inject` pass on to the artifacts.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The scenario file `run` read (copied as scenario.yaml); None for `inject`.
    pub scenario_file: Option<PathBuf>,
    /// `--freeze-clock`: wall-clock stamps become [`FROZEN_EPOCH_MS`] plus the offset from
    /// the run's start.
    pub freeze_clock: bool,
    /// Members of the cluster lab the run used (recorded in meta.json: `replay` wants a
    /// lab of the same shape).
    pub lab_members: Option<usize>,
}

/// 2000-01-01T00:00:00Z in ms since the epoch: where a frozen clock starts the run.
pub const FROZEN_EPOCH_MS: u64 = 946_684_800_000;

/// The run's wall clock as the run directory records it: as it was, or frozen.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start_unix_ms: u64,
    frozen: bool,
}

impl Clock {
    pub fn new(start_unix_ms: u64, frozen: bool) -> Clock {
        Clock { start_unix_ms, frozen }
    }

    /// A stamp in ms since the epoch, as recorded. Stamps before the run's start (a span
    /// opened just before it) stay before the frozen epoch.
    pub fn ms(&self, unix_ms: u64) -> u64 {
        if !self.frozen {
            return unix_ms;
        }
        (FROZEN_EPOCH_MS as i128 + unix_ms as i128 - self.start_unix_ms as i128).max(0) as u64
    }

    /// A stamp in ns since the epoch, as recorded.
    pub fn ns(&self, unix_ns: u64) -> u64 {
        if !self.frozen {
            return unix_ns;
        }
        let start_ns = self.start_unix_ms as i128 * 1_000_000;
        (FROZEN_EPOCH_MS as i128 * 1_000_000 + unix_ns as i128 - start_ns).max(0) as u64
    }
}

/// The report with every wall-clock stamp as the clock records it.
pub fn with_clock(report: &RunReport, clock: Clock) -> RunReport {
    let mut report = report.clone();
    report.started_unix_ms = clock.ms(report.started_unix_ms);
    report.ended_unix_ms = clock.ms(report.ended_unix_ms);
    report.faults_start_unix_ms = clock.ms(report.faults_start_unix_ms);
    for rule in report.steps.iter_mut().flat_map(|s| s.rules.iter_mut()) {
        rule.active_from_unix_ms = clock.ms(rule.active_from_unix_ms);
        rule.active_to_unix_ms = clock.ms(rule.active_to_unix_ms);
    }
    report
}

/// Writes every artifact into `run_dir` (and the bundle next to it). Each one that
/// cannot be written is one line of the returned warnings; the others are still written.
pub fn write_all(run_dir: &Path, plan: &Plan, report: &RunReport, options: &Options) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut attempt = |what: &str, result: Result<()>| {
        if let Err(e) = result {
            warnings.push(format!("cannot write {}: {e:#}", run_dir.join(what).display()));
        }
    };
    let clock = Clock::new(report.started_unix_ms, options.freeze_clock);
    let report = &with_clock(report, clock);
    if options.freeze_clock {
        attempt("report.json", write_json(&run_dir.join("report.json"), report));
        attempt("spans.jsonl", freeze_file(&run_dir.join("spans.jsonl"), clock));
        if run_dir.join("events.jsonl").exists() {
            attempt("events.jsonl", freeze_file(&run_dir.join("events.jsonl"), clock));
        }
    }
    // The plan as run: with the seed the run drew when the scenario gave none.
    let mut plan = plan.clone();
    plan.seed = Some(report.seed);
    let plan = &plan;
    attempt("report.md", write(&run_dir.join("report.md"), markdown::render(report).as_bytes()));
    attempt("junit.xml", junit::render(report).and_then(|xml| write(&run_dir.join("junit.xml"), &xml)));
    attempt("report.html", html::render(report).and_then(|page| write(&run_dir.join("report.html"), page.as_bytes())));
    attempt(
        "cleanup.json",
        write_json(
            &run_dir.join("cleanup.json"),
            &serde_json::json!({
                "cleanup": report.cleanup,
                "clean": report.clean,
                "revert_problems": report.revert_problems,
            }),
        ),
    );
    attempt("topology.json", write_json(&run_dir.join("topology.json"), &report.topology));
    attempt("plan.json", write_json(&run_dir.join("plan.json"), plan));
    if let Some(file) = &options.scenario_file {
        attempt(
            "scenario.yaml",
            std::fs::copy(file, run_dir.join("scenario.yaml"))
                .map(drop)
                .with_context(|| format!("copying {}", file.display())),
        );
    }
    let digest = std::fs::read_to_string(run_dir.join("spans.jsonl"))
        .context("reading spans.jsonl")
        .and_then(|spans| digest::digest(&spans, plan, report));
    let digest = match digest {
        Ok(digest) => {
            attempt("digest.txt", write(&run_dir.join("digest.txt"), format!("{}\n", digest.sha256).as_bytes()));
            attempt("digest-input.json", write_json(&run_dir.join("digest-input.json"), &digest.input));
            Some(digest.sha256)
        }
        Err(e) => {
            attempt("digest.txt", Err(e));
            None
        }
    };
    // Named by its real path: `--run-dir .` or `runs/x/..` have a name there.
    let named = run_dir.canonicalize().unwrap_or_else(|_| run_dir.to_path_buf());
    let mut meta = Meta::new(&named, report, digest, options.freeze_clock);
    meta.lab_members = options.lab_members;
    attempt("meta.json", write_json(&run_dir.join("meta.json"), &meta));
    let bundle = bundle::path_of(&named);
    if let Err(e) = bundle::write(&named, &bundle, clock) {
        warnings.push(format!("cannot write {}: {e:#}", bundle.display()));
    }
    warnings
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(std::fs::write(path, bytes)?)
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    write(path, (serde_json::to_string_pretty(value)? + "\n").as_bytes())
}

/// `text` (JSON) with the value of every key that ends in `_unix_ms` or `_unix_ns` (a
/// wall-clock stamp) as the clock records it. Done on the text, so that everything else
/// stays byte for byte (a key's closing quote and colon never occur inside a JSON string,
/// where quotes are escaped).
pub fn freeze_stamps(text: &str, clock: Clock) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = [rest.find("_unix_ms\":"), rest.find("_unix_ns\":")].into_iter().flatten().min() {
        let key_end = at + "_unix_ms\":".len();
        let is_ns = rest[at..].starts_with("_unix_ns");
        out.push_str(&rest[..key_end]);
        rest = &rest[key_end..];
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        // Not a number (null, a string): left as it is.
        if let Ok(stamp) = rest[..digits].parse::<u64>() {
            let frozen = if is_ns { clock.ns(stamp) } else { clock.ms(stamp) };
            out.push_str(&frozen.to_string());
            rest = &rest[digits..];
        }
    }
    out.push_str(rest);
    out
}

/// Rewrites a file of the run directory with its stamps frozen (the run has ended: no one
/// writes to it any more).
fn freeze_file(path: &Path, clock: Clock) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    // Replaced whole, so that a reader never sees half of it.
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    write(Path::new(&partial), freeze_stamps(&text, clock).as_bytes())?;
    Ok(std::fs::rename(&partial, path)?)
}

/// meta.json.
#[derive(Debug, Serialize)]
pub struct Meta {
    /// The run directory's name (`<UTC start>-<pid>` unless --run-dir named it).
    pub run_id: String,
    pub started_unix_ms: u64,
    pub ended_unix_ms: u64,
    pub started: String,
    pub ended: String,
    /// Whether the times above (and every stamp of the directory) are frozen.
    pub freeze_clock: bool,
    pub host: String,
    pub tool: String,
    pub tool_version: String,
    /// `git describe` of the source the binary was built from, when it was built in a
    /// git checkout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_describe: Option<String>,
    /// `uname -r`.
    pub kernel: String,
    pub scenario: String,
    pub seed: u64,
    pub digest: Option<String>,
    /// Members of the cluster lab the run used, if it used one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lab_members: Option<usize>,
}

impl Meta {
    /// `report`'s stamps are already as the clock records them.
    pub fn new(run_dir: &Path, report: &RunReport, digest: Option<String>, freeze_clock: bool) -> Meta {
        let proc_line = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_default();
        Meta {
            run_id: run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            started_unix_ms: report.started_unix_ms,
            ended_unix_ms: report.ended_unix_ms,
            started: utc(report.started_unix_ms),
            ended: utc(report.ended_unix_ms),
            freeze_clock,
            host: proc_line("/proc/sys/kernel/hostname"),
            tool: "chaos-ebpf".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            git_describe: option_env!("CHAOS_EBPF_GIT_DESCRIBE").filter(|d| !d.is_empty()).map(str::to_owned),
            kernel: proc_line("/proc/sys/kernel/osrelease"),
            scenario: report.scenario.clone(),
            seed: report.seed,
            digest,
            lab_members: None,
        }
    }
}

#[cfg(test)]
pub(crate) mod fixtures;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_clock_keeps_offsets_from_the_start() {
        let clock = Clock::new(1_795_000_000_000, true);
        assert_eq!(clock.ms(1_795_000_000_000), FROZEN_EPOCH_MS);
        assert_eq!(clock.ms(1_795_000_001_500), FROZEN_EPOCH_MS + 1500);
        assert_eq!(clock.ms(1_794_999_999_990), FROZEN_EPOCH_MS - 10);
        assert_eq!(clock.ns(1_795_000_000_000_000_123), FROZEN_EPOCH_MS * 1_000_000 + 123);
        assert_eq!(utc(FROZEN_EPOCH_MS + 1500), "2000-01-01T00:00:01.500Z");
        let running = Clock::new(1_795_000_000_000, false);
        assert_eq!(running.ms(1_795_000_001_500), 1_795_000_001_500);
    }

    /// Every `*_unix_ms` and `*_unix_ns` value, wherever it is nested; nothing else.
    #[test]
    fn stamps_in_json_text_are_frozen() {
        let clock = Clock::new(1_795_000_000_000, true);
        let text = r#"{"t_s":1.5,"step":{"active_from_unix_ms":1795000001000,"x_unix_ms":null},"note":"a_unix_ms\":5"}
{"start_unix_ns":1795000000000000007,"end_unix_ns":1795000002000000000,"seen":3}
"#;
        let frozen = freeze_stamps(text, clock);
        assert_eq!(
            frozen,
            r#"{"t_s":1.5,"step":{"active_from_unix_ms":946684801000,"x_unix_ms":null},"note":"a_unix_ms\":5"}
{"start_unix_ns":946684800000000007,"end_unix_ns":946684802000000000,"seen":3}
"#
        );
        assert_eq!(freeze_stamps(text, Clock::new(1_795_000_000_000, false)), text);
    }

    #[test]
    fn the_outcome_names_every_reason() {
        let report = fixtures::rich_report();
        let (word, reasons) = outcome(&report);
        assert_eq!(word, "failed");
        assert!(reasons.iter().any(|r| r.contains("error-rate guard")), "{reasons:?}");
        assert!(reasons.iter().any(|r| r.contains("hypothesis failed")), "{reasons:?}");
        let (word, reasons) = outcome(&fixtures::passing_report());
        assert_eq!((word, reasons.len()), ("passed", 0), "{reasons:?}");
    }

    /// Every file of the task, with the clock frozen: stamps from the epoch of 2000, and
    /// the same digest for a second run that differs only in measured values.
    #[test]
    fn write_all_writes_every_file() {
        let dir = fixtures::TempDir::new("write-all");
        let run_dir = dir.path().join("run1");
        std::fs::create_dir(&run_dir).unwrap();
        let report = fixtures::rich_report();
        std::fs::write(run_dir.join("spans.jsonl"), fixtures::spans_jsonl(&report)).unwrap();
        std::fs::write(run_dir.join("report.json"), serde_json::to_string(&report).unwrap()).unwrap();
        let step_ended = serde_json::json!({"t_s": 6.0, "event": "step_ended", "step": report.steps[0]});
        std::fs::write(run_dir.join("events.jsonl"), format!("{step_ended}\n")).unwrap();
        let scenario = dir.path().join("scenario-source.yaml");
        std::fs::write(&scenario, "name: rich\n").unwrap();
        let options = Options { scenario_file: Some(scenario), freeze_clock: true, lab_members: None };
        let warnings = write_all(&run_dir, &fixtures::plan(), &report, &options);
        assert!(warnings.is_empty(), "{warnings:?}");
        for file in [
            "report.md",
            "junit.xml",
            "report.html",
            "cleanup.json",
            "topology.json",
            "plan.json",
            "scenario.yaml",
            "digest.txt",
            "meta.json",
        ] {
            let len = std::fs::metadata(run_dir.join(file)).map(|m| m.len()).unwrap_or(0);
            assert!(len > 0, "{file} missing or empty");
        }
        assert!(dir.path().join("run1.tar.gz").is_file());
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run_dir.join("meta.json")).unwrap()).unwrap();
        assert_eq!(meta["started_unix_ms"], FROZEN_EPOCH_MS);
        assert_eq!(meta["started"], "2000-01-01T00:00:00.000Z");
        assert_eq!(meta["run_id"], "run1");
        assert_eq!(meta["seed"], report.seed);
        let digest = std::fs::read_to_string(run_dir.join("digest.txt")).unwrap();
        assert_eq!(meta["digest"], digest.trim());
        let json: RunReport = serde_json::from_slice(&std::fs::read(run_dir.join("report.json")).unwrap()).unwrap();
        assert_eq!(json.started_unix_ms, FROZEN_EPOCH_MS);
        assert_eq!(json.ended_unix_ms, FROZEN_EPOCH_MS + (report.ended_unix_ms - report.started_unix_ms));
        let spans = std::fs::read_to_string(run_dir.join("spans.jsonl")).unwrap();
        let spans = chaos_model::expect::parse_spans("spans.jsonl", &spans).unwrap();
        assert!(spans.iter().all(|s| s.start_unix_ns / 1_000_000 < FROZEN_EPOCH_MS + 3_600_000), "{spans:?}");
        let events = std::fs::read_to_string(run_dir.join("events.jsonl")).unwrap();
        assert!(events.contains(&format!("\"active_from_unix_ms\":{}", FROZEN_EPOCH_MS + 1000)), "{events}");
        let cleanup: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run_dir.join("cleanup.json")).unwrap()).unwrap();
        assert_eq!(cleanup["clean"], true);
        assert_eq!(cleanup["cleanup"].as_array().map(Vec::len), Some(report.cleanup.len()));
        let plan: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run_dir.join("plan.json")).unwrap()).unwrap();
        assert_eq!(plan["seed"], report.seed);

        // The same scenario and seed with other measured values: the same digest.
        let run_dir2 = dir.path().join("run2");
        std::fs::create_dir(&run_dir2).unwrap();
        let mut measured = report.clone();
        fixtures::change_measured_values(&mut measured);
        std::fs::write(run_dir2.join("spans.jsonl"), fixtures::spans_jsonl(&measured)).unwrap();
        let warnings = write_all(&run_dir2, &fixtures::plan(), &measured, &options);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(std::fs::read_to_string(run_dir2.join("digest.txt")).unwrap(), digest);
    }

    /// A run directory given as `x/run/../run` is still named `run`: the bundle goes
    /// beside it as run.tar.gz.
    #[test]
    fn the_bundle_is_named_by_the_real_path() {
        let dir = fixtures::TempDir::new("real-path");
        let run_dir = dir.path().join("run");
        std::fs::create_dir(&run_dir).unwrap();
        let report = fixtures::passing_report();
        std::fs::write(run_dir.join("spans.jsonl"), fixtures::spans_jsonl(&report)).unwrap();
        let given = run_dir.join("..").join("run");
        let warnings = write_all(&given, &fixtures::plan(), &report, &Options::default());
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(dir.path().join("run.tar.gz").is_file());
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run_dir.join("meta.json")).unwrap()).unwrap();
        assert_eq!(meta["run_id"], "run");
    }

    /// A file that cannot be written is a warning naming it; the rest are written.
    #[test]
    fn an_unwritable_artifact_is_a_warning() {
        let dir = fixtures::TempDir::new("unwritable");
        let run_dir = dir.path().join("run");
        std::fs::create_dir(&run_dir).unwrap();
        let report = fixtures::rich_report();
        std::fs::write(run_dir.join("spans.jsonl"), fixtures::spans_jsonl(&report)).unwrap();
        // A directory where report.md goes.
        std::fs::create_dir(run_dir.join("report.md")).unwrap();
        let warnings = write_all(&run_dir, &fixtures::plan(), &report, &Options::default());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("report.md"), "{warnings:?}");
        assert!(run_dir.join("junit.xml").is_file() && run_dir.join("meta.json").is_file());
    }
}
