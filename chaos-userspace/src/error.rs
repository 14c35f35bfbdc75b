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

/// Fails with exit 2 unless the process holds what loading, attaching and inspecting
/// TC programs needs (see `missing_privileges`). Kept under this name for its callers;
/// it checks capabilities, not the uid.
pub fn require_root(action: &str) -> Result<(), Failure> {
    let missing = missing_privileges();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Failure::environment(
        format!(
            "{action} needs root: CAP_SYS_ADMIN and CAP_NET_ADMIN in the host's user namespace; {}",
            missing.join("; ")
        ),
        "run it as root, e.g. `sudo chaos-ebpf ...` (not in a user namespace or rootless container); \
         `validate`, `plan` and `--dry-run` need no privileges",
    ))
}

/// What the process lacks, each as a short phrase (empty: nothing). CAP_SYS_ADMIN:
/// entering target network namespaces (setns) and reading BPF objects by id (status,
/// cleanup), and it covers CAP_BPF; CAP_NET_ADMIN: TC attachments and qdiscs. Both
/// must be effective capabilities of the initial user namespace: the BPF and netlink
/// checks ignore capabilities held inside a user namespace (euid 0 in `unshare -U -r`).
pub fn missing_privileges() -> Vec<String> {
    let mut missing = Vec::new();
    if let Some(map) = user_namespace_uid_map() {
        missing.push(format!("this process is in a user namespace (uid_map '{map}'), whose capabilities do not count"));
    }
    let effective = caps::read(None, caps::CapSet::Effective).unwrap_or_default();
    let lacking: Vec<&str> =
        [(caps::Capability::CAP_SYS_ADMIN, "CAP_SYS_ADMIN"), (caps::Capability::CAP_NET_ADMIN, "CAP_NET_ADMIN")]
            .into_iter()
            .filter(|(cap, _)| !effective.contains(cap))
            .map(|(_, name)| name)
            .collect();
    if !lacking.is_empty() {
        missing.push(format!("missing effective capabilities: {}", lacking.join(", ")));
    }
    missing
}

/// The uid map when the process is not in the initial user namespace, whose map is
/// the identity over all 2^32-1 ids.
fn user_namespace_uid_map() -> Option<String> {
    let map = std::fs::read_to_string("/proc/self/uid_map").ok()?;
    let fields: Vec<&str> = map.split_whitespace().collect();
    if fields == ["0", "0", "4294967295"] {
        None
    } else {
        Some(crate::spec::shorten(&fields.join(" "), 60))
    }
}
