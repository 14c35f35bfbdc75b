//! The pending undos of a run's container actions, so that they survive a crash of the
//! run. Before a `pause` of a container, or a `kill` with `restart: true`, changes
//! anything, the run records what will undo it (unpause, start) in a side record of the
//! ledger, `/run/chaos-ebpf/<pid>-containers.json`, whose lock (`<pid>-containers.lock`)
//! the run holds while the record exists; the entry goes once the undo is done and
//! verified, the record (and its lock) with the last entry. A run killed mid-step
//! (SIGKILL) leaves the record with its lock free: `chaos-ebpf cleanup` then does the
//! undo through the Docker API ([`undo_dead_runs`]), and never touches the record of a
//! run that holds its lock.
//!
//! An undo whose run could not do it (the daemon did not answer at the step's end) stays
//! recorded too: the run's exit frees the lock, and `cleanup` tries again.

use std::sync::Mutex;

use anyhow::{Context, Result};
use chaos_datapath::ledger::{self, ProcessState, SideRecord};
use serde::{Deserialize, Serialize};

use crate::container;

/// The side record's kind: `<pid>-containers.json`.
pub const KIND: &str = "containers";

/// What puts a container back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UndoKind {
    /// It was paused: unpause it if it still is.
    Unpause,
    /// It was killed with `restart: true`: start it if it does not run.
    Start,
    /// Its certificate was swapped (`cert-expiry`): put the original back from the
    /// backup in [`PendingUndo::cert`] and restart it (start it, if the run died with it
    /// stopped for the swap), so that it loads it.
    #[serde(rename = "restore-cert")]
    RestoreCert,
    /// The run created it (a surge node): remove it.
    Remove,
}

/// A certificate pair swapped by `cert-expiry`, and where the original pair was copied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertSwap {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub backup_cert: std::path::PathBuf,
    pub backup_key: std::path::PathBuf,
}

impl CertSwap {
    /// `<file>.orig` beside each file of the pair.
    pub fn beside(cert: &std::path::Path, key: &std::path::Path) -> CertSwap {
        let orig = |p: &std::path::Path| std::path::PathBuf::from(format!("{}.orig", p.display()));
        CertSwap { cert: cert.to_owned(), key: key.to_owned(), backup_cert: orig(cert), backup_key: orig(key) }
    }

    /// Copies the pair to its backup (the permissions too: the key stays 0600).
    pub fn back_up(&self) -> Result<()> {
        for (from, to) in [(&self.cert, &self.backup_cert), (&self.key, &self.backup_key)] {
            std::fs::copy(from, to).with_context(|| format!("backing up {} to {}", from.display(), to.display()))?;
        }
        Ok(())
    }

    /// Moves the backup over the pair (each a rename: a reader sees the old file or the
    /// original); nothing to do when no backup is left (put back already).
    pub fn put_back(&self) -> Result<bool> {
        if !self.backup_cert.exists() && !self.backup_key.exists() {
            return Ok(false);
        }
        for (from, to) in [(&self.backup_key, &self.key), (&self.backup_cert, &self.cert)] {
            if from.exists() {
                std::fs::rename(from, to)
                    .with_context(|| format!("putting {} back from {}", to.display(), from.display()))?;
            }
        }
        Ok(true)
    }
}

/// One container to put back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUndo {
    /// The run's handle on the entry (unique in the record).
    pub seq: u64,
    /// The daemon's socket the run talked to: a `cleanup` may run without DOCKER_HOST.
    pub socket: String,
    /// The full id, which the undo uses (a new container may have taken the name).
    pub id: String,
    pub name: String,
    pub undo: UndoKind,
    /// For `RestoreCert`: the files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<CertSwap>,
    pub step: String,
    /// When the entry was written, just before the action (wall clock, ms).
    pub since_unix_ms: u64,
}

impl PendingUndo {
    /// `container cet-a left paused` (step freeze, since 12:00:01 UTC).
    pub fn describe(&self) -> String {
        let left = match self.undo {
            UndoKind::Unpause => "paused",
            UndoKind::Start => "killed (restart: true)",
            UndoKind::RestoreCert => "with a swapped certificate",
            UndoKind::Remove => "behind (created by the run)",
        };
        format!("container {} left {left} by step {} since {}", self.name, self.step, ledger::clock(self.since_unix_ms))
    }
}

/// The record's contents.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub pid: u32,
    pub pending: Vec<PendingUndo>,
}

/// This process's record while it has anything pending.
struct Open {
    record: SideRecord,
    content: ContainerRecord,
}

static OPEN: Mutex<Option<Open>> = Mutex::new(None);

fn open() -> std::sync::MutexGuard<'static, Option<Open>> {
    // A panic elsewhere while the lock was held leaves the data as it was: still usable.
    OPEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// A recorded entry, to be passed to [`done`] once its undo is verified.
#[derive(Debug)]
pub(crate) struct Pending(u64);

/// Records that `name` must get `undo` (for the step `step`) before the action changes
/// it. An error means nothing was changed and the action must not go on.
pub(crate) fn record(name: &str, undo: UndoKind, step: &str) -> Result<Pending> {
    // Asked before taking the lock: a slow daemon does not hold up the other steps.
    record_with(container::identify(name)?, undo, None, step)
}

/// [`record`] of a certificate swap: the files to put back.
pub(crate) fn record_cert(name: &str, cert: CertSwap, step: &str) -> Result<Pending> {
    record_with(container::identify(name)?, UndoKind::RestoreCert, Some(cert), step)
}

/// Records that the container `name`, which this run is about to create, must be
/// removed: written before the create, so that no moment leaves one unrecorded. The
/// name stands for the id (it is unique to this run); a record whose container was
/// never created is done by `cleanup` with nothing to remove.
pub(crate) fn record_creation(name: &str, step: &str) -> Result<Pending> {
    record_with((container::socket()?, name.to_owned(), name.to_owned()), UndoKind::Remove, None, step)
}

fn record_with(
    (socket, id, display): (String, String, String),
    undo: UndoKind,
    cert: Option<CertSwap>,
    step: &str,
) -> Result<Pending> {
    let mut open = open();
    if open.is_none() {
        let (record, earlier) = SideRecord::create(KIND).map_err(|e| cannot_record(&display, e))?;
        // A dead run that had our pid left this and was not cleaned up: kept, so that a
        // `cleanup` after this run still puts those containers back.
        let mut content = earlier.and_then(|b| serde_json::from_slice::<ContainerRecord>(&b).ok()).unwrap_or_default();
        content.pid = std::process::id();
        *open = Some(Open { record, content });
    }
    let Some(state) = open.as_mut() else { anyhow::bail!("the container record of this run is not open") };
    let seq = state.content.pending.iter().map(|p| p.seq + 1).max().unwrap_or(0);
    state.content.pending.push(PendingUndo {
        seq,
        socket,
        id,
        name: display.clone(),
        undo,
        cert,
        step: step.to_owned(),
        since_unix_ms: ledger::unix_ms(),
    });
    if let Err(e) = state.record.write(&state.content) {
        state.content.pending.pop();
        if state.content.pending.is_empty() {
            *open = None;
        }
        return Err(cannot_record(&display, e));
    }
    Ok(Pending(seq))
}

fn cannot_record(name: &str, e: anyhow::Error) -> anyhow::Error {
    chaos_datapath::error::Error::unsupported(
        format!(
            "cannot record the undo of the action on container {name} under {} (left unchanged): {e:#}",
            ledger::STATE_DIR
        ),
        format!("run as root, with {} writable (a tmpfs)", ledger::STATE_DIR),
    )
    .into()
}

/// The undo of `pending` is done and verified: its entry goes, and the record with the
/// last one.
pub(crate) fn done(pending: Pending) {
    let mut open = open();
    let Some(state) = open.as_mut() else { return };
    state.content.pending.retain(|p| p.seq != pending.0);
    if state.content.pending.is_empty() {
        // Dropping the record removes the file, then its lock.
        *open = None;
    } else {
        // Not fatal: an entry left over by a failed write names a container that
        // `cleanup` finds already put back ("nothing to do").
        let _ = state.record.write(&state.content);
    }
}

/// The pending undos of the run `pid` (for `status`); empty when it has none.
pub fn pending_of(pid: u32) -> Vec<PendingUndo> {
    ledger::side_records(KIND)
        .into_iter()
        .filter(|(p, _)| *p == pid)
        .filter_map(|(_, path)| read(&path).ok())
        .flat_map(|r| r.pending)
        .collect()
}

/// The pids of dead runs that left container undos (for `status`: `cleanup` does them).
pub fn dead_runs_with_undos() -> Vec<u32> {
    ledger::side_records(KIND)
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| ledger::side_liveness(*pid, KIND).0 == ProcessState::Dead)
        .collect()
}

fn read(path: &std::path::Path) -> Result<ContainerRecord> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// What [`undo_dead_runs`] did, in the lines of `cleanup`'s report.
#[derive(Debug, Default)]
pub struct Swept {
    /// Undone, or found with nothing to do: the entry is gone.
    pub removed: Vec<String>,
    /// Not done (the daemon did not answer, the container is gone, an unreadable record).
    pub remaining: Vec<String>,
    /// Pending undos of live runs, left alone.
    pub active: Vec<String>,
}

/// Puts back the containers of every dead run's record (through the daemon that run
/// used) and removes what is done; live runs' records are left alone.
pub fn undo_dead_runs() -> Swept {
    let mut swept = Swept::default();
    for (pid, path) in ledger::side_records(KIND) {
        let (process, lock) = ledger::side_liveness(pid, KIND);
        let Some(lock) = lock.filter(|_| process == ProcessState::Dead) else {
            let names: Vec<String> =
                read(&path).map(|r| r.pending.iter().map(|p| p.describe()).collect()).unwrap_or_default();
            swept.active.push(format!(
                "run {pid} is alive and will undo its container actions when their steps end: {}",
                if names.is_empty() { "(none listed)".to_owned() } else { names.join("; ") }
            ));
            continue;
        };
        let record = match read(lock.record()) {
            Ok(record) => record,
            Err(e) => {
                swept.remaining.push(format!(
                    "container undos of dead run {pid}: {e:#}; check its containers with `docker ps -a`, then delete {}",
                    path.display()
                ));
                continue;
            }
        };
        let mut kept = Vec::new();
        for entry in record.pending {
            match undo_one(&entry, pid) {
                Outcome::Done(line) => swept.removed.push(line),
                Outcome::Gone(line) => swept.remaining.push(line),
                Outcome::Failed(line) => {
                    swept.remaining.push(line);
                    kept.push(entry);
                }
            }
        }
        if kept.is_empty() {
            lock.forget();
        } else if let Err(e) = ledger::write_json(lock.record(), &ContainerRecord { pid, pending: kept }) {
            // The old record stays whole: the next cleanup finds the done ones put back.
            swept.remaining.push(format!("updating {}: {e:#}", path.display()));
        }
    }
    swept
}

enum Outcome {
    /// Put back, or nothing to do: the entry goes.
    Done(String),
    /// The container no longer exists: the entry goes, but the undo was not done.
    Gone(String),
    /// Could not be done now: the entry stays for the next cleanup.
    Failed(String),
}

fn undo_one(entry: &PendingUndo, pid: u32) -> Outcome {
    let name = &entry.name;
    let left = match entry.undo {
        UndoKind::Unpause => format!("left paused by run {pid}"),
        UndoKind::Start => format!("left killed by run {pid}, restart: true"),
        UndoKind::RestoreCert => format!("left with a swapped certificate by run {pid}"),
        UndoKind::Remove => format!("created by run {pid}"),
    };
    let failed = |e: anyhow::Error| {
        Outcome::Failed(format!(
            "container {name} ({left}): {e:#}; run `chaos-ebpf cleanup` again once the daemon at {} answers",
            entry.socket
        ))
    };
    let state = match container::state_at(&entry.socket, &entry.id) {
        Ok(Some(state)) => state,
        Ok(None) if entry.undo == UndoKind::Remove => {
            return Outcome::Done(format!("container {name} ({left}): already removed, nothing to do"))
        }
        Ok(None) => {
            return Outcome::Gone(format!(
                "container {name} ({left}) no longer exists (id {}): nothing to put back, its record is dropped",
                short(&entry.id)
            ))
        }
        Err(e) => return failed(e),
    };
    match (entry.undo, state) {
        (UndoKind::Remove, _) => match container::remove_at(&entry.socket, &entry.id) {
            Ok(_) => Outcome::Done(format!("container {name} ({left}): stopped and deleted")),
            Err(e) => failed(e),
        },
        (UndoKind::RestoreCert, (running, _)) => {
            let Some(swap) = &entry.cert else {
                return Outcome::Gone(format!("container {name} ({left}): the record names no files, dropped"));
            };
            let put_back = match swap.put_back() {
                Ok(put_back) => put_back,
                Err(e) => return failed(e),
            };
            // A member runs when its certificate is swapped; the run may have died with
            // it stopped for the swap. Either way it starts (again) on the original:
            // etcd reads its certificate when it starts.
            let changes: &[container::Change] = match running {
                true => &[container::Change::Stop(RESTART_GRACE), container::Change::Start],
                false => &[container::Change::Start],
            };
            for change in changes {
                if let Err(e) = container::change_at(&entry.socket, &entry.id, *change) {
                    return failed(e);
                }
            }
            Outcome::Done(format!(
                "container {name}: original certificate {}, container {} ({left})",
                if put_back { "put back" } else { "was in place" },
                if running { "restarted" } else { "started again (it was stopped for the swap)" }
            ))
        }
        (UndoKind::Unpause, (true, true)) => {
            if let Err(e) = container::change_at(&entry.socket, &entry.id, container::Change::Unpause) {
                return failed(e);
            }
            match container::state_at(&entry.socket, &entry.id) {
                Ok(Some((_, false))) => Outcome::Done(format!("container {name} unpaused ({left})")),
                Ok(_) => failed(anyhow::anyhow!("still paused after the unpause")),
                Err(e) => failed(e),
            }
        }
        (UndoKind::Unpause, (true, false)) => {
            Outcome::Done(format!("container {name} ({left}): unpaused since by someone else, nothing to do"))
        }
        (UndoKind::Unpause, (false, _)) => {
            Outcome::Done(format!("container {name} ({left}): no longer runs, nothing to unpause"))
        }
        (UndoKind::Start, (true, _)) => Outcome::Done(format!(
            "container {name} ({left}): runs again (started since by someone else or its restart policy), nothing to do"
        )),
        (UndoKind::Start, (false, _)) => {
            if let Err(e) = container::change_at(&entry.socket, &entry.id, container::Change::Start) {
                return failed(e);
            }
            match container::state_at(&entry.socket, &entry.id) {
                Ok(Some((true, _))) => Outcome::Done(format!("container {name} started again ({left})")),
                Ok(_) => failed(anyhow::anyhow!("not running after its start")),
                Err(e) => failed(e),
            }
        }
    }
}

/// How long a container restarted to load its original certificate may take to stop.
pub const RESTART_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The first 12 characters of an id, as `docker ps` shows it.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_with_its_undo_names() {
        let record = ContainerRecord {
            pid: 42,
            pending: vec![PendingUndo {
                seq: 0,
                socket: "/var/run/docker.sock".into(),
                id: "0123456789abcdef".into(),
                name: "web".into(),
                undo: UndoKind::Start,
                cert: None,
                step: "crash".into(),
                since_unix_ms: 3_600_000,
            }],
        };
        let text = serde_json::to_string(&record).unwrap();
        assert!(text.contains("\"undo\":\"start\""), "{text}");
        let back: ContainerRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back.pending, record.pending);
        assert_eq!(
            back.pending[0].describe(),
            "container web left killed (restart: true) by step crash since 01:00:00 UTC"
        );
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
    }

    #[test]
    fn a_swapped_certificate_goes_back_once() {
        let dir = std::env::temp_dir().join(format!("chaos-cert-swap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("m.pem"), dir.join("m-key.pem"));
        std::fs::write(&cert, "original cert").unwrap();
        std::fs::write(&key, "original key").unwrap();
        let swap = CertSwap::beside(&cert, &key);
        assert_eq!(swap.backup_cert, dir.join("m.pem.orig"));
        swap.back_up().unwrap();
        std::fs::write(&cert, "expired cert").unwrap();
        std::fs::write(&key, "expired key").unwrap();
        assert!(swap.put_back().unwrap());
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "original cert");
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "original key");
        assert!(!swap.backup_cert.exists() && !swap.backup_key.exists());
        assert!(!swap.put_back().unwrap(), "a second put back has nothing to do");
        let text = serde_json::to_string(&UndoKind::RestoreCert).unwrap();
        assert_eq!(text, "\"restore-cert\"");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
