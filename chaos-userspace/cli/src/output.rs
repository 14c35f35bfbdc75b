//! Printing that never panics: a closed or broken stdout/stderr (`chaos-ebpf run x.yaml |
//! head -1`) must not abort an experiment half way (println! panics on EPIPE). Output
//! that cannot be written is dropped; the run goes on, reverts and exits normally.

use std::{fs::File, io::Write, path::Path, sync::Mutex, time::Instant};

/// The run directory's run.log, once a run has one: every stderr line goes there too,
/// stamped with the seconds since the log opened (not the wall clock: `--freeze-clock`
/// runs stay comparable).
static LOG: Mutex<Option<(File, Instant)>> = Mutex::new(None);

/// From now on, stderr lines are also appended to `path`.
pub fn log_to(path: &Path) -> std::io::Result<()> {
    let file = File::create(path)?;
    *LOG.lock().unwrap_or_else(|p| p.into_inner()) = Some((file, Instant::now()));
    Ok(())
}

/// A line on stdout (reports, status, plans).
pub fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Text on stdout without a newline.
pub fn out_raw(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = write!(stdout, "{text}");
    let _ = stdout.flush();
}

/// A line on stderr (progress, warnings, errors), and in the run's log.
pub fn err(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
    if let Some((file, opened)) = LOG.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        let _ = writeln!(file, "[{:>9.3}s] {line}", opened.elapsed().as_secs_f64());
    }
}
