//! OTLP export of a real run's spans: a receiver on loopback decodes each POST
//! /v1/traces body as the real `ExportTraceServiceRequest` (protobuf) and finds the spans
//! of an interrupted loss run (run > step > inject and revert, with their attributes and
//! statuses, flushed before the exit 1), the same spans spans.jsonl has, and the metric
//! snapshots in the run directory; a collector that is not there costs a warning line
//! and bounded time, never the run.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    sync::{mpsc, Arc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{any_value::Value, KeyValue},
    trace::v1::{status::StatusCode, Span},
};
use prost::Message;
use serde_json::Value as Json;

use crate::support::*;

pub const TESTS: &[Test] = tests![
    otlp_spans_of_an_interrupted_run,
    otlp_unreachable_collector_costs_a_warning,
    otlp_environment_endpoint_and_a_completed_run,
    otlp_bad_endpoint_is_refused
];

/// One POST the receiver got: its path, content type and decoded body.
struct Post {
    path: String,
    content_type: String,
    request: ExportTraceServiceRequest,
}

/// An OTLP/HTTP receiver on 127.0.0.1 (a port the kernel chooses); stops on drop.
struct Receiver {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    posts: mpsc::Receiver<Result<Post, String>>,
}

impl Receiver {
    fn start() -> Receiver {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind a loopback port"));
        let (sender, posts) = mpsc::channel();
        let serving = server.clone();
        let thread = std::thread::spawn(move || {
            for mut request in serving.incoming_requests() {
                let mut body = Vec::new();
                let read = std::io::Read::read_to_end(request.as_reader(), &mut body);
                let content_type = request
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Content-Type"))
                    .map(|h| h.value.to_string())
                    .unwrap_or_default();
                let path = request.url().to_owned();
                let post = read.map_err(|e| e.to_string()).and_then(|_| {
                    let request = ExportTraceServiceRequest::decode(body.as_slice()).map_err(|e| e.to_string())?;
                    Ok(Post { path, content_type, request })
                });
                let _ = sender.send(post);
                let _ = request.respond(tiny_http::Response::empty(200));
            }
        });
        Receiver { server, thread: Some(thread), posts }
    }

    fn url(&self) -> String {
        format!("http://{}", self.server.server_addr().to_ip().expect("an IP listener"))
    }

    /// The posts received until none came for `quiet` (at most `limit` in all).
    fn posts(&self, quiet: Duration, limit: Duration) -> Vec<Post> {
        let deadline = Instant::now() + limit;
        let mut posts = Vec::new();
        while Instant::now() < deadline {
            match self.posts.recv_timeout(quiet) {
                Ok(post) => posts.push(post.unwrap_or_else(|e| panic!("a POST that is not OTLP protobuf: {e}"))),
                Err(_) => break,
            }
        }
        posts
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn int(span: &Span, key: &str) -> i64 {
    match attribute(&span.attributes, key) {
        Some(Value::IntValue(v)) => *v,
        other => panic!("span {} attribute {key}: expected an integer, found {other:?}", span.name),
    }
}

fn text<'a>(span: &'a Span, key: &str) -> &'a str {
    match attribute(&span.attributes, key) {
        Some(Value::StringValue(v)) => v,
        other => panic!("span {} attribute {key}: expected a string, found {other:?}", span.name),
    }
}

/// The one span named `name` whose parent is `parent` (None: a root span).
fn the<'a>(spans: &'a [Span], name: &str, parent: Option<&Span>) -> &'a Span {
    let parent_id = parent.map_or(&[][..], |p| p.span_id.as_slice());
    let found: Vec<&Span> = spans.iter().filter(|s| s.name == name && s.parent_span_id == parent_id).collect();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(found.len(), 1, "spans named {name} under {:?}: {names:?}", parent.map(|p| &p.name));
    found[0]
}

fn status(span: &Span) -> (i32, &str) {
    span.status.as_ref().map_or((StatusCode::Unset as i32, ""), |s| (s.code, s.message.as_str()))
}

/// An interrupted loss run with `--otlp-endpoint`: the receiver gets OTLP protobuf on
/// /v1/traces, before the process exits 1, holding the run's spans in one trace: run >
/// cleanup, run > step > inject and revert, run > revert; attributes (scenario, seed,
/// rule_id, target, the counters as integers) and statuses (run: error "interrupted",
/// inject: ok) as in spans.jsonl; the resource names the service, host and version. The
/// run directory has the metric snapshots, the last with the rule's final dropped count.
fn otlp_spans_of_an_interrupted_run() {
    let pair = Pair::new("otlp");
    let target = pair.target();
    let receiver = Receiver::start();
    let tmp = TempDir::new("otlp-int");
    let run_dir = tmp.0.join("run");
    let chaos = Chaos::start(&[
        "inject",
        "loss",
        "--target",
        &target,
        "--probability",
        "0.5",
        "--duration",
        "5m",
        "--seed",
        "7",
        "--metrics-addr",
        "off",
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--otlp-endpoint",
        &receiver.url(),
    ]);
    let replies = pair.ping(&pair.a, "192.0.2.2", 20, Duration::from_millis(200));
    assert!(replies < 20, "no ping was lost under 50% loss");
    let interrupted = Instant::now();
    let (code, out, err) = chaos.interrupt();
    println!("OTLP: SIGINT to exit (revert and flush) took {:?}", interrupted.elapsed());
    assert_eq!(code, 1, "an interrupted run: {out}{err}");
    assert!(!err.contains("not exported"), "{err}");
    assert_nothing_left();

    // Everything was sent before the exit: what arrives within a short quiet time.
    let posts = receiver.posts(Duration::from_millis(500), Duration::from_secs(5));
    assert!(!posts.is_empty(), "no OTLP request arrived; stderr:\n{err}");
    let mut spans = Vec::new();
    let mut resources = Vec::new();
    for post in posts {
        assert_eq!((post.path.as_str(), post.content_type.as_str()), ("/v1/traces", "application/x-protobuf"));
        for resource_spans in post.request.resource_spans {
            resources.push(resource_spans.resource.unwrap_or_default());
            spans.extend(resource_spans.scope_spans.into_iter().flat_map(|s| s.spans));
        }
    }
    let run = the(&spans, "run", None);
    assert!(spans.iter().all(|s| s.trace_id == run.trace_id), "one trace");
    assert_eq!((text(run, "scenario"), int(run, "seed")), ("inject loss", 7));
    assert_eq!(status(run), (StatusCode::Error as i32, "interrupted"));
    assert!(attribute(&run.attributes, "otel.status_message").is_none(), "the message is the status'");
    the(&spans, "cleanup", Some(run));
    let step = the(&spans, "step", Some(run));
    assert_eq!((text(step, "step"), text(step, "ended")), ("loss", "interrupted"));
    let inject = the(&spans, "inject", Some(step));
    assert_eq!((text(inject, "target"), int(inject, "rule_id"), int(inject, "seed")), (target.as_str(), 1, 7));
    assert_eq!(status(inject).0, StatusCode::Ok as i32);
    let dropped = int(inject, "dropped");
    assert!(dropped >= 1 && dropped <= int(inject, "matched"), "{inject:?}");
    let rule_revert = the(&spans, "revert", Some(step));
    assert_eq!((int(rule_revert, "rule_id"), status(rule_revert).0), (1, StatusCode::Ok as i32));
    assert!(inject.end_time_unix_nano <= rule_revert.start_time_unix_nano);
    the(&spans, "revert", Some(run));
    let resource = &resources[0];
    assert!(
        matches!(attribute(&resource.attributes, "service.name"), Some(Value::StringValue(s)) if s == "chaos-ebpf")
    );
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(
        matches!(attribute(&resource.attributes, "host.name"), Some(Value::StringValue(s)) if s == hostname.trim())
    );
    assert!(matches!(attribute(&resource.attributes, "service.version"), Some(Value::StringValue(s)) if !s.is_empty()));

    // The same spans as the run directory's record, with the same counters.
    let recorded: Vec<Json> = std::fs::read_to_string(run_dir.join("spans.jsonl"))
        .expect("spans.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |names: Vec<String>| {
        names.into_iter().fold(BTreeMap::new(), |mut m, n| {
            *m.entry(n).or_insert(0) += 1;
            m
        })
    };
    assert_eq!(
        count(spans.iter().map(|s| s.name.clone()).collect()),
        count(recorded.iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect())
    );
    let recorded_inject = recorded.iter().find(|s| s["name"] == "inject").unwrap();
    assert_eq!(recorded_inject["attributes"]["dropped"].as_i64(), Some(dropped));

    // The metric snapshots: before the fault (no packets yet), after the revert (the
    // final count, also with the HTTP endpoint off).
    let series =
        "chaos_ebpf_packets_dropped_total{fault=\"loss\",rule=\"1\",scenario=\"inject loss\",step=\"loss\"}";
    let sample = |name: &str| -> Option<i64> {
        let text = std::fs::read_to_string(run_dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    };
    assert_eq!(sample("metrics-before.prom"), None);
    assert!(sample("metrics-during.prom").is_some());
    assert_eq!(sample("metrics-after.prom"), Some(dropped));
}

/// `inject` for 1 s; `otlp`: OTEL_EXPORTER_OTLP_ENDPOINT set to it. (exit code, stderr,
/// wall time).
fn timed_inject(pair: &Pair, otlp: Option<&str>) -> (i32, String, Duration) {
    let target = pair.target();
    // Held to the end: a temporary would remove the directory before the run writes it.
    let dir = TempDir::new("otlp-timed");
    let mut command = Command::new(bin());
    command
        .args(["inject", "loss", "--target", &target, "--probability", "0.5", "--duration", "1s"])
        .args(["--metrics-addr", "off", "--run-dir"])
        .arg(dir.0.join("run"))
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match otlp {
        Some(url) => command.env("OTEL_EXPORTER_OTLP_ENDPOINT", url),
        None => command.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT"),
    };
    let started = Instant::now();
    let child = command.spawn().expect("spawn chaos-ebpf");
    let (code, _out, err) = Chaos { child }.finish(Duration::from_secs(30));
    (code, err, started.elapsed())
}

/// OTEL_EXPORTER_OTLP_ENDPOINT naming a closed loopback port: the run completes (exit 0)
/// with one warning line naming the URL, and takes at most 5 s longer than without it.
fn otlp_unreachable_collector_costs_a_warning() {
    let pair = Pair::new("otlpx");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{closed}");
    let (code, err, plain) = timed_inject(&pair, None);
    assert_eq!(code, 0, "{err}");
    let (code, err, unreachable) = timed_inject(&pair, Some(&url));
    assert_eq!(code, 0, "a dead collector does not fail the run: {err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("not exported")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].starts_with("chaos-ebpf: warning: ") && warnings[0].contains(&format!("{url}/v1/traces")));
    println!("OTLP: 1 s inject took {plain:?} without export, {unreachable:?} with a closed collector port");
    assert!(unreachable < plain + Duration::from_secs(5), "{plain:?} vs {unreachable:?}");
    assert_nothing_left();
}

/// OTEL_EXPORTER_OTLP_ENDPOINT alone turns the export on; a run that completed is status
/// ok, and so are its step and revert spans.
fn otlp_environment_endpoint_and_a_completed_run() {
    let pair = Pair::new("otlpenv");
    let receiver = Receiver::start();
    let (code, err, _) = timed_inject(&pair, Some(&receiver.url()));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("not exported"), "{err}");
    let spans: Vec<Span> = receiver
        .posts(Duration::from_millis(500), Duration::from_secs(5))
        .into_iter()
        .flat_map(|p| p.request.resource_spans)
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .collect();
    let run = the(&spans, "run", None);
    assert_eq!((status(run), int(run, "steps")), ((StatusCode::Ok as i32, ""), 1));
    let step = the(&spans, "step", Some(run));
    assert_eq!((text(step, "ended"), status(step).0), ("completed", StatusCode::Ok as i32));
    assert_eq!(status(the(&spans, "revert", Some(step))).0, StatusCode::Ok as i32);
    assert_eq!(status(the(&spans, "revert", Some(run))).0, StatusCode::Ok as i32);
    assert_nothing_left();
}

/// An endpoint that cannot be used, from the flag or the environment: exit 2 with the
/// fix, before anything changes (no run directory, nothing attached).
fn otlp_bad_endpoint_is_refused() {
    let pair = Pair::new("otlpbad");
    let target = pair.target();
    let tmp = TempDir::new("otlp-bad");
    let run_dir = tmp.0.join("run");
    let inject = ["inject", "loss", "--target", &target, "--probability", "0.5", "--duration", "1s", "--run-dir"];
    for (flag, env, expected) in [
        (Some("https://127.0.0.1:4318"), None, "https needs TLS"),
        (Some("127.0.0.1:4318"), None, "expected an http:// URL"),
        (None, Some("grpc://127.0.0.1:4317"), "OTEL_EXPORTER_OTLP_ENDPOINT=grpc://127.0.0.1:4317: expected an http:// URL"),
    ] {
        let mut command = Command::new(bin());
        command.args(inject).arg(&run_dir).env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        command.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        if let Some(url) = flag {
            command.args(["--otlp-endpoint", url]);
        }
        if let Some(url) = env {
            command.env("OTEL_EXPORTER_OTLP_ENDPOINT", url);
        }
        let child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn chaos-ebpf");
        let (code, out, err) = Chaos { child }.finish(Duration::from_secs(30));
        assert_eq!(code, 2, "{flag:?} {env:?}: {out}{err}");
        assert!(err.contains(expected), "{flag:?} {env:?}: {err}");
        assert!(err.lines().all(|l| l.len() < 300), "{err}");
        assert!(!run_dir.exists(), "no run directory for bad input");
        assert_nothing_left();
    }
}
