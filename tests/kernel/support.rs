//! Test fixtures: a pair of network namespaces joined by a veth, real UDP/TCP/ICMP
//! traffic between them, the chaos-ebpf binary under test, checks that nothing is left
//! behind, the drops the shared hash predicts for the fixtures' UDP flow, and another
//! tool's TC program attached before chaos-ebpf (`ForeignPass`). Traffic stays inside
//! namespaces the test created, on TEST-NET-1 (192.0.2.0/24) and fd00::/8; every loop is
//! bounded in count and time.

use std::{
    collections::BTreeSet,
    fs,
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use chaos_agent::client::{self, Client};
use chaos_ebpf_common::{decision, direction, flow_hash, hash, probability_threshold, FlowKey};

/// One kernel test: its name and a plain function that panics on failure.
pub type Test = (&'static str, fn());

/// `tests![a, b]` is the list `[("a", a), ("b", b)]` of a file's tests, for its
/// `pub const TESTS: &[Test]` (see the top of main.rs).
#[macro_export]
macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), $name as fn())),*]
    };
}

/// The payload of a skip: a panic the runner (main.rs) turns into a skipped test.
pub struct Skipped(pub String);

/// Ends the running test as skipped, with `reason` (which should say where the test
/// does run, e.g. "no sch_fq on this kernel; `cargo xtask vm-test` runs it"). A skip is
/// never counted as a pass: the runner and `cargo xtask test` list every one. Call it
/// on the test's own thread (a skip inside a spawned thread is that thread's panic),
/// before anything the test must clean up by hand (Drop guards do run).
pub fn skip(reason: &str) -> ! {
    std::panic::panic_any(Skipped(reason.to_owned()))
}

pub fn require_root() {
    // SAFETY: no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "kernel tests need root: run `sudo cargo xtask test`");
}

pub fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_chaos-ebpf")
}

pub fn sh(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    out
}

pub fn must(cmd: &str, args: &[&str]) {
    let out = sh(cmd, args);
    assert!(out.status.success(), "{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Two namespaces `<tag>-a` (192.0.2.1, fd00::1, device va) and `<tag>-b` (192.0.2.2,
/// fd00::2, device vb) joined by a veth pair. Deleted on drop, also after a panic.
pub struct Pair {
    pub a: String,
    pub b: String,
}

impl Pair {
    pub fn new(tag: &str) -> Pair {
        let pair = Pair { a: format!("cet-{tag}-a"), b: format!("cet-{tag}-b") };
        for ns in [&pair.a, &pair.b] {
            let _ = sh("ip", &["netns", "del", ns]);
            must("ip", &["netns", "add", ns]);
            must("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        must("ip", &["link", "add", "va", "netns", &pair.a, "type", "veth", "peer", "name", "vb", "netns", &pair.b]);
        for (ns, dev, v4, v6) in
            [(&pair.a, "va", "192.0.2.1/24", "fd00::1/64"), (&pair.b, "vb", "192.0.2.2/24", "fd00::2/64")]
        {
            must("ip", &["-n", ns, "addr", "add", v4, "dev", dev]);
            must("ip", &["-n", ns, "addr", "add", v6, "dev", dev, "nodad"]);
            must("ip", &["-n", ns, "link", "set", dev, "up"]);
        }
        // Resolve neighbours before any fault, so no test packet waits in (or is dropped
        // from) the neighbour queue ahead of the TC hook.
        assert!(pair.ping(&pair.a, "192.0.2.2", 1, Duration::from_secs(2)) == 1, "veth pair does not pass traffic");
        assert!(pair.ping(&pair.b, "192.0.2.1", 1, Duration::from_secs(2)) == 1);
        pair
    }

    /// The namespace target of side a, as chaos-ebpf takes it.
    pub fn target(&self) -> String {
        format!("netns:{}", self.a)
    }

    /// Sends `count` pings 10 ms apart, each waiting at most `wait`; returns replies.
    pub fn ping(&self, from: &str, to: &str, count: u32, wait: Duration) -> u32 {
        let out = sh(
            "ip",
            &[
                "netns",
                "exec",
                from,
                "ping",
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.01",
                "-W",
                &format!("{:.1}", wait.as_secs_f64().max(0.1)),
                to,
            ],
        );
        parse_ping_received(&String::from_utf8_lossy(&out.stdout))
    }

    pub fn qdiscs(&self, ns: &str, dev: &str) -> String {
        String::from_utf8_lossy(&sh("ip", &["netns", "exec", ns, "tc", "qdisc", "show", "dev", dev]).stdout)
            .into_owned()
    }

    pub fn filters(&self, ns: &str, dev: &str, hook: &str) -> String {
        String::from_utf8_lossy(&sh("ip", &["netns", "exec", ns, "tc", "filter", "show", "dev", dev, hook]).stdout)
            .into_owned()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = sh("ip", &["netns", "del", ns]);
        }
    }
}

pub fn parse_ping_received(text: &str) -> u32 {
    // iputils: "N packets transmitted, M received, ..."; busybox: "..., M packets received, ..."
    text.lines()
        .find_map(|l| {
            let part = l.split(", ").nth(1)?;
            let n = part.strip_suffix(" received")?;
            n.strip_suffix(" packets").unwrap_or(n).trim().parse().ok()
        })
        .unwrap_or(0)
}

/// Runs `f` on a thread that has entered the namespace `ns` (sockets it makes stay there).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = Path::new("/var/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // SAFETY: a valid nsfs fd; affects this new thread only.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
        f()
    })
    .join()
    .expect("netns thread panicked")
}

fn big_rcvbuf(socket: &UdpSocket) {
    let size: libc::c_int = 16 << 20;
    // SAFETY: setsockopt on a valid fd with an int option value.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            4,
        );
    }
}

/// A UDP receiver bound in namespace `ns`.
pub fn udp_receiver(ns: &str, addr: SocketAddr) -> UdpSocket {
    in_netns(ns, move || {
        let s = UdpSocket::bind(addr).expect("bind receiver");
        big_rcvbuf(&s);
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        s
    })
}

/// Sends `count` datagrams carrying their sequence number from a fixed source port (a
/// fixed 5-tuple: the flow, and so the decisions, are the same on every run), and
/// returns the sequence numbers the receiver got.
pub fn udp_run(from_ns: &str, src: SocketAddr, receiver: &UdpSocket, dst: SocketAddr, count: u32) -> BTreeSet<u32> {
    let sender = in_netns(from_ns, move || UdpSocket::bind(src).expect("bind sender"));
    let mut got = BTreeSet::new();
    let mut buf = [0u8; 64];
    for seq in 0..count {
        sender.send_to(&seq.to_be_bytes(), dst).expect("send");
        // Drain as we go so no socket buffer overflows (which would look like loss).
        if seq % 64 == 63 {
            drain(receiver, &mut got, &mut buf, Duration::from_millis(0));
        }
    }
    drain(receiver, &mut got, &mut buf, Duration::from_millis(300));
    got
}

fn drain(receiver: &UdpSocket, got: &mut BTreeSet<u32>, buf: &mut [u8], quiet: Duration) {
    receiver.set_nonblocking(quiet.is_zero()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match receiver.recv(buf) {
            Ok(4) => {
                got.insert(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    receiver.set_nonblocking(false).unwrap();
}

/// Whether one UDP datagram gets from `from_ns` to a fresh receiver (`to`, port).
pub fn udp_passes(from_ns: &str, to_ns: &str, to: Ipv4Addr, port: u16) -> bool {
    let receiver = udp_receiver(to_ns, SocketAddr::from((to, port)));
    let got =
        udp_run(from_ns, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), &receiver, SocketAddr::from((to, port)), 3);
    !got.is_empty()
}

/// Sends a datagram from `from_ns` to `to` every millisecond until one arrives; returns
/// how long that took (None after `limit`). Millisecond resolution for revert timings.
pub fn udp_time_until_passes(from_ns: &str, to_ns: &str, to: Ipv4Addr, port: u16, limit: Duration) -> Option<Duration> {
    let receiver = udp_receiver(to_ns, SocketAddr::from((to, port)));
    receiver.set_nonblocking(true).unwrap();
    let sender = in_netns(from_ns, || UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).expect("bind"));
    let start = Instant::now();
    let mut buf = [0u8; 16];
    while start.elapsed() < limit {
        let _ = sender.send_to(b"probe", SocketAddr::from((to, port)));
        std::thread::sleep(Duration::from_millis(1));
        if receiver.recv(&mut buf).is_ok() {
            return Some(start.elapsed());
        }
    }
    None
}

/// An echo server in `ns`; stops when the listener's accept loop times out (bounded).
pub fn tcp_echo_server(ns: &str, addr: SocketAddr) {
    let listener = in_netns(ns, move || TcpListener::bind(addr).expect("bind tcp"));
    std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                        let mut buf = [0u8; 256];
                        while let Ok(n) = stream.read(&mut buf) {
                            if n == 0 || stream.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
}

pub fn tcp_connect(ns: &str, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    in_netns(ns, move || TcpStream::connect_timeout(&addr, timeout))
}

/// Whether an echo round trip over `stream` completes within `timeout`.
pub fn tcp_echo(stream: &mut TcpStream, timeout: Duration) -> bool {
    use std::io::{Read, Write};
    stream.set_read_timeout(Some(timeout)).unwrap();
    if stream.write_all(b"ping").is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

/// Pids of the chaos-ebpf processes the running test started: its state files are the
/// ones `assert_nothing_left` checks (another process's records are not this test's).
/// Tests run one at a time; the runner calls `begin_test` before each.
static STARTED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn started() -> std::sync::MutexGuard<'static, Vec<u32>> {
    STARTED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts a chaos-ebpf process the test spawned itself as one of its runs.
pub fn own_pid(pid: u32) {
    started().push(pid);
}

/// Whether the kernel has TCX (Linux >= 6.6): links die with their process.
pub fn kernel_has_tcx() -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 6)
}

/// An empty directory `chaos-<tag>-<pid>` under the system temp dir, removed on drop
/// (also after a failure).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("chaos-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating the temp dir");
        TempDir(dir)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The tests' working directory (see begin_test).
fn tests_cwd() -> PathBuf {
    std::env::temp_dir().join("chaos-kernel-tests-cwd")
}

/// Forgets the previous test's chaos-ebpf processes, and gives each test an empty
/// working directory of its own: runs without --run-dir write chaos-runs/<run-id> there,
/// not into the source tree (the next test removes it, end_tests the last one).
pub fn begin_test() {
    started().clear();
    let cwd = tests_cwd();
    let _ = fs::remove_dir_all(&cwd);
    fs::create_dir_all(&cwd).expect("creating the tests' working directory");
    std::env::set_current_dir(&cwd).expect("entering the tests' working directory");
}

/// Removes the last test's working directory, once every test has run.
pub fn end_tests() {
    let _ = std::env::set_current_dir(std::env::temp_dir());
    let _ = fs::remove_dir_all(tests_cwd());
}

fn spawn_chaos(cmd: &mut Command) -> Child {
    let child = cmd.spawn().expect("spawn chaos-ebpf");
    started().push(child.id());
    child
}

/// A running `chaos-ebpf` child; killed and reaped on drop.
pub struct Chaos {
    pub child: Child,
}

impl Chaos {
    /// Starts `chaos-ebpf ARGS` and waits until its first rule is installed.
    pub fn start(args: &[&str]) -> Chaos {
        let child = spawn_chaos(Command::new(bin()).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()));
        let mut chaos = Chaos { child };
        let state = PathBuf::from(format!("/run/chaos-ebpf/{}.json", chaos.child.id()));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = fs::read_to_string(&state) {
                if text.contains("\"rule_id\"") {
                    return chaos;
                }
            }
            if chaos.child.try_wait().unwrap().is_some() {
                let (code, out, err) = chaos.finish(Duration::from_secs(1));
                panic!("chaos-ebpf {args:?} exited ({code}) before installing its rule:\n{out}{err}");
            }
            assert!(Instant::now() < deadline, "chaos-ebpf {args:?} did not install its rule within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// SIGINT, then waits: the run reverts everything and exits 1 (interrupted).
    pub fn interrupt(self) -> (i32, String, String) {
        self.signal(libc::SIGINT);
        self.finish(Duration::from_secs(10))
    }

    /// Waits for exit (bounded) and returns (exit code, stdout, stderr).
    pub fn finish(mut self, limit: Duration) -> (i32, String, String) {
        let deadline = Instant::now() + limit;
        // Read while it runs: a report larger than a pipe holds (the topology of a
        // 1,024-port namespace) would otherwise block its exit.
        let (out, err) = (read_all(self.child.stdout.take()), read_all(self.child.stderr.take()));
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), out.join().unwrap(), err.join().unwrap());
            }
            if Instant::now() >= deadline {
                // What it was doing: its stack, then its output so far.
                let pid = self.child.id();
                let stacks = std::fs::read_dir(format!("/proc/{pid}/task"))
                    .map(|d| {
                        d.flatten()
                            .map(|t| {
                                let stack = std::fs::read_to_string(t.path().join("stack")).unwrap_or_default();
                                let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                                let wchan = std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
                                format!("{} {} {wchan}\n{stack}", t.file_name().to_string_lossy(), comm.trim())
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default();
                let _ = self.child.kill();
                let _ = self.child.wait();
                let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
                panic!("chaos-ebpf did not exit within {limit:?}; threads:\n{stacks}\nstdout:\n{out}\nstderr:\n{err}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Chaos {
    /// After a failed assertion: revert like a user would (SIGINT), and if the run does
    /// not end, kill it and let `cleanup` remove what that leaves.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new(bin()).arg("cleanup").output();
    }
}

/// Reads a child's pipe to its end on a thread of its own.
pub fn read_all(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// The arguments of `chaos-ebpf run SCENARIO` with its JSON report on stdout, no
/// metrics endpoint, and its run directory at `run_dir`.
pub fn run_json_args<'a>(scenario: &'a Path, run_dir: &'a Path) -> [&'a str; 8] {
    [
        "run",
        scenario.to_str().unwrap(),
        "--output",
        "json",
        "--metrics-addr",
        "off",
        "--run-dir",
        run_dir.to_str().unwrap(),
    ]
}

/// [`chaos_run`] on a thread of its own, for a test that sends traffic meanwhile.
pub fn chaos_run_in_background(args: &[&str]) -> std::thread::JoinHandle<(i32, String, String)> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        chaos_run(&args)
    })
}

/// Runs chaos-ebpf to completion (bounded) and returns (exit code, stdout, stderr).
pub fn chaos_run(args: &[&str]) -> (i32, String, String) {
    chaos_run_as(args, None)
}

pub fn chaos_run_as(args: &[&str], uid: Option<u32>) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(uid) = uid {
        cmd.uid(uid);
    }
    let child = spawn_chaos(&mut cmd);
    Chaos { child }.finish(Duration::from_secs(120))
}

fn bpftool_json(what: &str) -> Vec<serde_json::Value> {
    let out = sh("bpftool", &["-j", what, "show"]);
    assert!(out.status.success(), "bpftool {what} show: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// chaos-ebpf programs still loaded anywhere on the machine: (id, name).
pub fn loaded_chaos_programs() -> Vec<(u64, String)> {
    bpftool_json("prog")
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_owned())))
        .filter(|(_, name)| name.starts_with("chaos_"))
        .collect()
}

/// BPF links (TCX, on kernels >= 6.6) to chaos-ebpf programs (`programs`). By program,
/// not by link type: this bpftool prints TCX's type as a number (11).
pub fn chaos_links(programs: &[(u64, String)]) -> Vec<serde_json::Value> {
    bpftool_json("link")
        .into_iter()
        .filter(|l| programs.iter().any(|(id, _)| l["prog_id"].as_u64() == Some(*id)))
        .collect()
}

/// State files (/run/chaos-ebpf/<pid>.json, or any file there named `<pid>.*` or
/// `<pid>-*`) of the chaos-ebpf processes this test started.
fn own_state_files() -> Vec<PathBuf> {
    let pids = started().clone();
    fs::read_dir("/run/chaos-ebpf")
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            pids.iter().any(|pid| {
                name.strip_prefix(&pid.to_string()).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('-'))
            })
        })
        .collect()
}

/// Asserts that no chaos-ebpf program or TCX link is left anywhere (kernel objects: any
/// left over is a leak), nor a state file of a chaos-ebpf process this test started
/// (another process's dead record is not this test's to judge). Waits up to 3 s for the
/// kernel's deferred release.
pub fn assert_nothing_left() {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let programs = loaded_chaos_programs();
        let links = chaos_links(&programs);
        let states = own_state_files();
        if programs.is_empty() && links.is_empty() && states.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: programs {programs:?}, TCX links {links:?}, state files of this test's runs {states:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A cgroup v2 directory for one test, removed on drop (after its processes are gone).
pub struct TestCgroup {
    pub dir: PathBuf,
    pub relative: String,
}

impl TestCgroup {
    pub fn new(name: &str) -> TestCgroup {
        let root = cgroup2_root();
        let relative = format!("chaos-test-{name}");
        let dir = root.join(&relative);
        let _ = fs::remove_dir(&dir);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TestCgroup { dir, relative }
    }

    /// Spawns a command inside this cgroup (the child joins it before exec).
    pub fn spawn(&self, program: &str, args: &[&str]) -> Child {
        use std::os::unix::ffi::OsStrExt;
        let procs = std::ffi::CString::new(self.dir.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
        let mut cmd = Command::new(program);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (open/write/close, no allocation) between
        // fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().expect("spawn in cgroup")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn cgroup2_root() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mountinfo.lines() {
        if let Some((left, right)) = line.split_once(" - ") {
            if right.starts_with("cgroup2 ") {
                return PathBuf::from(left.split_whitespace().nth(4).unwrap());
            }
        }
    }
    panic!("no cgroup2 mount: this machine kind always has one at /sys/fs/cgroup/unified");
}

/// Round-trip times in ms of `count` pings `interval` apart (lost ones omitted).
pub fn ping_rtts(ns: &str, to: &str, count: u32, interval: f64) -> Vec<f64> {
    let out = sh(
        "ip",
        &["netns", "exec", ns, "ping", "-n", "-c", &count.to_string(), "-i", &interval.to_string(), "-W", "2", to],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("time=").nth(1)?.split_whitespace().next()?.parse::<f64>().ok())
        .collect()
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

pub fn std_dev(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    (values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt()
}

/// TCP goodput in bytes/s from `from_ns` to a sink at `to`:`port`, measured over the
/// window [warmup, warmup + window) of a transfer (bounded in time).
pub fn tcp_goodput(from_ns: &str, to_ns: &str, to: Ipv4Addr, port: u16, warmup: Duration, window: Duration) -> f64 {
    use std::io::{Read, Write};
    let listener = in_netns(to_ns, move || TcpListener::bind(SocketAddr::from((to, port))).expect("bind sink"));
    let total = warmup + window;
    let sink = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut buf = vec![0u8; 65536];
        let start = Instant::now();
        let mut in_window = 0u64;
        while start.elapsed() < total {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if start.elapsed() >= warmup {
                        in_window += n as u64;
                    }
                }
                Err(_) => {}
            }
        }
        in_window as f64 / window.as_secs_f64()
    });
    let mut stream = tcp_connect(from_ns, SocketAddr::from((to, port)), Duration::from_secs(5)).expect("connect sink");
    stream.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
    let chunk = vec![0u8; 65536];
    let start = Instant::now();
    while start.elapsed() < total + Duration::from_millis(300) {
        let _ = stream.write(&chunk);
    }
    drop(stream);
    sink.join().expect("sink")
}

/// Whether this kernel has sch_fq (tried on the pair's own veth and removed again).
pub fn kernel_has_fq(pair: &Pair) -> bool {
    let out = sh("ip", &["netns", "exec", &pair.a, "tc", "qdisc", "add", "dev", "va", "root", "fq"]);
    let ok = out.status.success();
    if ok {
        must("ip", &["netns", "exec", &pair.a, "tc", "qdisc", "del", "dev", "va", "root"]);
    }
    ok
}

/// Skips the test on kernels without sch_fq (this machine's own); the VM run has it.
pub fn need_fq(pair: &Pair) {
    if !kernel_has_fq(pair) {
        skip("this kernel has no sch_fq (CONFIG_NET_SCH_FQ); `cargo xtask vm-test` runs it");
    }
}

/// Whether this kernel has sch_netem (tried on the pair's own veth and removed again).
pub fn kernel_has_netem(pair: &Pair) -> bool {
    let out = sh("ip", &["netns", "exec", &pair.a, "tc", "qdisc", "add", "dev", "va", "root", "netem", "delay", "1ms"]);
    let ok = out.status.success();
    if ok {
        must("ip", &["netns", "exec", &pair.a, "tc", "qdisc", "del", "dev", "va", "root"]);
    }
    ok
}

/// gso_max_segs of a device in a namespace.
pub fn gso_max_segs(ns: &str, dev: &str) -> u32 {
    let out = sh("ip", &["-n", ns, "-d", "link", "show", dev]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "gso_max_segs")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no gso_max_segs for {dev} in {ns}: {text}"))
}

/// The counters of rule `index` in the first step of a `--output json` run report.
pub fn counters(report_json: &str, index: usize) -> serde_json::Value {
    let report: serde_json::Value = serde_json::from_str(report_json).unwrap_or_else(|e| panic!("{e}: {report_json}"));
    report["steps"][0]["rules"][index]["counters"].clone()
}

/// One counter of `counters`.
pub fn counter(counters: &serde_json::Value, name: &str) -> u64 {
    counters[name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {counters}"))
}

/// The flow hash of 192.0.2.1:5001 -> 192.0.2.2:5002 (UDP) under rule 1 in slot 0,
/// egress: the first rule of a lone `inject` run.
pub fn test_flow_hash(seed: u64) -> u64 {
    let key = FlowKey {
        slot: 0,
        direction: direction::EGRESS as u8,
        proto: 17,
        sport: 5001,
        dport: 5002,
        _pad: 0,
        saddr: ADDR_A.to_ipv6_mapped().octets(),
        daddr: ADDR_B.to_ipv6_mapped().octets(),
    };
    flow_hash(seed, 1, &key)
}

/// The per-packet decisions the kernel should make for packet `index` of the flow
/// 192.0.2.1:5001 -> 192.0.2.2:5002 (rule 1 in slot 0, egress), from the shared hash.
pub fn predicted_drops(seed: u64, p: f64, count: u32) -> Vec<u32> {
    let flow = test_flow_hash(seed);
    let threshold = probability_threshold(p);
    (0..count).filter(|&i| hash::hits(decision(seed, 1, flow, i as u64, hash::DOMAIN_LOSS), threshold)).collect()
}

/// The drops of the Gilbert-Elliott model for the same flow, as chaos-ebpf/src/fault.rs
/// `loss` makes them: per packet, first the state transition (burst draw), then the loss
/// draw against the new state's probability; a flow starts in the good state.
pub fn predicted_burst_drops(seed: u64, good_loss: f64, enter: f64, exit: f64, bad_loss: f64, count: u32) -> Vec<u32> {
    let flow = test_flow_hash(seed);
    let mut bad = false;
    let mut drops = Vec::new();
    for i in 0..count {
        let draw = decision(seed, 1, flow, i as u64, hash::DOMAIN_BURST);
        bad = if bad {
            !hash::hits(draw, probability_threshold(exit))
        } else {
            hash::hits(draw, probability_threshold(enter))
        };
        let threshold = probability_threshold(if bad { bad_loss } else { good_loss });
        if hash::hits(decision(seed, 1, flow, i as u64, hash::DOMAIN_LOSS), threshold) {
            drops.push(i);
        }
    }
    drops
}

/// bpf(2) with a zeroed attribute buffer the caller filled in (little-endian fields at
/// their uapi offsets).
fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<RawFd> {
    // SAFETY: attr is a valid, writable buffer of the size passed.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as RawFd)
    }
}

fn put_u32(attr: &mut [u8; 128], at: usize, value: u32) {
    attr[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(attr: &mut [u8; 128], at: usize, value: u64) {
    attr[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// The name of the `ForeignPass` program, as the kernel lists it.
pub const FOREIGN_NAME: &str = "fgn_pass";

/// Another tool's TC program, attached before chaos-ebpf starts: `r0 = 0 (TC_ACT_OK);
/// exit`. TC_ACT_OK ends the TCX chain (TCX_PASS), as a CNI that passes or redirects
/// would. Attached with a TCX link, or as a cls_bpf filter at priority 1 (what Cilium
/// uses) on a clsact qdisc the test adds. Removed on drop.
pub struct ForeignPass {
    ns: String,
    prog_id: u32,
    links: Vec<OwnedFd>,
    /// Netlink: the device whose clsact qdisc the test added.
    netlink: Option<String>,
    _prog: OwnedFd,
}

impl ForeignPass {
    pub fn attach(ns: &str, dev: &'static str, netlink: bool) -> ForeignPass {
        // BPF_ALU64 | BPF_MOV | BPF_K r0 = 0; BPF_JMP | BPF_EXIT.
        let insns: [u8; 16] = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
        let license = c"GPL";
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, BPF_PROG_TYPE_SCHED_CLS);
        put_u32(&mut attr, 4, 2);
        put_u64(&mut attr, 8, insns.as_ptr() as u64);
        put_u64(&mut attr, 16, license.as_ptr() as u64);
        attr[48..48 + FOREIGN_NAME.len()].copy_from_slice(FOREIGN_NAME.as_bytes());
        let fd = bpf(BPF_PROG_LOAD, &mut attr).expect("loading the foreign pass program");
        // SAFETY: a new fd we own.
        let prog = unsafe { OwnedFd::from_raw_fd(fd) };
        let prog_id = prog_id(prog.as_raw_fd());
        let mut foreign = ForeignPass { ns: ns.to_owned(), prog_id, links: Vec::new(), netlink: None, _prog: prog };
        let prog_fd = foreign._prog.as_raw_fd();
        if netlink {
            // tc takes a pinned program: pin it in a private bpffs mount, add the
            // filters, and remove pin and mount again (the filters hold the program).
            let dir = format!("/tmp/fgn-pass-bpffs-{}", std::process::id());
            std::fs::create_dir_all(&dir).unwrap();
            must("mount", &["-t", "bpf", "bpf", &dir]);
            let pin = format!("{dir}/prog");
            let path = std::ffi::CString::new(pin.clone()).unwrap();
            let mut attr = [0u8; 128];
            put_u64(&mut attr, 0, path.as_ptr() as u64);
            put_u32(&mut attr, 8, prog_fd as u32);
            let pinned = bpf(BPF_OBJ_PIN, &mut attr);
            foreign.netlink = Some(dev.to_owned());
            let mut added = sh("ip", &["netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "clsact"]);
            for hook in ["ingress", "egress"] {
                if pinned.is_ok() && added.status.success() {
                    added = sh(
                        "ip",
                        &[
                            "netns",
                            "exec",
                            ns,
                            "tc",
                            "filter",
                            "add",
                            "dev",
                            dev,
                            hook,
                            "pref",
                            "1",
                            "bpf",
                            "object-pinned",
                            &pin,
                            "direct-action",
                        ],
                    );
                }
            }
            let _ = std::fs::remove_file(&pin);
            must("umount", &[&dir]);
            let _ = std::fs::remove_dir(&dir);
            pinned.expect("pinning the foreign program");
            assert!(added.status.success(), "adding the foreign filter: {}", String::from_utf8_lossy(&added.stderr));
        } else {
            for attach_type in [BPF_TCX_INGRESS, BPF_TCX_EGRESS] {
                let link = in_netns(ns, move || {
                    let name = std::ffi::CString::new(dev).unwrap();
                    // SAFETY: a valid C string.
                    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
                    let mut attr = [0u8; 128];
                    put_u32(&mut attr, 0, prog_fd as u32);
                    put_u32(&mut attr, 4, ifindex);
                    put_u32(&mut attr, 8, attach_type);
                    bpf(BPF_LINK_CREATE, &mut attr).map(|fd| {
                        // SAFETY: a new fd we own.
                        unsafe { OwnedFd::from_raw_fd(fd) }
                    })
                })
                .expect("attaching the foreign program with a TCX link");
                foreign.links.push(link);
            }
        }
        foreign
    }

    /// The programs on each hook of `dev`, in the order they run: TCX by BPF_PROG_QUERY,
    /// netlink by the filter list (ascending priority, then list order).
    pub fn chain(&self, dev: &'static str) -> [Vec<String>; 2] {
        if self.netlink.is_some() {
            return ["ingress", "egress"].map(|hook| {
                let out = sh("ip", &["netns", "exec", &self.ns, "tc", "filter", "show", "dev", dev, hook]);
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| {
                        let id = l.split(" id ").nth(1)?.split_whitespace().next()?;
                        Some(if id == self.prog_id.to_string() { FOREIGN_NAME.to_owned() } else { l.to_owned() })
                    })
                    .collect()
            });
        }
        [BPF_TCX_INGRESS, BPF_TCX_EGRESS].map(|attach_type| {
            let ids = in_netns(&self.ns, move || {
                let name = std::ffi::CString::new(dev).unwrap();
                // SAFETY: a valid C string.
                let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
                let mut ids = [0u32; 16];
                let mut attr = [0u8; 128];
                put_u32(&mut attr, 0, ifindex);
                put_u32(&mut attr, 4, attach_type);
                put_u64(&mut attr, 16, ids.as_mut_ptr() as u64);
                put_u32(&mut attr, 24, ids.len() as u32);
                bpf(BPF_PROG_QUERY, &mut attr).expect("querying the TCX chain");
                let count = u32::from_le_bytes(attr[24..28].try_into().unwrap()) as usize;
                ids[..count.min(ids.len())].to_vec()
            });
            ids.into_iter()
                .map(|id| if id == self.prog_id { FOREIGN_NAME.to_owned() } else { id.to_string() })
                .collect()
        })
    }
}

impl Drop for ForeignPass {
    fn drop(&mut self) {
        self.links.clear();
        if let Some(dev) = self.netlink.take() {
            let _ = sh("ip", &["netns", "exec", &self.ns, "tc", "qdisc", "del", "dev", &dev, "clsact"]);
        }
    }
}

/// The kernel id of the program behind `fd`.
fn prog_id(fd: RawFd) -> u32 {
    let mut info = [0u8; 256];
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, fd as u32);
    put_u32(&mut attr, 4, info.len() as u32);
    put_u64(&mut attr, 8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).expect("program info");
    u32::from_le_bytes(info[4..8].try_into().unwrap())
}

/// How far a timeline edge may land from its plan: 50 ms on a real CPU (measured: 1.3 ms
/// at worst); 400 ms under qemu's TCG emulation (the VM tests), where each map update,
/// ledger write and netlink request of an install is emulated (measured: up to 84 ms on
/// 6.1 and 121 ms on 6.12, with a VM per core).
pub fn timing_bound() -> Duration {
    Duration::from_millis(if emulated() { 400 } else { 50 })
}

/// Whether this runs under qemu's TCG emulation (the VM tests): every instruction,
/// the verifier's included, is tens of times slower than on a real CPU.
pub fn emulated() -> bool {
    fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains("QEMU"))
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port").local_addr().unwrap().port()
}

/// GET over HTTP/1.0 (bounded by timeouts): (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// A `prometheus` process with its own config, storage and web port; stopped (SIGTERM,
/// then SIGKILL) and its directory removed on drop, also after a failure.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    pub web: SocketAddr,
}

impl Prometheus {
    pub fn start(target: SocketAddr) -> Prometheus {
        Prometheus::start_job("chaos-ebpf", target, SocketAddr::from(([127, 0, 0, 1], free_port())))
    }

    /// Prometheus on `web` scraping `target` every second as job `job` (the web
    /// address chosen by the caller: an agent started before it must know it).
    pub fn start_job(job: &str, target: SocketAddr, web: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("chaos-prometheus-{}-{}", target.port(), std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        let mut prometheus = Prometheus { child, dir, web };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(http_get(web, "/-/ready"), Ok((200, _))) {
            assert!(prometheus.child.try_wait().unwrap().is_none(), "prometheus exited:\n{}", prometheus.log());
            assert!(Instant::now() < deadline, "prometheus not ready within 30 s:\n{}", prometheus.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        text.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// The value of an instant query with one result (None: no result yet).
    pub fn query(&self, expr: &str) -> Option<f64> {
        let encoded: String = expr
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let (status, body) = http_get(self.web, &format!("/api/v1/query?query={encoded}")).ok()?;
        assert_eq!(status, 200, "prometheus query {expr}: {body}");
        let reply: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        let result = reply["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "one series expected for {expr}: {body}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `chaos-ebpf agent` on a socket of its own; SIGTERM on drop (then SIGKILL and
/// `cleanup` if it does not stop), its directory removed.
pub struct Agent {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub metrics: std::net::SocketAddr,
    /// Its stdout and stderr, read all along: the agent logs a line per fault, and a
    /// full pipe would stop it.
    output: Option<(std::thread::JoinHandle<String>, std::thread::JoinHandle<String>)>,
}

impl Agent {
    pub fn start(tag: &str, netns: &[&str]) -> Agent {
        let dir = std::env::temp_dir().join(format!("cet-agent-{tag}"));
        let _ = fs::remove_dir_all(&dir);
        Agent::start_in(dir, netns)
    }

    pub fn start_in(dir: PathBuf, netns: &[&str]) -> Agent {
        Agent::start_with(dir, netns, &[])
    }

    pub fn start_with(dir: PathBuf, netns: &[&str], extra: &[&str]) -> Agent {
        let socket = dir.join("agent.sock");
        let metrics = sock(std::net::Ipv4Addr::LOCALHOST, free_port());
        let mut cmd = Command::new(bin());
        cmd.args(["agent", "--socket", socket.to_str().unwrap(), "--metrics-addr", &metrics.to_string()]);
        cmd.args(extra);
        for ns in netns {
            cmd.args(["--netns", ns]);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn the agent");
        own_pid(child.id());
        let output = Some((read_all(child.stdout.take()), read_all(child.stderr.take())));
        let mut agent = Agent { child: Some(child), dir, socket, metrics, output };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(client)) = client::connect(&agent.socket) {
                if client.health().is_ok() {
                    return agent;
                }
            }
            if let Some(status) = agent.child.as_mut().unwrap().try_wait().unwrap() {
                let (_, err) = agent.output();
                panic!("the agent exited ({status}) before answering:\n{err}");
            }
            assert!(Instant::now() < deadline, "the agent did not answer within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> Client {
        client::connect(&self.socket).expect("connect").expect("the agent answers")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    /// Waits (bounded) for the exit: (code, how long it took).
    pub fn wait(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let start = Instant::now();
        let child = self.child.as_mut().unwrap();
        while start.elapsed() < limit {
            if let Some(status) = child.try_wait().unwrap() {
                return (status.code(), start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the agent did not exit within {limit:?}");
    }

    /// Its stdout and stderr (after it exited).
    pub fn output(&mut self) -> (String, String) {
        let (out, err) = self.output.take().expect("output read once, after the exit");
        (out.join().unwrap_or_default(), err.join().unwrap_or_default())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if child.try_wait().ok().flatten().is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = Command::new(bin()).arg("cleanup").output();
                }
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
