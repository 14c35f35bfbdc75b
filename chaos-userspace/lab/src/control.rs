//! Member control of the cluster lab: who leads, kill (a signal, or graceful with a grace
//! period), restart, pause/resume (SIGSTOP/SIGCONT) and certificate expiry of one etcd
//! member. The engine's kill, pause and cert-expiry actions act through this.
//!
//! What must be undone (a paused member, a swapped certificate) is recorded in
//! `control.json` in the lab's state directory before it is done, so that [`undo_all`]
//! (cleanup after a crashed run) and `lab down` can undo what a run that died left. A
//! killed member is left dead: `lab status` reports it, [`LabControl::restart`] or
//! `lab down` ends that.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use chaos_datapath::error::Error;
use serde::{Deserialize, Serialize};

use crate::{
    certs::{self, CertFiles, LabCerts},
    cluster::{self, Member, Proc, State},
    etcd,
};

const CONTROL_FILE: &str = "control.json";
/// How long a signal that should end etcd may take before the kill is reported as failed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a restarted member may take to be healthy again (it catches up with the
/// leader through raft first).
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
/// The grace period of the SIGTERM that stops a member to swap its certificate.
const SWAP_GRACE: Duration = Duration::from_secs(5);
/// How often the waits poll.
const POLL: Duration = Duration::from_millis(50);

/// One member as the lab knows it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberInfo {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub client_url: String,
    /// The recorded etcd process (the last one started).
    pub pid: Option<u32>,
    pub alive: bool,
    /// Stopped by [`LabControl::pause`] and not resumed yet.
    pub paused: bool,
    /// Runs with a certificate from [`LabControl::expire_cert`].
    pub cert_swapped: bool,
}

/// What [`LabControl::kill`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KillOutcome {
    pub member: String,
    pub pid: u32,
    /// The signals sent, in order: `[signal]`, or `[signal, SIGKILL]` when the grace
    /// period ran out.
    pub signals: Vec<i32>,
    /// From the first signal until the process was gone.
    pub elapsed: Duration,
}

/// What [`LabControl::restart`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestartOutcome {
    pub member: String,
    pub pid: u32,
    /// From the start of the new process until the member answered healthy.
    pub elapsed: Duration,
}

/// A member stopped with SIGSTOP.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Paused {
    member: String,
    process: Proc,
}

/// A member whose certificate was replaced; the originals are at `backup`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Swapped {
    member: String,
    files: CertFiles,
    backup: CertFiles,
}

/// `control.json`: what is to be undone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Control {
    paused: Vec<Paused>,
    swapped: Vec<Swapped>,
}

impl Control {
    fn load(dir: &Path) -> Result<Control> {
        let path = dir.join(CONTROL_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Control::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(CONTROL_FILE);
        if self.paused.is_empty() && self.swapped.is_empty() {
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing {}", path.display()))
                }
                _ => Ok(()),
            };
        }
        let tmp = dir.join("control.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }
}

/// The running lab, to act on its members.
pub struct LabControl {
    state: State,
    dir: PathBuf,
}

fn not_root(what: &str) -> anyhow::Error {
    Error::unsupported(
        format!("{what} acts on the lab's processes and files, which are root's"),
        "run it as root (sudo)",
    )
    .into()
}

fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGQUIT => "SIGQUIT".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGSTOP => "SIGSTOP".into(),
        libc::SIGCONT => "SIGCONT".into(),
        other => format!("signal {other}"),
    }
}

/// The process is gone (or a zombie); reaps it when it is a child of this process (a
/// member this process restarted), so it does not stay a zombie.
fn gone(process: &Proc) -> bool {
    if process.alive() {
        return false;
    }
    // SAFETY: waitpid(2) with WNOHANG on one pid; not a child of ours is ECHILD, harmless.
    unsafe { libc::waitpid(process.pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
    true
}

fn wait_gone(process: &Proc, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if gone(process) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the process is stopped (state `T`, as after SIGSTOP).
fn stopped(process: &Proc) -> bool {
    process.alive()
        && fs::read_to_string(format!("/proc/{}/stat", process.pid))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('T')))
            .unwrap_or(false)
}

/// Each endpoint's own status, asked in parallel (one etcdctl each), so that one that does
/// not answer costs etcdctl's timeout once, not once per endpoint.
fn statuses(certs: &LabCerts, endpoints: &[String]) -> Vec<etcd::EndpointStatus> {
    std::thread::scope(|scope| {
        let asks: Vec<_> = endpoints
            .iter()
            .map(|e| scope.spawn(move || etcd::status(certs, std::slice::from_ref(e)).unwrap_or_default()))
            .collect();
        asks.into_iter().flat_map(|a| a.join().unwrap_or_default()).collect()
    })
}

/// Puts the backed-up certificate files back (a rename each: a file already put back has
/// no backup any more, so this is idempotent).
fn put_back(swapped: &Swapped) -> Result<()> {
    for (backup, file) in [(&swapped.backup.cert, &swapped.files.cert), (&swapped.backup.key, &swapped.files.key)] {
        if backup.exists() {
            fs::rename(backup, file)
                .with_context(|| format!("restoring {} from {}", file.display(), backup.display()))?;
        }
    }
    Ok(())
}

impl LabControl {
    /// Opens the running lab; an error naming `chaos-ebpf lab up` when none is up, or it
    /// is incomplete or dead.
    pub fn open(state_dir: &Path) -> Result<LabControl> {
        // SAFETY: no preconditions.
        if state_dir.exists() && unsafe { libc::geteuid() } != 0 {
            return Err(not_root("lab member control"));
        }
        let Some(state) = cluster::load(state_dir)? else {
            return Err(
                Error::unsupported("no cluster lab is up", "start one: sudo chaos-ebpf lab up (docs/lab.md)").into()
            );
        };
        if !state.complete || state.certs.is_none() {
            return Err(Error::unsupported(
                "the cluster lab's `lab up` did not finish",
                "`chaos-ebpf lab down`, then `chaos-ebpf lab up`",
            )
            .into());
        }
        if !state.members.iter().any(|m| m.process.is_some_and(|p| p.alive())) {
            return Err(Error::unsupported(
                "the cluster lab is dead: none of its etcd members runs",
                "`chaos-ebpf lab down`, then `chaos-ebpf lab up`",
            )
            .into());
        }
        Ok(LabControl { state, dir: state_dir.to_owned() })
    }

    /// The state as state.json says now (a long-lived `LabControl` sees a member another
    /// process restarted), or the last one read when it cannot be read.
    fn fresh(&self) -> State {
        cluster::load(&self.dir).ok().flatten().unwrap_or_else(|| self.state.clone())
    }

    fn refresh(&mut self) {
        self.state = self.fresh();
    }

    fn certs(&self) -> &LabCerts {
        self.state.certs.as_ref().expect("checked by open")
    }

    fn index(&self, member: &str) -> Result<usize> {
        self.state.members.iter().position(|m| m.name == member).ok_or_else(|| {
            let names: Vec<&str> = self.state.members.iter().map(|m| m.name.as_str()).collect();
            Error::unsupported(
                format!("the lab has no member {}", cluster::short(member)),
                format!("name one of {}", names.join(", ")),
            )
            .into()
        })
    }

    fn member(&self, member: &str) -> Result<&Member> {
        Ok(&self.state.members[self.index(member)?])
    }

    /// The member's running etcd, or an error saying it is not running.
    fn running(&self, member: &str) -> Result<Proc> {
        let m = self.member(member)?;
        match m.process {
            Some(p) if p.alive() => Ok(p),
            _ => Err(Error::unsupported(
                format!("etcd member {member} is not running (killed, or it exited)"),
                format!("restart it first (its log: {})", m.dir.join("etcd.log").display()),
            )
            .into()),
        }
    }

    /// Records `process` as the member's etcd in state.json (re-read first: another
    /// part of the tool may have recorded something meanwhile).
    fn record_process(&mut self, index: usize, process: Proc) -> Result<()> {
        let mut state = cluster::load(&self.dir)?.context("the lab's state.json disappeared")?;
        let member = state
            .members
            .iter_mut()
            .find(|m| m.name == self.state.members[index].name)
            .context("the member disappeared from state.json")?;
        member.process = Some(process);
        state.save()?;
        self.state = state;
        Ok(())
    }

    pub fn members(&self) -> Vec<MemberInfo> {
        let control = Control::load(&self.dir).unwrap_or_default();
        self.fresh()
            .members
            .iter()
            .map(|m| MemberInfo {
                name: m.name.clone(),
                netns: m.netns.clone(),
                ip: m.ip,
                client_url: m.client_url(),
                pid: m.process.map(|p| p.pid),
                alive: m.process.is_some_and(|p| p.alive()),
                paused: control.paused.iter().any(|p| p.member == m.name && p.process.alive()),
                cert_swapped: control.swapped.iter().any(|s| s.member == m.name),
            })
            .collect()
    }

    /// The current leader by member name, asked through etcd's API: the status of every
    /// running, not paused member, in parallel; the member whose own status says it leads
    /// (the highest raft term if two do, as an isolated old leader may). `None` when none
    /// does.
    pub fn leader(&self) -> Result<Option<String>> {
        let state = self.fresh();
        let asked: Vec<&Member> = self
            .members()
            .iter()
            .filter(|i| i.alive && !i.paused)
            .filter_map(|i| state.members.iter().find(|m| m.name == i.name))
            .collect();
        let endpoints: Vec<String> = asked.iter().map(|m| m.client_url()).collect();
        let leader = statuses(self.certs(), &endpoints)
            .into_iter()
            .filter(|s| s.is_leader)
            .max_by_key(|s| s.raft_term)
            .and_then(|s| asked.iter().find(|m| m.client_url() == s.endpoint).map(|m| m.name.clone()));
        Ok(leader)
    }

    /// Waits (bounded by `within`) until some member other than `not` leads; returns its
    /// name and how long the wait took, or `None` when none did in time.
    pub fn wait_leader(&self, not: Option<&str>, within: Duration) -> Result<Option<(String, Duration)>> {
        let start = Instant::now();
        loop {
            if let Some(name) = self.leader()? {
                if Some(name.as_str()) != not {
                    return Ok(Some((name, start.elapsed())));
                }
            }
            if start.elapsed() >= within {
                return Ok(None);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends `signal` to the member's etcd; with `grace`, SIGKILL follows after `grace`
    /// if it still runs (graceful: `signal` = SIGTERM). Returns once it exited (without
    /// `grace`, an error when it still runs 10 s after the signal), with the signals sent
    /// and the time from the first to the exit. A paused member is thawed after the
    /// signal, so that it can act on it. The member stays dead: `restart` starts it again.
    pub fn kill(&mut self, member: &str, signal: i32, grace: Option<Duration>) -> Result<KillOutcome> {
        self.refresh();
        if !(1..=64).contains(&signal) || signal == libc::SIGSTOP || signal == libc::SIGCONT {
            return Err(Error::unsupported(
                format!("kill {member}: {signal} is not a signal that ends a process"),
                "give SIGTERM (15), SIGKILL (9), SIGINT (2) or another terminating signal",
            )
            .into());
        }
        let process = self.running(member)?;
        let start = Instant::now();
        let mut signals = vec![signal];
        process.signal(signal);
        let mut control = Control::load(&self.dir)?;
        let was_paused = control.paused.iter().any(|p| p.member == member) || stopped(&process);
        if was_paused {
            process.signal(libc::SIGCONT);
        }
        let exited = match grace {
            Some(grace) => {
                if !wait_gone(&process, grace) {
                    process.signal(libc::SIGKILL);
                    signals.push(libc::SIGKILL);
                }
                wait_gone(&process, EXIT_TIMEOUT)
            }
            None => wait_gone(&process, EXIT_TIMEOUT),
        };
        if !exited {
            bail!(
                "etcd member {member} (pid {}) still runs {} s after {}: give a grace period to SIGKILL it then",
                process.pid,
                EXIT_TIMEOUT.as_secs(),
                signal_name(signal)
            );
        }
        if was_paused {
            control.paused.retain(|p| p.member != member);
            control.save(&self.dir)?;
        }
        Ok(KillOutcome { member: member.to_owned(), pid: process.pid, signals, elapsed: start.elapsed() })
    }

    /// Starts the member's etcd process (not running) on its data directory.
    fn start(&mut self, member: &str) -> Result<Proc> {
        let index = self.index(member)?;
        let m = self.state.members[index].clone();
        let data = m.dir.join("data");
        if !data.join("member").exists() {
            bail!("etcd member {member} has no data in {}: it cannot rejoin; `lab down` and `lab up`", data.display());
        }
        let cluster: Vec<(String, Ipv4Addr)> = self.state.members.iter().map(|m| (m.name.clone(), m.ip)).collect();
        // The data directory holds the member's identity and the cluster's: etcd takes
        // them from there and ignores the --initial-* flags (the same command as `lab up`'s
        // then, but for the state: the last --initial-cluster-state wins).
        let mut cmd = etcd::member_command(
            member,
            m.ip,
            &cluster,
            "chaos-lab-restart",
            &data,
            &self.certs().members[index],
            &self.certs().ca,
        );
        cmd.arg("--initial-cluster-state=existing");
        // Recorded right after it started (a pid exists only then); a process this leaves
        // unrecorded is still in the member's namespace, where `lab down` finds it.
        let process = cluster::spawn(&mut cmd, &m.dir.join("etcd.log"), Some(&m.netns))?;
        self.record_process(index, process)?;
        Ok(process)
    }

    /// Waits until the member is healthy (etcd's `endpoint health` through its own client
    /// URL: a quorum read), bounded.
    fn wait_healthy(&self, member: &str, process: &Proc) -> Result<Duration> {
        let m = self.member(member)?;
        let endpoint = [m.client_url()];
        let start = Instant::now();
        let mut why = String::from("no answer");
        while start.elapsed() < HEALTHY_TIMEOUT {
            if !process.alive() {
                bail!("etcd member {member} exited: {}", cluster::last_lines(&m.dir.join("etcd.log"), 3));
            }
            match etcd::health(self.certs(), &endpoint).map(|h| h.into_iter().next().map(|(_, v)| v)) {
                Ok(Some(Ok(()))) => return Ok(start.elapsed()),
                Ok(Some(Err(e))) => why = e,
                Ok(None) => {}
                Err(e) => why = format!("{e:#}"),
            }
            std::thread::sleep(POLL);
        }
        bail!(
            "etcd member {member} was not healthy within {} s of its restart: {}",
            HEALTHY_TIMEOUT.as_secs(),
            cluster::short(&why)
        )
    }

    /// Waits until the member's client port accepts TCP connections (from the root
    /// namespace, through the bridge), bounded.
    fn wait_listening(&self, member: &str, process: &Proc) -> Result<()> {
        let m = self.member(member)?;
        let addr = SocketAddr::from((m.ip, etcd::CLIENT_PORT));
        let start = Instant::now();
        while start.elapsed() < HEALTHY_TIMEOUT {
            if !process.alive() {
                bail!("etcd member {member} exited: {}", cluster::last_lines(&m.dir.join("etcd.log"), 3));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
        bail!("etcd member {member} did not listen on {addr} within {} s of its start", HEALTHY_TIMEOUT.as_secs())
    }

    /// Starts the member's etcd again on its data directory (it rejoins the cluster as the
    /// member it was), records the new process in state.json, and waits until it is
    /// healthy (at most 30 s). An error when it runs.
    pub fn restart(&mut self, member: &str) -> Result<RestartOutcome> {
        self.refresh();
        if let Some(p) = self.member(member)?.process.filter(Proc::alive) {
            return Err(Error::unsupported(
                format!("etcd member {member} is running (pid {})", p.pid),
                "kill it first",
            )
            .into());
        }
        let process = self.start(member)?;
        let elapsed = self.wait_healthy(member, &process)?;
        Ok(RestartOutcome { member: member.to_owned(), pid: process.pid, elapsed })
    }

    /// Freezes the member's etcd (SIGSTOP): it stays in memory and keeps its sockets but
    /// answers nothing. Recorded in control.json first; [`resume`](Self::resume),
    /// [`undo_all`] and `lab down` thaw it. Pausing a paused member does nothing.
    pub fn pause(&mut self, member: &str) -> Result<()> {
        self.refresh();
        let process = self.running(member)?;
        let mut control = Control::load(&self.dir)?;
        if !control.paused.iter().any(|p| p.member == member) {
            control.paused.push(Paused { member: member.to_owned(), process });
            control.save(&self.dir)?;
        }
        process.signal(libc::SIGSTOP);
        let deadline = Instant::now() + Duration::from_secs(2);
        while !stopped(&process) {
            if Instant::now() >= deadline {
                bail!("etcd member {member} (pid {}) did not stop within 2 s of SIGSTOP", process.pid);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Thaws a member paused by [`pause`](Self::pause) (SIGCONT); nothing when it is not
    /// paused.
    pub fn resume(&mut self, member: &str) -> Result<()> {
        self.index(member)?;
        let mut control = Control::load(&self.dir)?;
        for paused in control.paused.iter().filter(|p| p.member == member) {
            paused.process.signal(libc::SIGCONT);
        }
        control.paused.retain(|p| p.member != member);
        control.save(&self.dir)
    }

    /// Stops the member (SIGTERM, SIGKILL after 5 s) if it runs, for its certificate files
    /// to change.
    fn stop_for_swap(&mut self, member: &str) -> Result<()> {
        if self.member(member)?.process.is_some_and(|p| p.alive()) {
            self.kill(member, libc::SIGTERM, Some(SWAP_GRACE))?;
        }
        Ok(())
    }

    /// Replaces the member's server/peer certificate (and key) by one from the lab's CA
    /// that has already expired (`expires_in` = `None`: valid from 2 days ago to 1 day
    /// ago) or expires `expires_in` from now, and restarts the member so that it loads it
    /// (returns once it listens: with an expired certificate it is not healthy). The
    /// originals are kept as `<name>.pem.orig` / `<name>-key.pem.orig`, recorded in
    /// control.json before anything changes. Peers and clients then fail TLS with it: at
    /// once when expired; with `expires_in`, new connections after that time (those open
    /// stay).
    pub fn expire_cert(&mut self, member: &str, expires_in: Option<Duration>) -> Result<()> {
        self.refresh();
        let index = self.index(member)?;
        let mut control = Control::load(&self.dir)?;
        if control.swapped.iter().any(|s| s.member == member) {
            return Err(Error::unsupported(
                format!("etcd member {member} already runs with a swapped certificate"),
                "restore it first (restore_cert)",
            )
            .into());
        }
        let files = self.certs().members[index].clone();
        let backup = CertFiles {
            cert: PathBuf::from(format!("{}.orig", files.cert.display())),
            key: PathBuf::from(format!("{}.orig", files.key.display())),
        };
        let swapped = Swapped { member: member.to_owned(), files: files.clone(), backup: backup.clone() };
        control.swapped.push(swapped.clone());
        control.save(&self.dir)?;
        let result = (|| -> Result<()> {
            fs::copy(&files.cert, &backup.cert).with_context(|| format!("backing up {}", files.cert.display()))?;
            fs::copy(&files.key, &backup.key).with_context(|| format!("backing up {}", files.key.display()))?;
            self.stop_for_swap(member)?;
            let now = time::OffsetDateTime::now_utc();
            let (not_before, not_after) = match expires_in {
                None => (now - time::Duration::days(2), now - time::Duration::days(1)),
                Some(d) => (now - time::Duration::hours(1), now + time::Duration::try_from(d)?),
            };
            let ip = self.state.members[index].ip;
            certs::mint_member(self.certs(), member, ip, not_before, not_after, &files)?;
            let process = self.start(member)?;
            self.wait_listening(member, &process)
        })();
        if let Err(e) = result {
            // Nothing half-done stays: the originals go back (the member stays as it is
            // now, stopped or running).
            let undo = put_back(&swapped).and_then(|()| {
                control.swapped.retain(|s| s.member != member);
                control.save(&self.dir)
            });
            return Err(match undo {
                Ok(()) => e.context(format!("swapping the certificate of {member} (the original is back)")),
                Err(u) => e.context(format!("and putting the original certificate of {member} back failed: {u:#}")),
            });
        }
        Ok(())
    }

    /// Puts the member's original certificate back and restarts it (waits until healthy);
    /// nothing when its certificate was not swapped.
    pub fn restore_cert(&mut self, member: &str) -> Result<()> {
        self.refresh();
        self.index(member)?;
        let mut control = Control::load(&self.dir)?;
        let Some(swapped) = control.swapped.iter().find(|s| s.member == member).cloned() else {
            return Ok(());
        };
        self.stop_for_swap(member)?;
        put_back(&swapped)?;
        control.swapped.retain(|s| s.member != member);
        control.save(&self.dir)?;
        self.restart(member)?;
        Ok(())
    }
}

/// What a crashed run left undone in `control.json`: thaws paused members and puts
/// swapped certificates back, restarting a running member so that it loads its original
/// (waits until healthy). One line per thing undone; empty when nothing was to do (also
/// when no lab is up).
pub fn undo_all(state_dir: &Path) -> Result<Vec<String>> {
    if !state_dir.join(CONTROL_FILE).exists() {
        return Ok(Vec::new());
    }
    let mut done = thaw(state_dir)?;
    let control = Control::load(state_dir)?;
    if control.swapped.is_empty() {
        return Ok(done);
    }
    let mut lab = LabControl::open(state_dir)?;
    for swapped in &control.swapped {
        let running = lab.member(&swapped.member)?.process.is_some_and(|p| p.alive());
        lab.restore_cert(&swapped.member)?;
        done.push(if running {
            format!("original certificate of {} restored, member restarted", swapped.member)
        } else {
            format!("original certificate of {} restored", swapped.member)
        });
    }
    Ok(done)
}

/// Thaws every paused member (SIGCONT) and forgets them.
fn thaw(state_dir: &Path) -> Result<Vec<String>> {
    let mut control = Control::load(state_dir)?;
    let done = control
        .paused
        .iter()
        .map(|p| {
            p.process.signal(libc::SIGCONT);
            format!("etcd {} (pid {}) thawed", p.member, p.process.pid)
        })
        .collect();
    control.paused.clear();
    control.save(state_dir)?;
    Ok(done)
}

/// For `lab down`, which stops every member next: thaws paused members (a stopped
/// process does not act on SIGTERM) and puts swapped certificate files back without
/// restarting anyone. Never fails: what it cannot do is said in the lines it returns.
pub(crate) fn undo_before_down(state_dir: &Path) -> Vec<String> {
    if !state_dir.join(CONTROL_FILE).exists() {
        return Vec::new();
    }
    let mut done = thaw(state_dir).unwrap_or_else(|e| vec![format!("thawing paused members: {e:#}")]);
    if let Ok(control) = Control::load(state_dir) {
        for swapped in &control.swapped {
            done.push(match put_back(swapped) {
                Ok(()) => format!("original certificate of {} put back", swapped.member),
                Err(e) => format!("original certificate of {}: {e:#}", swapped.member),
            });
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_file_round_trips_and_disappears_when_empty() {
        let dir = std::env::temp_dir().join(format!("chaos-control-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        assert!(Control::load(&dir).unwrap().paused.is_empty(), "no file: nothing to undo");
        let me = Proc { pid: std::process::id(), start_time: 0 };
        let control = Control { paused: vec![Paused { member: "n2".into(), process: me }], swapped: Vec::new() };
        control.save(&dir).unwrap();
        assert_eq!(Control::load(&dir).unwrap().paused[0].member, "n2");
        Control::default().save(&dir).unwrap();
        assert!(!dir.join(CONTROL_FILE).exists());
        // Nothing recorded: undo has nothing to do and says so.
        assert!(undo_all(&dir).unwrap().is_empty());
        assert!(undo_before_down(&dir).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn put_back_is_idempotent() {
        let dir = std::env::temp_dir().join(format!("chaos-putback-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let files = CertFiles { cert: dir.join("n1.pem"), key: dir.join("n1-key.pem") };
        let backup = CertFiles { cert: dir.join("n1.pem.orig"), key: dir.join("n1-key.pem.orig") };
        for (path, text) in
            [(&files.cert, "new"), (&files.key, "newkey"), (&backup.cert, "old"), (&backup.key, "oldkey")]
        {
            fs::write(path, text).unwrap();
        }
        let swapped = Swapped { member: "n1".into(), files: files.clone(), backup: backup.clone() };
        put_back(&swapped).unwrap();
        put_back(&swapped).unwrap();
        assert_eq!(fs::read_to_string(&files.cert).unwrap(), "old");
        assert_eq!(fs::read_to_string(&files.key).unwrap(), "oldkey");
        assert!(!backup.cert.exists() && !backup.key.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
