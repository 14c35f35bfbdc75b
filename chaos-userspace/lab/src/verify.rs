//! `lab verify`: no acknowledged write lost. `chaos-lab-node verify` on each workload
//! node's journal, and each journal's longest gap between acknowledged writes.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context, Result};
use chaos_datapath::error::Error;
use serde::Serialize;

use crate::cluster::{self, State};

/// What `chaos-lab-node verify` said of one node's journal.
#[derive(Debug, Serialize)]
pub struct JournalCheck {
    pub node: String,
    pub journal: PathBuf,
    /// Its exit code: 0 every write readable, 1 missing/mismatched/unreadable.
    pub code: i32,
    /// Its summary line (`verify: N acknowledged writes, ...`) and the lines before it.
    pub said: String,
    /// The longest time between two consecutive acknowledged writes of the journal: the
    /// node's worst write availability gap (ms), and when it began (unix ms).
    pub longest_gap_ms: Option<u64>,
    pub gap_from_unix_ms: Option<u64>,
}

/// The longest gap between consecutive `acked_unix_ms` of a journal (torn or foreign
/// lines are skipped: `chaos-lab-node verify` judges those).
fn longest_gap(journal: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(journal).ok()?;
    let mut acked: Vec<u64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["acked_unix_ms"].as_u64())
        .collect();
    acked.sort_unstable();
    acked.windows(2).map(|w| (w[1] - w[0], w[0])).max()
}

/// Every workload node's journal that exists, checked against etcd.
pub fn journals(state: &State) -> Result<Vec<JournalCheck>> {
    let certs = state.certs.as_ref().ok_or_else(|| {
        Error::unsupported(
            "the lab has no certificates (its `lab up` did not finish)",
            "`chaos-ebpf lab down`, then `lab up`",
        )
    })?;
    let binary = cluster::node_binary()?;
    let mut checks = Vec::new();
    for w in &state.workloads {
        if !w.journal.exists() {
            continue;
        }
        let mut cmd = std::process::Command::new(&binary);
        cmd.arg("verify").arg("--journal").arg(&w.journal);
        let out = cluster::etcd_client_args(&mut cmd, &state.endpoints(), certs)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", binary.display()))?;
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let gap = longest_gap(&w.journal);
        checks.push(JournalCheck {
            node: w.name.clone(),
            journal: w.journal.clone(),
            code: out.status.code().unwrap_or(1),
            said: said.trim().to_owned(),
            longest_gap_ms: gap.map(|g| g.0),
            gap_from_unix_ms: gap.map(|g| g.1),
        });
    }
    Ok(checks)
}
