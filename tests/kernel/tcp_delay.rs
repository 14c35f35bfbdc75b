//! TCP through a delay: chaos-ebpf holds delayed segments in sch_fq while the sending
//! socket still owns them, so TCP small queues (about 1 ms of the socket's pacing rate,
//! at least two segments) bound what waits in the delay, and a connection that cannot
//! fill its window does not grow it; netem orphans the segment and has no such bound.
//! Measured side by side in one run (REPORT|tcp_delay rows, copied into
//! docs/netem-comparison.md), with the knobs a user would try; the run must warn.

use std::time::Duration;

use crate::support::*;

pub const TESTS: &[Test] = tests![tcp_throughput_under_delay_against_netem];

/// Reads or writes a net sysctl of namespace `ns` (/proc/sys/net is the calling
/// thread's namespace's).
fn sysctl_in(ns: &str, key: &str, value: Option<&str>) -> String {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.map(str::to_owned);
    in_netns(ns, move || match value {
        Some(v) => {
            std::fs::write(&path, &v).unwrap_or_else(|e| panic!("writing {path}: {e}"));
            v
        }
        None => std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}")).trim().to_owned(),
    })
}

fn tcp_throughput_under_delay_against_netem() {
    let pair = Pair::new("tcpd");
    need_fq(&pair);
    if !kernel_has_netem(&pair) {
        skip("this kernel has no sch_netem (CONFIG_NET_SCH_NETEM); `cargo xtask vm-test` runs it");
    }
    let target = pair.target();
    let default_tlob = sysctl_in(&pair.a, "net.ipv4.tcp_limit_output_bytes", None);
    let default_ss = sysctl_in(&pair.a, "net.ipv4.tcp_pacing_ss_ratio", None);
    let default_ca = sysctl_in(&pair.a, "net.ipv4.tcp_pacing_ca_ratio", None);
    let goodput = |port: u16| {
        tcp_goodput(&pair.a, &pair.b, ADDR_B, port, Duration::from_secs(1), Duration::from_secs(2)) * 8.0 / 1e6
    };
    let mut port = 5300;
    for delay in ["10ms", "50ms", "100ms"] {
        port += 1;
        must("ip", &["netns", "exec", &pair.a, "tc", "qdisc", "add", "dev", "va", "root", "netem", "delay", delay, "limit", "100000"]);
        let netem = goodput(port);
        must("ip", &["netns", "exec", &pair.a, "tc", "qdisc", "del", "dev", "va", "root"]);
        let mut rows = Vec::new();
        // The knobs a user would try: the TSQ byte limit, and pacing ratios (the TSQ
        // limit is ~1 ms of the pacing rate) at their maximum, 1000%.
        for knob in ["defaults", "tcp_limit_output_bytes=16777216", "tcp_pacing_ss/ca_ratio=1000"] {
            match knob {
                "defaults" => {}
                "tcp_limit_output_bytes=16777216" => {
                    sysctl_in(&pair.a, "net.ipv4.tcp_limit_output_bytes", Some("16777216"));
                }
                _ => {
                    sysctl_in(&pair.a, "net.ipv4.tcp_limit_output_bytes", Some(&default_tlob));
                    sysctl_in(&pair.a, "net.ipv4.tcp_pacing_ss_ratio", Some("1000"));
                    sysctl_in(&pair.a, "net.ipv4.tcp_pacing_ca_ratio", Some("1000"));
                }
            }
            port += 1;
            let chaos = Chaos::start(&["inject", "delay", "--target", &target, "--delay", delay, "--direction", "egress", "--duration", "5m"]);
            let ours = goodput(port);
            let (code, _, err) = chaos.interrupt();
            assert_eq!(code, 1, "{err}");
            assert!(err.contains("warning: delay caps TCP"), "the run does not warn of the cap: {err}");
            rows.push((knob, ours));
        }
        sysctl_in(&pair.a, "net.ipv4.tcp_pacing_ss_ratio", Some(&default_ss));
        sysctl_in(&pair.a, "net.ipv4.tcp_pacing_ca_ratio", Some(&default_ca));
        for (knob, ours) in &rows {
            println!("REPORT|tcp_delay|{delay}|netem_mbit={netem:.1}|chaos_mbit={ours:.1}|ratio={:.3}|{knob}", ours / netem);
        }
        assert!(netem > 0.0 && rows.iter().all(|(_, g)| *g > 0.0), "no TCP traffic passed");
    }
    assert_nothing_left();
}
