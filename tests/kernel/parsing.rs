//! The edges of the datapath: a program attached before chaos-ebpf, fragments, neighbour
//! discovery, packets the parser cannot classify, and the address family of peer
//! prefixes. Real namespaces, real traffic; frames the stack would not build by itself
//! (three VLAN tags) are written with an AF_PACKET socket on the test's own veth.

use std::{
    collections::BTreeSet,
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use chaos_ebpf_common::{decision, direction, flow_hash, hash, probability_threshold, FlowKey};

use crate::support::*;

pub const TESTS: &[Test] = tests![
    a_program_attached_earlier_does_not_bypass_faults,
    a_protected_port_protects_every_fragment,
    fragments_share_their_first_fragments_loss_decision,
    partition_keeps_arp_and_neighbour_discovery,
    unparsed_packets_are_counted,
    a_catch_all_peer_covers_its_family_only,
];

const V6_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const V6_B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

/// A program attached before chaos-ebpf that returns pass (TCX_PASS ends the chain)
/// does not bypass a partition: chaos-ebpf attaches first and lets what it does not drop
/// continue to it. After the run the foreign program is still attached, untouched.
fn a_program_attached_earlier_does_not_bypass_faults() {
    require_root();
    let modes: &[&str] = if kernel_has_tcx() { &["tcx", "netlink"] } else { &["netlink"] };
    for &mode in modes {
        let pair = Pair::new("fgn");
        let foreign = ForeignPass::attach(&pair.a, "va", mode == "netlink");
        let alone = [vec![FOREIGN_NAME.to_owned()], vec![FOREIGN_NAME.to_owned()]];
        assert_eq!(foreign.chain("va"), alone, "{mode}: the foreign program is attached on both hooks");
        assert_eq!(pair.ping(&pair.a, "192.0.2.2", 3, Duration::from_secs(1)), 3, "{mode}: it passes traffic");
        let target = pair.target();
        let chaos = Chaos::start(&["inject", "partition", "--target", &target, "--duration", "5m", "--attach", mode]);
        for hook in foreign.chain("va") {
            assert_eq!(hook.len(), 2, "{mode}: chaos-ebpf and the foreign program on each hook: {hook:?}");
            assert_eq!(hook[1], FOREIGN_NAME, "{mode}: chaos-ebpf runs first: {hook:?}");
        }
        assert_eq!(pair.ping(&pair.a, "192.0.2.2", 3, Duration::from_millis(300)), 0, "{mode}: egress bypassed");
        assert!(!udp_passes(&pair.a, &pair.b, ADDR_B, 5300), "{mode}: UDP out bypassed the partition");
        assert!(!udp_passes(&pair.b, &pair.a, ADDR_A, 5301), "{mode}: UDP in bypassed the partition");
        let (code, _, err) = chaos.interrupt();
        assert_eq!(code, 1, "{err}");
        assert_eq!(foreign.chain("va"), alone, "{mode}: chaos-ebpf changed a program it did not attach");
        assert_eq!(pair.ping(&pair.a, "192.0.2.2", 3, Duration::from_secs(1)), 3, "{mode}: traffic after the run");
        drop(foreign);
        assert_nothing_left();
        println!("{mode}: chaos-ebpf ran first on both hooks; the foreign program stayed attached");
    }
}

const BIG: usize = 4000;

/// Sends `count` datagrams of 4000 bytes (3 fragments on a 1500-byte MTU) from `src` in
/// `from_ns`, the sequence number in the first 4 bytes; returns the sequence numbers of
/// the whole datagrams that arrived (the receiver's stack reassembles them).
fn big_datagrams(from_ns: &str, to_ns: &str, src: SocketAddr, dst: SocketAddr, count: u32) -> BTreeSet<u32> {
    let receiver = in_netns(to_ns, move || {
        let s = UdpSocket::bind(dst).expect("bind receiver");
        let size: libc::c_int = 32 << 20;
        // SAFETY: setsockopt on a valid fd with an int option value.
        unsafe {
            libc::setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (&size as *const i32).cast(), 4)
        };
        s.set_nonblocking(true).unwrap();
        s
    });
    let sender = in_netns(from_ns, move || UdpSocket::bind(src).expect("bind sender"));
    let mut got = BTreeSet::new();
    let mut buf = vec![0u8; 2 * BIG];
    let mut drain = |got: &mut BTreeSet<u32>| {
        while let Ok(n) = receiver.recv(&mut buf) {
            if n == BIG {
                got.insert(u32::from_be_bytes(buf[..4].try_into().unwrap()));
            }
        }
    };
    let mut payload = vec![0u8; BIG];
    for seq in 0..count {
        payload[..4].copy_from_slice(&seq.to_be_bytes());
        sender.send_to(&payload, dst).expect("send");
        if seq % 32 == 31 {
            drain(&mut got);
        }
    }
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        drain(&mut got);
        std::thread::sleep(Duration::from_millis(20));
    }
    got
}

/// One address of each side per family.
fn endpoints(v6: bool) -> (IpAddr, IpAddr) {
    if v6 {
        (V6_A.into(), V6_B.into())
    } else {
        (ADDR_A.into(), ADDR_B.into())
    }
}

fn mapped(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Resolves the IPv6 neighbour before a test sends (the pair primes IPv4 only). The first
/// echo right after the addresses come up is sometimes lost: up to five tries.
fn prime_v6(pair: &Pair) {
    let replied = (0..5).any(|_| {
        let out = sh("ip", &["netns", "exec", &pair.a, "ping", "-6", "-n", "-q", "-c", "1", "-W", "1", "fd00::2"]);
        parse_ping_received(&String::from_utf8_lossy(&out.stdout)) == 1
    });
    assert!(replied, "no IPv6 between the pair");
}

/// A rule's counters from a JSON run report (one step, rule `index`).
/// `--protect udp:PORT` covers every fragment of a datagram, not only the first (the
/// later ones carry no ports): under loss 0.5 every 4 KB datagram to the port arrives,
/// while datagrams to another port are lost.
fn a_protected_port_protects_every_fragment() {
    require_root();
    for v6 in [false, true] {
        let pair = Pair::new("fprot");
        prime_v6(&pair);
        let (a, b) = endpoints(v6);
        let target = pair.target();
        let chaos = Chaos::start(&[
            "inject",
            "loss",
            "--target",
            &target,
            "--probability",
            "0.5",
            "--direction",
            "egress",
            "--protect",
            "udp:5400",
            "--duration",
            "5m",
            "--seed",
            "11",
            "--output",
            "json",
        ]);
        let n = 300;
        let protected = big_datagrams(&pair.a, &pair.b, SocketAddr::new(a, 5399), SocketAddr::new(b, 5400), n);
        let other = big_datagrams(&pair.a, &pair.b, SocketAddr::new(a, 5401), SocketAddr::new(b, 5402), n);
        let (code, out, err) = chaos.interrupt();
        assert_eq!(code, 1, "{err}");
        let c = counters(&out, 0);
        println!("v6={v6}: protected port {} of {n} arrived, other port {} of {n}; {c}", protected.len(), other.len());
        assert_eq!(protected.len(), n as usize, "v6={v6}: protected datagrams lost their later fragments");
        assert!((n as usize / 4..n as usize * 3 / 4).contains(&other.len()), "v6={v6}: loss 0.5 elsewhere");
        assert!(counter(&c, "protected") >= 3 * n as u64, "v6={v6}: every fragment counts as protected: {c}");
        assert_eq!(counter(&c, "unparsed"), 0, "{c}");
        assert_nothing_left();
    }
}

/// Under loss p on a port rule, a 3-fragment datagram is lost with probability p (the
/// later fragments replay the first fragment's decision), not 1-(1-p)^3; and exactly the
/// datagrams the shared hash predicts for the first fragments' flow are lost.
fn fragments_share_their_first_fragments_loss_decision() {
    require_root();
    let p = 0.3;
    let n = 2000u32;
    for v6 in [false, true] {
        let pair = Pair::new("ffrag");
        prime_v6(&pair);
        let (a, b) = endpoints(v6);
        let seed = 21u64;
        let target = pair.target();
        let chaos = Chaos::start(&[
            "inject",
            "loss",
            "--target",
            &target,
            "--probability",
            &p.to_string(),
            "--proto",
            "udp",
            "--ports",
            "5500",
            "--direction",
            "egress",
            "--duration",
            "5m",
            "--seed",
            &seed.to_string(),
            "--output",
            "json",
        ]);
        let got = big_datagrams(&pair.a, &pair.b, SocketAddr::new(a, 5501), SocketAddr::new(b, 5500), n);
        let (code, out, err) = chaos.interrupt();
        assert_eq!(code, 1, "{err}");
        let c = counters(&out, 0);
        let lost: Vec<u32> = (0..n).filter(|s| !got.contains(s)).collect();
        let key = FlowKey {
            slot: 0,
            direction: direction::EGRESS as u8,
            proto: 17,
            sport: 5501,
            dport: 5500,
            _pad: 0,
            saddr: mapped(a),
            daddr: mapped(b),
        };
        let flow = flow_hash(seed, 1, &key);
        let threshold = probability_threshold(p);
        let predicted: Vec<u32> =
            (0..n).filter(|&i| hash::hits(decision(seed, 1, flow, i as u64, hash::DOMAIN_LOSS), threshold)).collect();
        let measured = lost.len() as f64 / n as f64;
        let sigma = (p * (1.0 - p) / n as f64).sqrt();
        println!(
            "v6={v6}: lost {} of {n} datagrams ({measured:.4}, {:.2} sigma from p={p}; 1-(1-p)^3 = {:.3}); {c}",
            lost.len(),
            (measured - p) / sigma,
            1.0 - (1.0 - p).powi(3)
        );
        assert!((measured - p).abs() <= 4.0 * sigma, "v6={v6}: datagram loss {measured} is not p={p}");
        assert_eq!(lost, predicted, "v6={v6}: lost datagrams differ from the shared hash's first-fragment decisions");
        assert_eq!(counter(&c, "matched"), 3 * n as u64, "v6={v6}: all 3 fragments match the port rule: {c}");
        assert_eq!(counter(&c, "dropped"), 3 * lost.len() as u64, "v6={v6}: {c}");
        assert_eq!(counter(&c, "unparsed"), 0, "{c}");
        assert_nothing_left();
    }
}

/// The neighbour entry of `addr` in `ns` (`ip neigh` state words), empty if none.
fn neighbour_state(ns: &str, addr: &str) -> String {
    let out = sh("ip", &["-n", ns, "neigh", "show", addr]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A partition cuts IPv4 and IPv6 but address resolution works in both families: ARP is
/// not IP, and neighbour discovery (ICMPv6 133-137) is exempt like it.
fn partition_keeps_arp_and_neighbour_discovery() {
    require_root();
    let pair = Pair::new("nd");
    prime_v6(&pair);
    let target = pair.target();
    let chaos = Chaos::start(&["inject", "partition", "--target", &target, "--duration", "5m", "--output", "json"]);
    for ns in [&pair.a, &pair.b] {
        must("ip", &["-n", ns, "neigh", "flush", "dev", if ns == &pair.a { "va" } else { "vb" }]);
    }
    assert_eq!(pair.ping(&pair.a, "192.0.2.2", 3, Duration::from_millis(500)), 0, "IPv4 not cut");
    let v6 =
        sh("ip", &["netns", "exec", &pair.a, "ping", "-6", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "0.5", "fd00::2"]);
    assert_eq!(parse_ping_received(&String::from_utf8_lossy(&v6.stdout)), 0, "IPv6 not cut");
    for addr in ["192.0.2.2", "fd00::2"] {
        let state = neighbour_state(&pair.a, addr);
        println!("under partition: {state}");
        assert!(
            ["REACHABLE", "STALE", "DELAY", "PROBE"].iter().any(|s| state.contains(s)),
            "{addr} did not resolve under a partition: '{state}'"
        );
    }
    let (code, out, err) = chaos.interrupt();
    assert_eq!(code, 1, "{err}");
    let c = counters(&out, 0);
    assert!(counter(&c, "dropped") >= 6, "the pings were dropped by the rule: {c}");
    assert_nothing_left();
}

/// An Ethernet frame from va's MAC to vb's with `tags` 802.1Q tags around an IPv4/UDP
/// datagram 192.0.2.1:5601 -> 192.0.2.2:5601.
fn tagged_frame(src_mac: [u8; 6], dst_mac: [u8; 6], tags: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    for i in 0..tags {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 10 + i as u8]);
    }
    f.extend_from_slice(&[0x08, 0x00]);
    let payload = b"tagged";
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut ip = vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 1, 0, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&ADDR_A.octets());
    ip.extend_from_slice(&ADDR_B.octets());
    let sum = ip.chunks(2).map(|w| u16::from_be_bytes([w[0], w[1]]) as u32).sum::<u32>();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&5601u16.to_be_bytes());
    f.extend_from_slice(&5601u16.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn mac(ns: &str, dev: &str) -> [u8; 6] {
    let out = sh("ip", &["-n", ns, "link", "show", "dev", dev]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let addr = text.split("link/ether ").nth(1).and_then(|t| t.split_whitespace().next()).unwrap_or("");
    let mut bytes = [0u8; 6];
    for (b, part) in bytes.iter_mut().zip(addr.split(':')) {
        *b = u8::from_str_radix(part, 16).unwrap_or_else(|_| panic!("no MAC in '{text}'"));
    }
    bytes
}

/// Sends raw frames on `dev` in `ns` with an AF_PACKET socket (they pass the device's
/// TC egress hook like any other packet).
fn send_frames(ns: &str, dev: &'static str, frame: Vec<u8>, count: u32) {
    in_netns(ns, move || {
        // SAFETY: plain socket calls on a socket this closure owns.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(fd);
            let name = std::ffi::CString::new(dev).unwrap();
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = (libc::ETH_P_8021Q as u16).to_be();
            addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            for _ in 0..count {
                let sent = libc::sendto(
                    fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(sent, frame.len() as isize, "sendto: {}", io::Error::last_os_error());
            }
        }
    });
}

/// Sends `count` UDP datagrams to [fd00::2]:port with a 200-byte destination options
/// header (IPV6_DSTOPTS): the UDP header then starts beyond the parser's 128-byte head.
/// Returns how many arrived.
fn long_extension_chain(pair: &Pair, port: u16, count: u32) -> usize {
    let receiver = in_netns(&pair.b, move || {
        let s = UdpSocket::bind(SocketAddr::new(V6_B.into(), port)).expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        s
    });
    in_netns(&pair.a, move || {
        let s = UdpSocket::bind(SocketAddr::new(V6_A.into(), 0)).expect("bind");
        // Next header (filled in by the kernel), length in 8-byte units after the first
        // 8 (200 bytes: 24), one 194-byte experimental option (RFC 4727 type 0x1e: its
        // top bits say "skip if unknown"), two Pad1. (The receiver drops a PadN longer
        // than 7 bytes.)
        let mut opts = [0u8; 200];
        opts[1] = 24;
        opts[2] = 0x1e;
        opts[3] = 194;
        // SAFETY: setsockopt with a buffer of the size passed.
        let ret = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_DSTOPTS,
                opts.as_ptr().cast(),
                opts.len() as u32,
            )
        };
        assert_eq!(ret, 0, "IPV6_DSTOPTS: {}", io::Error::last_os_error());
        for _ in 0..count {
            s.send_to(b"long chain", SocketAddr::new(V6_B.into(), port)).expect("send");
        }
    });
    let mut buf = [0u8; 64];
    (0..count).take_while(|_| receiver.recv(&mut buf).is_ok()).count()
}

/// Two VLAN tags (QinQ) are parsed and matched; three tags and an IPv6 extension chain
/// reaching beyond the parsed head are not: they pass (fail open) and count as
/// `unparsed`, visible in the JSON report.
fn unparsed_packets_are_counted() {
    require_root();
    let pair = Pair::new("unp");
    prime_v6(&pair);
    let target = pair.target();
    let chaos = Chaos::start(&[
        "inject",
        "loss",
        "--target",
        &target,
        "--probability",
        "1",
        "--proto",
        "udp",
        "--ports",
        "5601",
        "--direction",
        "egress",
        "--duration",
        "5m",
        "--output",
        "json",
    ]);
    let (src, dst) = (mac(&pair.a, "va"), mac(&pair.b, "vb"));
    send_frames(&pair.a, "va", tagged_frame(src, dst, 2), 5);
    send_frames(&pair.a, "va", tagged_frame(src, dst, 3), 7);
    let arrived = long_extension_chain(&pair, 5601, 20);
    let (code, out, err) = chaos.interrupt();
    assert_eq!(code, 1, "{err}");
    let c = counters(&out, 0);
    println!("{arrived} of 20 long-chain datagrams arrived; {c}");
    assert_eq!(counter(&c, "matched"), 5, "the double-tagged frames match the port rule: {c}");
    assert_eq!(counter(&c, "dropped"), 5, "{c}");
    assert_eq!(counter(&c, "unparsed"), 7 + 20, "three tags and the long chain are unparsed: {c}");
    assert_eq!(arrived, 20, "unparsed packets pass (fail open)");
    assert_nothing_left();
}

/// `--peer ::/0` is every IPv6 peer and no IPv4 one (and `0.0.0.0/0` the reverse): the
/// family is part of the peer key.
fn a_catch_all_peer_covers_its_family_only() {
    require_root();
    let pair = Pair::new("fam");
    prime_v6(&pair);
    let target = pair.target();
    let ping6 = |count: &str| {
        let out = sh(
            "ip",
            &["netns", "exec", &pair.a, "ping", "-6", "-n", "-q", "-c", count, "-i", "0.05", "-W", "0.3", "fd00::2"],
        );
        parse_ping_received(&String::from_utf8_lossy(&out.stdout))
    };
    for (peer, v6_cut) in [("::/0", true), ("0.0.0.0/0", false)] {
        let chaos = Chaos::start(&["inject", "partition", "--target", &target, "--peer", peer, "--duration", "5m"]);
        let v4 = pair.ping(&pair.a, "192.0.2.2", 3, Duration::from_millis(300));
        let v6 = ping6("3");
        chaos.interrupt();
        println!("--peer {peer}: IPv4 {v4}/3 and IPv6 {v6}/3 replies");
        assert_eq!((v4, v6), if v6_cut { (3, 0) } else { (0, 3) }, "--peer {peer}");
        assert_nothing_left();
    }
}
