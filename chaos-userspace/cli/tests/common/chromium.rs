//! Headless Chromium as the browser tests start it (report_html here, the dashboard in
//! the kernel tests): one set of flags, and everything it writes inside a profile
//! directory that the test removes.

use std::{path::Path, process::Command};

/// Chromium at `binary`, headless, with `profile` as its user data directory and its
/// TMPDIR inside that: Chromium makes its singleton socket's directory in TMPDIR and
/// leaves it there when it is killed, so there it goes with the profile. The caller adds
/// its own flags and the URL.
pub fn headless_chromium(binary: &Path, profile: &Path) -> std::io::Result<Command> {
    let tmp = profile.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let mut command = Command::new(binary);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .env("TMPDIR", &tmp);
    Ok(command)
}
