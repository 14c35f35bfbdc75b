//! State files under /run/chaos-ebpf: each running `chaos-ebpf` records what it loaded
//! and attached, so `status` can show it and `cleanup` can remove what a crashed run
//! left (netlink filters and clsact qdiscs outlive their process; TCX links do not).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{loader::AttachMode, netns::NetnsId};

pub const STATE_DIR: &str = "/run/chaos-ebpf";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetlinkFilter {
    pub iface: String,
    pub ifindex: u32,
    pub hook: String,
    pub priority: u16,
    pub handle: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceState {
    pub netns: PathBuf,
    pub netns_id: NetnsId,
    pub mode: AttachMode,
    pub program_ids: Vec<u32>,
    pub interfaces: Vec<String>,
    pub netlink_filters: Vec<NetlinkFilter>,
    pub clsact_added: Vec<String>,
    /// Interfaces where the run made sch_fq the root qdisc (deleting it restores the
    /// default).
    #[serde(default)]
    pub fq_installed: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleState {
    pub rule_id: u32,
    pub slot: u32,
    pub netns_id: NetnsId,
    pub fault: String,
    pub started_unix_ms: u64,
    pub ends_unix_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunState {
    pub pid: u32,
    pub command: String,
    pub seed: u64,
    pub lease_ms: u64,
    pub instances: Vec<InstanceState>,
    pub rules: Vec<RuleState>,
}

/// Marks a clsact qdisc chaos-ebpf added (legacy netlink path), so that whichever
/// chaos-ebpf process detaches the last filter from it, or `cleanup`, deletes it, and a
/// clsact that was there before is never deleted.
pub fn clsact_marker(netns: NetnsId, ifindex: u32) -> PathBuf {
    Path::new(STATE_DIR).join(format!("clsact-{}-{}-{ifindex}.owner", netns.dev, netns.ino))
}

/// Every clsact marker: (path, netns id, ifindex).
pub fn clsact_markers() -> Vec<(PathBuf, NetnsId, u32)> {
    let Ok(entries) = fs::read_dir(STATE_DIR) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let mut parts = name.strip_prefix("clsact-")?.strip_suffix(".owner")?.split('-');
            let dev = parts.next()?.parse().ok()?;
            let ino = parts.next()?.parse().ok()?;
            let ifindex = parts.next()?.parse().ok()?;
            Some((e.path(), NetnsId { dev, ino }, ifindex))
        })
        .collect()
}

/// This process's state file; removed when dropped (a clean exit).
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn create() -> Result<Self> {
        fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
        Ok(Self { path: Path::new(STATE_DIR).join(format!("{}.json", std::process::id())) })
    }

    /// Replaces the file atomically (write, then rename).
    pub fn write(&self, state: &RunState) -> Result<()> {
        let tmp = self.path.with_extension("tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(state)?).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &self.path).with_context(|| format!("renaming to {}", self.path.display()))?;
        Ok(())
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Every state file with its contents (unreadable ones are reported as `Err`).
pub fn read_all() -> Vec<(PathBuf, Result<RunState>)> {
    let Ok(entries) = fs::read_dir(STATE_DIR) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let state = fs::read(&p)
                .map_err(anyhow::Error::from)
                .and_then(|b| serde_json::from_slice::<RunState>(&b).map_err(Into::into))
                .with_context(|| format!("reading {}", p.display()));
            (p, state)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    Running,
    /// SIGSTOPped or traced: its leases are running out.
    Stopped,
    Gone,
}

/// Whether `pid` is a live chaos-ebpf process (a reused pid of another program is Gone).
pub fn process_state(pid: u32) -> ProcessState {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "chaos-ebpf" {
        return ProcessState::Gone;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state letter follows the parenthesised command name.
    match stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()) {
        Some('T') | Some('t') => ProcessState::Stopped,
        Some('Z') | Some('X') | None => ProcessState::Gone,
        Some(_) => ProcessState::Running,
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
