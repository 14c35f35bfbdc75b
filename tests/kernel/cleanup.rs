//! Cleanup: `cleanup` finds and removes what a killed run left on the netlink attach
//! path (filters and the clsact qdisc), and a clean exit, or the last of several runs
//! sharing the qdisc, removes it by itself.

use std::time::{Duration, Instant};

use crate::support::*;

pub const TESTS: &[Test] = tests![
    cleanup_removes_a_deliberately_left_netlink_rule,
];

fn wait_until_passes(pair: &Pair, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if pair.ping(&pair.a, "192.0.2.2", 1, Duration::from_millis(100)) == 1 {
            return Some(start.elapsed());
        }
    }
    None
}

/// The legacy netlink path leaves filters and a clsact qdisc after SIGKILL (the lease
/// makes them inert); `cleanup` finds and removes them and verifies.
fn cleanup_removes_a_deliberately_left_netlink_rule() {
    require_root();
    let pair = Pair::new("nl");
    let target = pair.target();
    let chaos = Chaos::start(&[
        "inject",
        "partition",
        "--target",
        &target,
        "--duration",
        "5m",
        "--lease",
        "1s",
        "--attach",
        "netlink",
    ]);
    assert!(pair.qdiscs(&pair.a, "va").contains("clsact"), "netlink attach added no clsact");
    assert_eq!(pair.ping(&pair.a, "192.0.2.2", 3, Duration::from_millis(200)), 0);
    chaos.signal(libc::SIGKILL);
    chaos.finish(Duration::from_secs(5));
    assert!(pair.filters(&pair.a, "va", "egress").contains("chaos_egress"), "filter gone without cleanup?");
    wait_until_passes(&pair, Duration::from_secs(4)).expect("the left rule kept acting after its lease");
    let (code, out, err) = chaos_run(&["cleanup"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("removed netlink filter"), "{out}");
    assert!(!pair.filters(&pair.a, "va", "egress").contains("chaos"), "filter left");
    assert!(!pair.filters(&pair.a, "va", "ingress").contains("chaos"), "filter left");
    assert!(!pair.qdiscs(&pair.a, "va").contains("clsact"), "clsact qdisc left");
    let (code, out, _) = chaos_run(&["cleanup"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to remove"), "second cleanup found more: {out}");
    assert_nothing_left();

    // A clean exit on the netlink path removes its filters and qdisc by itself.
    let chaos = Chaos::start(&["inject", "partition", "--target", &target, "--duration", "5m", "--attach", "netlink"]);
    chaos.signal(libc::SIGTERM);
    chaos.finish(Duration::from_secs(10));
    assert!(!pair.qdiscs(&pair.a, "va").contains("clsact"), "clean exit left the clsact qdisc");
    assert_nothing_left();

    // Two runs share the clsact qdisc the first one added: the first to exit leaves it
    // (and the other's filters) in place; the last one out removes it.
    let first = Chaos::start(&[
        "inject",
        "blackhole",
        "--target",
        &target,
        "--proto",
        "udp",
        "--ports",
        "5300",
        "--duration",
        "5m",
        "--attach",
        "netlink",
    ]);
    let second = Chaos::start(&[
        "inject",
        "blackhole",
        "--target",
        &target,
        "--proto",
        "udp",
        "--ports",
        "5301",
        "--duration",
        "5m",
        "--attach",
        "netlink",
    ]);
    first.interrupt();
    assert!(!udp_passes(&pair.a, &pair.b, ADDR_B, 5301), "the second fault ended with the first run");
    assert!(udp_passes(&pair.a, &pair.b, ADDR_B, 5300), "the first fault outlived its run");
    second.interrupt();
    assert!(!pair.qdiscs(&pair.a, "va").contains("clsact"), "the last run out left the clsact qdisc");
    assert_nothing_left();
}
