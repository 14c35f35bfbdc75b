//! TCP through a delay, against netem in the same run: a delayed segment of a local
//! socket must not hold its socket's send budget while it waits (TCP small queues would
//! let ~2 segments per connection through per delay), so chaos-ebpf re-sends it as a
//! copy without the socket, as netem orphans it. Rows `REPORT|tcp_delay` go into
//! docs/netem-comparison.md.

use std::time::Duration;

use crate::support::*;

pub const TESTS: &[Test] = tests![tcp_throughput_under_delay_against_netem];

fn tcp_throughput_under_delay_against_netem() {
    let pair = Pair::new("tcpd");
    need_fq(&pair);
    if !kernel_has_netem(&pair) {
        skip("this kernel has no sch_netem (CONFIG_NET_SCH_NETEM); `cargo xtask vm-test` runs it");
    }
    let target = pair.target();
    let goodput = |port: u16| {
        tcp_goodput(&pair.a, &pair.b, ADDR_B, port, Duration::from_secs(1), Duration::from_secs(2)) * 8.0 / 1e6
    };
    let mut port = 5300;
    for delay in ["10ms", "50ms", "100ms"] {
        // netem as users run it (GSO buffers of many segments), and with one segment
        // per buffer as chaos-ebpf makes it (the same per-packet work).
        let mut netem_runs = Vec::new();
        for segs in ["65535", "1"] {
            port += 1;
            must("ip", &["-n", &pair.a, "link", "set", "va", "gso_max_segs", segs]);
            must("ip", &["netns", "exec", &pair.a, "tc", "qdisc", "add", "dev", "va", "root", "netem", "delay", delay, "limit", "100000"]);
            netem_runs.push(goodput(port));
            must("ip", &["netns", "exec", &pair.a, "tc", "qdisc", "del", "dev", "va", "root"]);
        }
        must("ip", &["-n", &pair.a, "link", "set", "va", "gso_max_segs", "65535"]);
        let (netem, netem_per_segment) = (netem_runs[0], netem_runs[1]);
        port += 1;
        let chaos = Chaos::start(&[
            "inject",
            "delay",
            "--target",
            &target,
            "--delay",
            delay,
            "--direction",
            "egress",
            "--duration",
            "5m",
        ]);
        let ours = goodput(port);
        let (code, _, err) = chaos.interrupt();
        assert_eq!(code, 1, "{err}");
        println!(
            "REPORT|tcp_delay|{delay}|netem_mbit={netem:.1}|netem_per_segment_mbit={netem_per_segment:.1}|chaos_mbit={ours:.1}|ratio_per_segment={:.3}",
            ours / netem_per_segment
        );
        // Same per-packet work, so the same window over the delay should give the same
        // rate; TCG timing varies either by tens of percent between runs, so half of
        // netem's is the bar (before re-sending without the socket it was 1/500).
        assert!(
            ours >= 0.5 * netem_per_segment,
            "TCP through a {delay} delay: {ours:.1} Mbit/s, netem {netem_per_segment:.1} with one segment per buffer"
        );
    }
    assert_nothing_left();
}
