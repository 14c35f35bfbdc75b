//! TCP through a delay: chaos-ebpf holds delayed segments in sch_fq while the sender
//! still owns them, so TCP small queues (net.ipv4.tcp_limit_output_bytes per socket)
//! bound the bytes in flight through the delay; netem orphans the segment and has no
//! such bound. Measured side by side in one run (REPORT|tcp_delay rows, copied into
//! docs/netem-comparison.md), with and without the knob raised.

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
    let goodput = |port: u16| {
        tcp_goodput(&pair.a, &pair.b, ADDR_B, port, Duration::from_secs(2), Duration::from_secs(3)) * 8.0 / 1e6
    };
    let mut port = 5300;
    for delay in ["10ms", "50ms", "100ms"] {
        port += 1;
        must("ip", &["netns", "exec", &pair.a, "tc", "qdisc", "add", "dev", "va", "root", "netem", "delay", delay, "limit", "100000"]);
        let netem = goodput(port);
        must("ip", &["netns", "exec", &pair.a, "tc", "qdisc", "del", "dev", "va", "root"]);
        let mut rows = Vec::new();
        for tlob in [default_tlob.as_str(), "16777216"] {
            sysctl_in(&pair.a, "net.ipv4.tcp_limit_output_bytes", Some(tlob));
            port += 1;
            let chaos = Chaos::start(&["inject", "delay", "--target", &target, "--delay", delay, "--direction", "egress", "--duration", "5m"]);
            let ours = goodput(port);
            let (code, _, err) = chaos.interrupt();
            assert_eq!(code, 1, "{err}");
            rows.push((tlob.to_owned(), ours));
        }
        sysctl_in(&pair.a, "net.ipv4.tcp_limit_output_bytes", Some(&default_tlob));
        for (tlob, ours) in &rows {
            println!(
                "REPORT|tcp_delay|{delay}|netem_mbit={netem:.1}|chaos_mbit={ours:.1}|ratio={:.2}|tcp_limit_output_bytes={tlob}",
                ours / netem
            );
        }
        assert!(netem > 0.0 && rows.iter().all(|(_, g)| *g > 0.0), "no TCP traffic passed");
    }
    assert_nothing_left();
}
