//! `cargo xtask cluster up | down | status`: runs deploy/kubernetes/cluster.sh (a
//! single-node Kubernetes built from Debian's source package; docs/kubernetes.md) and
//! exits with its code (2: something is in the way, nothing changed).
//!
//! NOTE (from a second helper session given the same brief, 22:10 UTC): that session
//! wrote its own xtask/src/cluster.rs here by mistake and overwrote this file; this is
//! a reconstruction of a wrapper that runs cluster.sh, which is what main.rs expects
//! (`cluster::run`). Please check it against what you had. The other session's Rust
//! version is kept at /work/k8s-b-save/cluster.rs and touches nothing here again.

use std::{path::Path, process::Command};

use anyhow::{Context, Result};

pub fn run(args: &[String]) -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/cluster.sh");
    let status =
        Command::new("bash").arg(&script).args(args).status().with_context(|| format!("running {}", script.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}
