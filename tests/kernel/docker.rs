//! Docker containers as targets (`container:NAME`), against a real dockerd this file
//! starts on a socket and data root of its own, with docker0 in the Docker range of
//! shared/docs/addresses.md, and stops again: what dockerd changed on the host
//! (iptables, ip_forward, docker0) is restored and checked.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::support::*;

pub const TESTS: &[Test] = tests![
    container_target_cuts_its_traffic_and_a_restart_ends_the_run,
    container_actions_pause_kill_and_stop,
    a_crashed_runs_container_actions_are_undone_by_cleanup,
];

/// docker0's address (`--bip`) and the pool of other networks, from addresses.md.
const BIP: &str = "198.51.100.65/28";
const POOL: &str = "base=198.51.100.96/27,size=27";
/// The image the tests' containers run: a static busybox, imported (nothing can be
/// pulled here).
const IMAGE: &str = "cet-busybox:1";

/// What dockerd changes on the host, to put back.
struct HostState {
    /// iptables-save without its comment lines (they carry the time).
    iptables: String,
    ip_forward: String,
}

fn iptables_rules() -> String {
    let out = String::from_utf8_lossy(&sh("iptables-save", &[]).stdout).into_owned();
    out.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect()
}

/// The tables (`*filter`, `*nat`) of an iptables-save text.
fn tables(rules: &str) -> Vec<&str> {
    rules.lines().filter_map(|l| l.strip_prefix('*')).collect()
}

impl HostState {
    fn save() -> HostState {
        HostState {
            iptables: iptables_rules(),
            ip_forward: fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default(),
        }
    }

    /// Puts the rules back: the tables there before restored, those dockerd created
    /// deleted (iptables-nft; a legacy backend's are flushed).
    fn restore(&self) -> Result<(), String> {
        let now = iptables_rules();
        let nft = String::from_utf8_lossy(&sh("iptables", &["-V"]).stdout).contains("nf_tables");
        for table in tables(&now).into_iter().filter(|t| !tables(&self.iptables).contains(t)) {
            if nft {
                must("nft", &["delete", "table", "ip", table]);
            } else {
                must("iptables", &["-t", table, "-F"]);
                must("iptables", &["-t", table, "-X"]);
            }
        }
        if !self.iptables.is_empty() {
            let mut restore = Command::new("iptables-restore").stdin(Stdio::piped()).spawn().expect("iptables-restore");
            std::io::Write::write_all(&mut restore.stdin.take().unwrap(), self.iptables.as_bytes()).unwrap();
            if !restore.wait().unwrap().success() {
                return Err("iptables-restore of the saved rules failed".to_owned());
            }
        }
        let _ = fs::write("/proc/sys/net/ipv4/ip_forward", &self.ip_forward);
        Ok(())
    }
}

/// A dockerd of the test's own; stopped, and the host restored, on drop.
struct Dockerd {
    child: Option<Child>,
    dir: PathBuf,
    socket: String,
    saved: HostState,
}

impl Dockerd {
    /// Starts dockerd (skips the test where it is not installed, or where another
    /// daemon's docker0 is up: the test would change a bridge it did not create).
    fn start() -> Dockerd {
        if sh("sh", &["-c", "command -v dockerd"]).stdout.is_empty() {
            skip("dockerd is not installed (scripts/setup.sh installs docker.io; the VM images have none)");
        }
        if sh("ip", &["link", "show", "docker0"]).status.success() {
            skip("a docker0 bridge exists already (another Docker daemon): the test starts its own and would share it");
        }
        let dir = std::env::temp_dir().join("cet-dockerd");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("docker.sock").display().to_string();
        let saved = HostState::save();
        let log = fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .args(["--host", &format!("unix://{socket}"), "--bip", BIP, "--default-address-pool", POOL])
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting dockerd");
        own_pid(child.id());
        let daemon = Dockerd { child: Some(child), dir, socket, saved };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !daemon.docker(&["version"]).status.success() {
            let log = fs::read_to_string(daemon.dir.join("dockerd.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "dockerd did not answer within 30 s:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
        daemon.import_image();
        daemon
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker").args(["-H", &format!("unix://{}", self.socket)]).args(args).output().expect("docker")
    }

    fn must(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A rootfs of the static busybox, imported as IMAGE.
    fn import_image(&self) {
        let rootfs = self.dir.join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("/bin/busybox (busybox-static)");
        for tool in ["sh", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
        }
        let script = format!("tar -C {} -c . | docker -H unix://{} import - {IMAGE}", rootfs.display(), self.socket);
        must("sh", &["-c", &script]);
    }

    /// Starts a container that only sleeps, labelled `cet-name=NAME`; its (PID,
    /// address on docker0).
    fn sleeper(&self, name: &str) -> (u32, Ipv4Addr) {
        let label = format!("cet-name={name}");
        self.must(&["run", "-d", "--init", "--name", name, "--label", &label, IMAGE, "sleep", "600"]);
        let pid = self.must(&["inspect", "-f", "{{.State.Pid}}", name]).parse().unwrap();
        let addr = self.must(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", name]).parse().unwrap();
        (pid, addr)
    }

    /// Stops everything and restores the host; what could not be.
    fn stop(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(mut child) = self.child.take() else { return problems };
        let ids = self.must(&["ps", "-aq"]);
        for id in ids.split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                problems.push("dockerd did not stop within 20 s of SIGTERM".to_owned());
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // dockerd leaves its bridge, chains and forwarding on.
        let _ = Command::new("ip").args(["link", "del", "docker0"]).output();
        if let Err(problem) = self.saved.restore() {
            problems.push(problem);
        }
        if sh("ip", &["link", "show", "docker0"]).status.success() {
            problems.push("docker0 is still there".to_owned());
        }
        if iptables_rules() != self.saved.iptables {
            problems.push("the iptables rules differ from before dockerd".to_owned());
        }
        if fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default() != self.saved.ip_forward {
            problems.push("ip_forward differs from before dockerd".to_owned());
        }
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = self.dir.display().to_string();
        if mounts.lines().any(|l| l.contains(&dir)) {
            problems.push(format!("mounts left under {dir}"));
        }
        let _ = fs::remove_dir_all(&self.dir);
        problems
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        for problem in self.stop() {
            eprintln!("docker test teardown: {problem}");
        }
    }
}

/// Whether a datagram from container `from` (its namespace) reaches `to` on docker0.
fn container_udp_passes(from_pid: u32, to_pid: u32, to: Ipv4Addr, port: u16) -> bool {
    let to_ns = format!("/proc/{to_pid}/ns/net");
    let receiver = in_netns(&to_ns, move || {
        let s = std::net::UdpSocket::bind(SocketAddr::from((to, port))).expect("bind in the container");
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        s
    });
    let from_ns = format!("/proc/{from_pid}/ns/net");
    let sent = in_netns(&from_ns, move || {
        let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind sender");
        (0..3).filter(|_| s.send_to(b"cet", (to, port)).is_ok()).count()
    });
    assert!(sent > 0, "nothing could be sent");
    let mut buf = [0u8; 8];
    receiver.recv(&mut buf).is_ok()
}

/// `inject partition --target container:NAME` (through the Docker API, DOCKER_HOST)
/// cuts the container's traffic to another container and the revert brings it back; a
/// missing container, a stopped one and a missing daemon are exit 2 naming them; a
/// container restarted during a fault ends the run (exit 1, its target lost) with
/// nothing left; the test's dockerd leaves the host as it found it.
fn container_target_cuts_its_traffic_and_a_restart_ends_the_run() {
    let mut daemon = Dockerd::start();
    let (a_pid, _) = daemon.sleeper("cet-a");
    let (b_pid, b_addr) = daemon.sleeper("cet-b");
    // SAFETY of the environment change: the tests run one at a time (--test-threads=1),
    // and the chaos-ebpf processes below inherit it.
    std::env::set_var("DOCKER_HOST", format!("unix://{}", daemon.socket));
    assert!(container_udp_passes(a_pid, b_pid, b_addr, 7401), "a to b before the fault");

    let chaos = Chaos::start(&["inject", "partition", "--target", "container:cet-a", "--duration", "30s", "--no-agent"]);
    assert!(!container_udp_passes(a_pid, b_pid, b_addr, 7402), "a to b with container:cet-a partitioned");
    let (code, out, err) = chaos.interrupt();
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("container:cet-a"), "{out}");
    assert!(container_udp_passes(a_pid, b_pid, b_addr, 7403), "a to b after the revert");
    assert_nothing_left();

    // The same by label: bound to cet-a when the injection starts.
    let chaos = Chaos::start(&["inject", "partition", "--target", "container-label:cet-name=cet-a", "--duration", "30s"]);
    assert!(!container_udp_passes(a_pid, b_pid, b_addr, 7404), "a to b with container-label:cet-name=cet-a cut");
    let (code, out, err) = chaos.interrupt();
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("container-label:cet-name=cet-a = cet-a"), "the binding is printed: {err}");
    assert!(out.contains("container:cet-a"), "{out}");
    assert!(container_udp_passes(a_pid, b_pid, b_addr, 7405), "a to b after the revert");
    assert_nothing_left();
    let (code, _, err) =
        chaos_run(&["inject", "partition", "--target", "container-label:cet-name=nobody", "--duration", "1s"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no running container has the label cet-name=nobody"), "{err}");

    // Bad targets: exit 2, each named, nothing changed.
    let (code, _, err) = chaos_run(&["inject", "partition", "--target", "container:cet-none", "--duration", "1s"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no container named cet-none") && err.contains("docker ps"), "{err}");
    daemon.must(&["stop", "-t", "0", "cet-b"]);
    let (code, _, err) = chaos_run(&["inject", "partition", "--target", "container:cet-b", "--duration", "1s"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("container cet-b is not running") && err.contains("docker start cet-b"), "{err}");
    std::env::set_var("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    let (code, _, err) = chaos_run(&["inject", "partition", "--target", "container:cet-a", "--duration", "1s"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no Docker daemon socket at /nonexistent/docker.sock") && err.contains("DOCKER_HOST"), "{err}");
    std::env::set_var("DOCKER_HOST", format!("unix://{}", daemon.socket));

    // A restart gives the container a new namespace: the run reports its target lost.
    let chaos = Chaos::start(&[
        "inject",
        "partition",
        "--target",
        "container:cet-a",
        "--duration",
        "30s",
        "--lease",
        "600ms",
        "--no-agent",
    ]);
    daemon.must(&["restart", "-t", "0", "cet-a"]);
    let (code, out, err) = chaos.finish(Duration::from_secs(10));
    assert_eq!(code, 1, "{out}{err}");
    assert!(format!("{out}{err}").contains("container:cet-a is gone"), "{out}{err}");
    assert_nothing_left();
    std::env::remove_var("DOCKER_HOST");
    let problems = daemon.stop();
    assert!(problems.is_empty(), "{problems:?}");
}

/// A scenario's actions on containers, through the Docker API: `pause` freezes cet-a for
/// its step (seen paused meanwhile) and thaws it; `kill` with `restart: true` stops it
/// (seen not running) and starts it again when the step ends; `kill` with a grace period
/// stops cet-b for good. The report's action steps ran their course; an unknown
/// container is refused before anything happens (exit 2).
fn container_actions_pause_kill_and_stop() {
    let mut daemon = Dockerd::start();
    daemon.sleeper("cet-a");
    daemon.sleeper("cet-b");
    std::env::set_var("DOCKER_HOST", format!("unix://{}", daemon.socket));
    let dir = std::env::temp_dir().join("cet-docker-actions");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let scenario = dir.join("actions.yaml");
    fs::write(
        &scenario,
        "apiVersion: chaos-ebpf/v1\nname: container-actions\nsteps:\n  - {name: freeze, action: pause, target: container:cet-a, duration: 1s}\n  - {name: gap, fault: none, duration: 500ms}\n  - {name: crash, action: kill, target: container:cet-a, restart: true, duration: 1s}\n  - {name: stop, action: kill, target: container:cet-b, grace: 1s, duration: 500ms}\n",
    )
    .unwrap();
    let run_dir = dir.join("run");
    let run = chaos_run_in_background(&run_json_args(&scenario, &run_dir));
    // What the daemon says about cet-a while the run goes on: seen paused, seen stopped.
    let (mut paused, mut stopped) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !run.is_finished() && Instant::now() < deadline {
        let state = daemon.must(&["inspect", "-f", "{{.State.Running}} {{.State.Paused}}", "cet-a"]);
        paused |= state == "true true";
        stopped |= state.starts_with("false");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, out, err) = run.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(paused, "cet-a was never seen paused");
    assert!(stopped, "cet-a was never seen stopped");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    // An action's undo runs on its thread after its window closes: the gap step keeps
    // the kill from racing the unpause.
    for step in report["steps"].as_array().unwrap().iter().filter(|s| s["name"] != "gap") {
        assert_eq!(step["action"]["ran_its_course"], true, "{step}");
    }
    let actions = report["steps"].to_string();
    for note in ["container cet-a paused", "container cet-a unpaused", "container cet-a started again", "container cet-b stopped"] {
        assert!(actions.contains(note), "no '{note}' in {actions}");
    }
    assert_eq!(daemon.must(&["inspect", "-f", "{{.State.Running}} {{.State.Paused}}", "cet-a"]), "true false");
    assert_eq!(daemon.must(&["inspect", "-f", "{{.State.Running}}", "cet-b"]), "false");

    fs::write(
        &scenario,
        "apiVersion: chaos-ebpf/v1\nname: container-actions\nsteps:\n  - {name: freeze, action: pause, target: container:cet-none, duration: 1s}\n",
    )
    .unwrap();
    let (code, _, err) = chaos_run(&run_json_args(&scenario, &dir.join("refused")));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no container named cet-none"), "{err}");
    std::env::remove_var("DOCKER_HOST");
    let _ = fs::remove_dir_all(&dir);
    let problems = daemon.stop();
    assert!(problems.is_empty(), "{problems:?}");
}

/// `{{.State.Running}} {{.State.Paused}}` of a container.
fn run_state(daemon: &Dockerd, name: &str) -> String {
    daemon.must(&["inspect", "-f", "{{.State.Running}} {{.State.Paused}}", name])
}

/// Starts `chaos-ebpf run SCENARIO` (no agent: a run never uses one) and waits, bounded,
/// until every container of `want` is in its state ("true true": paused, "false false":
/// exited); the run as a [`Chaos`] (its drop reverts or kills it, then cleans up).
fn run_until(daemon: &Dockerd, scenario: &std::path::Path, run_dir: &std::path::Path, want: &[(&str, &str)]) -> Chaos {
    let child = Command::new(bin())
        .args(run_json_args(scenario, run_dir))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chaos-ebpf");
    own_pid(child.id());
    let mut chaos = Chaos { child };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if want.iter().all(|(name, state)| run_state(daemon, name) == *state) {
            return chaos;
        }
        if chaos.child.try_wait().unwrap().is_some() {
            let (code, out, err) = chaos.finish(Duration::from_secs(1));
            panic!("chaos-ebpf run exited ({code}) before its actions took effect:\n{out}{err}");
        }
        assert!(Instant::now() < deadline, "the actions did not take effect within 20 s: wanted {want:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// This run's container record, `<pid>-containers.*`, as file names.
fn container_record_files(pid: u32) -> Vec<String> {
    fs::read_dir("/run/chaos-ebpf")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{pid}-containers.")))
        .collect()
}

/// A run SIGKILLed mid-step leaves its container actions in force, recorded under
/// /run/chaos-ebpf: `status` says a dead run left containers; `cleanup` (without
/// DOCKER_HOST: the record names the daemon) unpauses cet-a, starts cet-b (killed with
/// `restart: true`), reports a container since unpaused by hand as nothing to do and a
/// removed one as not put back (exit 1, its entry dropped); the next `cleanup` has
/// nothing to do. A live run's paused container is left alone by `cleanup` and listed by
/// `status`, and the run itself unpauses it on SIGINT; no record is left of any run.
fn a_crashed_runs_container_actions_are_undone_by_cleanup() {
    let mut daemon = Dockerd::start();
    for name in ["cet-a", "cet-b", "cet-c", "cet-d"] {
        daemon.sleeper(name);
    }
    std::env::set_var("DOCKER_HOST", format!("unix://{}", daemon.socket));
    let dir = std::env::temp_dir().join("cet-docker-crash");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let scenario = dir.join("crash.yaml");
    // cet-c and cet-d are paused too: one is unpaused by hand, the other removed, before
    // the cleanup.
    fs::write(
        &scenario,
        "apiVersion: chaos-ebpf/v1\nname: container-crash\nsteps:\n  - {name: freeze, action: pause, targets: [container:cet-a, container:cet-c, container:cet-d], duration: 30s}\n  - {name: crash, with: freeze, action: kill, target: container:cet-b, restart: true, duration: 30s}\n",
    )
    .unwrap();
    let want = [("cet-a", "true true"), ("cet-b", "false false"), ("cet-c", "true true"), ("cet-d", "true true")];
    let chaos = run_until(&daemon, &scenario, &dir.join("crashed"), &want);
    let pid = chaos.child.id();
    // Written before the actions took effect, so there now.
    let record = fs::read_to_string(format!("/run/chaos-ebpf/{pid}-containers.json")).expect("the container record");
    for expected in ["\"name\": \"cet-a\"", "\"undo\": \"unpause\"", "\"name\": \"cet-b\"", "\"undo\": \"start\""] {
        assert!(record.contains(expected), "no {expected} in {record}");
    }
    let (_, status, _) = chaos_run(&["status"]);
    assert!(status.contains("container cet-a left paused by step freeze"), "{status}");
    chaos.signal(libc::SIGKILL);
    chaos.finish(Duration::from_secs(5));
    // Nobody undoes them now: still as the dead run left them a moment later.
    std::thread::sleep(Duration::from_millis(500));
    for (name, state) in want {
        assert_eq!(run_state(&daemon, name), state, "{name} after the SIGKILL");
    }
    let (_, status, _) = chaos_run(&["status"]);
    assert!(status.contains(&format!("containers left paused or killed by dead run {pid}")), "{status}");
    daemon.must(&["unpause", "cet-c"]);
    daemon.must(&["rm", "-f", "cet-d"]);

    // The record names the daemon's socket: cleanup does not need DOCKER_HOST.
    std::env::remove_var("DOCKER_HOST");
    let (code, out, err) = chaos_run(&["cleanup"]);
    println!("cleanup:\n{out}{err}");
    assert_eq!(code, 1, "cet-d is gone, not put back: NOT clean\n{out}{err}");
    for line in [
        format!("removed container cet-a unpaused (left paused by run {pid})"),
        format!("removed container cet-b started again (left killed by run {pid}, restart: true)"),
        format!("removed container cet-c (left paused by run {pid}): unpaused since by someone else, nothing to do"),
        format!("NOT removed: container cet-d (left paused by run {pid}) no longer exists"),
    ] {
        assert!(out.contains(&line), "no '{line}' in:\n{out}");
    }
    assert_eq!(run_state(&daemon, "cet-a"), "true false");
    assert_eq!(run_state(&daemon, "cet-b"), "true false");
    assert!(container_record_files(pid).is_empty(), "left: {:?}", container_record_files(pid));
    let (code, out, err) = chaos_run(&["cleanup"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nothing to remove") && !out.contains("container"), "second cleanup found more: {out}");
    assert_nothing_left();

    // A live run's paused container: cleanup leaves it alone, status lists it, and the
    // run unpauses it itself when interrupted.
    std::env::set_var("DOCKER_HOST", format!("unix://{}", daemon.socket));
    fs::write(
        &scenario,
        "apiVersion: chaos-ebpf/v1\nname: container-live\nsteps:\n  - {name: hold, action: pause, target: container:cet-a, duration: 30s}\n",
    )
    .unwrap();
    let chaos = run_until(&daemon, &scenario, &dir.join("live"), &[("cet-a", "true true")]);
    let pid = chaos.child.id();
    let (code, out, err) = chaos_run(&["cleanup"]);
    println!("cleanup beside a live run:\n{out}{err}");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("left alone: run {pid} is alive")) && out.contains("cet-a left paused"), "{out}");
    assert!(!out.contains("unpaused"), "{out}");
    assert_eq!(run_state(&daemon, "cet-a"), "true true", "cleanup touched a live run's container");
    let (_, status, _) = chaos_run(&["status"]);
    assert!(status.contains("undone when its step ends: container cet-a left paused by step hold"), "{status}");
    let (code, out, err) = chaos.interrupt();
    assert_eq!(code, 1, "interrupted: {out}{err}");
    assert_eq!(run_state(&daemon, "cet-a"), "true false", "the run unpaused it on SIGINT");
    assert!(container_record_files(pid).is_empty(), "left: {:?}", container_record_files(pid));
    assert_nothing_left();

    std::env::remove_var("DOCKER_HOST");
    let _ = fs::remove_dir_all(&dir);
    let problems = daemon.stop();
    assert!(problems.is_empty(), "{problems:?}");
}
