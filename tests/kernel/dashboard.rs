//! The agent's dashboard page (GET /dashboard) in a real headless Chromium, drawing from
//! a real Prometheus that scrapes a real agent while a loss fault drops real traffic;
//! and `check_grafana_queries`, which runs every query of the Grafana dashboard
//! (deploy/compose/grafana/chaos-ebpf.json, the one list of PromQL the page draws too)
//! against a Prometheus. The compose stack's test calls it for every panel.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    net::{ToSocketAddrs, UdpSocket},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use chaos_agent::api::FaultWire;
use serde_json::{json, Value};

use crate::support::*;

#[path = "../../chaos-userspace/cli/tests/common/chromium.rs"]
mod chromium;
use chromium::headless_chromium;

pub const TESTS: &[Test] = tests![dashboard_page_draws_live_charts_during_a_fault];

/// The Grafana dashboard, as the agent embeds it.
pub const GRAFANA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/compose/grafana/chaos-ebpf.json");

/// The panels fed by the agent's own metrics (job `agent`): they must have series
/// while a fault is in force.
const AGENT_PANELS: &[&str] = &[
    "Faults active",
    "Packets dropped and delayed per second",
    "Packets dropped and delayed by the faults in force",
];
/// The panel whose `dropped` value the test reads twice.
const DROPPED_PANEL: &str = "Packets dropped and delayed by the faults in force";

/// What one query of the dashboard returned.
#[derive(Debug)]
pub struct QueryResult {
    pub panel: String,
    pub expr: String,
    pub series: usize,
}

/// Runs every panel's `targets[].expr` of deploy/compose/grafana/chaos-ebpf.json as an
/// instant query against `prometheus` (`http://HOST:PORT` or `HOST:PORT`). Panics
/// unless every query parses and runs (status success), and unless each query of the
/// panels titled in `must_have_series` returns at least one series (a title that names
/// no panel panics too: a renamed panel must not pass unchecked).
pub fn check_grafana_queries(prometheus: &str, must_have_series: &[&str]) -> Vec<QueryResult> {
    let text = std::fs::read_to_string(GRAFANA).unwrap_or_else(|e| panic!("reading {GRAFANA}: {e}"));
    let dashboard: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{GRAFANA} is not JSON: {e}"));
    let authority = prometheus.trim_start_matches("http://").trim_end_matches('/');
    let addr = authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("'{prometheus}' is not http://HOST:PORT"));
    let panels = dashboard["panels"].as_array().unwrap_or_else(|| panic!("{GRAFANA} has no panels"));
    for title in must_have_series {
        assert!(panels.iter().any(|p| p["title"] == *title), "no panel titled '{title}' in {GRAFANA}");
    }
    let mut results = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("").to_owned();
        let targets = panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        assert!(!targets.is_empty(), "panel '{title}' has no targets");
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_else(|| panic!("panel '{title}': a target without expr"));
            let (status, body) = http_get(addr, &format!("/api/v1/query?query={}", url_encode(expr)))
                .unwrap_or_else(|e| panic!("asking {prometheus} for '{expr}': {e}"));
            let reply: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("'{expr}': {e}: {body}"));
            assert!(status == 200 && reply["status"] == "success", "panel '{title}': '{expr}' failed ({status}): {body}");
            let series = reply["data"]["result"].as_array().map_or(0, Vec::len);
            if must_have_series.contains(&title.as_str()) {
                assert!(series > 0, "panel '{title}': '{expr}' returned no series: {body}");
            }
            results.push(QueryResult { panel: title.clone(), expr: expr.to_owned(), series });
        }
    }
    results
}

/// A query string value, percent-encoded (all but unreserved characters).
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }
        })
        .collect()
}

/// The page's state as it stands in the browser: refreshes done, how it asks
/// Prometheus, its status line, and per panel its state, message, polylines and values.
/// Read also while the page loads (Page.navigate returns before the document is parsed):
/// an element not there yet reads as "".
const PAGE_STATE: &str = r#"JSON.stringify({
  refreshes: +(document.body?.dataset.refreshes || 0),
  via: document.body?.dataset.via || "",
  status: document.getElementById("status")?.textContent ?? "",
  panels: [...document.querySelectorAll("figure.panel")].map((f) => ({
    title: f.dataset.title,
    state: f.dataset.state,
    msg: f.querySelector(".msg")?.textContent ?? "",
    lines: [...f.querySelectorAll("polyline.series")].map((p) => ({ series: p.dataset.series, points: p.points.numberOfItems })),
    values: [...f.querySelectorAll(".value")].map((v) => ({ series: v.dataset.series, value: +v.dataset.value, text: v.textContent })),
  })),
})"#;

/// A loss fault in force through a real agent on a namespace pair with UDP flowing all
/// along, scraped every second by a real Prometheus (job `agent`), and the agent's
/// /dashboard open in headless Chromium. Asserts: every Grafana query runs, the agent's
/// panels have series; the page loads without a JS error or failed request, asks
/// Prometheus directly (its default CORS lets the agent's origin in) and draws a
/// polyline of several points for each agent series, shows 1 fault active, and the
/// dropped count it shows grows between two reads seconds apart; panels of jobs not
/// scraped here say they have no series; the agent's proxy answers a query; once
/// Prometheus is gone the page says it is unreachable. Everything is stopped and
/// removed, also on a failure (guards), and nothing is left.
fn dashboard_page_draws_live_charts_during_a_fault() {
    require_root();
    if Command::new("prometheus").arg("--version").output().is_err() {
        skip("no `prometheus` binary (Debian's prometheus package; scripts/setup.sh installs it)");
    }
    let Some(chromium) = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| Path::new(p).exists())
    else {
        skip("no chromium binary (/usr/bin/chromium): apt-get install chromium (scripts/setup.sh installs it)");
    };
    let started = Instant::now();
    let pair = Pair::new("dash");
    let web = sock(std::net::Ipv4Addr::LOCALHOST, free_port());
    let prometheus_url = format!("http://{web}");
    let dir = std::env::temp_dir().join("cet-agent-dashboard");
    let _ = std::fs::remove_dir_all(&dir);
    let agent = Agent::start_with(dir, &[&pair.a], &["--prometheus-url", &prometheus_url]);

    // The page is served at / and /dashboard with its configuration filled in.
    for path in ["/", "/dashboard"] {
        let (status, page) = http_get(agent.metrics, path).expect("GET the dashboard");
        assert_eq!(status, 200, "{path}: {page}");
        assert!(page.contains(&format!("\"prometheus\":\"{prometheus_url}\"")) && page.contains("\"panels\""), "{path}");
    }
    let (status, body) = http_get(agent.metrics, "/nothing").expect("GET /nothing");
    assert!(status == 404 && body.contains("GET /dashboard"), "{status} {body}");

    let prometheus = Prometheus::start_job("agent", agent.metrics, web);
    let client = agent.client();
    let fault = r#"{"kind": "loss", "target": "TARGET", "probability": 0.3, "proto": "udp", "direction": "egress"}"#
        .replace("TARGET", &pair.target());
    let spec = serde_json::from_str::<FaultWire>(&fault).unwrap().to_spec().unwrap();
    let applied = client.apply(&spec, Duration::from_secs(120), Some(7)).expect("apply the loss fault");
    let traffic = Traffic::start(&pair);

    // Prometheus has the kernel's dropped counter of the fault (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    let query = "sum(chaos_agent_fault_packets{job=\"agent\",counter=\"dropped\"})";
    while !prometheus.query(query).is_some_and(|v| v > 0.0) {
        assert!(Instant::now() < deadline, "prometheus has no dropped packets within 20 s:\n{}", prometheus.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    // Every rate() needs two samples in its window: wait for a few more scrapes.
    std::thread::sleep(Duration::from_secs(3));
    let results = check_grafana_queries(&prometheus_url, AGENT_PANELS);
    for r in &results {
        println!("dashboard: {} series of '{}' ({})", r.series, r.expr, r.panel);
    }
    let (status, body) = http_get(agent.metrics, &format!("/api/v1/query?query={}", url_encode(query)))
        .expect("a query through the agent's proxy");
    assert!(status == 200 && body.contains("\"status\":\"success\""), "the proxy: {status} {body}");

    let mut browser = Browser::start(chromium);
    let opened = Instant::now();
    let url = format!("http://{}/dashboard", agent.metrics);
    browser.navigate(&url);
    let first = browser.wait_for(Duration::from_secs(30), "the agent's panels drawn", |state| {
        AGENT_PANELS.iter().all(|title| {
            let panel = panel(state, title);
            panel["state"] == "ok"
                && panel["lines"].as_array().is_some_and(|l| !l.is_empty() && l.iter().all(|l| l["points"].as_u64() >= Some(2)))
        })
    });
    let drawn = opened.elapsed();
    let dropped_1 = value(&first, DROPPED_PANEL, "dropped");
    let refreshes_1 = first["refreshes"].as_u64().unwrap_or(0);
    // Two refreshes later (every 2 s), with traffic still flowing.
    let second = browser.wait_for(Duration::from_secs(20), "two more refreshes", |state| {
        state["refreshes"].as_u64().unwrap_or(0) >= refreshes_1 + 2
    });
    let dropped_2 = value(&second, DROPPED_PANEL, "dropped");
    let problems = browser.problems();
    println!(
        "dashboard: charts drawn {:.1} s after opening the page; dropped shown {dropped_1} then {dropped_2} ({} refreshes apart); via {}",
        drawn.as_secs_f64(),
        second["refreshes"].as_u64().unwrap_or(0) - refreshes_1,
        second["via"]
    );
    assert!(problems.is_empty(), "the page logged problems:\n{}", problems.join("\n"));
    assert_eq!(second["via"], "direct", "Prometheus' default CORS should let the page ask it directly");
    assert_eq!(value(&second, "Faults active", "faults"), 1.0, "one fault active: {second}");
    assert!(dropped_1 > 0.0 && dropped_2 > dropped_1, "the dropped count shown grows: {dropped_1} then {dropped_2}");
    let per_second = value(&second, "Packets dropped and delayed per second", "dropped/s");
    assert!(per_second > 0.0, "dropped/s shown: {per_second}");
    for title in ["Members seen per node", "etcd leader changes"] {
        let p = panel(&second, title);
        assert!(p["state"] == "empty" && p["msg"].as_str().is_some_and(|m| m.contains("No series")), "{title}: {p}");
    }

    // Prometheus gone: the page says so (its direct fetch fails, and so does the proxy).
    drop(prometheus);
    let gone = browser.wait_for(Duration::from_secs(20), "the page saying Prometheus is unreachable", |state| {
        state["status"].as_str().is_some_and(|s| s.starts_with("Prometheus unreachable"))
    });
    println!("dashboard: after Prometheus stopped: {}", gone["status"]);
    assert!(panel(&gone, "Faults active")["state"] == "error");
    browser.close();

    traffic.stop();
    client.revert(applied.id).expect("revert the fault");
    drop(agent);
    drop(pair);
    assert_nothing_left();
    println!("dashboard: the test took {:.1} s", started.elapsed().as_secs_f64());
}

fn panel<'a>(state: &'a Value, title: &str) -> &'a Value {
    state["panels"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["title"] == title))
        .unwrap_or_else(|| panic!("no panel '{title}' on the page: {state}"))
}

/// The value a panel shows for one series.
fn value(state: &Value, title: &str, series: &str) -> f64 {
    let p = panel(state, title);
    p["values"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["series"] == series))
        .and_then(|v| v["value"].as_f64())
        .unwrap_or_else(|| panic!("panel '{title}' shows no value of '{series}': {p}"))
}

/// UDP from a to b, about 500 datagrams a second, until stopped (at most 3 min); the
/// receiver is drained so only the fault drops.
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(pair: &Pair) -> Traffic {
        let receiver = udp_receiver(&pair.b, sock(ADDR_B, 5002));
        let sender = in_netns(&pair.a, || UdpSocket::bind(sock(ADDR_A, 5001)).expect("bind the sender"));
        receiver.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(180);
            let mut buf = [0u8; 64];
            let mut seq = 0u32;
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let _ = sender.send_to(&seq.to_be_bytes(), sock(ADDR_B, 5002));
                seq += 1;
                while receiver.recv(&mut buf).is_ok() {}
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Traffic { stop, thread: Some(thread) }
    }

    fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Headless Chromium driven over the DevTools protocol on a pipe
/// (`--remote-debugging-pipe`: JSON messages ended by a NUL, in on fd 3, out on fd 4;
/// no WebSocket needed). In a process group of its own, which is killed on drop, and its
/// profile directory removed.
struct Browser {
    child: Child,
    to: File,
    from: mpsc::Receiver<Value>,
    session: String,
    next_id: u64,
    events: Vec<Value>,
    profile: PathBuf,
    killed: bool,
}

fn cloexec_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0, "pipe2");
    // SAFETY: both fds are new and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    fn start(binary: &str) -> Browser {
        let profile = std::env::temp_dir().join(format!("cet-dashboard-chromium-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        let (their_in, our_out) = cloexec_pipe();
        let (our_in, their_out) = cloexec_pipe();
        let (fd_in, fd_out) = (their_in.as_raw_fd(), their_out.as_raw_fd());
        let mut cmd = headless_chromium(Path::new(binary), &profile).expect("chromium's profile directory");
        cmd.arg("--remote-debugging-pipe")
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Copies above 3 and 4 first, so dup2 never closes one it still needs;
                // dup2 clears close-on-exec on 3 and 4.
                let a = libc::fcntl(fd_in, libc::F_DUPFD_CLOEXEC, 10);
                let b = libc::fcntl(fd_out, libc::F_DUPFD_CLOEXEC, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        drop((their_in, their_out));
        let (tx, from) = mpsc::channel();
        let reader = BufReader::new(File::from(our_in));
        std::thread::spawn(move || {
            for message in reader.split(0) {
                let Ok(message) = message else { break };
                if let Ok(value) = serde_json::from_slice::<Value>(&message) {
                    if tx.send(value).is_err() {
                        break;
                    }
                }
            }
        });
        let mut browser =
            Browser { child, to: File::from(our_out), from, session: String::new(), next_id: 1, events: Vec::new(), profile, killed: false };
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().expect("a target id").to_owned();
        let attached = browser.call("Target.attachToTarget", json!({"targetId": target_id, "flatten": true}));
        browser.session = attached["sessionId"].as_str().expect("a session id").to_owned();
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            browser.call(domain, json!({}));
        }
        browser
    }

    /// One command (on the page's session once attached), its result; events that
    /// arrive meanwhile are kept. At most 15 s.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap_or_else(|e| panic!("sending {method} to chromium: {e}"));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = self.from.recv_timeout(left).unwrap_or_else(|e| panic!("chromium did not answer {method}: {e}"));
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {}", reply["error"]);
                return reply["result"].clone();
            }
            self.events.push(reply);
        }
    }

    fn navigate(&mut self, url: &str) {
        let result = self.call("Page.navigate", json!({"url": url}));
        assert!(result.get("errorText").is_none(), "opening {url}: {}", result["errorText"]);
    }

    /// The page's state (PAGE_STATE) as JSON.
    fn state(&mut self) -> Value {
        let result = self.call("Runtime.evaluate", json!({"expression": PAGE_STATE, "returnByValue": true}));
        assert!(result.get("exceptionDetails").is_none(), "reading the page: {}", result["exceptionDetails"]);
        serde_json::from_str(result["result"]["value"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
    }

    /// Polls the page's state every 250 ms until `done` holds (at most `limit`).
    fn wait_for(&mut self, limit: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let state = self.state();
            if done(&state) {
                return state;
            }
            assert!(Instant::now() < deadline, "{what}: not within {limit:?}; the page: {state:#}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// JS exceptions, console errors and failed loads the page logged so far.
    fn problems(&mut self) -> Vec<String> {
        while let Ok(event) = self.from.try_recv() {
            self.events.push(event);
        }
        let params = |e: &Value| e["params"].clone();
        self.events
            .iter()
            .filter_map(|e| match e["method"].as_str()? {
                "Runtime.exceptionThrown" => Some(format!("exception: {}", params(e)["exceptionDetails"])),
                "Runtime.consoleAPICalled" if matches!(params(e)["type"].as_str(), Some("error" | "assert")) => {
                    Some(format!("console: {}", params(e)["args"]))
                }
                "Log.entryAdded" if params(e)["entry"]["level"] == "error" => {
                    Some(format!("log: {} {}", params(e)["entry"]["text"], params(e)["entry"]["url"]))
                }
                _ => None,
            })
            .collect()
    }

    /// Closes the browser and asserts none of its processes is left.
    fn close(mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        // SAFETY: probing our own child's process group (signal 0 sends nothing).
        while unsafe { libc::kill(-(self.child.id() as i32), 0) } == 0 {
            assert!(Instant::now() < deadline, "chromium processes left in group {}", self.child.id());
            std::thread::sleep(Duration::from_millis(50));
        }
        // Again now that no process of it can write there.
        let _ = std::fs::remove_dir_all(&self.profile);
        assert!(!self.profile.exists(), "chromium's profile is left: {}", self.profile.display());
    }

    /// SIGKILL to the whole group (renderer and GPU processes too), once.
    fn kill(&mut self) {
        if !self.killed {
            self.killed = true;
            // SAFETY: its own process group, which we created (process_group(0)); the
            // group id stays reserved while any member lives, reaped or not.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill();
    }
}
