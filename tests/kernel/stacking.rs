//! Stacking: faults of several processes on one target all act (and each ends with its
//! own process), and the protected traffic (SSH) passes a full partition.

use std::time::Duration;

use crate::support::*;

pub const TESTS: &[Test] = tests![
    faults_stack_and_protected_traffic_passes,
    loss_and_delay_stack,
];

/// Two faults from two processes on one target stack (TCX runs both programs); the
/// protected list (SSH) is never touched.
fn faults_stack_and_protected_traffic_passes() {
    require_root();
    let pair = Pair::new("stack");
    let target = pair.target();
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
    ]);
    assert!(!udp_passes(&pair.a, &pair.b, ADDR_B, 5300), "first fault overwritten");
    assert!(!udp_passes(&pair.a, &pair.b, ADDR_B, 5301), "second fault not applied");
    assert!(udp_passes(&pair.a, &pair.b, ADDR_B, 5302));
    first.interrupt();
    assert!(udp_passes(&pair.a, &pair.b, ADDR_B, 5300), "first fault outlived its process");
    assert!(!udp_passes(&pair.a, &pair.b, ADDR_B, 5301), "second fault ended with the first");
    second.interrupt();

    // A full partition leaves TCP port 22 alone unless forced.
    tcp_echo_server(&pair.b, sock(ADDR_B, 22));
    let chaos = Chaos::start(&["inject", "partition", "--target", &target, "--duration", "5m"]);
    let mut ssh =
        tcp_connect(&pair.a, sock(ADDR_B, 22), Duration::from_secs(2)).expect("SSH port blocked by a partition");
    assert!(tcp_echo(&mut ssh, Duration::from_secs(2)));
    assert!(!udp_passes(&pair.a, &pair.b, ADDR_B, 5303));
    let (_, out, _) = chaos.interrupt();
    assert!(!out.contains("protected 0"), "protected packets not counted: {out}");
    assert_nothing_left();
}

/// Loss and delay stacked (two processes, one target): both act.
fn loss_and_delay_stack() {
    require_root();
    let pair = Pair::new("stackd");
    need_fq(&pair);
    let target = pair.target();
    let delay = Chaos::start(&["inject", "delay", "--target", &target, "--delay", "50ms", "--duration", "5m"]);
    let loss = Chaos::start(&[
        "inject",
        "loss",
        "--target",
        &target,
        "--probability",
        "0.3",
        "--direction",
        "egress",
        "--duration",
        "5m",
        "--seed",
        "5",
    ]);
    let rtts = ping_rtts(&pair.a, "192.0.2.2", 60, 0.05);
    let (_, loss_report, _) = loss.interrupt();
    let (_, delay_report, _) = delay.interrupt();
    let lost = 1.0 - rtts.len() as f64 / 60.0;
    println!("REPORT|loss_and_delay|lost={lost:.3}|median_ms={:.2}", median(&rtts));
    assert!((0.1..0.5).contains(&lost), "lost {lost:.3} with p=0.3\n{loss_report}\n{delay_report}");
    assert!((median(&rtts) - 50.0).abs() < 10.0, "median {:.2}", median(&rtts));
    assert_nothing_left();
}
