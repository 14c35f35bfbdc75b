//! Partition and blackhole: both ways, one way and new connections only (established TCP
//! killed or kept), a blackhole on one port, IPv6 peers, shadow mode (counts, drops
//! nothing), and what a target covers: a cgroup or a pid's cgroup is faulted, other
//! cgroups on the same interface are not.

use std::time::Duration;

use crate::support::*;

pub const TESTS: &[Test] = tests![
    partition_both_cuts_both_ways_and_kills_established_tcp,
    partition_one_way_cuts_one_direction,
    partition_new_connections_only_keeps_established_tcp,
    blackhole_drops_only_the_port,
    ipv6_peer_partition,
    shadow_mode_counts_without_dropping,
    cgroup_target_spares_other_cgroups,
    pid_target_faults_its_cgroup_only,
];

fn partition_both_cuts_both_ways_and_kills_established_tcp() {
    require_root();
    let pair = Pair::new("pboth");
    tcp_echo_server(&pair.b, sock(ADDR_B, 6000));
    let mut established =
        tcp_connect(&pair.a, sock(ADDR_B, 6000), Duration::from_secs(2)).expect("connect before the fault");
    assert!(tcp_echo(&mut established, Duration::from_secs(2)));
    let target = pair.target();
    let chaos = Chaos::start(&[
        "inject",
        "partition",
        "--target",
        &target,
        "--peer",
        "192.0.2.2/32",
        "--mode",
        "both",
        "--duration",
        "5m",
    ]);
    let ping = sh("ip", &["netns", "exec", &pair.a, "ping", "-n", "-c", "5", "-i", "0.01", "-W", "0.3", "192.0.2.2"]);
    let text = String::from_utf8_lossy(&ping.stdout);
    // Each request sent once and lost silently (an egress drop that surfaced as ENOBUFS
    // would make ping resend it and print a sendmsg error).
    assert!(text.contains("5 packets transmitted, 0 received"), "a reached b through a partition: {text}");
    assert!(!String::from_utf8_lossy(&ping.stderr).contains("sendmsg"), "ping saw a send error");
    assert_eq!(pair.ping(&pair.b, "192.0.2.1", 5, Duration::from_millis(300)), 0, "b reached a through a partition");
    assert!(!udp_passes(&pair.b, &pair.a, ADDR_A, 5100), "UDP b -> a passed");
    assert!(
        !tcp_echo(&mut established, Duration::from_millis(800)),
        "an established connection survived a 'both' partition"
    );
    // IPv6 traffic to another peer is outside the match: untouched.
    assert!(sh("ip", &["netns", "exec", &pair.a, "ping", "-6", "-c", "2", "-i", "0.05", "-W", "1", "fd00::2"])
        .status
        .success());
    chaos.interrupt();
    assert_nothing_left();
    assert_eq!(pair.ping(&pair.a, "192.0.2.2", 3, Duration::from_secs(1)), 3, "traffic did not come back after revert");
}

fn partition_one_way_cuts_one_direction() {
    require_root();
    let pair = Pair::new("poneway");
    let target = pair.target();
    {
        let chaos = Chaos::start(&[
            "inject",
            "partition",
            "--target",
            &target,
            "--mode",
            "oneway",
            "--direction",
            "egress",
            "--proto",
            "udp",
            "--duration",
            "5m",
        ]);
        assert!(!udp_passes(&pair.a, &pair.b, ADDR_B, 5200), "egress cut, but a -> b passed");
        assert!(udp_passes(&pair.b, &pair.a, ADDR_A, 5201), "only egress cut, but b -> a failed");
        chaos.interrupt();
    }
    {
        let chaos = Chaos::start(&[
            "inject",
            "partition",
            "--target",
            &target,
            "--mode",
            "oneway",
            "--direction",
            "ingress",
            "--proto",
            "udp",
            "--duration",
            "5m",
        ]);
        assert!(udp_passes(&pair.a, &pair.b, ADDR_B, 5202), "only ingress cut, but a -> b failed");
        assert!(!udp_passes(&pair.b, &pair.a, ADDR_A, 5203), "ingress cut, but b -> a passed");
        chaos.interrupt();
    }
    assert_nothing_left();
}

fn partition_new_connections_only_keeps_established_tcp() {
    require_root();
    let pair = Pair::new("pnew");
    tcp_echo_server(&pair.b, sock(ADDR_B, 6001));
    let mut established =
        tcp_connect(&pair.a, sock(ADDR_B, 6001), Duration::from_secs(2)).expect("connect before the fault");
    let target = pair.target();
    let chaos = Chaos::start(&[
        "inject",
        "partition",
        "--target",
        &target,
        "--peer",
        "192.0.2.2",
        "--mode",
        "new",
        "--duration",
        "5m",
    ]);
    for _ in 0..5 {
        assert!(
            tcp_echo(&mut established, Duration::from_secs(2)),
            "an established connection broke under 'new connections only'"
        );
    }
    assert!(
        tcp_connect(&pair.a, sock(ADDR_B, 6001), Duration::from_millis(700)).is_err(),
        "a new connection got through"
    );
    // Connections the other way are new too.
    tcp_echo_server(&pair.a, sock(ADDR_A, 6002));
    assert!(
        tcp_connect(&pair.b, sock(ADDR_A, 6002), Duration::from_millis(700)).is_err(),
        "a new inbound connection got through"
    );
    // Non-TCP traffic is not connection-oriented: untouched.
    assert_eq!(pair.ping(&pair.a, "192.0.2.2", 3, Duration::from_secs(1)), 3);
    let (code, out, _) = chaos.interrupt();
    assert_eq!(code, 1);
    assert!(out.contains("dropped"), "{out}");
    assert_nothing_left();
    assert!(
        tcp_connect(&pair.a, sock(ADDR_B, 6001), Duration::from_secs(2)).is_ok(),
        "new connections still fail after revert"
    );
}

fn blackhole_drops_only_the_port() {
    require_root();
    let pair = Pair::new("bh");
    let target = pair.target();
    let chaos = Chaos::start(&[
        "inject",
        "blackhole",
        "--target",
        &target,
        "--proto",
        "udp",
        "--ports",
        "443",
        "--duration",
        "5m",
    ]);
    assert!(!udp_passes(&pair.a, &pair.b, ADDR_B, 443), "UDP/443 passed a blackhole");
    assert!(udp_passes(&pair.a, &pair.b, ADDR_B, 444), "UDP/444 was dropped by a UDP/443 blackhole");
    assert_eq!(pair.ping(&pair.a, "192.0.2.2", 3, Duration::from_secs(1)), 3);
    chaos.interrupt();
    assert_nothing_left();
}

/// IPv6 peers go through the same trie: cut fd00::2, IPv4 to the same host untouched.
fn ipv6_peer_partition() {
    require_root();
    let pair = Pair::new("v6");
    let target = pair.target();
    let chaos =
        Chaos::start(&["inject", "partition", "--target", &target, "--peer", "fd00::2/128", "--duration", "5m"]);
    let v6 = sh(
        "ip",
        &["netns", "exec", &pair.a, "ping", "-6", "-n", "-q", "-c", "3", "-i", "0.05", "-W", "0.3", "fd00::2"],
    );
    assert_eq!(parse_ping_received(&String::from_utf8_lossy(&v6.stdout)), 0, "IPv6 peer not cut");
    assert_eq!(pair.ping(&pair.a, "192.0.2.2", 3, Duration::from_secs(1)), 3, "IPv4 hit by an IPv6 peer rule");
    chaos.interrupt();
    assert_nothing_left();
}

/// Shadow mode counts what it would drop and drops nothing.
fn shadow_mode_counts_without_dropping() {
    require_root();
    let pair = Pair::new("shadow");
    let target = pair.target();
    let chaos = Chaos::start(&[
        "inject",
        "partition",
        "--target",
        &target,
        "--peer",
        "192.0.2.2",
        "--shadow",
        "--duration",
        "5m",
    ]);
    assert_eq!(pair.ping(&pair.a, "192.0.2.2", 10, Duration::from_secs(1)), 10, "shadow mode dropped packets");
    let (_, out, _) = chaos.interrupt();
    let dropped: u64 = out
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("seen ")
                .and_then(|r| r.split(" dropped ").nth(1)?.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    assert!(dropped >= 20, "shadow counted {dropped} would-be drops for 10 echo round trips: {out}");
    assert_nothing_left();
}

/// A cgroup target faults its own processes and leaves another cgroup on the same
/// interface alone.
fn cgroup_target_spares_other_cgroups() {
    require_root();
    let pair = Pair::new("cg");
    let hit = TestCgroup::new("hit");
    let spared = TestCgroup::new("spared");
    // A member already inside the namespace, so the tool finds where to attach.
    let mut anchor = hit.spawn("ip", &["netns", "exec", &pair.a, "sleep", "60"]);
    std::thread::sleep(Duration::from_millis(200));
    let target = format!("cgroup:{}", hit.relative);
    let chaos = Chaos::start(&[
        "inject",
        "partition",
        "--target",
        &target,
        "--mode",
        "oneway",
        "--direction",
        "egress",
        "--duration",
        "5m",
    ]);
    let ping = |cg: &TestCgroup| {
        let child = cg.spawn(
            "ip",
            &["netns", "exec", &pair.a, "ping", "-n", "-q", "-c", "10", "-i", "0.01", "-W", "0.3", "192.0.2.2"],
        );
        let out = child.wait_with_output().unwrap();
        parse_ping_received(&String::from_utf8_lossy(&out.stdout))
    };
    assert_eq!(ping(&hit), 0, "the targeted cgroup got through");
    assert_eq!(ping(&spared), 10, "a process in another cgroup was faulted");
    // The test process itself (another cgroup) is untouched too.
    assert_eq!(pair.ping(&pair.a, "192.0.2.2", 3, Duration::from_secs(1)), 3);
    chaos.interrupt();
    let _ = anchor.kill();
    let _ = anchor.wait();
    assert_nothing_left();
}

/// A pid target faults the process's cgroup (egress) and nothing else; a process in the
/// root cgroup is refused, since its cgroup would be every process there.
fn pid_target_faults_its_cgroup_only() {
    require_root();
    let pair = Pair::new("pid");
    let group = TestCgroup::new("pid");
    let mut anchor = group.spawn("ip", &["netns", "exec", &pair.a, "sleep", "60"]);
    std::thread::sleep(Duration::from_millis(200));
    let target = format!("pid:{}", anchor.id());
    let chaos = Chaos::start(&[
        "inject",
        "partition",
        "--target",
        &target,
        "--mode",
        "oneway",
        "--direction",
        "egress",
        "--proto",
        "icmp",
        "--duration",
        "5m",
    ]);
    let child = group.spawn(
        "ip",
        &["netns", "exec", &pair.a, "ping", "-n", "-q", "-c", "5", "-i", "0.01", "-W", "0.3", "192.0.2.2"],
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(parse_ping_received(&String::from_utf8_lossy(&out.stdout)), 0, "the pid's cgroup got through");
    assert_eq!(pair.ping(&pair.a, "192.0.2.2", 5, Duration::from_secs(1)), 5, "another cgroup was faulted");
    chaos.interrupt();
    let _ = anchor.kill();
    let _ = anchor.wait();
    assert_nothing_left();

    let own = format!("pid:{}", std::process::id());
    let (code, _, err) = chaos_run(&["inject", "loss", "--target", &own, "--probability", "0.1", "--duration", "1s"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("root cgroup") && err.contains("fix"), "{err}");
    assert_nothing_left();
}
