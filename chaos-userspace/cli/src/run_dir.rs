//! A run's directory: `--run-dir DIR`, or `chaos-runs/<run-id>` under the current
//! directory, where the run's spans (spans.rs) and report go.

use std::path::{Path, PathBuf};

use anyhow::Result;
use chaos_model::{spec, Problem};

/// `<UTC time>-<pid>`, e.g. `20261127T154659Z-4242`: sorts by start, unique per host.
pub fn run_id() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z-{}",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        std::process::id()
    )
}

/// Creates the run directory (a given one may exist if empty) and opens its spans.jsonl
/// and run.log.
/// A directory that cannot be used is bad input (exit 2).
pub fn create(given: Option<PathBuf>) -> Result<PathBuf> {
    let dir = given.unwrap_or_else(|| Path::new("chaos-runs").join(run_id()));
    let shown = spec::shorten(&dir.display().to_string(), 120);
    let problem = |what: String| {
        Problem::new(
            format!("run directory {shown}: {what}"),
            "give --run-dir a new or empty directory you can write (or leave it out for chaos-runs/<run-id>)",
        )
    };
    match std::fs::read_dir(&dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(problem("it exists and is not empty (it may hold another run)".into()).into());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&dir).map_err(|e| problem(format!("cannot create it: {e}")))?
        }
        Err(e) => return Err(problem(format!("cannot use it: {e}")).into()),
    }
    crate::spans::write_to(&dir.join("spans.jsonl")).map_err(|e| problem(format!("cannot create spans.jsonl: {e}")))?;
    crate::output::log_to(&dir.join("run.log")).map_err(|e| problem(format!("cannot create run.log: {e}")))?;
    Ok(dir)
}
