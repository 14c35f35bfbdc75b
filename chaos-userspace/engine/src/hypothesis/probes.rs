//! One check of one probe, on tokio: an HTTP GET, a TCP connect, a DNS query, a
//! command, a Prometheus instant query. Each is bounded by the probe's timeout (the
//! caller's), and what failed is one short line.

use std::{
    net::{IpAddr, SocketAddr},
    process::Stdio,
    sync::atomic::{AtomicU16, Ordering},
    time::{Duration, Instant},
};

use chaos_model::hypothesis::{Compare, ProbeCheck};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    net::{TcpStream, UdpSocket},
};

/// A failure's detail is at most this many characters, on one line.
pub(crate) const DETAIL_MAX: usize = 200;
/// Of a command's stdout and stderr, each, at most this much is kept (the rest is read
/// and dropped, so that a chatty command never blocks on a full pipe).
pub(crate) const OUTPUT_MAX: usize = 64 * 1024;
/// Of an HTTP response body, at most this much is read (a Prometheus reply to an
/// instant query is far smaller; a probe's body is not looked at).
const BODY_MAX: usize = 1024 * 1024;

/// What one check found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    pub ok: bool,
    /// Why it failed, or what a Prometheus query returned; empty when there is nothing to say.
    pub detail: String,
}

impl Outcome {
    fn pass(detail: impl Into<String>) -> Outcome {
        Outcome { ok: true, detail: one_line(&detail.into()) }
    }
    fn fail(detail: impl Into<String>) -> Outcome {
        Outcome { ok: false, detail: one_line(&detail.into()) }
    }
}

/// `text` on one line and at most [`DETAIL_MAX`] characters.
pub(crate) fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    chaos_ebpf_common::text::shorten(&joined, DETAIL_MAX)
}

/// The kind of a check, as reports and spans name it.
pub(crate) fn kind(check: &ProbeCheck) -> &'static str {
    match check {
        ProbeCheck::Http { .. } => "http",
        ProbeCheck::Tcp { .. } => "tcp",
        ProbeCheck::Dns { .. } => "dns",
        ProbeCheck::Command { .. } => "command",
        ProbeCheck::Prometheus { .. } => "prometheus",
    }
}

/// Runs one check, cut off after `timeout` (a command is then killed).
pub(crate) async fn check(check: &ProbeCheck, timeout: Duration) -> Outcome {
    let started = Instant::now();
    match tokio::time::timeout(timeout, run(check, started)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::fail(format!("timed out after {}", secs(timeout))),
    }
}

async fn run(check: &ProbeCheck, started: Instant) -> Outcome {
    match check {
        ProbeCheck::Http { url, status, max_latency } => match http_get(url).await {
            Err(e) => Outcome::fail(e),
            Ok((got, _)) if got != *status => Outcome::fail(format!("status {got}, expected {status}")),
            Ok(_) => match max_latency {
                Some(max) if started.elapsed() > *max => Outcome::fail(format!(
                    "status {status} after {} ms, above the {} ms bound",
                    started.elapsed().as_millis(),
                    max.as_millis()
                )),
                _ => Outcome::pass(""),
            },
        },
        ProbeCheck::Tcp { connect } => match TcpStream::connect(connect).await {
            Ok(_) => Outcome::pass(""),
            Err(e) => Outcome::fail(format!("connect to {connect}: {e}")),
        },
        ProbeCheck::Dns { name, server, expect } => dns(name, *server, *expect).await,
        ProbeCheck::Command { argv, exit, output_contains } => command(argv, *exit, output_contains.as_deref()).await,
        ProbeCheck::Prometheus { url, query, compare, threshold } => match prometheus_query(url, query).await {
            Err(e) => Outcome::fail(e),
            Ok(values) => match values.first() {
                None => Outcome::fail("no samples"),
                Some(&value) if compare.holds(value, *threshold) => Outcome::pass(format!("value {value}")),
                Some(&value) => Outcome::fail(format!("value {value}, not {} {threshold}", compare_words(*compare))),
            },
        },
    }
}

fn compare_words(compare: Compare) -> &'static str {
    match compare {
        Compare::Below => "below",
        Compare::AtMost => "at most",
        Compare::Above => "above",
        Compare::AtLeast => "at least",
    }
}

pub(crate) fn secs(d: Duration) -> String {
    format!("{} s", (d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// [`http_get`] from synchronous code, on a runtime of its own, at most `within`: the
/// body of a 200 answer, `None` for anything else (no answer in time, another status).
pub fn http_get_ok_blocking(url: &str, within: Duration) -> Option<Bytes> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    let (status, body) = runtime.block_on(async { tokio::time::timeout(within, http_get(url)).await }).ok()?.ok()?;
    (status == 200).then_some(body)
}

/// GET `url` (http:// only) on a fresh connection: its status and (bounded) body. A
/// fresh connection per check, so that a pooled connection never hides a fault that
/// only new connections meet.
pub(crate) async fn http_get(url: &str) -> Result<(u16, Bytes), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url:?} is not an http:// URL"));
    }
    let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    // `[::1]` in a URL is `::1` to connect to.
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let stream = TcpStream::connect((bare_host, port)).await.map_err(|e| format!("connect to {host}:{port}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {host}:{port}: {e}"))?;
    // The connection runs beside the request, and ends with this check however it
    // ends (also when the timeout drops it half-way).
    let _driver = AbortOnDrop(tokio::spawn(connection));
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "chaos-ebpf-probe")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad request for {url:?}: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), BODY_MAX)
        .collect()
        .await
        .map_err(|e| format!("GET {url}: reading the body: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// A task that ends when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The values of an instant query's result at `base_url` (a Prometheus server's root):
/// one per series of a vector, one for a scalar; empty when the result is.
pub(crate) async fn prometheus_query(base_url: &str, query: &str) -> Result<Vec<f64>, String> {
    let encoded = percent_encoding::utf8_percent_encode(query, percent_encoding::NON_ALPHANUMERIC);
    let url = format!("{}/api/v1/query?query={encoded}", base_url.trim_end_matches('/'));
    let (status, body) = http_get(&url).await?;
    let reply: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| format!("the reply of {base_url} is not JSON ({e}): {}", String::from_utf8_lossy(&body)))?;
    if status != 200 || reply["status"] != "success" {
        let error = reply["error"].as_str().unwrap_or("no error text");
        return Err(format!("query {query:?}: HTTP {status}: {error}"));
    }
    let data = &reply["data"];
    let value_of = |pair: &serde_json::Value| -> Result<f64, String> {
        // Prometheus writes sample values as strings ("1", "NaN", "+Inf").
        let text = pair[1].as_str().ok_or_else(|| format!("query {query:?}: a sample without a value: {pair}"))?;
        text.parse::<f64>().map_err(|_| format!("query {query:?}: the value {text:?} is not a number"))
    };
    match data["resultType"].as_str() {
        Some("vector") | Some("matrix") => {
            let series = data["result"].as_array().ok_or_else(|| format!("query {query:?}: no result array"))?;
            series
                .iter()
                .map(|s| match s.get("value") {
                    Some(pair) => value_of(pair),
                    // A range vector: its last value.
                    None => value_of(s["values"].as_array().and_then(|v| v.last()).unwrap_or(&serde_json::Value::Null)),
                })
                .collect()
        }
        Some("scalar") => Ok(vec![value_of(&data["result"])?]),
        other => Err(format!("query {query:?}: result type {other:?}, expected a vector or a scalar")),
    }
}

/// A/AAAA queries of `name` at `server` over UDP, at the same time; passes when either
/// has an answer (containing `expect` when given).
async fn dns(name: &str, server: SocketAddr, expect: Option<IpAddr>) -> Outcome {
    let fqdn = match Name::from_utf8(name) {
        Ok(mut n) => {
            n.set_fqdn(true);
            n
        }
        Err(e) => return Outcome::fail(format!("bad DNS name {name:?}: {e}")),
    };
    let (a, aaaa) = tokio::join!(dns_query(&fqdn, server, RecordType::A), dns_query(&fqdn, server, RecordType::AAAA));
    let mut addresses = Vec::new();
    let mut problems = Vec::new();
    for (kind, result) in [("A", a), ("AAAA", aaaa)] {
        match result {
            Ok(found) => addresses.extend(found),
            Err(e) => problems.push(format!("{kind}: {e}")),
        }
    }
    let listed = || chaos_ebpf_common::text::list_some(&addresses, 4);
    match expect {
        _ if addresses.is_empty() => {
            let why = if problems.is_empty() { "no A/AAAA records".to_owned() } else { problems.join(", ") };
            Outcome::fail(format!("no answer for {name} from {server} ({why})"))
        }
        Some(wanted) if !addresses.contains(&wanted) => {
            Outcome::fail(format!("{name} is {} at {server}, not {wanted}", listed()))
        }
        _ => Outcome::pass(listed()),
    }
}

/// Distinguishes the queries of one process (the DNS id only has to match a reply to
/// its query on the same socket; the random source port does the rest).
static NEXT_ID: AtomicU16 = AtomicU16::new(0x5ca1);

/// One query of one record type: the addresses answered, or why none.
async fn dns_query(name: &Name, server: SocketAddr, record_type: RecordType) -> Result<Vec<IpAddr>, String> {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name.clone(), record_type));
    let packet = message.to_vec().map_err(|e| format!("encoding the query: {e}"))?;
    let local: SocketAddr = if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = UdpSocket::bind(local).await.map_err(|e| format!("UDP socket: {e}"))?;
    socket.connect(server).await.map_err(|e| format!("UDP to {server}: {e}"))?;
    socket.send(&packet).await.map_err(|e| format!("sending to {server}: {e}"))?;
    let mut buffer = vec![0u8; 4096];
    // Bounded by the caller's timeout; a datagram that is not the reply is skipped.
    loop {
        let len = socket.recv(&mut buffer).await.map_err(|e| format!("from {server}: {e}"))?;
        let Ok(reply) = Message::from_vec(&buffer[..len]) else { continue };
        if reply.id() != id || reply.message_type() != MessageType::Response {
            continue;
        }
        if reply.response_code() != ResponseCode::NoError {
            return Err(reply.response_code().to_string());
        }
        let found: Vec<IpAddr> = reply
            .answers()
            .iter()
            .filter_map(|record| match record.data() {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                _ => None,
            })
            .collect();
        if found.is_empty() && reply.truncated() {
            return Err("truncated reply (TCP is not tried)".to_owned());
        }
        return Ok(found);
    }
}

/// Runs `argv` without a shell: passes on `exit` (and, when given, `contains` in
/// stdout or stderr). The command runs in a process group of its own (a Ctrl-C at the
/// terminal is the run's to handle, not the probe's), which is killed when the check is
/// cut off: what the command started dies with it.
async fn command(argv: &[String], exit: i32, contains: Option<&str>) -> Outcome {
    let Some((program, args)) = argv.split_first() else {
        return Outcome::fail("an empty command");
    };
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return Outcome::fail(format!("cannot run {program:?}: {e}")),
    };
    let mut group = KillGroupOnDrop(child.id());
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (out, err, status) = tokio::join!(read_bounded(stdout), read_bounded(stderr), child.wait());
    group.0 = None;
    let status = match status {
        Ok(status) => status,
        Err(e) => return Outcome::fail(format!("waiting for {program:?}: {e}")),
    };
    let (out, err) = (String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
    let said = || {
        let text = if err.trim().is_empty() { &out } else { &err };
        match text.lines().find(|l| !l.trim().is_empty()) {
            Some(line) => format!(": {line}"),
            None => String::new(),
        }
    };
    match status.code() {
        None => {
            use std::os::unix::process::ExitStatusExt;
            Outcome::fail(format!("{program:?} was killed by signal {}", status.signal().unwrap_or(0)))
        }
        Some(code) if code != exit => Outcome::fail(format!("{program:?} exited {code}, expected {exit}{}", said())),
        Some(_) => match contains {
            Some(text) if !out.contains(text) && !err.contains(text) => {
                Outcome::fail(format!("the output of {program:?} does not contain {text:?}"))
            }
            _ => Outcome::pass(""),
        },
    }
}

/// The process group of a command whose check has not ended: killed when the check is
/// dropped (cut off by its timeout or its phase's end). Until the check ends, the
/// group's leader is not reaped (its wait is part of the check), so the group id is
/// still ours.
struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) with a negative pid signals the process group the command
            // leads (process_group(0) above); no memory is involved.
            unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
        }
    }
}

/// All of a pipe, of which the first [`OUTPUT_MAX`] bytes are kept.
async fn read_bounded(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else { return kept };
    let mut chunk = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        let room = OUTPUT_MAX.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
    kept
}
