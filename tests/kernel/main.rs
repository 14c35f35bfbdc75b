//! Privileged tests on the real kernel: real namespaces, veths, cgroups and traffic.
//! Run as root with `cargo xtask test` (one test at a time: they assert on machine-wide
//! BPF state); `cargo xtask vm-test` runs the same binary on Debian 6.1 and 6.12.
//!
//! # The harness, and how to add tests
//!
//! This binary has `harness = false` and runs on libtest-mimic, because libtest cannot
//! end a test as skipped at run time, and a test that needs what this kernel lacks (such
//! as sch_fq on the host) must not pass vacuously. The command line is libtest's:
//! filters (several allowed), `--exact`, `--list`, `--test-threads=1`, `--nocapture`.
//!
//! - A test is a plain `fn()` that panics on failure.
//! - `support::skip("reason")` ends it as skipped. The run prints each skip at the end
//!   as `SKIP|<test>|<reason>` and a `KERNEL-TESTS|...` count line, which `cargo xtask
//!   test` and `vm-test` collect: a skip is listed with its reason, never counted as a
//!   pass.
//! - Each file `tests/kernel/<concern>.rs` starts with `use crate::support::*;` and
//!   lists its tests: `pub const TESTS: &[Test] = tests![first_test, second_test];`
//! - main.rs names the file once, one line in `test_modules!` below (`gso,`); its own
//!   tests are in the `TESTS` list of this file.

#[macro_use]
mod support;

use std::{
    io::Write,
    net::Ipv4Addr,
    panic::{catch_unwind, AssertUnwindSafe},
    process::ExitCode,
    sync::Mutex,
    time::{Duration, Instant},
};

use chaos_ebpf_common::{decision, direction, flow_hash, hash, probability_threshold, FlowKey};
use libtest_mimic::{Arguments, Completion, Trial};
use support::*;

/// Declares the test files (`tests/kernel/<name>.rs`) and gathers their `TESTS`.
macro_rules! test_modules {
    ($($module:ident),* $(,)?) => {
        $(mod $module;)*

        fn all_tests() -> Vec<Test> {
            #[allow(unused_mut)] // while no file is listed
            let mut all = TESTS.to_vec();
            $(all.extend_from_slice($module::TESTS);)*
            all
        }
    };
}

test_modules! {
    // One line per file tests/kernel/<concern>.rs, e.g. `gso,`.
    gso,
    input,
    lifecycle,
    ownership,
    parsing,
    tcp_delay,
}

/// The tests in this file.
const TESTS: &[Test] = tests![
    loss_matches_probability,
    decisions_are_deterministic,
    burst_loss_matches_gilbert_elliott,
    partition_both_cuts_both_ways_and_kills_established_tcp,
    partition_one_way_cuts_one_direction,
    partition_new_connections_only_keeps_established_tcp,
    blackhole_drops_only_the_port,
    faults_stack_and_protected_traffic_passes,
    cgroup_target_spares_other_cgroups,
    lease_expires_under_sigstop,
    sigkill_reverts_immediately,
    cleanup_removes_a_deliberately_left_netlink_rule,
    shadow_mode_counts_without_dropping,
    bad_input_exits_2_and_changes_nothing,
    pid_target_faults_its_cgroup_only,
    ipv6_peer_partition,
    lab_demo_scenario_runs_and_leaves_nothing,
    delay_without_sch_fq_is_refused,
    delay_adds_latency_and_reverts_at_once,
    jitter_spread_matches_its_parameter,
    rate_limits_throughput,
    loss_and_delay_stack,
    netem_baseline_side_by_side,
    ingress_delay_acts_on_the_veth_far_end,
];

/// Skipped tests of this run: (name, reason).
static SKIPPED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Options of the libtest command line that take a value (the rest of the positional
/// arguments are filters).
const OPTIONS_WITH_VALUE: &[&str] = &["--test-threads", "--logfile", "--skip", "--color", "--format", "-Z"];

/// libtest takes several filters (a test runs if any matches); libtest-mimic takes one,
/// so the filters are split off here and applied before it runs.
fn split_filters(args: impl Iterator<Item = String>) -> (Vec<String>, Vec<String>) {
    let (mut options, mut filters) = (Vec::new(), Vec::new());
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        if OPTIONS_WITH_VALUE.contains(&arg.as_str()) {
            options.push(arg);
            options.extend(args.next());
        } else if arg.starts_with('-') {
            options.push(arg);
        } else {
            filters.push(arg);
        }
    }
    (options, filters)
}

/// Runs one test: a `Skipped` panic ends it as ignored with its reason (and is recorded
/// for the summary); any other panic goes on to libtest-mimic, which reports a failure.
fn run_test(name: &'static str, test: fn()) -> Result<Completion, libtest_mimic::Failed> {
    begin_test();
    match catch_unwind(AssertUnwindSafe(test)) {
        Ok(()) => Ok(Completion::Completed),
        Err(payload) => match payload.downcast::<Skipped>() {
            Ok(skipped) => {
                SKIPPED.lock().unwrap_or_else(|e| e.into_inner()).push((name.to_owned(), skipped.0.clone()));
                Ok(Completion::ignored_with(skipped.0))
            }
            Err(other) => std::panic::resume_unwind(other),
        },
    }
}

fn main() -> ExitCode {
    let mut argv = std::env::args();
    let program = argv.next().unwrap_or_default();
    let (options, filters) = split_filters(argv);
    let args = Arguments::from_iter(std::iter::once(program).chain(options));
    let tests = all_tests();
    let mut seen = std::collections::BTreeSet::new();
    for (name, _) in &tests {
        assert!(seen.insert(*name), "two kernel tests are named {name}: rename one");
    }
    // A skip is a panic by design: keep the default "panicked at" message for failures only.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<Skipped>().is_none() {
            default_hook(info);
        }
    }));
    let selected = |name: &str| {
        filters.is_empty() || filters.iter().any(|f| if args.exact { name == f } else { name.contains(f.as_str()) })
    };
    let trials: Vec<Trial> = tests
        .into_iter()
        .filter(|(name, _)| selected(name))
        .map(|(name, test)| Trial::ignorable_test(name, move || run_test(name, test)))
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if !args.list {
        let skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "KERNEL-TESTS|kernel={}|passed={}|failed={}|skipped={}",
            kernel.trim(),
            conclusion.num_passed,
            conclusion.num_failed,
            skipped.len()
        );
        for (name, reason) in skipped.iter() {
            let _ = writeln!(out, "SKIP|{name}|{reason}");
        }
    }
    conclusion.exit_code()
}

/// Loss accuracy: for each p, at least 20,000 packets, measured loss within 4 binomial
/// standard deviations.
fn loss_matches_probability() {
    require_root();
    let pair = Pair::new("loss");
    let receiver = udp_receiver(&pair.b, sock(ADDR_B, 5002));
    let n = 20_000u32;
    for (i, p) in [0.01, 0.1, 0.3, 0.5].into_iter().enumerate() {
        let target = pair.target();
        let chaos = Chaos::start(&[
            "inject",
            "loss",
            "--target",
            &target,
            "--probability",
            &p.to_string(),
            "--direction",
            "egress",
            "--duration",
            "5m",
            "--seed",
            &(100 + i).to_string(),
        ]);
        let got = udp_run(&pair.a, sock(ADDR_A, 5001), &receiver, sock(ADDR_B, 5002), n);
        let (code, out, err) = chaos.interrupt();
        assert_eq!(code, 1, "SIGINT ends a run as interrupted (exit 1): {err}");
        assert!(out.contains("nothing left attached"), "{out}");
        let lost = (n as usize - got.len()) as f64;
        let sigma = (n as f64 * p * (1.0 - p)).sqrt();
        let measured = lost / n as f64;
        println!("loss p={p}: measured {measured:.4} over {n} packets ({} sigma)", (lost - n as f64 * p) / sigma);
        assert!(
            (lost - n as f64 * p).abs() <= 4.0 * sigma,
            "p={p}: lost {lost} of {n}, expected {} +- {:.1}",
            n as f64 * p,
            4.0 * sigma
        );
        assert_nothing_left();
    }
}

/// The flow hash of 192.0.2.1:5001 -> 192.0.2.2:5002 (UDP) under rule 1 in slot 0,
/// egress: the first rule of a lone `inject` run.
fn test_flow_hash(seed: u64) -> u64 {
    let key = FlowKey {
        slot: 0,
        direction: direction::EGRESS as u8,
        proto: 17,
        sport: 5001,
        dport: 5002,
        _pad: 0,
        saddr: ADDR_A.to_ipv6_mapped().octets(),
        daddr: ADDR_B.to_ipv6_mapped().octets(),
    };
    flow_hash(seed, 1, &key)
}

/// The per-packet decisions the kernel should make for packet `index` of the flow
/// 192.0.2.1:5001 -> 192.0.2.2:5002 (rule 1 in slot 0, egress), from the shared hash.
fn predicted_drops(seed: u64, p: f64, count: u32) -> Vec<u32> {
    let flow = test_flow_hash(seed);
    let threshold = probability_threshold(p);
    (0..count).filter(|&i| hash::hits(decision(seed, 1, flow, i as u64, hash::DOMAIN_LOSS), threshold)).collect()
}

/// The drops of the Gilbert-Elliott model for the same flow, as chaos-ebpf/src/fault.rs
/// `loss` makes them: per packet, first the state transition (burst draw), then the loss
/// draw against the new state's probability; a flow starts in the good state.
fn predicted_burst_drops(seed: u64, good_loss: f64, enter: f64, exit: f64, bad_loss: f64, count: u32) -> Vec<u32> {
    let flow = test_flow_hash(seed);
    let mut bad = false;
    let mut drops = Vec::new();
    for i in 0..count {
        let draw = decision(seed, 1, flow, i as u64, hash::DOMAIN_BURST);
        bad = if bad {
            !hash::hits(draw, probability_threshold(exit))
        } else {
            hash::hits(draw, probability_threshold(enter))
        };
        let threshold = probability_threshold(if bad { bad_loss } else { good_loss });
        if hash::hits(decision(seed, 1, flow, i as u64, hash::DOMAIN_LOSS), threshold) {
            drops.push(i);
        }
    }
    drops
}

/// Runs of consecutive sequence numbers in a sorted list: the lengths of the bursts.
fn burst_lengths(lost: &[u32]) -> Vec<u32> {
    let mut lengths: Vec<u32> = Vec::new();
    for (k, seq) in lost.iter().enumerate() {
        if k > 0 && lost[k - 1] + 1 == *seq {
            *lengths.last_mut().expect("a run is open") += 1;
        } else {
            lengths.push(1);
        }
    }
    lengths
}

/// Burst loss (Gilbert-Elliott: enter 0.05, exit 0.25, loss 1 in the bad state, 0 in
/// the good one) on 20,000 UDP datagrams of one flow: the kernel drops exactly the
/// packets the model predicts from the shared hash, and the drops have the model's
/// stationary loss and mean burst length.
///
/// Tolerances (4 sigma). The bad-state occupancy of a two-state Markov chain with
/// second eigenvalue r = 1 - enter - exit has, over n packets, variance
/// n pi (1 - pi) (1 + r) / (1 - r) with pi = enter / (enter + exit) (the lag-k
/// autocorrelation is r^k); here 0.79 n, sd 0.0063 on the loss rate at n = 20,000.
/// Starting in the good state instead of the stationary one shifts the expected count
/// by pi / (1 - r) = 0.56 packets, far inside that. A burst (a stay in the bad state)
/// lasts Geometric(exit) packets: mean 1 / exit, variance (1 - exit) / exit^2, and the
/// stays are independent, so over B bursts the mean has sd sqrt((1 - exit) / exit^2 / B).
/// The last burst may be cut short by the end of the sample: it is left out.
fn burst_loss_matches_gilbert_elliott() {
    require_root();
    let pair = Pair::new("burst");
    let receiver = udp_receiver(&pair.b, sock(ADDR_B, 5002));
    let (enter, exit, seed, n) = (0.05, 0.25, 11u64, 20_000u32);
    let target = pair.target();
    let chaos = Chaos::start(&[
        "inject",
        "loss",
        "--target",
        &target,
        "--probability",
        "0",
        "--burst-enter",
        &enter.to_string(),
        "--burst-exit",
        &exit.to_string(),
        "--burst-loss",
        "1",
        "--direction",
        "egress",
        "--duration",
        "5m",
        "--seed",
        &seed.to_string(),
    ]);
    let got = udp_run(&pair.a, sock(ADDR_A, 5001), &receiver, sock(ADDR_B, 5002), n);
    let (code, out, err) = chaos.interrupt();
    assert_eq!(code, 1, "SIGINT ends a run as interrupted (exit 1): {err}");
    assert!(out.contains("nothing left attached"), "{out}");
    assert_nothing_left();
    let lost: Vec<u32> = (0..n).filter(|s| !got.contains(s)).collect();

    let nf = n as f64;
    let pi = enter / (enter + exit);
    let r = 1.0 - enter - exit;
    let sigma_rate = (pi * (1.0 - pi) * (1.0 + r) / (1.0 - r) / nf).sqrt();
    let rate = lost.len() as f64 / nf;
    let mut bursts = burst_lengths(&lost);
    if lost.last() == Some(&(n - 1)) {
        bursts.pop();
    }
    let b = bursts.len() as f64;
    let mean_burst = bursts.iter().map(|&l| l as f64).sum::<f64>() / b.max(1.0);
    let sigma_burst = ((1.0 - exit) / (exit * exit) / b.max(1.0)).sqrt();
    println!(
        "burst loss: lost {} of {n} ({rate:.4}, model {pi:.4} +- {:.4} at 4 sigma), {} bursts, mean length \
         {mean_burst:.3} (model {:.3} +- {:.3})",
        lost.len(),
        4.0 * sigma_rate,
        bursts.len(),
        1.0 / exit,
        4.0 * sigma_burst
    );
    println!(
        "REPORT|burst_loss|rate={rate:.4}|model_rate={pi:.4}|mean_burst={mean_burst:.3}|model_burst={:.3}",
        1.0 / exit
    );
    assert_eq!(
        lost,
        predicted_burst_drops(seed, 0.0, enter, exit, 1.0, n),
        "the kernel's burst drops differ from the Gilbert-Elliott model on the shared hash"
    );
    assert!((rate - pi).abs() <= 4.0 * sigma_rate, "loss rate {rate:.4}, model {pi:.4} +- {:.4}", 4.0 * sigma_rate);
    assert!(bursts.len() >= 100, "only {} bursts", bursts.len());
    assert!(
        (mean_burst - 1.0 / exit).abs() <= 4.0 * sigma_burst,
        "mean burst {mean_burst:.3}, model {:.3} +- {:.3}",
        1.0 / exit,
        4.0 * sigma_burst
    );
}

/// Same seed and traffic: the same packets dropped, and exactly the ones the shared
/// hash predicts; another seed: other packets.
fn decisions_are_deterministic() {
    require_root();
    let pair = Pair::new("det");
    let receiver = udp_receiver(&pair.b, sock(ADDR_B, 5002));
    let count = 3000;
    let run = |seed: u64| {
        let target = pair.target();
        let chaos = Chaos::start(&[
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
            &seed.to_string(),
        ]);
        let got = udp_run(&pair.a, sock(ADDR_A, 5001), &receiver, sock(ADDR_B, 5002), count);
        chaos.signal(libc::SIGTERM);
        let (code, _, err) = chaos.finish(Duration::from_secs(10));
        assert_eq!(code, 1, "{err}");
        assert_nothing_left();
        (0..count).filter(|s| !got.contains(s)).collect::<Vec<u32>>()
    };
    let first = run(7);
    let second = run(7);
    let other = run(8);
    assert_eq!(first, second, "the same seed dropped different packets");
    assert_ne!(first, other, "another seed dropped the same packets");
    assert_eq!(first, predicted_drops(7, 0.3, count), "kernel decisions differ from the shared hash");
    assert_eq!(other, predicted_drops(8, 0.3, count));
    println!(
        "seed 7 dropped {} of {count}, seed 8 dropped {}; {} in common",
        first.len(),
        other.len(),
        first.iter().filter(|s| other.contains(s)).count()
    );
}

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

fn wait_until_passes(pair: &Pair, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if pair.ping(&pair.a, "192.0.2.2", 1, Duration::from_millis(100)) == 1 {
            return Some(start.elapsed());
        }
    }
    None
}

/// A SIGSTOPped chaos-ebpf stops faulting when its lease runs out; after SIGKILL
/// nothing is left.
fn lease_expires_under_sigstop() {
    require_root();
    let pair = Pair::new("lease");
    let target = pair.target();
    let chaos = Chaos::start(&["inject", "partition", "--target", &target, "--duration", "5m", "--lease", "1s"]);
    assert_eq!(pair.ping(&pair.a, "192.0.2.2", 3, Duration::from_millis(200)), 0);
    chaos.signal(libc::SIGSTOP);
    // Renewed every third of the lease, so at the stop 0.67-1.0 s of it are left: the
    // fault must hold that long (the lease, not the stop, ends it) and no longer.
    let recovered = udp_time_until_passes(&pair.a, &pair.b, ADDR_B, 5998, Duration::from_secs(5))
        .expect("the fault outlived its lease under SIGSTOP");
    println!("SIGSTOP: traffic flowed again after {recovered:?} (lease 1s, 1 ms probe)");
    assert!(recovered >= Duration::from_millis(500), "the fault ended {recovered:?} after the stop, before its lease");
    assert!(recovered <= Duration::from_millis(1500), "took {recovered:?}");
    let status = chaos_run(&["status", "--output", "json"]);
    assert!(status.1.contains("\"stopped\""), "status does not show the hung run: {}", status.1);
    chaos.signal(libc::SIGKILL);
    let (code, _, _) = chaos.finish(Duration::from_secs(5));
    assert_eq!(code, -1, "killed by a signal");
    // The dead run's state file is what `cleanup` removes.
    let (code, out, err) = chaos_run(&["cleanup"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("clean"), "{out}");
    assert_nothing_left();
}

/// SIGKILL reverts at once with TCX (links go with the process). Without TCX (netlink
/// filters outlive the process) the lease ends the fault, and `cleanup` removes the rest.
fn sigkill_reverts_immediately() {
    require_root();
    let pair = Pair::new("kill");
    let target = pair.target();
    let tcx = kernel_has_tcx();
    let lease = if tcx { "30s" } else { "1s" };
    let chaos = Chaos::start(&["inject", "partition", "--target", &target, "--duration", "5m", "--lease", lease]);
    assert_eq!(pair.ping(&pair.a, "192.0.2.2", 3, Duration::from_millis(200)), 0);
    chaos.signal(libc::SIGKILL);
    let recovered = udp_time_until_passes(&pair.a, &pair.b, ADDR_B, 5999, Duration::from_secs(5))
        .expect("traffic did not flow after SIGKILL");
    println!("SIGKILL: traffic flowed again {recovered:?} after the kill (lease {lease}, TCX {tcx}, 1 ms probe)");
    println!("REPORT|sigkill_to_traffic_ms|{:.2}|tcx={tcx}|lease={lease}", recovered.as_secs_f64() * 1000.0);
    let bound = if tcx { Duration::from_secs(1) } else { Duration::from_millis(2500) };
    assert!(recovered < bound, "took {recovered:?}");
    chaos.finish(Duration::from_secs(5));
    let (code, out, err) = chaos_run(&["cleanup"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!pair.qdiscs(&pair.a, "va").contains("clsact"), "a qdisc was left");
    assert_nothing_left();
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

fn assert_usage_error(args: &[&str], expect: &str) {
    let (code, out, err) = chaos_run(args);
    assert_eq!(code, 2, "{args:?} gave exit {code}: {out}{err}");
    assert!(err.contains(expect), "{args:?}: message lacks '{expect}': {err}");
    assert!(err.contains("fix") || err.contains("tip") || err.contains("Usage"), "{args:?}: no fix offered: {err}");
    assert_nothing_left();
}

fn bad_input_exits_2_and_changes_nothing() {
    require_root();
    let dir = std::env::temp_dir().join(format!("chaos-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let malformed = write("malformed.yaml", "steps: [\n  - fault: loss\n");
    assert_usage_error(&["run", &malformed], "malformed.yaml:");
    let unknown = write(
        "unknown.yaml",
        "steps:\n  - fault: loss\n    target: netns:x\n    probability: 0.1\n    duration: 1s\n    colour: red\n",
    );
    assert_usage_error(&["validate", &unknown], "unknown.yaml:6:");
    assert_usage_error(&["run", &unknown], "unknown field `colour`");
    let range =
        write("range.yaml", "steps:\n  - fault: loss\n    target: netns:x\n    probability: 1.3\n    duration: 1s\n");
    assert_usage_error(&["run", &range], "range.yaml:4:18");
    // Command lines: (target, extra arguments, what the message must name).
    let loss = ["loss", "--probability", "0.1", "--duration", "1s"];
    for (target, args, expect) in [
        ("netns:x", &["loss", "--probability", "1.3", "--duration", "1s"][..], "outside 0..1"),
        ("netns:no-such-ns", &loss[..], "no-such-ns"),
        ("iface:no-such-if0", &loss[..], "no-such-if0"),
        ("pid:999999999", &loss[..], "999999999"),
        ("veth0", &loss[..], "has no kind"),
        ("netns:x", &["partition", "--mode", "oneway", "--duration", "1s"][..], "direction"),
        ("netns:x", &["loss", "--probability", "0.1", "--duration", "soon"][..], "not a duration"),
        ("cgroup:x", &["partition", "--duration", "1s"][..], "egress only"),
        ("netns:x", &["delay", "--delay", "10ms", "--direction", "both", "--duration", "1s"][..], "one direction"),
        ("netns:x", &["rate", "--rate", "10mb", "--duration", "1s"][..], "not a rate"),
    ] {
        let mut full = vec!["inject", args[0], "--target", target];
        full.extend(&args[1..]);
        assert_usage_error(&full, expect);
    }
    let unknown_target = write(
        "target.yaml",
        "targets:\n  a: netns:x\nsteps:\n  - fault: loss\n    target: b\n    probability: 0.1\n    duration: 1s\n",
    );
    assert_usage_error(&["validate", &unknown_target], "target.yaml:5:13: unknown target 'b'");
    // Not root: exit 2 before anything is touched; validate and plan need no root.
    let pair = Pair::new("bad");
    let target = pair.target();
    let (code, _, err) =
        chaos_run_as(&["inject", "loss", "--target", &target, "--probability", "0.1", "--duration", "1s"], Some(65534));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("needs root") && err.contains("fix"), "{err}");
    let good = write(
        "good.yaml",
        "seed: 1\nsteps:\n  - fault: loss\n    target: netns:x\n    probability: 0.1\n    duration: 1s\n",
    );
    let (code, out, err) = chaos_run_as(&["plan", &good], Some(65534));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("loss_threshold=0x199999999999"), "{out}");
    assert!(!pair.qdiscs(&pair.a, "va").contains("clsact"));
    assert_nothing_left();
    let _ = std::fs::remove_dir_all(&dir);
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

/// The README's main job: the sample scenario on the embedded lab, as JSON.
fn lab_demo_scenario_runs_and_leaves_nothing() {
    require_root();
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scenarios/lab-demo.yaml");
    let (code, out, err) = chaos_run(&["run", scenario, "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["seed"], 42);
    assert_eq!(report["clean"], true);
    let probe = |step: &str| {
        let s = report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == step)
            .unwrap_or_else(|| panic!("no step {step}"));
        let p = &s["probe"];
        (p["delivered"].as_f64().unwrap(), p["sent"].as_f64().unwrap().max(1.0))
    };
    let ratio = |step: &str| {
        let (delivered, sent) = probe(step);
        delivered / sent
    };
    assert!(ratio("baseline") > 0.97, "baseline {}", ratio("baseline"));
    // Loss 0.3 on the probe's requests: delivered ~ Binomial(sent, 0.7), held to 4 sigma
    // of the packets actually sent, plus 2 packets for the step's edges (a request in
    // flight when the step ends; one sent while the rule is being installed).
    let (delivered, sent) = probe("lossy-link");
    let sigma = (sent * 0.7 * 0.3).sqrt();
    println!(
        "lab demo lossy-link: delivered {delivered} of {sent} ({:.3} sigma from 0.7)",
        (delivered - 0.7 * sent) / sigma
    );
    assert!(
        (delivered - 0.7 * sent).abs() <= 4.0 * sigma + 2.0,
        "lossy-link delivered {delivered} of {sent}, expected {:.0} +- {:.0}",
        0.7 * sent,
        4.0 * sigma + 2.0
    );
    assert!(sent >= 400.0, "the probe sent only {sent} packets in 4 s at 200/s");
    assert!(ratio("cut-off") < 0.02, "cut-off {}", ratio("cut-off"));
    assert!(ratio("recovered") > 0.97, "recovered {}", ratio("recovered"));
    let namespaces = String::from_utf8_lossy(&sh("ip", &["netns", "list"]).stdout).into_owned();
    assert!(!namespaces.contains("chaos-lab-"), "lab namespaces left: {namespaces}");
    assert_nothing_left();
}

/// Without sch_fq a delay or rate fault would be a silent no-op: it must be exit 2 with
/// the reason, and leave the qdisc as it was. (With sch_fq, the VM delay tests apply.)
fn delay_without_sch_fq_is_refused() {
    require_root();
    let pair = Pair::new("nofq");
    if kernel_has_fq(&pair) {
        skip("this kernel has sch_fq; the delay tests cover it");
    }
    let before = pair.qdiscs(&pair.a, "va");
    let target = pair.target();
    for args in [
        vec!["inject", "delay", "--target", &target, "--delay", "100ms", "--duration", "5s"],
        vec!["inject", "rate", "--target", &target, "--rate", "10mbit", "--duration", "5s"],
    ] {
        let (code, _, err) = chaos_run(&args);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("no sch_fq") && err.contains("fix"), "{err}");
        assert_eq!(pair.qdiscs(&pair.a, "va"), before, "the qdisc changed");
        assert_nothing_left();
    }
}

/// A 100 ms delay raises the median RTT by 100 ms; removing it restores the baseline at
/// once, and sch_fq is gone again (the default qdisc is back).
///
/// Tolerance: 10 ms. Under qemu TCG the guest clock is the host's, and fq releases a
/// packet from an hrtimer; what is lost is timer expiry latency and TCG's slower packet
/// path, a few ms (the baseline RTT under TCG is itself ~0.5-2 ms).
fn delay_adds_latency_and_reverts_at_once() {
    require_root();
    let pair = Pair::new("delay");
    need_fq(&pair);
    let before_qdisc = pair.qdiscs(&pair.a, "va");
    let baseline = median(&ping_rtts(&pair.a, "192.0.2.2", 20, 0.05));
    let target = pair.target();
    let chaos = Chaos::start(&["inject", "delay", "--target", &target, "--delay", "100ms", "--duration", "5m"]);
    assert!(pair.qdiscs(&pair.a, "va").contains("qdisc fq"), "no fq installed: {}", pair.qdiscs(&pair.a, "va"));
    let delayed = median(&ping_rtts(&pair.a, "192.0.2.2", 20, 0.05));
    println!("REPORT|delay_100ms|baseline_ms={baseline:.2}|delayed_ms={delayed:.2}");
    assert!((delayed - baseline - 100.0).abs() < 10.0, "median RTT {delayed:.2} ms, baseline {baseline:.2} ms");
    let (code, out, _) = chaos.interrupt();
    assert_eq!(code, 1);
    assert!(out.contains("delayed"), "{out}");
    let after = ping_rtts(&pair.a, "192.0.2.2", 1, 0.2);
    assert!(
        after.len() == 1 && after[0] < baseline + 10.0,
        "first RTT after revert {after:?} (baseline {baseline:.2})"
    );
    assert_eq!(pair.qdiscs(&pair.a, "va"), before_qdisc, "the qdisc was not restored");
    assert_nothing_left();
}

/// Jitter's spread matches its parameter: uniform on ±j has sd j/sqrt(3), normal sd j.
/// Pings 100 ms apart with at most 60 ms of delay never queue behind each other, so fq's
/// per-flow FIFO does not shape the sample. Tolerance 35% of the sd: 40 samples give a
/// sample sd within about ±25% at 2 sigma, plus timer noise under TCG.
fn jitter_spread_matches_its_parameter() {
    require_root();
    let pair = Pair::new("jitter");
    need_fq(&pair);
    let target = pair.target();
    for (distribution, want_sd) in [("uniform", 20.0 / 3f64.sqrt()), ("normal", 10.0)] {
        let jitter = if distribution == "uniform" { "20ms" } else { "10ms" };
        let chaos = Chaos::start(&[
            "inject",
            "delay",
            "--target",
            &target,
            "--delay",
            "60ms",
            "--jitter",
            jitter,
            "--distribution",
            distribution,
            "--duration",
            "5m",
        ]);
        let rtts = ping_rtts(&pair.a, "192.0.2.2", 40, 0.1);
        chaos.interrupt();
        let (m, sd) = (median(&rtts), std_dev(&rtts));
        println!("REPORT|jitter_{distribution}|median_ms={m:.2}|sd_ms={sd:.2}|want_sd_ms={want_sd:.2}");
        assert!(rtts.len() >= 38, "{distribution}: lost pings {rtts:?}");
        assert!((m - 60.0).abs() < 10.0, "{distribution}: median {m:.2}");
        assert!((sd / want_sd - 1.0).abs() < 0.35, "{distribution}: sd {sd:.2} ms, want {want_sd:.2}");
    }
    assert_nothing_left();
}

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

fn timed(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64() * 1000.0
}

fn loss_of(pair: &Pair, to: Ipv4Addr, port: u16, count: u32) -> f64 {
    let receiver = udp_receiver(&pair.b, sock(to, port));
    let got = udp_run(&pair.a, sock(ADDR_A, port), &receiver, sock(to, port), count);
    1.0 - got.len() as f64 / count as f64
}

/// The same delay and loss through `tc qdisc ... netem` and through chaos-ebpf on the
/// same kernel, side by side: accuracy, time to apply and revert, and what happens to
/// traffic outside the match (a second address on the peer, 192.0.2.3). Prints
/// `REPORT|netem|...` rows that `cargo xtask vm-test` turns into a table; asserts what
/// chaos-ebpf promises (accuracy, traffic outside the match untouched).
fn netem_baseline_side_by_side() {
    require_root();
    let pair = Pair::new("netem");
    need_fq(&pair);
    if !kernel_has_netem(&pair) {
        skip("this kernel has no sch_netem (CONFIG_NET_SCH_NETEM); `cargo xtask vm-test` runs it");
    }
    must("ip", &["-n", &pair.b, "addr", "add", "192.0.2.3/24", "dev", "vb"]);
    let other = Ipv4Addr::new(192, 0, 2, 3);
    assert_eq!(pair.ping(&pair.a, "192.0.2.3", 1, Duration::from_secs(2)), 1);
    let rtt = |to: &str| median(&ping_rtts(&pair.a, to, 20, 0.05));
    let base = rtt("192.0.2.2");
    let target = pair.target();
    let tc = |args: &[&str]| {
        let mut full = vec!["netns", "exec", pair.a.as_str(), "tc", "qdisc"];
        full.extend(args);
        must("ip", &full);
    };
    let row = |metric: &str, netem: String, chaos: String| println!("REPORT|netem|{metric}|{netem}|{chaos}");

    // Delay 100 ms.
    let netem_apply = timed(|| tc(&["add", "dev", "va", "root", "netem", "delay", "100ms"]));
    let (netem_delay, netem_other) = (rtt("192.0.2.2") - base, rtt("192.0.2.3") - base);
    let netem_revert = timed(|| tc(&["del", "dev", "va", "root"]));
    let mut chaos = None;
    let chaos_apply = timed(|| {
        chaos = Some(Chaos::start(&[
            "inject",
            "delay",
            "--target",
            &target,
            "--delay",
            "100ms",
            "--peer",
            "192.0.2.2/32",
            "--duration",
            "5m",
        ]))
    });
    let (chaos_delay, chaos_other) = (rtt("192.0.2.2") - base, rtt("192.0.2.3") - base);
    let chaos_revert = timed(|| {
        chaos.take().unwrap().interrupt();
    });
    row("delay 100ms: added median RTT (ms)", format!("{netem_delay:.2}"), format!("{chaos_delay:.2}"));
    row(
        "delay 100ms: added RTT to an address outside the match (ms)",
        format!("{netem_other:.2}"),
        format!("{chaos_other:.2}"),
    );
    row("delay: time to apply (ms)", format!("{netem_apply:.1}"), format!("{chaos_apply:.1}"));
    row("delay: time to revert (ms)", format!("{netem_revert:.1}"), format!("{chaos_revert:.1}"));
    assert!((chaos_delay - 100.0).abs() < 10.0, "chaos delay {chaos_delay:.2}");
    assert!(chaos_other.abs() < 5.0, "traffic outside the match was delayed by {chaos_other:.2} ms");

    // Loss 30%, UDP, 5000 datagrams.
    let n = 5000;
    tc(&["add", "dev", "va", "root", "netem", "loss", "30%"]);
    let (netem_loss, netem_loss_other) = (loss_of(&pair, ADDR_B, 7300, n), loss_of(&pair, other, 7301, n));
    tc(&["del", "dev", "va", "root"]);
    let chaos = Chaos::start(&[
        "inject",
        "loss",
        "--target",
        &target,
        "--probability",
        "0.3",
        "--peer",
        "192.0.2.2/32",
        "--direction",
        "egress",
        "--duration",
        "5m",
        "--seed",
        "9",
    ]);
    let (chaos_loss, chaos_loss_other) = (loss_of(&pair, ADDR_B, 7302, n), loss_of(&pair, other, 7303, n));
    chaos.interrupt();
    row("loss 30%: measured loss", format!("{netem_loss:.4}"), format!("{chaos_loss:.4}"));
    row(
        "loss 30%: loss to an address outside the match",
        format!("{netem_loss_other:.4}"),
        format!("{chaos_loss_other:.4}"),
    );
    let sigma = (0.3f64 * 0.7 / n as f64).sqrt();
    assert!((chaos_loss - 0.3).abs() < 4.0 * sigma, "chaos loss {chaos_loss:.4}");
    assert_eq!(chaos_loss_other, 0.0, "traffic outside the match was dropped");
    assert_nothing_left();
}

/// What a namespace receives is delayed on the far end of its veth, since departure
/// times act on egress only: fq goes on the far end (and goes away after), the target's
/// own device is untouched, and only packets from the rule's peers are delayed.
fn ingress_delay_acts_on_the_veth_far_end() {
    require_root();
    let pair = Pair::new("indelay");
    need_fq(&pair);
    must("ip", &["-n", &pair.b, "addr", "add", "192.0.2.3/24", "dev", "vb"]);
    assert_eq!(pair.ping(&pair.a, "192.0.2.3", 1, Duration::from_secs(2)), 1);
    let (before_a, before_b) = (pair.qdiscs(&pair.a, "va"), pair.qdiscs(&pair.b, "vb"));
    let baseline = median(&ping_rtts(&pair.a, "192.0.2.2", 20, 0.05));
    let target = pair.target();
    let chaos = Chaos::start(&[
        "inject",
        "delay",
        "--target",
        &target,
        "--direction",
        "ingress",
        "--peer",
        "192.0.2.2/32",
        "--delay",
        "80ms",
        "--duration",
        "5m",
    ]);
    assert!(pair.qdiscs(&pair.b, "vb").contains("qdisc fq"), "no fq on the far end: {}", pair.qdiscs(&pair.b, "vb"));
    assert_eq!(pair.qdiscs(&pair.a, "va"), before_a, "the target's own device was changed");
    let delayed = median(&ping_rtts(&pair.a, "192.0.2.2", 20, 0.05));
    let other = median(&ping_rtts(&pair.a, "192.0.2.3", 20, 0.05));
    println!("REPORT|ingress_delay_80ms|baseline_ms={baseline:.2}|delayed_ms={delayed:.2}|outside_match_ms={other:.2}");
    assert!((delayed - baseline - 80.0).abs() < 10.0, "median RTT {delayed:.2} ms, baseline {baseline:.2} ms");
    assert!(other < baseline + 5.0, "replies from outside the match were delayed: {other:.2} ms");
    chaos.interrupt();
    assert_eq!(pair.qdiscs(&pair.b, "vb"), before_b, "the far end's qdisc was not restored");
    assert_nothing_left();
}
