//! Faults act on wire packets, not on socket buffers: a TCP bulk transfer is decided and
//! counted per segment on egress and on ingress, UDP GSO buffers are decided datagram by
//! datagram through the segmenter pair, and the device settings that make it so
//! (gso_max_segs 1 on the sending side, GRO off on the receiving device, the segmenter
//! pair) are restored exactly after a revert, after SIGKILL + cleanup, and after
//! overlapping runs.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use crate::support::*;

pub const TESTS: &[Test] = tests![
    tcp_egress_loss_is_decided_per_segment,
    tcp_ingress_loss_is_decided_per_segment,
    device_settings_are_restored_after_overlapping_runs_and_a_crash,
    cgroup_target_changes_only_the_devices_its_peers_route_through,
    udp_gso_egress_is_decided_per_segment,
    udp_gso_ingress_is_decided_per_segment,
    udp_gso_delay_holds_every_segment,
];

/// chaos-ebpf's segmenter devices in namespace `ns` (`chaos<ifindex>gso`/`seg`).
fn segmenters(ns: &str) -> Vec<String> {
    let out = sh("ip", &["-n", ns, "-o", "link", "show"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|name| name.trim().split('@').next().unwrap_or_default().to_owned())
        .filter(|name| {
            name.strip_prefix("chaos")
                .and_then(|r| r.strip_suffix("gso").or_else(|| r.strip_suffix("seg")))
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect()
}

/// Segments the namespace's TCP put on the wire: OutSegs (new data and control; it
/// leaves retransmissions out) plus RetransSegs, from net/snmp of this thread's
/// namespace, as nstat reads them.
fn tcp_wire_segments(ns: &str) -> u64 {
    in_netns(ns, || {
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("reading net/snmp");
        let mut lines = snmp.lines().filter(|l| l.starts_with("Tcp:"));
        let (names, values) = (lines.next().expect("Tcp header"), lines.next().expect("Tcp values"));
        let value = |name: &str| -> u64 {
            let at = names.split_whitespace().position(|n| n == name).expect("Tcp column");
            values.split_whitespace().nth(at).and_then(|v| v.parse().ok()).expect("Tcp value")
        };
        value("OutSegs") + value("RetransSegs")
    })
}

/// Sends `bytes` over one TCP connection from `from` to a sink in `to` (bounded in
/// time); returns the bytes the sink read.
fn tcp_bulk(from: &str, to: &str, port: u16, bytes: usize) -> usize {
    let listener = in_netns(to, move || TcpListener::bind(SocketAddr::from((ADDR_B, port))).expect("bind sink"));
    let sink = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        got
    });
    let mut stream = tcp_connect(from, SocketAddr::from((ADDR_B, port)), Duration::from_secs(5)).expect("connect");
    stream.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let chunk = vec![0x5au8; 1 << 16];
    let mut sent = 0;
    while sent < bytes {
        let n = stream.write(&chunk[..chunk.len().min(bytes - sent)]).expect("send");
        sent += n;
    }
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let got = sink.join().expect("sink");
    assert_eq!(got, bytes, "the transfer did not complete");
    got
}

/// One loss run on the TCP transfer; checks matched against the segments the sender put
/// on the wire (OutSegs + RetransSegs) and
/// dropped against p * matched.
fn per_segment(tag: &str, target_side: &str, direction: &str) {
    let pair = Pair::new(tag);
    let target = format!("netns:{}", if target_side == "a" { &pair.a } else { &pair.b });
    let p = 0.01;
    let chaos = Chaos::start(&[
        "inject",
        "loss",
        "--target",
        &target,
        "--probability",
        "0.01",
        "--direction",
        direction,
        "--proto",
        "tcp",
        "--ports",
        "5201",
        "--duration",
        "5m",
        "--seed",
        "11",
        "--output",
        "json",
    ]);
    let before = tcp_wire_segments(&pair.a);
    let bytes = 30 << 20;
    tcp_bulk(&pair.a, &pair.b, 5201, bytes);
    let segments = tcp_wire_segments(&pair.a) - before;
    let (code, out, err) = chaos.interrupt();
    assert_eq!(code, 1, "{err}");
    let rule = counters(&out, 0);
    let (matched, dropped) = (counter(&rule, "matched"), counter(&rule, "dropped"));
    let sigma = (matched as f64 * p * (1.0 - p)).sqrt();
    println!(
        "TCP {} MB, {direction} rule on side {target_side}: sender OutSegs + RetransSegs {segments}, matched {matched} ({:+.2}%), dropped {dropped} (expected {:.0} +- {:.0})",
        bytes >> 20,
        100.0 * (matched as f64 - segments as f64) / segments as f64,
        p * matched as f64,
        4.0 * sigma
    );
    println!("REPORT|tcp_{direction}_segments|{segments}|matched={matched}|dropped={dropped}");
    assert!(
        (matched as f64 - segments as f64).abs() <= 0.03 * segments as f64,
        "matched {matched} is not within 3% of the {segments} segments the sender sent"
    );
    assert!(
        (dropped as f64 - p * matched as f64).abs() <= 4.0 * sigma,
        "dropped {dropped} of {matched}, expected {:.0} +- {:.0}",
        p * matched as f64,
        4.0 * sigma
    );
    assert_eq!(gso_max_segs(&pair.a, "va"), 65535, "gso_max_segs of the sender not restored");
    assert_nothing_left();
}

/// Egress loss on the sender: one decision per wire segment (data segments; the
/// receiver's ACKs are not in this direction).
fn tcp_egress_loss_is_decided_per_segment() {
    per_segment("gso-eg", "a", "egress");
}

/// Ingress loss on the receiver: what arrives over the veth is segmented by its far end.
fn tcp_ingress_loss_is_decided_per_segment() {
    per_segment("gso-in", "b", "ingress");
}

/// GRO of a device in a namespace, read or set through the SIOCETHTOOL ioctl (the
/// ethtool program is not on this machine kind).
fn gro(ns: &str, dev: &'static str, set: Option<bool>) -> bool {
    in_netns(ns, move || {
        #[repr(C)]
        struct EthtoolValue {
            cmd: u32,
            data: u32,
        }
        const SIOCETHTOOL: libc::c_ulong = 0x8946;
        let (cmd, data) = match set {
            Some(on) => (0x2c, on as u32), // ETHTOOL_SGRO
            None => (0x2b, 0),             // ETHTOOL_GGRO
        };
        let mut value = EthtoolValue { cmd, data };
        // SAFETY: a socket, an ifreq with a bounded name copy and a pointer to `value`.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            assert!(fd >= 0);
            let mut req: libc::ifreq = std::mem::zeroed();
            for (d, s) in req.ifr_name.iter_mut().zip(dev.bytes()) {
                *d = s as libc::c_char;
            }
            req.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
            let rc = libc::ioctl(fd, SIOCETHTOOL, &mut req);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            assert!(rc == 0, "SIOCETHTOOL on {dev}: {err}");
        }
        set.unwrap_or(value.data != 0)
    })
}

/// Two overlapping runs share the device settings: the first out leaves them (the
/// second still needs them), the last out restores them; a SIGKILLed run's settings
/// are restored by `cleanup`. GRO, which merges segments before the ingress hook, is
/// off while ingress decisions run and back on afterwards.
fn device_settings_are_restored_after_overlapping_runs_and_a_crash() {
    let pair = Pair::new("gso-dev");
    must("ip", &["-n", &pair.a, "link", "set", "va", "gso_max_segs", "300"]);
    gro(&pair.a, "va", Some(true));
    assert!(gro(&pair.a, "va", None), "GRO could not be turned on for the test");
    let target = pair.target();
    let loss = |seed: &str| {
        Chaos::start(&["inject", "loss", "--target", &target, "--probability", "0.1", "--duration", "5m", "--seed", seed])
    };
    let first = loss("1");
    assert_eq!(segmenters(&pair.a).len(), 2, "no segmenter pair for va: {:?}", segmenters(&pair.a));
    assert_eq!(gso_max_segs(&pair.a, "va"), 1, "egress decisions need one segment per buffer");
    assert_eq!(gso_max_segs(&pair.b, "vb"), 1, "ingress decisions need the far end to segment");
    assert!(!gro(&pair.a, "va", None), "GRO stayed on where ingress is decided");
    let second = loss("2");
    let (code, _, err) = first.interrupt();
    assert_eq!(code, 1, "{err}");
    assert_eq!(gso_max_segs(&pair.a, "va"), 1, "the first run out restored what the second still needs");
    assert_eq!(segmenters(&pair.a).len(), 2, "the first run out deleted the segmenter pair the second uses");
    let (code, _, err) = second.interrupt();
    assert_eq!(code, 1, "{err}");
    assert_eq!(gso_max_segs(&pair.a, "va"), 300, "the last run out did not restore the original value exactly");
    assert_eq!(gso_max_segs(&pair.b, "vb"), 65535);
    assert!(gro(&pair.a, "va", None), "GRO was not turned back on");
    assert_eq!(segmenters(&pair.a), Vec::<String>::new(), "the last run out left its segmenter pair");

    let crashed = loss("3");
    crashed.signal(libc::SIGKILL);
    crashed.finish(Duration::from_secs(5));
    assert_eq!(gso_max_segs(&pair.a, "va"), 1, "a killed run cannot restore by itself");
    let (code, out, err) = chaos_run(&["cleanup"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("gso_max_segs 300 on va"), "{out}");
    assert!(out.contains("segmenter pair"), "{out}");
    assert_eq!(segmenters(&pair.a), Vec::<String>::new(), "cleanup left the killed run's segmenter pair");
    assert_eq!(gso_max_segs(&pair.a, "va"), 300, "cleanup did not restore the original value");
    assert!(gro(&pair.a, "va", None), "cleanup did not turn GRO back on");
    assert_eq!(gso_max_segs(&pair.b, "vb"), 65535);
    let records: Vec<_> = std::fs::read_dir("/run/chaos-ebpf")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    for record in records {
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        assert!(!text.contains(&pair.a) && !text.contains(&pair.b), "a device record was left: {}", record.display());
    }
    assert_nothing_left();
}

/// A cgroup target's traffic to its peers leaves through the devices its namespace
/// routes them to: only those get one segment per buffer; another device of the
/// namespace (a second veth here) is left alone.
fn cgroup_target_changes_only_the_devices_its_peers_route_through() {
    let pair = Pair::new("gso-cg");
    must("ip", &["-n", &pair.a, "link", "add", "vx", "type", "veth", "peer", "name", "vy"]);
    must("ip", &["-n", &pair.a, "link", "set", "vx", "up"]);
    must("ip", &["-n", &pair.a, "link", "set", "vy", "up"]);
    let cgroup = TestCgroup::new("gso");
    let mut anchor = cgroup.spawn("ip", &["netns", "exec", &pair.a, "sleep", "30"]);
    std::thread::sleep(Duration::from_millis(200));
    let target = format!("cgroup:{}", cgroup.relative);
    let chaos = Chaos::start(&[
        "inject", "loss", "--target", &target, "--probability", "0.1", "--peer", "192.0.2.2/32", "--duration", "5m",
    ]);
    let (va, vx) = (gso_max_segs(&pair.a, "va"), gso_max_segs(&pair.a, "vx"));
    let pairs = segmenters(&pair.a);
    let (code, _, err) = chaos.interrupt();
    let _ = anchor.kill();
    let _ = anchor.wait();
    assert_eq!(code, 1, "{err}");
    assert_eq!(va, 1, "the device the peer is routed through was not set to one segment per buffer");
    assert_eq!(vx, 65535, "a device the target's traffic to its peers does not use was changed");
    assert_eq!(pairs.len(), 2, "one segmenter pair (for va only) expected: {pairs:?}");
    assert_eq!(gso_max_segs(&pair.a, "va"), 65535);
    assert_nothing_left();
}

/// UDP GSO (UDP_SEGMENT, as QUIC stacks send): 100 buffers of 64 datagrams each, loss
/// 0.3, on the sender's egress or the receiver's ingress. Each datagram is decided on
/// its own, through the device's segmenter pair: the datagrams that arrive are exactly
/// those the shared hash keeps for packet indices 0..6400 of the flow, and the counters
/// count datagrams. (Decided per buffer, drops came 64 at a time.)
fn udp_gso_is_decided_per_segment(direction: u32) {
    const UDP_SEGMENT: libc::c_int = 103;
    const SEGMENT: usize = 1000;
    const PER_SEND: usize = 64;
    const SENDS: usize = 100;
    const SEED: u64 = 3;
    let ingress = direction == chaos_ebpf_common::direction::INGRESS;
    let pair = Pair::new(if ingress { "gsoin" } else { "gsoout" });
    // Egress: a sends, a is the target. Ingress: b sends to a, a is the target.
    let (from, to, src, dst) = if ingress {
        (&pair.b, &pair.a, SocketAddr::from((ADDR_B, 5001)), SocketAddr::from((ADDR_A, 5002)))
    } else {
        (&pair.a, &pair.b, SocketAddr::from((ADDR_A, 5001)), SocketAddr::from((ADDR_B, 5002)))
    };
    let receiver = udp_receiver(to, dst);
    let sender = in_netns(from, move || std::net::UdpSocket::bind(src).expect("bind"));
    let size: libc::c_int = SEGMENT as libc::c_int;
    // SAFETY: setsockopt on a valid fd with an int option value.
    let set = unsafe {
        use std::os::fd::AsRawFd;
        libc::setsockopt(sender.as_raw_fd(), libc::SOL_UDP, UDP_SEGMENT, (&size as *const libc::c_int).cast(), 4)
    };
    assert_eq!(set, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
    let target = pair.target();
    let chaos = Chaos::start(&[
        "inject", "loss", "--target", &target, "--probability", "0.3", "--direction",
        if ingress { "ingress" } else { "egress" }, "--proto", "udp", "--ports", "5002", "--duration", "5m",
        "--seed", "3", "--output", "json",
    ]);
    let mut arrived = BTreeSet::new();
    let mut buf = vec![0u8; 2048];
    let mut take = |receiver: &std::net::UdpSocket, arrived: &mut BTreeSet<u32>| {
        while let Ok(n) = receiver.recv(&mut buf) {
            assert_eq!(n, SEGMENT, "the receiver got a datagram of {n} bytes");
            arrived.insert(u32::from_be_bytes(buf[..4].try_into().unwrap()));
        }
    };
    receiver.set_nonblocking(true).unwrap();
    let mut payload = vec![0x42u8; SEGMENT * PER_SEND];
    for send in 0..SENDS {
        // Each datagram carries its index in the flow.
        for i in 0..PER_SEND {
            let index = (send * PER_SEND + i) as u32;
            payload[i * SEGMENT..i * SEGMENT + 4].copy_from_slice(&index.to_be_bytes());
        }
        sender.send_to(&payload, dst).expect("a GSO send");
        take(&receiver, &mut arrived);
    }
    receiver.set_nonblocking(false).unwrap();
    receiver.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    take(&receiver, &mut arrived);
    let (code, out, err) = chaos.interrupt();
    assert_eq!(code, 1, "{err}");
    let sent = (SENDS * PER_SEND) as u32;
    let rule = counters(&out, 0);
    let (matched, dropped, passed) = (counter(&rule, "matched"), counter(&rule, "dropped"), counter(&rule, "passed"));
    let lost: Vec<u32> = (0..sent).filter(|i| !arrived.contains(i)).collect();
    let longest = lost.chunk_by(|a, b| b == &(a + 1)).map(|run| run.len()).max().unwrap_or(0);
    println!(
        "REPORT|udp_gso_{}|segments={sent} buffers={SENDS} matched={matched} passed={passed} dropped={dropped} arrived={} longest_loss_run={longest}",
        if ingress { "ingress" } else { "egress" },
        arrived.len()
    );
    let key = chaos_ebpf_common::FlowKey {
        slot: 0,
        direction: direction as u8,
        proto: 17,
        sport: src.port(),
        dport: dst.port(),
        _pad: 0,
        saddr: ip_mapped(src),
        daddr: ip_mapped(dst),
    };
    let flow = chaos_ebpf_common::flow_hash(SEED, 1, &key);
    let threshold = chaos_ebpf_common::probability_threshold(0.3);
    let predicted: Vec<u32> = (0..sent)
        .filter(|&i| {
            let draw = chaos_ebpf_common::decision(SEED, 1, flow, i as u64, chaos_ebpf_common::hash::DOMAIN_LOSS);
            chaos_ebpf_common::hash::hits(draw, threshold)
        })
        .collect();
    assert_eq!(matched, sent as u64, "matched does not count datagrams");
    assert_eq!(passed, arrived.len() as u64, "passed is not what arrived");
    assert_eq!(dropped + passed, matched);
    assert_eq!(lost, predicted, "the lost datagrams are not those the shared hash drops, one decision per datagram");
    assert_eq!(segmenters(&pair.a), Vec::<String>::new(), "the segmenter pair was left behind");
    assert_nothing_left();
}

/// Delay on UDP GSO buffers: every datagram of 10 buffers of 64 waits the delay (its
/// departure time set when judged, enforced by sch_fq on the device it came from), and
/// `delayed` counts datagrams.
fn udp_gso_delay_holds_every_segment() {
    const UDP_SEGMENT: libc::c_int = 103;
    const SEGMENT: usize = 1000;
    const PER_SEND: usize = 64;
    const SENDS: usize = 10;
    const DELAY: Duration = Duration::from_millis(100);
    let pair = Pair::new("gsodly");
    need_fq(&pair);
    let dst = SocketAddr::from((ADDR_B, 5002));
    let receiver = udp_receiver(&pair.b, dst);
    let sender = in_netns(&pair.a, || std::net::UdpSocket::bind(SocketAddr::from((ADDR_A, 5001))).expect("bind"));
    let size: libc::c_int = SEGMENT as libc::c_int;
    // SAFETY: setsockopt on a valid fd with an int option value.
    let set = unsafe {
        use std::os::fd::AsRawFd;
        libc::setsockopt(sender.as_raw_fd(), libc::SOL_UDP, UDP_SEGMENT, (&size as *const libc::c_int).cast(), 4)
    };
    assert_eq!(set, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
    let target = pair.target();
    let chaos = Chaos::start(&[
        "inject", "delay", "--target", &target, "--delay", "100ms", "--proto", "udp", "--ports", "5002",
        "--duration", "5m", "--output", "json",
    ]);
    let start = Instant::now();
    // The receiver notes when each datagram (by its index) arrived, for up to 3 s.
    let collect = std::thread::spawn(move || {
        let mut arrivals = std::collections::BTreeMap::new();
        let mut buf = vec![0u8; 2048];
        receiver.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        while start.elapsed() < Duration::from_secs(3) && arrivals.len() < SENDS * PER_SEND {
            if let Ok(n) = receiver.recv(&mut buf) {
                assert_eq!(n, SEGMENT);
                arrivals.insert(u32::from_be_bytes(buf[..4].try_into().unwrap()), start.elapsed());
            }
        }
        arrivals
    });
    let mut payload = vec![0x42u8; SEGMENT * PER_SEND];
    let mut sent_at = Vec::new();
    for send in 0..SENDS {
        for i in 0..PER_SEND {
            let index = (send * PER_SEND + i) as u32;
            payload[i * SEGMENT..i * SEGMENT + 4].copy_from_slice(&index.to_be_bytes());
        }
        sent_at.push(start.elapsed());
        sender.send_to(&payload, dst).expect("a GSO send");
        std::thread::sleep(Duration::from_millis(20));
    }
    let arrivals = collect.join().expect("receiver thread");
    let (code, out, err) = chaos.interrupt();
    assert_eq!(code, 1, "{err}");
    let rule = counters(&out, 0);
    let waits: Vec<Duration> = arrivals.iter().map(|(index, at)| *at - sent_at[*index as usize / PER_SEND]).collect();
    let shortest = waits.iter().min().copied().unwrap_or_default();
    let longest = waits.iter().max().copied().unwrap_or_default();
    println!(
        "REPORT|udp_gso_delay|datagrams={} arrived={} delayed={} shortest_wait_ms={:.1} longest_wait_ms={:.1}",
        SENDS * PER_SEND,
        arrivals.len(),
        counter(&rule, "delayed"),
        shortest.as_secs_f64() * 1e3,
        longest.as_secs_f64() * 1e3
    );
    assert_eq!(arrivals.len(), SENDS * PER_SEND, "datagrams were lost under delay alone");
    assert_eq!(counter(&rule, "delayed"), (SENDS * PER_SEND) as u64, "delayed does not count datagrams");
    assert!(shortest >= DELAY - Duration::from_millis(2), "a datagram left before its delay: waited {shortest:?}");
    assert_eq!(segmenters(&pair.a), Vec::<String>::new(), "the segmenter pair was left behind");
    assert_nothing_left();
}

fn ip_mapped(addr: SocketAddr) -> [u8; 16] {
    match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

fn udp_gso_egress_is_decided_per_segment() {
    udp_gso_is_decided_per_segment(chaos_ebpf_common::direction::EGRESS);
}

fn udp_gso_ingress_is_decided_per_segment() {
    udp_gso_is_decided_per_segment(chaos_ebpf_common::direction::INGRESS);
}
