//! The hypothesis checker against real servers on loopback (no root): an HTTP server
//! whose status and delay a test changes, a TCP listener and a closed port, Debian's
//! dnsmasq, commands, and Debian's prometheus. Every probe kind passing and failing,
//! every guard firing and staying quiet, recovery and the verdict (the probe spans are in
//! probe_spans.rs).

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use chaos_engine::hypothesis::{AbortReport, CheckPhase, Checker, ProbeSample, Verdict};
use chaos_model::hypothesis::{Compare, Guard, Hypothesis, ProbeCheck, ProbeSpec};

mod common;

use common::{hypothesis, ms, probe, NOT_INTERRUPTED};

fn checker(hypothesis: Option<&Hypothesis>, guards: &[Guard]) -> Checker {
    Checker::new("test", hypothesis, guards, Instant::now(), &tracing::Span::none()).unwrap()
}

/// The steady-state outcome of one probe, and its samples.
fn steady(probe: ProbeSpec, within: Duration) -> (Result<(), String>, Vec<ProbeSample>) {
    let hypothesis = hypothesis(vec![probe], ms(100), within);
    let mut checker = checker(Some(&hypothesis), &[]);
    let mut samples = Vec::new();
    let started = Instant::now();
    let result = checker.steady_state(&NOT_INTERRUPTED, &mut |s| samples.push(s.clone()));
    // Bounded by steady-within plus one check's timeout.
    assert!(started.elapsed() < within + ms(1500), "steady_state took {:?}", started.elapsed());
    assert!(samples.iter().all(|s| s.phase == CheckPhase::Before));
    (result, samples)
}

fn assert_passes(probe: ProbeSpec) -> Vec<ProbeSample> {
    let (result, samples) = steady(probe, ms(3000));
    assert_eq!(result, Ok(()), "{samples:?}");
    assert!(samples.last().is_some_and(|s| s.ok), "{samples:?}");
    samples
}

/// Fails within 500 ms; the reason names the probe and contains `why`, on one short line.
fn assert_fails(probe: ProbeSpec, why: &str) -> String {
    let name = probe.name.clone();
    let (result, samples) = steady(probe, ms(500));
    let reason = result.expect_err("the probe must fail");
    assert!(reason.starts_with("not steady within 0.5 s: "), "{reason}");
    assert!(reason.contains(&format!("probe {name}: ")), "{reason}");
    assert!(reason.contains(why), "{why:?} not in {reason:?}");
    assert!(reason.len() < 400 && !reason.contains('\n'), "{reason}");
    assert!(!samples.is_empty() && samples.iter().all(|s| !s.ok && s.detail.len() < 210), "{samples:?}");
    reason
}

// ---------------------------------------------------------------------------------------
// An HTTP server on loopback that answers every request with `status` after `delay_ms`.

struct HttpServer {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    fn start(status: u16, delay_ms: u64) -> HttpServer {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let addr = server.server_addr().to_ip().unwrap();
        let (status, delay_ms) = (Arc::new(AtomicU16::new(status)), Arc::new(AtomicU64::new(delay_ms)));
        let thread = {
            let (server, status, delay_ms) = (server.clone(), status.clone(), delay_ms.clone());
            std::thread::spawn(move || {
                for request in server.incoming_requests() {
                    let (status, delay_ms) = (status.clone(), delay_ms.clone());
                    // A thread per request: a slow answer does not hold up the next.
                    std::thread::spawn(move || {
                        std::thread::sleep(ms(delay_ms.load(Ordering::Relaxed)));
                        let code = status.load(Ordering::Relaxed);
                        let _ = request.respond(tiny_http::Response::from_string("hello").with_status_code(code));
                    });
                }
            })
        };
        HttpServer { addr, status, delay_ms, server, thread: Some(thread) }
    }

    fn url(&self) -> String {
        format!("http://{}/health", self.addr)
    }

    fn check(&self, status: u16, max_latency: Option<Duration>) -> ProbeCheck {
        ProbeCheck::Http { url: self.url(), status, max_latency }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

// ---------------------------------------------------------------------------------------
// Probe kinds.

#[test]
fn http_probe_passes_on_the_status_and_fails_on_another() {
    let server = HttpServer::start(200, 0);
    let samples = assert_passes(probe("api", server.check(200, Some(ms(900)))));
    assert_eq!((samples[0].kind.as_str(), samples[0].probe.as_str()), ("http", "api"));
    assert_fails(probe("api", server.check(204, None)), "status 200, expected 204");
    server.status.store(503, Ordering::Relaxed);
    assert_fails(probe("api", server.check(200, None)), "status 503, expected 200");
}

#[test]
fn http_probe_fails_when_slow_refused_or_timed_out() {
    let server = HttpServer::start(200, 150);
    assert_fails(probe("api", server.check(200, Some(ms(50)))), "above the 50 ms bound");
    let timed = ProbeSpec { timeout: ms(100), ..probe("api", server.check(200, None)) };
    let samples = steady(timed, ms(500)).1;
    assert!(samples.iter().all(|s| s.detail == "timed out after 0.1 s" && s.latency_ms < 400.0), "{samples:?}");
    let refused = closed_port();
    assert_fails(
        probe("api", ProbeCheck::Http { url: format!("http://{refused}/"), status: 200, max_latency: None }),
        &format!("connect to 127.0.0.1:{}: Connection refused", refused.port()),
    );
}

#[test]
fn tcp_probe_passes_on_a_listener_and_fails_on_a_closed_port() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let samples = assert_passes(probe("port", ProbeCheck::Tcp { connect: listener.local_addr().unwrap() }));
    assert_eq!(samples[0].kind, "tcp");
    let closed = closed_port();
    assert_fails(probe("port", ProbeCheck::Tcp { connect: closed }), "Connection refused");
}

#[test]
fn command_probe_passes_on_exit_and_output() {
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_passes(probe("cmd", ProbeCheck::Command { argv: argv(&["true"]), exit: 0, output_contains: None }));
    assert_passes(probe("cmd", ProbeCheck::Command { argv: argv(&["false"]), exit: 1, output_contains: None }));
    let echo = |text: &str| ProbeCheck::Command {
        argv: argv(&["echo", "all", "good"]),
        exit: 0,
        output_contains: Some(text.into()),
    };
    assert_passes(probe("cmd", echo("all good")));
    assert_fails(probe("cmd", echo("bad")), "does not contain \"bad\"");
    assert_fails(
        probe("cmd", ProbeCheck::Command { argv: argv(&["false"]), exit: 0, output_contains: None }),
        "\"false\" exited 1, expected 0",
    );
    // What a failing command said (on stderr) is in the detail, its first line only.
    assert_fails(
        probe("cmd", ProbeCheck::Command { argv: argv(&["ls", "/no/such/dir"]), exit: 0, output_contains: None }),
        "No such file or directory",
    );
    assert_fails(
        probe("cmd", ProbeCheck::Command { argv: argv(&["/no/such/program"]), exit: 0, output_contains: None }),
        "cannot run \"/no/such/program\": No such file or directory",
    );
}

/// A command cut off by the timeout is killed, and what it started too (a shell's
/// background child), not left running.
#[test]
fn command_probe_is_killed_at_its_timeout() {
    let dir = std::env::temp_dir().join(format!("chaos-hypothesis-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("pid");
    let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
    let check = ProbeCheck::Command { argv: vec!["sh".into(), "-c".into(), script], exit: 0, output_contains: None };
    let (result, samples) = steady(ProbeSpec { timeout: ms(300), ..probe("slow", check) }, ms(1000));
    assert!(result.unwrap_err().contains("timed out after 0.3 s"), "{samples:?}");
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    // Killed at once; reaped by tokio in the background (a zombie until then).
    let deadline = Instant::now() + Duration::from_secs(3);
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
    };
    while alive() && Instant::now() < deadline {
        std::thread::sleep(ms(20));
    }
    assert!(!alive(), "the command's child (pid {pid}) still runs after its check timed out");
}

/// A command's output is read to its end but only 64 KiB of it kept: a command that
/// writes megabytes neither blocks on its pipe nor fills memory.
#[test]
fn command_probe_reads_big_output() {
    let check = ProbeCheck::Command {
        argv: vec!["sh".into(), "-c".into(), "head -c 5000000 /dev/zero; echo done".into()],
        exit: 0,
        output_contains: Some("done".into()),
    };
    // The marker is after the first 64 KiB: it is not seen, but the check ends (no
    // blocked pipe) and fails saying so.
    assert_fails(probe("big", check), "does not contain \"done\"");
}

/// Debian's dnsmasq on a loopback port, answering probe.test with 192.0.2.7 and
/// nothing else; stopped on drop.
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
}

impl Dnsmasq {
    fn start() -> Option<Dnsmasq> {
        let binary = ["/usr/sbin/dnsmasq", "/sbin/dnsmasq"].into_iter().find(|p| std::path::Path::new(p).exists())?;
        let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        let child = Command::new(binary)
            .args(["--keep-in-foreground", "--conf-file=/dev/null", "--pid-file", "--no-resolv", "--no-hosts"])
            .args(["--listen-address=127.0.0.1", "--bind-interfaces", "--address=/probe.test/192.0.2.7"])
            .arg(format!("--port={port}"))
            .arg(format!("--user={user}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting dnsmasq");
        Some(Dnsmasq { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) })
    }

    fn check(&self, name: &str, expect: Option<&str>) -> ProbeCheck {
        ProbeCheck::Dns { name: name.into(), server: self.addr, expect: expect.map(|e| e.parse().unwrap()) }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn dns_probe_against_dnsmasq() {
    // Not a skip: libtest would count a return as a pass, and setup.sh installs it.
    let Some(dns) = Dnsmasq::start() else {
        panic!("no dnsmasq binary: install Debian's dnsmasq-base (bash scripts/setup.sh does)");
    };
    // The first checks may come before dnsmasq listens: steady_state retries them.
    let samples = assert_passes(probe("dns", dns.check("probe.test", None)));
    assert_eq!((samples.last().unwrap().kind.as_str(), samples.last().unwrap().detail.as_str()), ("dns", "192.0.2.7"));
    assert_passes(probe("dns", dns.check("probe.test", Some("192.0.2.7"))));
    assert_fails(probe("dns", dns.check("probe.test", Some("192.0.2.8"))), "probe.test is 192.0.2.7 at");
    // dnsmasq without upstream servers refuses what it does not know.
    assert_fails(probe("dns", dns.check("other.test", None)), "no answer for other.test");
    let silent = closed_port();
    let silent = SocketAddr::from(([127, 0, 0, 1], silent.port()));
    let unreachable = ProbeCheck::Dns { name: "probe.test".into(), server: silent, expect: None };
    assert_fails(probe("dns", unreachable), "no answer for probe.test");
}

// ---------------------------------------------------------------------------------------
// Guards.

/// Polls `fired` for up to `within`.
fn fired_within(checker: &mut Checker, within: Duration) -> Option<(AbortReport, Duration)> {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Some(report) = checker.fired() {
            return Some((report, started.elapsed()));
        }
        std::thread::sleep(ms(20));
    }
    None
}

#[test]
fn error_rate_guard_fires_when_the_server_fails_and_not_before() {
    let server = HttpServer::start(200, 0);
    let hypothesis = hypothesis(vec![probe("api", server.check(200, None))], ms(50), ms(2000));
    let guard = Guard::ErrorRate { probe: "api".into(), above: 0.5, window: ms(500) };
    let mut checker = checker(Some(&hypothesis), &[guard]);
    checker.steady_state(&NOT_INTERRUPTED, &mut |_| {}).unwrap();
    checker.start_during();
    assert!(fired_within(&mut checker, ms(1200)).is_none(), "fired while the server was healthy");
    let during = checker.drain();
    assert!(during.len() >= 10 && during.iter().all(|s| s.ok && s.phase == CheckPhase::During), "{during:?}");
    server.status.store(500, Ordering::Relaxed);
    let (report, after) = fired_within(&mut checker, ms(3000)).expect("the error-rate guard fires");
    // More than half of a 500 ms window failed: about 300 ms after the server turned.
    assert!(after < ms(1500), "fired {after:?} after the server began to fail");
    assert_eq!(report.guard, "error-rate");
    assert!(report.reason.contains("probe api: ") && report.reason.contains("status 500, expected 200"), "{report:?}");
    assert!(report.fired_s > 1.0, "{report:?}");
    assert!(checker.fired().is_none(), "told once");
    server.status.store(200, Ordering::Relaxed);
    let recovered = checker.recovery(&NOT_INTERRUPTED, &mut |_| {}).expect("recovered");
    let report = checker.finish().unwrap();
    assert_eq!(report.verdict, Verdict::Failed, "{report:?}");
    assert!(report.reason.as_deref().unwrap().starts_with("the error-rate guard fired: probe api: "), "{report:?}");
    assert!(report.steady_before && report.recovered_after_s == Some(recovered.as_secs_f64()));
}

#[test]
fn latency_guard_fires_when_the_server_slows_and_not_before() {
    // A 20 ms answer is the baseline: loopback jitter is small beside it.
    let server = HttpServer::start(200, 20);
    let hypothesis = hypothesis(vec![probe("api", server.check(200, None))], ms(50), ms(2000));
    // Fires above 60 ms: far above loopback jitter, far below the slow answer.
    let guard = Guard::Latency { probe: "api".into(), percent: 200.0, window: ms(500) };
    let mut checker = checker(Some(&hypothesis), &[guard]);
    let mut before = Vec::new();
    checker.steady_state(&NOT_INTERRUPTED, &mut |s| before.push(s.clone())).unwrap();
    assert!(before.len() >= 5 && before.iter().all(|s| s.latency_ms >= 20.0), "5 baseline checks: {before:?}");
    checker.start_during();
    assert!(fired_within(&mut checker, ms(1200)).is_none(), "fired at the baseline latency");
    server.delay_ms.store(150, Ordering::Relaxed);
    let (report, _) = fired_within(&mut checker, ms(3000)).expect("the latency guard fires");
    assert_eq!(report.guard, "latency");
    assert!(report.reason.contains("probe api: p95 latency 1"), "{report:?}");
    let report = checker.finish().unwrap();
    // Recovery was never checked: the guard's failure decides.
    assert_eq!(report.verdict, Verdict::Failed, "{report:?}");
    let summary = |phase| report.probes.iter().find(|p| p.phase == phase).unwrap();
    assert!(summary(CheckPhase::Before).p95_ms < 60.0, "{:?}", report.probes);
    assert!(summary(CheckPhase::During).checks >= 20, "{:?}", report.probes);
    let slow = report.samples.iter().filter(|s| s.phase == CheckPhase::During && s.latency_ms >= 150.0).count();
    assert!(slow >= 1, "fired on a slow check: {:?}", report.samples);
}

#[test]
fn wall_clock_guard_works_without_a_hypothesis() {
    let mut checker = checker(None, &[Guard::WallClock { max: ms(300) }]);
    assert_eq!(checker.steady_state(&NOT_INTERRUPTED, &mut |_| panic!("no probes")), Ok(()));
    checker.start_during();
    assert!(checker.fired().is_none());
    let (report, after) = fired_within(&mut checker, ms(2000)).expect("the wall-clock guard fires");
    assert!(after >= ms(250) && after < ms(500), "{after:?}");
    assert_eq!(report.guard, "wall-clock");
    assert!(report.fired_s >= 0.3 && report.reason.contains("the wall-clock limit is 0.3 s"), "{report:?}");
    assert!(checker.fired().is_none(), "told once");
    assert_eq!(checker.recovery(&NOT_INTERRUPTED, &mut |_| {}), None);
    assert!(checker.drain().is_empty());
    assert!(checker.finish().is_none());
}

/// A `prometheus` process with its own empty config, storage and loopback port; stopped
/// (SIGTERM, then SIGKILL) and its directory removed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Prometheus {
    fn start() -> Option<Prometheus> {
        Command::new("prometheus").arg("--version").output().ok()?;
        let dir = std::env::temp_dir().join(format!("chaos-hypothesis-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("prometheus.yml"), "global:\n  evaluation_interval: 1s\n").unwrap();
        let web = closed_port();
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        let prometheus = Prometheus { child, dir, url: format!("http://{web}") };
        // Ready when a probe of `vector(1)` passes (steady_state retries until then).
        let ready = probe("ready", prometheus.check("vector(1)", Compare::AtLeast, 1.0));
        let (result, _) = steady(ready, Duration::from_secs(8));
        assert_eq!(
            result,
            Ok(()),
            "prometheus not ready: {}",
            std::fs::read_to_string(prometheus.dir.join("log")).unwrap()
        );
        Some(prometheus)
    }

    fn check(&self, query: &str, compare: Compare, threshold: f64) -> ProbeCheck {
        ProbeCheck::Prometheus { url: self.url.clone(), query: query.into(), compare, threshold }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(ms(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One Prometheus (it takes seconds to start) for the probe's and the guard's cases.
#[test]
fn prometheus_probe_and_guard_against_a_real_prometheus() {
    let Some(prometheus) = Prometheus::start() else {
        println!("skipped: no `prometheus` binary (Debian's prometheus; scripts/setup.sh installs it)");
        return;
    };
    let samples = assert_passes(probe("prom", prometheus.check("vector(1)", Compare::Above, 0.5)));
    assert_eq!(samples.last().unwrap().detail, "value 1");
    assert_fails(probe("prom", prometheus.check("vector(1)", Compare::Below, 0.5)), "value 1, not below 0.5");
    assert_fails(probe("prom", prometheus.check("vector(1) > 2", Compare::Above, 0.0)), "no samples");
    assert_fails(probe("prom", prometheus.check("vector(", Compare::Above, 0.0)), "HTTP 400");

    // The guard without a hypothesis: queried every second; fires after a window of
    // non-empty results, never on an empty one.
    let guard = |query: &str| Guard::Prometheus { url: prometheus.url.clone(), query: query.into(), window: ms(1000) };
    let mut firing = checker(None, &[guard("vector(1)")]);
    let mut quiet = checker(None, &[guard("vector(1) > 2")]);
    // A query that fails (nothing listens there) counts as no sample.
    let nowhere =
        Guard::Prometheus { url: format!("http://{}", closed_port()), query: "vector(1)".into(), window: ms(0) };
    let mut unreachable = checker(None, &[nowhere]);
    firing.start_during();
    quiet.start_during();
    unreachable.start_during();
    let (report, after) = fired_within(&mut firing, ms(4000)).expect("the prometheus guard fires");
    assert!(after >= ms(900), "fired after {after:?}, before its 1 s window");
    assert_eq!(report.guard, "prometheus");
    assert!(report.reason.contains("\"vector(1)\" at http://127.0.0.1:"), "{report:?}");
    assert!(quiet.fired().is_none(), "an empty result fired the guard");
    assert!(fired_within(&mut quiet, ms(1500)).is_none(), "an empty result fired the guard");
    assert!(unreachable.fired().is_none(), "a failed query fired the guard");
}

// ---------------------------------------------------------------------------------------
// Recovery, interruption, the verdict, spans.

/// The server fails at the revert and comes back 600 ms later: recovery returns about
/// that, the verdict passes.
#[test]
fn recovery_returns_the_time_until_every_probe_passes() {
    let server = HttpServer::start(200, 0);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let probes = vec![
        probe("api", server.check(200, None)),
        probe("port", ProbeCheck::Tcp { connect: listener.local_addr().unwrap() }),
    ];
    let hypothesis = hypothesis(probes, ms(50), ms(2000));
    let mut checker = checker(Some(&hypothesis), &[Guard::WallClock { max: Duration::from_secs(60) }]);
    checker.steady_state(&NOT_INTERRUPTED, &mut |_| {}).unwrap();
    checker.start_during();
    std::thread::sleep(ms(300));
    assert!(checker.fired().is_none());
    let during = checker.drain();
    server.status.store(503, Ordering::Relaxed);
    let comes_back = {
        let status = server.status.clone();
        std::thread::spawn(move || {
            std::thread::sleep(ms(600));
            status.store(200, Ordering::Relaxed);
        })
    };
    let mut after = Vec::new();
    let recovered = checker.recovery(&NOT_INTERRUPTED, &mut |s| after.push(s.clone())).expect("recovered");
    comes_back.join().unwrap();
    assert!(recovered >= ms(600) && recovered < ms(1200), "recovered after {recovered:?}");
    let after: Vec<_> = after.into_iter().filter(|s| s.phase == CheckPhase::After).collect();
    assert!(after.iter().any(|s| !s.ok && s.probe == "api") && after.last().unwrap().ok, "{after:?}");
    let report = checker.finish().unwrap();
    assert_eq!((report.verdict, report.reason.as_deref()), (Verdict::Passed, None), "{report:?}");
    assert_eq!(report.recovered_after_s, Some(recovered.as_secs_f64()));
    // Summaries per probe and phase; samples in order of time.
    let api_during = report.probes.iter().find(|p| p.probe == "api" && p.phase == CheckPhase::During).unwrap();
    assert!(api_during.checks >= during.iter().filter(|s| s.probe == "api").count() as u64 && api_during.failures == 0);
    let api_after = report.probes.iter().find(|p| p.probe == "api" && p.phase == CheckPhase::After).unwrap();
    assert!(api_after.failures >= 1 && api_after.checks > api_after.failures, "{api_after:?}");
    assert!(report.samples.windows(2).all(|w| w[0].t_s <= w[1].t_s));
}

#[test]
fn recovery_fails_after_its_deadline() {
    let server = HttpServer::start(200, 0);
    let mut hypothesis = hypothesis(vec![probe("api", server.check(200, None))], ms(50), ms(2000));
    hypothesis.recovery = ms(400);
    let mut checker = checker(Some(&hypothesis), &[]);
    checker.steady_state(&NOT_INTERRUPTED, &mut |_| {}).unwrap();
    checker.start_during();
    server.status.store(502, Ordering::Relaxed);
    let started = Instant::now();
    assert_eq!(checker.recovery(&NOT_INTERRUPTED, &mut |_| {}), None);
    assert!(started.elapsed() >= ms(400) && started.elapsed() < ms(1000), "{:?}", started.elapsed());
    let report = checker.finish().unwrap();
    assert_eq!(report.verdict, Verdict::Failed);
    assert_eq!(
        report.reason.as_deref(),
        Some("after the revert: did not recover within 0.4 s: probe api: status 502, expected 200")
    );
}

#[test]
fn steady_state_stops_when_interrupted_and_is_not_judged() {
    let refused = closed_port();
    let hypothesis = hypothesis(vec![probe("port", ProbeCheck::Tcp { connect: refused })], ms(50), ms(30_000));
    let mut checker = checker(Some(&hypothesis), &[]);
    let interrupted = Arc::new(AtomicBool::new(false));
    let setter = {
        let interrupted = interrupted.clone();
        std::thread::spawn(move || {
            std::thread::sleep(ms(300));
            interrupted.store(true, Ordering::Relaxed);
        })
    };
    let started = Instant::now();
    assert_eq!(checker.steady_state(&interrupted, &mut |_| {}), Err("interrupted".to_owned()));
    assert!(started.elapsed() < ms(600), "{:?}", started.elapsed());
    setter.join().unwrap();
    let report = checker.finish().unwrap();
    assert_eq!(report.verdict, Verdict::NotJudged);
    assert!(!report.steady_before);
}

#[test]
fn not_steady_is_not_judged_and_a_wall_clock_stop_is_not_judged() {
    let refused = closed_port();
    let hypothesis_refused = hypothesis(vec![probe("port", ProbeCheck::Tcp { connect: refused })], ms(50), ms(200));
    let mut refused_checker = checker(Some(&hypothesis_refused), &[]);
    assert!(refused_checker.steady_state(&NOT_INTERRUPTED, &mut |_| {}).is_err());
    let report = refused_checker.finish().unwrap();
    assert_eq!(report.verdict, Verdict::NotJudged);
    assert!(report.reason.unwrap().starts_with("before the faults: not steady within 0.2 s: probe port: connect to"));

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let hypothesis =
        hypothesis(vec![probe("port", ProbeCheck::Tcp { connect: listener.local_addr().unwrap() })], ms(50), ms(2000));
    let mut checker = checker(Some(&hypothesis), &[Guard::WallClock { max: ms(200) }]);
    checker.steady_state(&NOT_INTERRUPTED, &mut |_| {}).unwrap();
    checker.start_during();
    assert!(fired_within(&mut checker, ms(2000)).is_some());
    assert!(checker.recovery(&NOT_INTERRUPTED, &mut |_| {}).is_some());
    let report = checker.finish().unwrap();
    assert_eq!(report.verdict, Verdict::NotJudged, "{report:?}");
    assert!(report.reason.unwrap().starts_with("the wall-clock guard cut the run short: "));
}
