//! The run ledger under /run/chaos-ebpf: what each chaos-ebpf run created, written before
//! it creates it, so `status` can show it and `cleanup` (or the next run) can remove what
//! a crashed run left (netlink filters, qdiscs and device settings outlive their process;
//! TCX links do not).
//!
//! Liveness is an advisory lock, not a pid check: each run holds an exclusive `flock` on
//! `<pid>.lock` for its whole life. The kernel drops the lock when the process dies, so a
//! record whose lock can be taken belongs to a dead run, whatever process now has that
//! pid or that name; a stopped (SIGSTOP) run still holds its lock and is live.

use std::{
    fs::{self, File, OpenOptions, TryLockError},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{attach::AttachMode, netns::NetnsId};

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

/// Where a run is in its life, as its record says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Resolving targets and loading programs: nothing persistent exists yet.
    #[default]
    Starting,
    /// Attached; faults are (or are about to be) in force.
    Running,
    /// Reverting everything it created.
    Reverting,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunState {
    pub pid: u32,
    pub command: String,
    pub seed: u64,
    pub lease_ms: u64,
    #[serde(default)]
    pub phase: Phase,
    /// When the run started, and when it last renewed its leases (wall clock, ms).
    #[serde(default)]
    pub started_unix_ms: u64,
    #[serde(default)]
    pub renewed_unix_ms: u64,
    pub instances: Vec<InstanceState>,
    pub rules: Vec<RuleState>,
    /// The run's bit in the "judged by" mask that copies of delayed packets carry
    /// (chaos_ebpf_common::resend): unique among live runs, so a program never takes
    /// another run's judgement for its own.
    #[serde(default)]
    pub judge_bit: Option<u32>,
}

/// The lowest judge bit no other live run holds (pid % 32 when all 32 are taken: two
/// runs then share a bit, and a delayed copy may skip one of them). Call under the
/// ledger lock and record the choice before releasing it.
pub fn free_judge_bit() -> u32 {
    let me = std::process::id();
    let taken: Vec<u32> = read_all()
        .into_iter()
        .filter(|(pid, _, _)| *pid != me && liveness(*pid).0 != ProcessState::Dead)
        .filter_map(|(_, _, r)| r.ok()?.judge_bit)
        .collect();
    (0..32).find(|b| !taken.contains(b)).unwrap_or(me % 32)
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

fn record_path(pid: u32) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{pid}.json"))
}

fn lock_path(pid: u32) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{pid}.lock"))
}

/// Opens and exclusively locks `path` without waiting, making sure the locked file is
/// still the one at `path` (a cleanup may unlink a dead run's lock file meanwhile).
/// `Ok(None)`: someone holds the lock.
fn try_lock_file(path: &Path, create: bool) -> std::io::Result<Option<File>> {
    for _ in 0..100 {
        let file = OpenOptions::new().read(true).write(true).create(create).truncate(false).open(path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(e),
        }
        match fs::metadata(path) {
            Ok(meta) if meta.ino() == file.metadata()?.ino() => return Ok(Some(file)),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(format!("{} keeps changing under the lock", path.display())))
}

/// This process's ledger record and the lock that proves it alive; both removed when
/// dropped (a clean exit). Created before the run creates anything.
pub struct RunRecord {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: File,
}

impl RunRecord {
    pub fn create(state: &RunState) -> Result<Self> {
        fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
        let pid = std::process::id();
        let lock_path = lock_path(pid);
        // A lock file with our pid is a dead run's (pids are unique among live
        // processes): `collect_dead` removed it already unless a cleanup holds it now.
        let mut lock = None;
        for _ in 0..50 {
            lock = try_lock_file(&lock_path, true).with_context(|| format!("locking {}", lock_path.display()))?;
            if lock.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let lock = lock.with_context(|| format!("{} is held by another process", lock_path.display()))?;
        let record = Self { path: record_path(pid), lock_path, _lock: lock };
        record.write(state)?;
        Ok(record)
    }

    /// Where the record is (it is removed when the record is dropped).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the record atomically.
    pub fn write(&self, state: &RunState) -> Result<()> {
        write_json(&self.path, state)
    }
}

impl Drop for RunRecord {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        // Unlinked while still locked: nobody can mistake it for a dead run's.
        let _ = fs::remove_file(&self.lock_path);
    }
}

/// Replaces a ledger file atomically (write, then rename), so a reader never sees half
/// of it.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(value)?).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Every run record: the pid its name carries (the pid of its lock), its path and its
/// contents (unreadable ones are reported as `Err`).
pub fn read_all() -> Vec<(u32, PathBuf, Result<RunState>)> {
    let Ok(entries) = fs::read_dir(STATE_DIR) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| {
            let pid = p.file_stem()?.to_str()?.parse::<u32>().ok()?;
            let state = fs::read(&p)
                .map_err(anyhow::Error::from)
                .and_then(|b| serde_json::from_slice::<RunState>(&b).map_err(Into::into))
                .with_context(|| format!("reading {}", p.display()));
            Some((pid, p, state))
        })
        .collect();
    out.sort_by_key(|(pid, _, _)| *pid);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    Running,
    /// SIGSTOPped or traced: alive, but its leases are running out.
    Stopped,
    /// The run's lock is free: the process is gone (a reused pid does not count).
    Dead,
}

/// A dead run's lock (of its run record, or of one of its side records), held while its
/// leftovers are removed so that no other cleanup does the same work at once.
pub struct DeadRunLock {
    pub pid: u32,
    record: PathBuf,
    lock_path: PathBuf,
    lock: Option<File>,
}

impl DeadRunLock {
    /// The dead run's record this lock guards.
    pub fn record(&self) -> &Path {
        &self.record
    }

    /// Removes the dead run's record and lock file (call after its leftovers are gone).
    pub fn forget(mut self) {
        let _ = fs::remove_file(&self.record);
        let _ = fs::remove_file(&self.lock_path);
        self.lock.take();
    }
}

/// Whether the run `pid` is alive (its lock is held), and in which state.
pub fn liveness(pid: u32) -> (ProcessState, Option<DeadRunLock>) {
    liveness_of(pid, record_path(pid), lock_path(pid))
}

fn liveness_of(pid: u32, record: PathBuf, lock_path: PathBuf) -> (ProcessState, Option<DeadRunLock>) {
    match try_lock_file(&lock_path, false) {
        Ok(None) => (process_state(pid), None),
        Ok(Some(lock)) => (ProcessState::Dead, Some(DeadRunLock { pid, record, lock_path, lock: Some(lock) })),
        // No lock file: a record without one is a dead run's (or one written by an
        // older chaos-ebpf, whose process is gone if nobody has its name and pid).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (ProcessState::Dead, Some(DeadRunLock { pid, record, lock_path, lock: None }))
        }
        Err(_) => (process_state(pid), None),
    }
}

/// A side record of this run, `<pid>-<kind>.json`, for what a run changes outside the
/// kernel objects of its run record (the container actions' pending undos), with a lock
/// of its own, `<pid>-<kind>.lock`, held while the record exists: a run can drop its side
/// record (nothing pending) while it goes on, and the record's liveness is told exactly
/// as the run record's is, whatever process has the pid now. Both files are removed when
/// this is dropped; a crashed run's stay for `cleanup` ([`side_records`],
/// [`side_liveness`]).
pub struct SideRecord {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: File,
}

impl SideRecord {
    /// Locks `<pid>-<kind>.lock` and returns the record with what a record of the same
    /// name held already: a dead run's that had this pid before us and was not cleaned
    /// up (its lock was free, so it is no live run's). The caller keeps that content in
    /// what it writes, so that it is not lost: it is undone after this run ends.
    pub fn create(kind: &str) -> Result<(Self, Option<Vec<u8>>)> {
        fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
        let (path, lock_path) = side_paths(std::process::id(), kind);
        let mut lock = None;
        // A cleanup may hold a dead run's lock of the same name for a moment.
        for _ in 0..50 {
            lock = try_lock_file(&lock_path, true).with_context(|| format!("locking {}", lock_path.display()))?;
            if lock.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let lock = lock.with_context(|| {
            format!("{} is held by another process (a `chaos-ebpf cleanup`?); try again", lock_path.display())
        })?;
        let earlier = fs::read(&path).ok().filter(|b| !b.is_empty());
        Ok((Self { path, lock_path, _lock: lock }, earlier))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the record atomically.
    pub fn write(&self, value: &impl Serialize) -> Result<()> {
        write_json(&self.path, value)
    }
}

impl Drop for SideRecord {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        // Unlinked while still locked, as the run record's.
        let _ = fs::remove_file(&self.lock_path);
    }
}

fn side_paths(pid: u32, kind: &str) -> (PathBuf, PathBuf) {
    let dir = Path::new(STATE_DIR);
    (dir.join(format!("{pid}-{kind}.json")), dir.join(format!("{pid}-{kind}.lock")))
}

/// Every side record of `kind`: (pid, path), by pid.
pub fn side_records(kind: &str) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = fs::read_dir(STATE_DIR) else { return Vec::new() };
    let suffix = format!("-{kind}.json");
    let mut out: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.strip_suffix(&suffix)?.parse::<u32>().ok()?;
            Some((pid, e.path()))
        })
        .collect();
    out.sort_by_key(|(pid, _)| *pid);
    out
}

/// Whether the run that wrote side record `kind` of `pid` is alive (the record's lock is
/// held); for a dead one, its lock, held until dropped (or `forget`: record and lock
/// removed).
pub fn side_liveness(pid: u32, kind: &str) -> (ProcessState, Option<DeadRunLock>) {
    let (record, lock_path) = side_paths(pid, kind);
    liveness_of(pid, record, lock_path)
}

/// Running or stopped, from /proc (for a process known to be alive).
fn process_state(pid: u32) -> ProcessState {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state letter follows the parenthesised command name.
    match stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()) {
        Some('T') | Some('t') => ProcessState::Stopped,
        _ => ProcessState::Running,
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Formats a wall-clock time in ms as `HH:MM:SS` UTC (enough to tell events apart in a
/// status line; reports carry the full value).
pub fn clock(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    format!("{:02}:{:02}:{:02} UTC", (secs / 3600) % 24, (secs / 60) % 60, secs % 60)
}
