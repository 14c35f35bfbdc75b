//! The datapath's error type. Most datapath functions return `anyhow::Result` with
//! context on the way up; the one failure a caller must tell apart is
//! [`Error::Unsupported`]: the machine cannot do what was asked (not root, a kernel
//! without a feature, a target that does not exist, a limit reached), found before
//! anything was changed. The CLI maps it to exit code 2, like the model's input problems.

/// A failure of the datapath that names its fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What cannot be done here, and what to do about it.
    #[error("{problem}\n  fix: {fix}")]
    Unsupported { problem: String, fix: String },
}

impl Error {
    pub fn unsupported(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Error::Unsupported { problem: problem.into(), fix: fix.into() }
    }
}

/// Fails with exit 2 unless the process holds what loading, attaching and inspecting
/// TC programs needs (see `missing_privileges`). Kept under this name for its callers;
/// it checks capabilities, not the uid.
pub fn require_root(action: &str) -> Result<(), Error> {
    let missing = missing_privileges();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::unsupported(
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
        Some(chaos_ebpf_common::text::shorten(&fields.join(" "), 60))
    }
}
