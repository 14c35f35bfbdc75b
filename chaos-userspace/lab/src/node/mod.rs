//! `chaos-lab-node`, the lab's workload: a node of a discovery plane on etcd. It registers
//! itself under a lease and keeps it alive, watches the membership, writes and reads keys at
//! a steady rate and journals every acknowledged write, and serves /health, /members and
//! /metrics (over HTTP/1.1 on TCP, and over HTTP/3 on QUIC when given a server certificate;
//! `get` is a client of both with a QUIC-then-TCP fallback, see get.rs). Self-contained (flags only, nothing of the lab), so that the same binary is the
//! system under test in the embedded lab, a compose stack or Kubernetes. docs/workload.md
//! describes its flags, endpoints, metrics and journal.

mod args;
mod etcd;
mod get;
mod http;
mod metrics;
mod pem;
mod quic;
mod verify;

use std::{
    collections::BTreeMap,
    fs::File,
    io::Write,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::Value;
use tokio::{net::TcpListener, signal::unix::SignalKind};

pub use args::{parse, Command, GetArgs, NodeArgs, VerifyArgs};
use etcd::{Etcd, EtcdError};
use metrics::Metrics;

/// `text` cut to at most `max` characters, so that no error line grows without bound.
pub(crate) fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The entry point of the binary: parses `args` (without the program name) and runs.
pub fn main(args: Vec<String>) -> ExitCode {
    let command = match parse(args) {
        Ok(command) => command,
        Err(problem) => {
            eprintln!("chaos-lab-node: {}", bounded(&problem, 400));
            return ExitCode::from(2);
        }
    };
    if let Command::Echo(echo) = &command {
        // Its own single-threaded runtime: one thread serves every node's sockets.
        return match crate::hyper::echo::serve(echo) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chaos-lab-node echo: {}", bounded(&format!("{e:#}"), 400));
                ExitCode::from(1)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chaos-lab-node: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match command {
        Command::Help => {
            println!("{}", args::USAGE);
            ExitCode::SUCCESS
        }
        Command::Node(node) => runtime.block_on(run_node(node)),
        Command::Verify(verify) => runtime.block_on(verify::run(verify)),
        Command::Get(get) => runtime.block_on(get::run(get)),
        Command::Echo(_) => unreachable!("served above"),
    }
}

/// One member of the discovery plane as its key's value says.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct MemberInfo {
    pub listen: String,
    pub started_unix_ms: u64,
}

#[derive(Default, Serialize)]
struct View {
    members: BTreeMap<String, MemberInfo>,
    leader: Option<String>,
    /// When the set of members last changed (unix ms), 0 before the first view.
    changed_unix_ms: u64,
}

struct Health {
    last_ack: Option<Instant>,
    /// Why the last write failed, until one succeeds again (the reason /health gives).
    last_write_error: Option<String>,
    /// The last error line logged per operation, so that an operation failing the same way
    /// again is not logged again; cleared when a write succeeds.
    last_logged: BTreeMap<&'static str, String>,
}

/// What the tasks share with each other and with the HTTP server.
struct Node {
    args: NodeArgs,
    started_unix_ms: u64,
    etcd: Etcd,
    metrics: Metrics,
    view: Mutex<View>,
    /// One read of the view at a time (the watch and the refresh both read), so that a read
    /// that started earlier never replaces the view a later one made.
    view_reads: tokio::sync::Mutex<()>,
    health: Mutex<Health>,
    lease: Mutex<Option<i64>>,
    journal: Option<Mutex<File>>,
}

impl Node {
    fn member_key(&self) -> String {
        format!("{}/members/{}", self.args.prefix, self.args.name)
    }

    fn members_prefix(&self) -> String {
        format!("{}/members/", self.args.prefix)
    }

    /// Counts a failed call and logs it, unless the same operation failed the same way
    /// since the last acknowledged write (an outage is a few lines, not 20 a second).
    fn etcd_failed(&self, what: &'static str, error: &EtcdError) {
        self.metrics.etcd_errors.with_label_values(&[error.kind()]).inc();
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let line = format!("{what}: {error}");
        if health.last_logged.get(what) != Some(&line) {
            eprintln!("chaos-lab-node[{}]: {line}", self.args.name);
        }
        if what == "write" {
            health.last_write_error = Some(line.clone());
        }
        health.last_logged.insert(what, line);
    }

    fn health(&self) -> (bool, Value) {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let bound = self.args.health_bound;
        match health.last_ack {
            Some(at) if at.elapsed() <= bound => {
                (true, serde_json::json!({"status": "ok", "last_ack_ms_ago": at.elapsed().as_millis() as u64}))
            }
            last => {
                let since = match last {
                    Some(at) => format!("no write acknowledged for {} ms", at.elapsed().as_millis()),
                    None => "no write acknowledged yet".to_owned(),
                };
                let reason = match &health.last_write_error {
                    Some(error) => {
                        format!("{since} (bound {} ms); last write error: {}", bound.as_millis(), bounded(error, 200))
                    }
                    None => format!("{since} (bound {} ms)", bound.as_millis()),
                };
                (false, serde_json::json!({"status": "unavailable", "reason": reason}))
            }
        }
    }
}

async fn run_node(args: NodeArgs) -> ExitCode {
    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("chaos-lab-node: cannot listen on --listen {}: {e}; give a free local address", args.listen);
            return ExitCode::from(2);
        }
    };
    // Inside the runtime: quinn's endpoint drives its UDP socket on it.
    let quic = match &args.quic {
        Some((cert, key)) => match quic::server_config(cert, key).and_then(|config| quic::bind(config, args.listen)) {
            Ok(endpoint) => Some(endpoint),
            Err(problem) => {
                eprintln!("chaos-lab-node: {}", bounded(&problem, 400));
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let etcd = match Etcd::new(&args.etcd, &args.tls(), args.call_timeout) {
        Ok(etcd) => etcd,
        Err(problem) => {
            eprintln!("chaos-lab-node: {}", bounded(&problem, 400));
            return ExitCode::from(2);
        }
    };
    let journal = match &args.journal {
        Some(path) => match File::options().create(true).append(true).open(path) {
            Ok(file) => Some(Mutex::new(file)),
            Err(e) => {
                eprintln!("chaos-lab-node: cannot open --journal {}: {e}; give a writable file", path.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let mut term = match tokio::signal::unix::signal(SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(e) => {
            eprintln!("chaos-lab-node: cannot handle SIGTERM: {e}");
            return ExitCode::from(1);
        }
    };
    let metrics = Metrics::new(&args.name);
    metrics.register_transport(&etcd.transport);
    let node = Arc::new(Node {
        metrics,
        started_unix_ms: unix_ms(),
        etcd,
        view: Mutex::default(),
        view_reads: tokio::sync::Mutex::new(()),
        health: Mutex::new(Health { last_ack: None, last_write_error: None, last_logged: BTreeMap::new() }),
        lease: Mutex::new(None),
        journal,
        args,
    });
    eprintln!(
        "chaos-lab-node[{}]: serving on http://{}{}, writing to {} at {}/s",
        node.args.name,
        node.args.listen,
        if quic.is_some() { " (TCP) and HTTP/3 on the same UDP port" } else { "" },
        node.args.etcd,
        node.args.write_rate
    );
    let quic_task = quic.map(|endpoint| tokio::spawn(quic::serve(node.clone(), endpoint)));
    let tasks = [
        tokio::spawn(http::serve(node.clone(), listener)),
        tokio::spawn(keep_registered(node.clone())),
        tokio::spawn(watch_members(node.clone())),
        tokio::spawn(refresh_view(node.clone())),
        tokio::spawn(write_continuously(node.clone())),
    ];
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    for task in tasks.iter().chain(&quic_task) {
        task.abort();
    }
    // Leave the membership at once: revoking the lease deletes the member key.
    let lease = *node.lease.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(lease) = lease {
        match node.etcd.revoke(lease).await {
            Ok(()) => eprintln!("chaos-lab-node[{}]: left (lease {lease:x} revoked)", node.args.name),
            Err(e) => eprintln!("chaos-lab-node[{}]: could not revoke lease {lease:x}: {e}", node.args.name),
        }
    }
    ExitCode::SUCCESS
}

/// Registers the member key under a lease, renews it every third of its TTL and registers
/// again under a new lease when etcd says the lease is gone or no renewal succeeded for a
/// whole TTL.
async fn keep_registered(node: Arc<Node>) {
    let ttl = node.args.lease_ttl;
    let value = serde_json::to_string(&MemberInfo {
        listen: node.args.listen.to_string(),
        started_unix_ms: node.started_unix_ms,
    })
    .unwrap_or_default();
    loop {
        let lease = match node.etcd.grant(ttl.as_secs() as i64).await {
            Ok(lease) => lease,
            Err(e) => {
                node.etcd_failed("lease grant", &e);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if let Err(e) = node.etcd.put(node.member_key().as_bytes(), value.as_bytes(), Some(lease)).await {
            node.etcd_failed("registration", &e);
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        *node.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
        node.metrics.registrations.inc();
        eprintln!("chaos-lab-node[{}]: registered under lease {lease:x}", node.args.name);
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(ttl / 3).await;
            match node.etcd.keepalive(lease).await {
                Ok(0) => {
                    eprintln!("chaos-lab-node[{}]: lease {lease:x} expired; registering again", node.args.name);
                    break;
                }
                Ok(_) => {
                    node.metrics.lease_renewals.inc();
                    renewed = Instant::now();
                }
                Err(e) => {
                    node.etcd_failed("lease keep-alive", &e);
                    if renewed.elapsed() > ttl {
                        eprintln!(
                            "chaos-lab-node[{}]: lease {lease:x} not renewed for a TTL; registering again",
                            node.args.name
                        );
                        break;
                    }
                }
            }
        }
    }
}

/// Reads the membership (and the leader) and replaces the view, counting a change when
/// the set of members differs.
async fn read_view(node: &Node) {
    let _turn = node.view_reads.lock().await;
    let prefix = node.members_prefix();
    let kvs = match node.etcd.range(prefix.as_bytes(), Some(&etcd::prefix_end(prefix.as_bytes()))).await {
        Ok(kvs) => kvs,
        Err(e) => return node.etcd_failed("membership read", &e),
    };
    let members: BTreeMap<String, MemberInfo> = kvs
        .iter()
        .map(|kv| {
            let name = String::from_utf8_lossy(kv.key.get(prefix.len()..).unwrap_or_default()).into_owned();
            // A member key written by something else than this binary: its value as the address.
            let info = serde_json::from_slice(&kv.value)
                .unwrap_or(MemberInfo { listen: String::from_utf8_lossy(&kv.value).into_owned(), started_unix_ms: 0 });
            (name, info)
        })
        .collect();
    let leader = match node.etcd.leader().await {
        Ok(leader) => leader,
        Err(e) => {
            node.etcd_failed("leader read", &e);
            None
        }
    };
    let mut view = node.view.lock().unwrap_or_else(|e| e.into_inner());
    if view.changed_unix_ms == 0 || !view.members.keys().eq(members.keys()) {
        if view.changed_unix_ms != 0 {
            node.metrics.membership_changes.inc();
            eprintln!("chaos-lab-node[{}]: membership now {:?}", node.args.name, members.keys().collect::<Vec<_>>());
        }
        view.changed_unix_ms = unix_ms();
    }
    node.metrics.members.set(members.len() as i64);
    view.members = members;
    view.leader = leader;
}

/// Watches the members' prefix: every event re-reads the view at once.
async fn watch_members(node: Arc<Node>) {
    let prefix = node.members_prefix();
    loop {
        let mut body = match node.etcd.watch(prefix.as_bytes()).await {
            Ok(body) => body,
            Err(e) => {
                node.etcd_failed("membership watch", &e);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut pending = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else { continue };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let Ok(message) = serde_json::from_slice::<Value>(&line) else { continue };
                if message["result"]["events"].as_array().is_some_and(|events| !events.is_empty()) {
                    read_view(&node).await;
                }
            }
        }
        // The stream ended (etcd restarted, or a member of the list went away): open it again.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Re-reads the view every second as well: the watch only sees changes, not the leader.
async fn refresh_view(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        read_view(&node).await;
    }
}

/// Writes PREFIX/data/NAME/SEQ at the write rate, one at a time (a slow write delays the
/// next: missed ticks are skipped, not queued), journals each acknowledged one, then reads
/// it back.
async fn write_continuously(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / node.args.write_rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for counter in 1u64.. {
        tick.tick().await;
        // The start time in SEQ: a restarted node never overwrites what an earlier run acknowledged.
        let key = format!("{}/data/{}/{}-{counter}", node.args.prefix, node.args.name, node.started_unix_ms);
        let value = format!("{} {counter} {}", node.args.name, unix_ms());
        let started = Instant::now();
        let revision = match node.etcd.put(key.as_bytes(), value.as_bytes(), None).await {
            Ok(revision) => revision,
            Err(e) => {
                node.metrics.writes.with_label_values(&["error"]).inc();
                node.etcd_failed("write", &e);
                continue;
            }
        };
        let latency = started.elapsed();
        node.metrics.writes.with_label_values(&["ok"]).inc();
        node.metrics.write_latency.observe(latency.as_secs_f64());
        if let Some(journal) = &node.journal {
            let record = verify::Acked {
                key: key.clone(),
                value: value.clone(),
                revision,
                latency_ms: latency.as_secs_f64() * 1000.0,
                acked_unix_ms: unix_ms(),
            };
            // One write(2) per line on an O_APPEND file: lines never interleave.
            let mut line = serde_json::to_string(&record).unwrap_or_default();
            line.push('\n');
            let mut file = journal.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = file.write_all(line.as_bytes()) {
                eprintln!("chaos-lab-node[{}]: cannot append to the journal: {e}", node.args.name);
            }
        }
        {
            let mut health = node.health.lock().unwrap_or_else(|e| e.into_inner());
            health.last_logged.clear();
            if health.last_write_error.take().is_some() {
                eprintln!("chaos-lab-node[{}]: writes acknowledged again", node.args.name);
            }
            health.last_ack = Some(Instant::now());
        }
        match node.etcd.range(key.as_bytes(), None).await {
            Ok(kvs) if kvs.iter().any(|kv| kv.value == value.as_bytes()) => {
                node.metrics.reads.with_label_values(&["ok"]).inc()
            }
            Ok(_) => node.metrics.reads.with_label_values(&["mismatch"]).inc(),
            Err(e) => {
                node.metrics.reads.with_label_values(&["error"]).inc();
                node.etcd_failed("read", &e);
            }
        }
    }
}
