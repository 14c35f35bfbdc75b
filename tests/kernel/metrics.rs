//! Prometheus metrics while a run is up: `/metrics` scraped over loopback during a loss
//! run carries the kernel's dropped counter of the rule (the value the final report
//! prints), a real Prometheus (Debian's `prometheus`) scraping the run returns the same
//! value from its query API, the lab demo's steps and probe are served step by step, the
//! endpoint is gone once the run ended, and an address in use is refused with exit 2
//! before anything changes.

use std::{
    io,
    net::{SocketAddr, TcpListener},
    process::Command,
    time::{Duration, Instant},
};

use crate::support::*;

pub const TESTS: &[Test] = tests![
    metrics_scrape_matches_the_report,
    metrics_address_in_use_is_refused,
    metrics_prometheus_query_returns_the_dropped_counter,
    metrics_of_the_lab_demo_steps,
];

/// The series of the lone rule of `inject loss`.
const DROPPED: &str =
    "chaos_ebpf_packets_dropped_total{fault=\"loss\",rule=\"1\",scenario=\"inject loss\",step=\"loss\"}";
const MATCHED: &str =
    "chaos_ebpf_packets_matched_total{fault=\"loss\",rule=\"1\",scenario=\"inject loss\",step=\"loss\"}";

/// The value of the series `series` (name and labels exactly as served) on a page.
fn sample(page: &str, series: &str) -> Option<u64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Scrapes `/metrics` every 300 ms until the dropped counter is above 0 and the same on
/// two scrapes in a row (at least a full 250 ms refresh apart); at most 10 s.
fn scrape_until_stable(addr: SocketAddr) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last: Option<(u64, u64)> = None;
    loop {
        let (status, page) = http_get(addr, "/metrics").expect("scraping the run's /metrics");
        assert_eq!(status, 200, "{page}");
        let now = (sample(&page, DROPPED).unwrap_or(0), sample(&page, MATCHED).unwrap_or(0));
        if now.0 > 0 && last == Some(now) {
            return now;
        }
        assert!(Instant::now() < deadline, "the dropped counter did not settle within 10 s; last page:\n{page}");
        last = Some(now);
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn loss_run(pair: &Pair, metrics: &str) -> Chaos {
    let target = pair.target();
    Chaos::start(&[
        "inject",
        "loss",
        "--target",
        &target,
        "--peer",
        "192.0.2.2/32",
        "--proto",
        "udp",
        "--probability",
        "0.3",
        "--direction",
        "egress",
        "--duration",
        "5m",
        "--seed",
        "21",
        "--output",
        "json",
        "--metrics-addr",
        metrics,
    ])
}

/// 3,000 UDP datagrams through a 30 % loss rule (UDP to the peer only, so nothing else
/// counts), then `/metrics` scraped during the run until the counter settles: the
/// scraped dropped and matched counters equal the final report's (no packet was sent
/// after the scrape), and dropped equals the datagrams the receiver missed. After the
/// run ended, the endpoint refuses connections.
fn metrics_scrape_matches_the_report() {
    require_root();
    let pair = Pair::new("metr");
    let receiver = udp_receiver(&pair.b, sock(ADDR_B, 5002));
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let chaos = loss_run(&pair, &addr.to_string());
    let n = 3000u32;
    let got = udp_run(&pair.a, sock(ADDR_A, 5001), &receiver, sock(ADDR_B, 5002), n);
    let (scraped_dropped, scraped_matched) = scrape_until_stable(addr);
    let (code, out, err) = chaos.interrupt();
    assert_eq!(code, 1, "SIGINT ends a run as interrupted (exit 1): {err}");
    assert!(err.contains(&format!("metrics at http://{addr}/metrics")), "{err}");
    let counters = counters(&out, 0);
    let (dropped, matched) = (counter(&counters, "dropped"), counter(&counters, "matched"));
    let lost = u64::from(n) - got.len() as u64;
    println!("metrics: scraped dropped {scraped_dropped} matched {scraped_matched}; report dropped {dropped} matched {matched}; receiver missed {lost} of {n}");
    assert_eq!(scraped_dropped, dropped, "scraped dropped vs the report's");
    assert_eq!(scraped_matched, matched, "scraped matched vs the report's");
    assert_eq!(matched, u64::from(n), "every datagram matched the rule");
    assert_eq!(dropped, lost, "the kernel's dropped counter vs what the receiver missed");
    assert!(http_get(addr, "/metrics").is_err(), "the endpoint is gone after the run");
    assert_nothing_left();
}

/// `--metrics-addr` on a port another socket listens on: exit 2, a message naming the
/// address and the fix, nothing attached, no ledger record; `off` runs without one; the
/// default address in use only leaves the run without metrics.
fn metrics_address_in_use_is_refused() {
    require_root();
    let pair = Pair::new("metb");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().unwrap().to_string();
    let target = pair.target();
    let args = |metrics: &str| {
        ["inject", "loss", "--target", &target, "--probability", "0.5", "--duration", "1s", "--metrics-addr", metrics]
            .map(str::to_owned)
    };
    let busy = args(&addr);
    let (code, out, err) = chaos_run(&busy.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 2, "a port in use is bad input: {out}{err}");
    assert!(err.contains(&format!("cannot serve metrics on {addr}")) && err.contains("--metrics-addr"), "{err}");
    assert!(err.lines().all(|l| l.len() < 400), "{err}");
    assert!(pair.filters(&pair.a, "va", "egress").trim().is_empty(), "nothing attached");
    assert_nothing_left();
    let (code, _, err) = chaos_run(&["inject", "loss", "--target", &target, "--metrics-addr", "nowhere"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("expected IP:PORT"), "{err}");
    let off = args("off");
    let (code, out, err) = chaos_run(&off.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("metrics at"), "{err}");
    assert_nothing_left();
    // The default address in use (by us here, or by whatever else holds it): runs may
    // stack on one host, so the run goes on without metrics and says so.
    let default = TcpListener::bind("127.0.0.1:9464");
    if let Err(e) = &default {
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "binding 127.0.0.1:9464: {e}");
    }
    let without = &args("off")[..8];
    let (code, out, err) = chaos_run(&without.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("serving no metrics: 127.0.0.1:9464 is in use"), "{err}");
    assert_nothing_left();
}

/// A real Prometheus scrapes the run every second. The traffic (3,000 datagrams through
/// 30 % loss) ends before Prometheus starts, so the counter no longer changes while it
/// scrapes: the instant query of the rule's dropped counter must return exactly the
/// dropped counter of the final report (polled up to 20 s for the first scrapes to land).
fn metrics_prometheus_query_returns_the_dropped_counter() {
    require_root();
    if Command::new("prometheus").arg("--version").output().is_err() {
        skip("no `prometheus` binary (Debian's prometheus package; scripts/setup.sh installs it)");
    }
    let pair = Pair::new("metp");
    let receiver = udp_receiver(&pair.b, sock(ADDR_B, 5002));
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let chaos = loss_run(&pair, &addr.to_string());
    let n = 3000u32;
    let got = udp_run(&pair.a, sock(ADDR_A, 5001), &receiver, sock(ADDR_B, 5002), n);
    let (scraped, _) = scrape_until_stable(addr);
    let prometheus = Prometheus::start(addr);
    let query = "chaos_ebpf_packets_dropped_total{job=\"chaos-ebpf\",rule=\"1\",step=\"loss\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut queried = None;
    while Instant::now() < deadline {
        queried = prometheus.query(query);
        if queried.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let up = prometheus.query("up{job=\"chaos-ebpf\"}");
    let log = prometheus.log();
    drop(prometheus);
    let (code, out, err) = chaos.interrupt();
    assert_eq!(code, 1, "SIGINT ends a run as interrupted (exit 1): {err}");
    let dropped = counter(&counters(&out, 0), "dropped");
    println!(
        "metrics: prometheus query {queried:?}, our scrape {scraped}, report dropped {dropped}, receiver missed {}",
        u64::from(n) - got.len() as u64
    );
    assert_eq!(up, Some(1.0), "prometheus scraped the run's endpoint (up == 1):\n{log}");
    assert_eq!(queried, Some(dropped as f64), "prometheus' dropped counter vs the report's:\n{log}");
    assert_eq!(scraped, dropped);
    assert_nothing_left();
}

/// The sum of the series of `name` whose labels include `label` (None: no such series).
fn sum_of(page: &str, name: &str, label: &str) -> Option<u64> {
    let values: Vec<u64> = page
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The lab demo (five steps, a probe at 200 packets/s) scraped every 200 ms while it
/// runs: during `lossy-link` one loss rule is in force and the probe's counters of the
/// step grow; the last page before the run ended has, for each step that had ended by
/// then, exactly the report's probe counts and dropped counters (a step's final values
/// are set when it ends).
fn metrics_of_the_lab_demo_steps() {
    require_root();
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scenarios/lab-demo.yaml");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = addr.to_string();
    let mut chaos = Chaos::start(&["run", scenario, "--output", "json", "--metrics-addr", &metrics]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pages: Vec<String> = Vec::new();
    while chaos.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the lab demo did not end within 60 s");
        if let Ok((200, page)) = http_get(addr, "/metrics") {
            pages.push(page);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, out, err) = chaos.finish(Duration::from_secs(10));
    assert_eq!(code, 0, "{err}");
    assert!(http_get(addr, "/metrics").is_err(), "the endpoint is gone after the run");
    let lossy = "step=\"lossy-link\"";
    let during = pages
        .iter()
        .find(|p| sum_of(p, "chaos_ebpf_active_faults", lossy) == Some(1))
        .expect("a scrape during lossy-link with its rule in force");
    assert!(sum_of(during, "chaos_ebpf_injections_total", lossy) == Some(1), "{during}");
    let last = pages.last().expect("scrapes during the run");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let mut compared = Vec::new();
    for step in report["steps"].as_array().unwrap() {
        let name = step["name"].as_str().unwrap();
        let label = format!("step=\"{name}\"");
        // A step has ended by the last page when a later step's series are there.
        let later = report["steps"].as_array().unwrap().iter().skip_while(|s| s["name"] != name).skip(1).any(|s| {
            let later = format!("step=\"{}\"", s["name"].as_str().unwrap());
            sum_of(last, "chaos_ebpf_probe_packets_sent_total", &later).is_some()
        });
        if !later {
            continue;
        }
        for (metric, field) in [
            ("chaos_ebpf_probe_packets_sent_total", "sent"),
            ("chaos_ebpf_probe_packets_delivered_total", "delivered"),
            ("chaos_ebpf_probe_packets_echoed_total", "echoed"),
        ] {
            assert_eq!(sum_of(last, metric, &label), step["probe"][field].as_u64(), "{metric} of {name}:\n{last}");
        }
        let dropped: u64 = step["rules"].as_array().unwrap().iter().map(|r| r["counters"]["dropped"].as_u64().unwrap()).sum();
        if dropped > 0 {
            assert_eq!(sum_of(last, "chaos_ebpf_packets_dropped_total", &label), Some(dropped), "dropped of {name}");
            assert_eq!(sum_of(last, "chaos_ebpf_active_faults", &label), Some(0), "{name} ended");
        }
        compared.push(format!("{name} (probe sent {}, dropped {dropped})", step["probe"]["sent"]));
    }
    println!("metrics: {} scrapes; steps equal to the report on the last one: {}", pages.len(), compared.join(", "));
    assert!(compared.len() >= 3, "at least baseline, lossy-link and bursty-link had ended by the last scrape");
    assert_nothing_left();
}
