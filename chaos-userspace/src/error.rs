//! Failures and the exit codes they map to (0 success, 1 the experiment failed, 2 bad
//! input or an environment that cannot do what was asked). Every `Failure` names the
//! problem and the fix; anything else that escapes is an experiment failure (exit 1).

use std::fmt;

/// Exit code for a run that failed or was aborted after it started changing things.
pub const EXIT_FAILED: i32 = 1;
/// Exit code for bad input or an unsuitable environment; nothing was changed.
pub const EXIT_USAGE: i32 = 2;

/// A problem found before anything was changed: exit code 2. Made by `input` (the
/// scenario file or the command line is wrong) or `environment` (the machine cannot do
/// what was asked: not root, kernel feature missing, target does not exist).
#[derive(Debug)]
pub struct Failure {
    pub problem: String,
    pub fix: String,
}

impl Failure {
    pub fn input(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { problem: problem.into(), fix: fix.into() }
    }

    pub fn environment(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { problem: problem.into(), fix: fix.into() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n  fix: {}", self.problem, self.fix)
    }
}

impl std::error::Error for Failure {}

/// Exit code for an error that reached `main`.
pub fn exit_code(error: &anyhow::Error) -> i32 {
    if error.chain().any(|e| e.downcast_ref::<Failure>().is_some()) {
        EXIT_USAGE
    } else {
        EXIT_FAILED
    }
}

/// Fails with exit 2 unless running as root: loading BPF programs and attaching them
/// to interfaces needs CAP_BPF and CAP_NET_ADMIN.
pub fn require_root(action: &str) -> Result<(), Failure> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Failure::environment(
            format!("{action} needs root (CAP_BPF and CAP_NET_ADMIN to load and attach TC programs)"),
            "run it as root, e.g. `sudo chaos-ebpf ...`; `validate`, `plan` and `--dry-run` need no privileges",
        ));
    }
    Ok(())
}
