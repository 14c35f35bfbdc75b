//! Printing that never panics: a closed or broken stdout/stderr (`chaos-ebpf run x.yaml |
//! head -1`) must not abort an experiment half way (println! panics on EPIPE). Output
//! that cannot be written is dropped; the run goes on, reverts and exits normally.

use std::io::Write;

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

/// A line on stderr (progress, warnings, errors).
pub fn err(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
