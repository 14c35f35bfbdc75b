//! Rate: a rate limit holds TCP goodput to the configured rate.

use std::time::Duration;

use crate::support::*;

pub const TESTS: &[Test] = tests![
    rate_limits_throughput,
];

/// A rate limit gives TCP goodput within 10% of the configured rate, counted as the rate
/// limits it: in frame bytes. Each wire segment (one per buffer, docs/datapath.md)
/// carries 1448 payload bytes in a 1514-byte frame on this veth.
fn rate_limits_throughput() {
    require_root();
    let pair = Pair::new("rate");
    need_fq(&pair);
    let target = pair.target();
    let chaos = Chaos::start(&["inject", "rate", "--target", &target, "--rate", "8mbit", "--duration", "5m"]);
    let goodput = tcp_goodput(&pair.a, &pair.b, ADDR_B, 7100, Duration::from_secs(1), Duration::from_secs(3));
    chaos.interrupt();
    let want = 8e6 / 8.0 * 1448.0 / 1514.0;
    println!("REPORT|rate_8mbit|goodput_bytes_s={goodput:.0}|ratio={:.3}", goodput / want);
    assert!((goodput / want - 1.0).abs() < 0.10, "goodput {goodput:.0} B/s vs {want} B/s");
    assert_nothing_left();
}
