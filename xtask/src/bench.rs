//! `cargo xtask bench`: what the datapath costs real traffic.
//!
//! First the per-packet cost in BPF_PROG_TEST_RUN (bench_packet.rs), then, on two
//! namespaces joined by a veth, UDP throughput with and without faults against iptables
//! and nft (bench_throughput.rs).
//!
//! Then the cost of per-segment decisions on TCP: bulk goodput over the veth with no
//! program, with `gso_max_segs 1` set by hand (the segmentation alone), and with a
//! chaos-ebpf rule in force (which sets it, and runs the program on every segment);
//! TCP_REPS repetitions of each, interleaved, reported as median and range.
//!
//! Last the cost of the segmenter detour on UDP GSO (UDP_SEGMENT buffers of 64
//! datagrams of 1000 bytes): datagrams received per second with no program, with a
//! chaos-ebpf rule that matches none of them (every buffer still takes the detour through
//! the segmenter pair: the hook sends all GSO buffers there) and with a loss rule at
//! probability 0 that judges every datagram; same repetitions, interleaved.

use std::{
    fs,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub(crate) const NS_A: &str = "chaos-bench-a";
const NS_B: &str = "chaos-bench-b";
const TCP_REPS: usize = 5;
const TCP_SECONDS: f64 = 1.0;

pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `program`, to be run inside the network namespace `ns` is open on: the child enters it
/// (setns) between fork and exec, so no thread of ours changes namespace.
pub(crate) fn command_in_netns(ns: &impl AsRawFd, program: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let fd = ns.as_raw_fd();
    let mut command = Command::new(program);
    // SAFETY: setns(2) is async-signal-safe; it changes only the child's network namespace.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

struct Namespaces;

impl Namespaces {
    fn create() -> Result<Namespaces> {
        for ns in [NS_A, NS_B] {
            let _ = ip(&["netns", "del", ns]);
            ip(&["netns", "add", ns])?;
        }
        let guard = Namespaces;
        ip(&["link", "add", "ba", "netns", NS_A, "type", "veth", "peer", "name", "bb", "netns", NS_B])?;
        ip(&["-n", NS_A, "addr", "add", "192.0.2.1/24", "dev", "ba"])?;
        ip(&["-n", NS_B, "addr", "add", "192.0.2.2/24", "dev", "bb"])?;
        ip(&["-n", NS_A, "link", "set", "ba", "up"])?;
        ip(&["-n", NS_B, "link", "set", "bb", "up"])?;
        Ok(guard)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [NS_A, NS_B] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let file = fs::File::open(format!("/var/run/netns/{ns}"))?;
    Ok(std::thread::spawn(move || {
        // SAFETY: a valid nsfs fd; affects this thread only.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
        f()
    })
    .join()
    .expect("netns thread"))
}

/// `ip netns exec NS_A ARGS`.
pub(crate) fn in_ns(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(["netns", "exec", NS_A]).args(args).output().context("running ip netns exec")?;
    if !out.status.success() {
        bail!("{} in {NS_A}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Sends for `duration` from a fixed 5-tuple and returns datagrams received per second.
pub(crate) fn blast_for(duration: Duration) -> Result<f64> {
    let receiver = in_netns(NS_B, || UdpSocket::bind("192.0.2.2:9000"))??;
    receiver.set_read_timeout(Some(Duration::from_millis(200)))?;
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let mut n = 0u64;
        while receiver.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    });
    let sender = in_netns(NS_A, || UdpSocket::bind("192.0.2.1:9001"))??;
    let dest: SocketAddr = "192.0.2.2:9000".parse()?;
    let payload = [0u8; 64];
    let start = Instant::now();
    while start.elapsed() < duration {
        for _ in 0..64 {
            let _ = sender.send_to(&payload, dest);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let received = counter.join().expect("receiver thread");
    Ok(received as f64 / elapsed)
}

/// TCP goodput (Mbit/s) from NS_A to NS_B over one connection for TCP_SECONDS.
fn tcp_mbit(port: u16) -> Result<f64> {
    use std::io::{Read, Write};
    let listener = in_netns(NS_B, move || std::net::TcpListener::bind(("192.0.2.2", port)))??;
    let sink = std::thread::spawn(move || -> u64 {
        let Ok((mut stream, _)) = listener.accept() else { return 0 };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0u64;
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        got
    });
    let mut stream = in_netns(NS_A, move || std::net::TcpStream::connect(("192.0.2.2", port)))??;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let chunk = vec![0u8; 1 << 16];
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < TCP_SECONDS {
        stream.write_all(&chunk)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(stream);
    let got = sink.join().expect("sink thread");
    Ok(got as f64 * 8.0 / 1e6 / elapsed)
}

pub(crate) fn median_and_range(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(|a, b| a.total_cmp(b));
    (values[values.len() / 2], values[0], values[values.len() - 1])
}

/// The per-segment cost on TCP (see the module comment).
fn tcp_cases(bin: &str) -> Result<()> {
    let target = format!("netns:{NS_A}");
    let mut cases: [(&str, Vec<f64>); 3] = [
        ("baseline (no program, GSO on)", Vec::new()),
        ("gso_max_segs 1, no program", Vec::new()),
        ("chaos-ebpf loss 1% on another port", Vec::new()),
    ];
    let mut port = 9100;
    for _ in 0..TCP_REPS {
        port += 1;
        cases[0].1.push(tcp_mbit(port)?);
        ip(&["-n", NS_A, "link", "set", "ba", "gso_max_segs", "1"])?;
        port += 1;
        let measured = tcp_mbit(port);
        ip(&["-n", NS_A, "link", "set", "ba", "gso_max_segs", "65535"])?;
        cases[1].1.push(measured?);
        let chaos = Chaos::start(
            bin,
            &[
                "inject",
                "loss",
                "--probability",
                "0.01",
                "--proto",
                "udp",
                "--ports",
                "1",
                "--target",
                &target,
                "--direction",
                "egress",
                "--duration",
                "5m",
            ],
        )?;
        port += 1;
        let measured = tcp_mbit(port);
        drop(chaos);
        cases[2].1.push(measured?);
    }
    let (base, _, _) = median_and_range(&mut cases[0].1.clone());
    println!("\n{:<40} {:>12} {:>20} {:>10}", "TCP bulk, one connection", "median Mbit/s", "range", "vs base");
    for (name, values) in cases.iter_mut() {
        let (median, lo, hi) = median_and_range(values);
        println!("{name:<40} {median:>12.0} {:>20} {:>10.3}", format!("{lo:.0}-{hi:.0}"), median / base);
    }
    println!("\n(veth, {TCP_REPS} interleaved repetitions of {TCP_SECONDS} s; the rule matches no TCP segment, so the third row is the price of per-segment decisions: one program run per wire packet)");
    Ok(())
}

const UDP_SEGMENT: libc::c_int = 103;

/// UDP GSO datagrams received per second from NS_A to NS_B over TCP_SECONDS: buffers of
/// 64 datagrams of 1000 bytes.
fn udp_gso_pps(port: u16) -> Result<f64> {
    let receiver = in_netns(NS_B, move || UdpSocket::bind(("192.0.2.2", port)))??;
    receiver.set_read_timeout(Some(Duration::from_millis(200)))?;
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n = 0u64;
        while receiver.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    });
    let sender = in_netns(NS_A, move || UdpSocket::bind(("192.0.2.1", port + 1)))??;
    let size: libc::c_int = 1000;
    // SAFETY: setsockopt on a valid fd with an int option value.
    if unsafe {
        libc::setsockopt(sender.as_raw_fd(), libc::SOL_UDP, UDP_SEGMENT, (&size as *const libc::c_int).cast(), 4)
    } != 0
    {
        bail!("UDP_SEGMENT: {}", std::io::Error::last_os_error());
    }
    let payload = vec![0u8; 64 * 1000];
    let dest = SocketAddr::from(([192, 0, 2, 2], port));
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < TCP_SECONDS {
        let _ = sender.send_to(&payload, dest);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let received = counter.join().expect("receiver thread");
    Ok(received as f64 / elapsed)
}

/// The cost of the segmenter detour on UDP GSO (see the module comment).
fn udp_gso_cases(bin: &str) -> Result<()> {
    let target = format!("netns:{NS_A}");
    let rule = |ports: &'static str| {
        let target = target.clone();
        move || {
            Chaos::start(
                bin,
                &[
                    "inject",
                    "loss",
                    "--probability",
                    "0",
                    "--proto",
                    "udp",
                    "--ports",
                    ports,
                    "--target",
                    &target,
                    "--direction",
                    "egress",
                    "--duration",
                    "5m",
                ],
            )
        }
    };
    let mut cases: [(&str, Vec<f64>); 3] = [
        ("baseline (no program)", Vec::new()),
        ("rule on another port (detour only)", Vec::new()),
        ("loss 0 on every datagram (judged)", Vec::new()),
    ];
    let mut port = 9300;
    for _ in 0..TCP_REPS {
        port += 2;
        cases[0].1.push(udp_gso_pps(port)?);
        for (case, ports) in [(1, "1"), (2, "9300-9400")] {
            let chaos = rule(ports)()?;
            port += 2;
            let measured = udp_gso_pps(port);
            drop(chaos);
            cases[case].1.push(measured?);
        }
    }
    let (base, _, _) = median_and_range(&mut cases[0].1.clone());
    println!("\n{:<40} {:>12} {:>20} {:>10}", "UDP GSO, 64 x 1000 B per send", "median dgram/s", "range", "vs base");
    for (name, values) in cases.iter_mut() {
        let (median, lo, hi) = median_and_range(values);
        println!("{name:<40} {median:>12.0} {:>20} {:>10.3}", format!("{lo:.0}-{hi:.0}"), median / base);
    }
    println!("\n(veth, {TCP_REPS} interleaved repetitions of {TCP_SECONDS} s)");
    Ok(())
}

/// Per-packet cost in BPF_PROG_TEST_RUN (bench_packet.rs): each case's median, range,
/// cost over the empty program, and ratio to the same fault with one rule in force.
fn packet_cases() -> Result<()> {
    let (floor, cases) = crate::bench_packet::run()?;
    let mut floor_samples = floor.samples.clone();
    let (floor_ns, floor_lo, floor_hi) = median_and_range(&mut floor_samples);
    println!(
        "\n{:<46} {:>8} {:>12} {:>12} {:>10}",
        "per packet (BPF_PROG_TEST_RUN)", "ns", "range", "over floor", "vs 1 rule"
    );
    println!(
        "{:<46} {floor_ns:>8.0} {:>12} {:>12} {:>10}",
        floor.name,
        format!("{floor_lo:.0}-{floor_hi:.0}"),
        "-",
        "-"
    );
    let mut json = Vec::new();
    let mut one_rule: Option<f64> = None;
    for case in cases {
        let mut samples = case.samples.clone();
        let (median, lo, hi) = median_and_range(&mut samples);
        let over = median - floor_ns;
        if case.rules <= 1 {
            one_rule = Some(over);
        }
        let ratio = one_rule.filter(|_| case.rules > 0).map(|one| over / one.max(1.0));
        println!(
            "{:<46} {median:>8.0} {:>12} {over:>12.0} {:>10}",
            case.name,
            format!("{lo:.0}-{hi:.0}"),
            ratio.map_or("-".to_owned(), |r| format!("{r:.2}"))
        );
        json.push(serde_json::json!({
            "case": case.name, "rules": case.rules, "ns_median": median, "ns_min": lo, "ns_max": hi,
            "ns_over_floor": over, "vs_one_rule": ratio, "samples": case.samples,
        }));
    }
    println!("\n(mean ns of 200000 runs per sample, 7 samples per case; floor: `r0 = -1; exit`)");
    write_json("packet", &serde_json::json!({"floor_ns": floor_ns, "floor_samples": floor.samples, "cases": json}))
}

/// Writes target/bench/NAME.json, which docs/bench.md is made from.
pub(crate) fn write_json(name: &str, value: &serde_json::Value) -> Result<()> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench");
    fs::create_dir_all(dir)?;
    fs::write(format!("{dir}/{name}.json"), serde_json::to_string_pretty(value)?)?;
    Ok(())
}

pub(crate) struct Chaos(Child);

impl Chaos {
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Starts a run and waits until its first progress line (the step has been in force
    /// for 1 s): the programs load before the device settings change, so a connection
    /// opened as soon as they are loaded could still see the old settings.
    pub(crate) fn start(bin: &str, args: &[&str]) -> Result<Chaos> {
        use std::io::BufRead;
        // Progress lines go to stderr.
        let mut child = Command::new(bin).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let progress = child.stderr.take().expect("piped");
        let chaos = Chaos(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end, so the run never blocks on a full pipe.
            for line in std::io::BufReader::new(progress).lines().map_while(Result::ok) {
                if line.starts_with('[') {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30)).context("chaos-ebpf did not report its step in force within 30 s")?;
        Ok(chaos)
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

pub fn run(only: Option<&str>) -> Result<()> {
    crate::require_root("the benchmark")?;
    match only {
        Some("packet") => return packet_cases(),
        Some("report") => return crate::bench_report::write(),
        Some("apply") => return crate::bench_apply::run(),
        Some("throughput") | None => {}
        Some(other) => anyhow::bail!("unknown benchmark part '{other}': packet, throughput, apply, hyper or report"),
    }
    crate::cargo(&["build", "--release", "-p", "chaos-cli"])?;
    if only == Some("throughput") {
        let _namespaces = Namespaces::create()?;
        let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/chaos-ebpf");
        let stats_before = fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_else(|_| "0".into());
        fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").context("enabling BPF run-time stats")?;
        let result = crate::bench_throughput::run(bin).and_then(|t| write_json("throughput", &t));
        let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_before.trim());
        return result;
    }
    let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/chaos-ebpf");
    let stats_before = fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_else(|_| "0".into());
    fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").context("enabling BPF run-time stats")?;
    let result = (|| -> Result<()> {
        packet_cases()?;
        let _namespaces = Namespaces::create()?;
        let throughput = crate::bench_throughput::run(bin)?;
        write_json("throughput", &throughput)?;
        tcp_cases(bin)?;
        udp_gso_cases(bin)?;
        crate::bench_apply::run()?;
        crate::bench_hyper::run(&[])
    })();
    let result = result.and_then(|()| crate::bench_report::write());
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_before.trim());
    result
}
