//! `chaos-ebpf replay BUNDLE.tar.gz`: runs a recorded run's scenario again with its seed,
//! on a lab of the same shape, and compares the new run's outcome and digest with the
//! recorded ones.
//!
//! The bundle is read, not unpacked: only scenario.yaml, report.json and meta.json are
//! taken from it (regular files of bounded size), so a crafted archive cannot write
//! anywhere.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use chaos_engine::report::{RunReport, Verdict};
use chaos_model::{spec, Problem};
use serde::{Deserialize, Serialize};

use crate::{output, Output};

/// The largest member of a bundle read (report.json of a long run is the largest).
const MAX_MEMBER_BYTES: u64 = 64 << 20;
/// The largest bundle read, compressed.
const MAX_BUNDLE_BYTES: u64 = 512 << 20;

struct Recorded {
    scenario: String,
    report: RunReport,
    meta: RecordedMeta,
}

#[derive(Deserialize)]
struct RecordedMeta {
    seed: u64,
    digest: Option<String>,
    #[serde(default)]
    lab_members: Option<usize>,
}

fn bad_bundle(bundle: &Path, what: impl std::fmt::Display) -> anyhow::Error {
    Problem::new(
        format!("{}: {what}", spec::shorten(&bundle.display().to_string(), 120)),
        "give the RUN_DIR.tar.gz that a `chaos-ebpf run` wrote next to its run directory",
    )
    .into()
}

fn read_bundle(bundle: &Path) -> Result<Recorded> {
    let meta = std::fs::metadata(bundle).map_err(|e| bad_bundle(bundle, e))?;
    if !meta.is_file() || meta.len() > MAX_BUNDLE_BYTES {
        return Err(bad_bundle(bundle, "not a regular file of at most 512 MiB"));
    }
    let file = std::fs::File::open(bundle).map_err(|e| bad_bundle(bundle, e))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let (mut scenario, mut report, mut meta) = (None, None, None);
    let entries = archive.entries().map_err(|e| bad_bundle(bundle, format!("not a tar.gz: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad_bundle(bundle, format!("not a tar.gz: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(|e| bad_bundle(bundle, e))?.into_owned();
        // Members are `<run dir>/<file>`: only the run directory's own files count.
        let slot = match path.components().count() {
            2 => match path.file_name().and_then(|n| n.to_str()) {
                Some("scenario.yaml") => &mut scenario,
                Some("report.json") => &mut report,
                Some("meta.json") => &mut meta,
                _ => continue,
            },
            _ => continue,
        };
        if entry.size() > MAX_MEMBER_BYTES {
            return Err(bad_bundle(bundle, format!("{} is larger than 64 MiB", path.display())));
        }
        let mut text = String::new();
        entry.read_to_string(&mut text).map_err(|e| bad_bundle(bundle, format!("{}: {e}", path.display())))?;
        *slot = Some(text);
    }
    let missing =
        |name: &str| bad_bundle(bundle, format!("it has no {name} (a bundle of `inject` cannot be replayed)"));
    let scenario = scenario.ok_or_else(|| missing("scenario.yaml"))?;
    let report: RunReport = serde_json::from_str(&report.ok_or_else(|| missing("report.json"))?)
        .map_err(|e| bad_bundle(bundle, format!("report.json: {e}")))?;
    let meta: RecordedMeta = serde_json::from_str(&meta.ok_or_else(|| missing("meta.json"))?)
        .map_err(|e| bad_bundle(bundle, format!("meta.json: {e}")))?;
    Ok(Recorded { scenario, report, meta })
}

/// What a run came to, in the terms two runs are compared by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// passed, failed, not-judged or none (no hypothesis).
    pub verdict: String,
    pub aborted_by: Option<String>,
    pub failed: bool,
    pub interrupted: bool,
    /// The steps that did not run their course.
    pub cut_short: Vec<String>,
    pub clean: bool,
}

pub fn outcome_of(report: &RunReport) -> Outcome {
    Outcome {
        verdict: match report.hypothesis.as_ref().map(|h| h.verdict) {
            None => "none".to_owned(),
            Some(Verdict::Passed) => "passed".to_owned(),
            Some(Verdict::Failed) => "failed".to_owned(),
            Some(_) => "not-judged".to_owned(),
        },
        aborted_by: report.abort.as_ref().map(|a| a.guard.clone()),
        failed: report.failed.is_some(),
        interrupted: report.interrupted,
        cut_short: report.steps.iter().filter(|s| !s.ran_its_course).map(|s| s.name.clone()).collect(),
        clean: report.clean,
    }
}

/// A directory of this process under the temporary directory, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create() -> Result<ScratchDir> {
        let dir = std::env::temp_dir().join(format!("chaos-ebpf-replay-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Serialize)]
struct Comparison {
    recorded_run: PathBuf,
    new_run: PathBuf,
    seed: u64,
    recorded: Outcome,
    replayed: Outcome,
    same_outcome: bool,
    recorded_digest: Option<String>,
    new_digest: Option<String>,
    same_digest: bool,
}

pub fn run(bundle: &Path, run_dir: Option<PathBuf>, output: Output) -> Result<i32> {
    let recorded = read_bundle(bundle)?;
    if let Some(members) = recorded.meta.lab_members {
        let now = chaos_lab::control::LabControl::open(Path::new(chaos_lab::cluster::STATE_DIR))
            .map(|c| c.members().len())
            .ok();
        if now != Some(members) {
            return Err(Problem::new(
                format!(
                    "the recorded run used a cluster lab of {members} members; {}",
                    now.map_or("no lab is up".to_owned(), |n| format!("the lab up now has {n}"))
                ),
                format!("bring up one of the same shape: sudo chaos-ebpf lab down; sudo chaos-ebpf lab up --nodes {members}"),
            )
            .into());
        }
    }
    // The scenario as recorded, in a file of its own (execute copies it into the new
    // run directory as scenario.yaml).
    let dir = ScratchDir::create()?;
    let scenario_file = dir.0.join("scenario.yaml");
    std::fs::write(&scenario_file, &recorded.scenario)?;
    let mut plan = crate::validate::load(&scenario_file)?;
    plan.seed = Some(recorded.meta.seed);
    let run_dir =
        run_dir.unwrap_or_else(|| Path::new("chaos-runs").join(format!("{}-replay", crate::run_dir::run_id())));
    output::err(&format!(
        "chaos-ebpf: replaying {} (scenario {}, seed {})",
        bundle.display(),
        plan.name,
        recorded.meta.seed
    ));
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let artifacts =
        crate::report::Options { scenario_file: Some(scenario_file), freeze_clock: false, lab_members: None };
    let code = crate::execute::execute(
        &plan,
        false,
        Output::Text,
        None,
        // With its own programs, as recorded runs without an agent.
        crate::execute::Invocation { command, agent_socket: None },
        Some(run_dir.clone()),
        Path::new(chaos_lab::cluster::STATE_DIR),
        artifacts,
    )?;
    let new_report: RunReport = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("report.json")).context("reading the new run's report.json")?,
    )?;
    let new_digest = std::fs::read_to_string(run_dir.join("digest.txt")).ok().map(|d| d.trim().to_owned());
    let comparison = Comparison {
        recorded_run: bundle.to_path_buf(),
        new_run: run_dir.clone(),
        seed: recorded.meta.seed,
        recorded: outcome_of(&recorded.report),
        replayed: outcome_of(&new_report),
        same_outcome: outcome_of(&recorded.report) == outcome_of(&new_report),
        same_digest: new_digest.is_some() && new_digest == recorded.meta.digest,
        recorded_digest: recorded.meta.digest,
        new_digest,
    };
    match output {
        Output::Json => output::out(&serde_json::to_string_pretty(&comparison)?),
        Output::Text => {
            let o = |o: &Outcome| {
                format!(
                    "verdict {}, {}{}{}, {}",
                    o.verdict,
                    if o.cut_short.is_empty() {
                        "every step ran its course".to_owned()
                    } else {
                        format!("cut short: {}", o.cut_short.join(", "))
                    },
                    o.aborted_by.as_ref().map(|g| format!(", aborted by the {g} guard")).unwrap_or_default(),
                    if o.interrupted { ", interrupted" } else { "" },
                    if o.clean { "clean" } else { "NOT clean" }
                )
            };
            output::out(&format!("replay of {} (seed {})", bundle.display(), comparison.seed));
            output::out(&format!("  recorded: {}", o(&comparison.recorded)));
            output::out(&format!("  replayed: {}", o(&comparison.replayed)));
            output::out(&format!("  outcome: {}", if comparison.same_outcome { "the same" } else { "DIFFERENT" }));
            output::out(&format!(
                "  digest: {} (recorded {}, now {})",
                if comparison.same_digest { "the same" } else { "DIFFERENT" },
                comparison.recorded_digest.as_deref().unwrap_or("none"),
                comparison.new_digest.as_deref().unwrap_or("none")
            ));
            if !comparison.same_digest {
                output::out(&format!(
                    "  (digest-input.json in both run directories shows what differs; {} has the new one)",
                    run_dir.display()
                ));
            }
        }
    }
    // The new run's own failure first; then a different outcome is a failed replay.
    Ok(if code != 0 {
        code
    } else if comparison.same_outcome {
        0
    } else {
        crate::exit::FAILED
    })
}
