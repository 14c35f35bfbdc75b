//! The agent's process: the Unix socket with its HTTP/1.1 JSON API (peer credentials
//! checked per connection), the metrics endpoint, and SIGINT/SIGTERM, on a tokio
//! runtime; every kernel operation goes to the kernel thread (core.rs).

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{mpsc, Arc},
    time::Duration,
};

use anyhow::{Context, Result};
use bytes::Bytes;
use chaos_datapath::{instance::Capacity, Error};
use chaos_ebpf_common::{MAX_PEERS, MAX_PEERS_LIMIT};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::{
    net::{TcpListener, UnixListener},
    sync::oneshot,
};

use crate::{
    api::{
        ApiError, Applied, ApplyRequest, FaultList, FaultWire, PrepareRequest, RenewRequest, Renewed, Reverted, PREFIX,
    },
    core::{log, Command, Core},
    dashboard::{self, PrometheusUrl},
    metrics::AgentMetrics,
};

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/chaos-ebpf/agent.sock";
/// Where it serves metrics unless told otherwise (next to the runs' 9464).
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9465";

/// Largest request body taken beyond its peers.
const MAX_BODY: usize = 64 * 1024;
/// Room per peer prefix the agent holds: the longest one as JSON, an IPv6 /128 with
/// its quotes and comma, fits in 48 bytes; a million /32s take about 19 MB.
const BODY_PER_PEER: usize = 48;

/// The body limit of an agent holding `max_peers` peer prefixes per namespace.
pub fn body_limit(max_peers: u32) -> usize {
    MAX_BODY + max_peers as usize * BODY_PER_PEER
}

pub struct Options {
    pub socket: PathBuf,
    /// None: serve no metrics (and so no dashboard).
    pub metrics_addr: Option<SocketAddr>,
    /// The Prometheus the dashboard page draws from (None: the page says how to set it).
    pub prometheus_url: Option<PrometheusUrl>,
    /// Namespaces to load into at start (others are loaded on first use).
    pub netns: Vec<PathBuf>,
    /// The command line, for the ledger.
    pub command: String,
    /// Peer prefixes each namespace's address trie holds (1..=MAX_PEERS_LIMIT; the
    /// trie's memory is allocated per entry written, not up front).
    pub max_peers: u32,
    /// Flows each namespace's flow table holds (MIN_FLOWS..=MAX_FLOWS_LIMIT; allocated
    /// when the programs load).
    pub flows: u32,
    /// Run the Kubernetes controller (`--kubernetes`).
    pub kubernetes: Option<crate::kubernetes::KubeOptions>,
}

/// What the handlers share: the way to the kernel thread, and the metrics.
#[derive(Clone)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
    metrics: Arc<AgentMetrics>,
    /// Largest request body taken (body_limit).
    max_body: usize,
}

impl Handle {
    pub fn new(commands: mpsc::Sender<Command>, metrics: Arc<AgentMetrics>, max_body: usize) -> Self {
        Handle { commands, metrics, max_body }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        let gone = || ApiError::new(503, "the agent is stopping", "start it again");
        self.commands.send(make(tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    /// The API's operations for the in-process Kubernetes controller.
    pub async fn apply(&self, fault: FaultWire, lease: Duration, seed: u64, rule_id: u32) -> Result<Applied, ApiError> {
        let request =
            ApplyRequest { fault, lease_ms: lease.as_millis() as u64, seed: Some(seed), rule_id: Some(rule_id) };
        self.ask(|tx| Command::Apply(Box::new(request), tx)).await?
    }

    pub async fn renew(&self, id: u64, lease: Duration) -> Result<Renewed, ApiError> {
        self.ask(|tx| Command::Renew(id, lease.as_millis() as u64, tx)).await?
    }

    pub async fn revert(&self, id: u64) -> Result<Reverted, ApiError> {
        self.ask(|tx| Command::Revert(id, tx)).await?
    }

    pub async fn list(&self) -> Result<FaultList, ApiError> {
        self.ask(Command::List).await
    }

    /// Unloads the programs of namespaces no fault uses; how many.
    pub async fn forget_idle(&self) -> usize {
        self.ask(Command::ForgetIdle).await.unwrap_or(0)
    }
}

/// Runs the agent until SIGINT or SIGTERM; then every fault is reverted and everything
/// removed. Errors before it serves (exit 2 for what the user must fix) change nothing
/// that stays.
pub fn run(options: Options) -> Result<()> {
    if options.max_peers == 0 || options.max_peers > MAX_PEERS_LIMIT {
        return Err(Error::unsupported(
            format!("--max-peers {} is outside 1..={MAX_PEERS_LIMIT}", options.max_peers),
            format!("give --max-peers from 1 to {MAX_PEERS_LIMIT} (default {MAX_PEERS})"),
        )
        .into());
    }
    chaos_datapath::error::require_root("running the agent")?;
    check_socket(&options.socket)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // Caught from here on: a signal while the programs load stops the agent once they are.
    let mut signals = {
        let _inside = runtime.enter();
        Signals::new().context("installing the SIGINT and SIGTERM handlers")?
    };
    // Connected before anything is loaded: no API server to talk to changes nothing.
    let kube_client = match &options.kubernetes {
        Some(_) => Some(runtime.block_on(crate::kubernetes::connect())?),
        None => None,
    };
    // Bound before anything is loaded: a port in use changes nothing.
    let metrics_listener = match options.metrics_addr {
        Some(addr) => Some(runtime.block_on(TcpListener::bind(addr)).map_err(|e| {
            Error::unsupported(
                format!("cannot serve metrics on {addr}: {e}"),
                "pass --metrics-addr with a free IP:PORT, or --metrics-addr off",
            )
        })?),
        None => None,
    };
    let metrics = Arc::new(AgentMetrics::new());
    let (commands, receiver) = mpsc::channel::<Command>();
    let (ready_tx, mut ready_rx) = oneshot::channel::<Result<()>>();
    let core_metrics = metrics.clone();
    let (command, netns) = (options.command.clone(), options.netns.clone());
    let capacity = Capacity { peers: options.max_peers, flows: options.flows };
    let kernel = std::thread::Builder::new()
        .name("chaos-agent-kernel".into())
        .spawn(move || match Core::start(command, &netns, core_metrics, capacity) {
            Ok((core, notices)) => {
                for notice in notices {
                    log(&notice);
                }
                let _ = ready_tx.send(Ok(()));
                core.serve(receiver);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })
        .context("starting the kernel thread")?;
    let starting = anyhow::anyhow!("the kernel thread stopped while starting");
    let early = runtime.block_on(async {
        tokio::select! {
            ready = &mut ready_rx => Ok(ready),
            signal = signals.recv() => Err(signal),
        }
    });
    let context = Handle::new(commands, metrics, body_limit(options.max_peers));
    let ready = match early {
        Ok(ready) => ready,
        Err(signal) => {
            log(&format!("{signal} while starting: stopping once the programs are loaded"));
            runtime.block_on(ready_rx).map_err(|_| starting)??;
            let problems = stop(&runtime, &context);
            let _ = kernel.join();
            if !problems.is_empty() {
                anyhow::bail!("the revert is incomplete: {}; run `chaos-ebpf cleanup`", problems.join("; "));
            }
            return Ok(());
        }
    };
    ready.map_err(|_| starting)??;
    let listener = runtime.block_on(async { bind_socket(&options.socket) });
    let listener = match listener {
        Ok(listener) => listener,
        Err(e) => {
            stop(&runtime, &context);
            let _ = kernel.join();
            return Err(e);
        }
    };
    log(&format!(
        "listening on {}{} (pid {})",
        options.socket.display(),
        options
            .metrics_addr
            .map(|a| {
                let prometheus =
                    options.prometheus_url.as_ref().map_or("no --prometheus-url".into(), |u| format!("from {u}"));
                format!(", metrics at http://{a}/metrics, dashboard at http://{a}/dashboard ({prometheus})")
            })
            .unwrap_or_default(),
        std::process::id()
    ));
    let stopped = runtime.block_on(async {
        if let Some(listener) = metrics_listener {
            tokio::spawn(serve_metrics(listener, context.clone(), options.prometheus_url.clone().map(Arc::new)));
        }
        tokio::spawn(serve_api(listener, context.clone()));
        if let (Some(client), Some(kube)) = (kube_client, options.kubernetes.clone()) {
            log(&format!(
                "Kubernetes controller on node {} for {}",
                kube.node,
                if kube.namespaces.is_empty() { "all namespaces".to_owned() } else { kube.namespaces.join(", ") }
            ));
            tokio::spawn(crate::kubernetes::run(client, context.clone(), kube));
        }
        signals.recv().await
    });
    log(&format!("{stopped}: reverting every fault"));
    let problems = stop(&runtime, &context);
    let _ = std::fs::remove_file(&options.socket);
    let _ = kernel.join();
    runtime.shutdown_background();
    if !problems.is_empty() {
        anyhow::bail!("the revert is incomplete: {}; run `chaos-ebpf cleanup`", problems.join("; "));
    }
    log("stopped; everything reverted");
    Ok(())
}

fn stop(runtime: &tokio::runtime::Runtime, context: &Handle) -> Vec<String> {
    runtime.block_on(context.ask(Command::Shutdown)).unwrap_or_default()
}

/// SIGINT and SIGTERM as futures (their default action, exit, would skip the revert).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Call inside the runtime.
    fn new() -> io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Refuses a socket a live agent answers on (exit 2), and removes one nobody answers on
/// (a dead agent's). Anything else at that path is not ours and stays.
fn check_socket(path: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
    if !meta.file_type().is_socket() {
        return Err(Error::unsupported(
            format!("{} exists and is not a socket", path.display()),
            "pass --socket with another path, or move that file away",
        )
        .into());
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(stream) => {
            let pid = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
                .map(|c| c.pid().to_string())
                .unwrap_or_else(|_| "unknown".into());
            Err(Error::unsupported(
                format!("an agent already runs (pid {pid}) on {}", path.display()),
                "use that agent (`chaos-ebpf agent status`), stop it first, or pass --socket with another path",
            )
            .into())
        }
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
            log(&format!("removed the stale socket {} of an agent that is gone", path.display()));
            Ok(())
        }
        Err(e) => {
            Err(Error::unsupported(format!("cannot check {}: {e}", path.display()), "pass --socket with another path")
                .into())
        }
    }
}

/// Binds the socket, its directory created 0700 when missing, the socket itself 0660.
fn bind_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        Error::unsupported(format!("cannot listen on {}: {e}", path.display()), "pass --socket with another path")
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}

async fn serve_api(listener: UnixListener, context: Handle) {
    let me = nix::unistd::getuid().as_raw();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        // Root, or the agent's own user; anyone else may connect (mode 0660 lets the
        // socket's group in) but gets 403 for every request.
        let caller = stream.peer_cred().ok().map(|c| c.uid());
        let allowed = caller.is_some_and(|uid| uid == 0 || uid == me);
        let context = context.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let context = context.clone();
                async move {
                    if !allowed {
                        let uid = caller.map_or("unknown".to_owned(), |u| u.to_string());
                        let e = ApiError::new(
                            403,
                            format!("uid {uid} may not use the agent: only root and uid {me} may"),
                            "call it as root (sudo) or as the user the agent runs as",
                        );
                        return Ok::<_, Infallible>(error_response(&e));
                    }
                    let method = request.method().clone();
                    let path = request.uri().path().to_owned();
                    let body = match Limited::new(request.into_body(), context.max_body).collect().await {
                        Ok(body) => body.to_bytes(),
                        Err(_) => {
                            let e = ApiError::new(
                                413,
                                format!(
                                    "the request body could not be read or is over {} KiB (64 KiB and {BODY_PER_PEER} bytes per peer the agent holds)",
                                    context.max_body / 1024
                                ),
                                "send one fault per request; for more peers start the agent with a larger --max-peers",
                            );
                            return Ok(error_response(&e));
                        }
                    };
                    Ok(match route(&context, &method, &path, &body).await {
                        Ok((status, value)) => json_response(status, &value),
                        Err(e) => error_response(&e),
                    })
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// The TCP endpoint: /metrics, the dashboard page (/ and /dashboard) and the page's
/// read-only proxy of Prometheus' query API.
async fn serve_metrics(listener: TcpListener, context: Handle, prometheus: Option<Arc<PrometheusUrl>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let context = context.clone();
        let prometheus = prometheus.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let context = context.clone();
                let prometheus = prometheus.clone();
                async move {
                    let path = request.uri().path();
                    let get = request.method() == Method::GET;
                    match path {
                        "/metrics" => {}
                        "/" | "/dashboard" if get => return Ok(dashboard::page(prometheus.as_deref())),
                        "/api/v1/query" | "/api/v1/query_range" if get => {
                            return Ok(dashboard::proxy(prometheus.as_deref(), path, request.uri().query()).await)
                        }
                        _ => {
                            let e = ApiError::new(
                                404,
                                format!("no endpoint {} {}", request.method(), chaos_model::spec::shorten(path, 80)),
                                "GET /metrics, GET /dashboard (the page), GET /api/v1/query or /api/v1/query_range (Prometheus, through the agent)",
                            );
                            return Ok::<_, Infallible>(error_response(&e));
                        }
                    }
                    let response = match context.ask(Command::List).await {
                        Ok(faults) => Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(context.metrics.render(&faults))))
                            .expect("a valid response"),
                        Err(e) => error_response(&e),
                    };
                    Ok(response)
                }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// The API: a method, a path and a body to a status and a JSON answer.
pub async fn route(
    context: &Handle,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Result<(StatusCode, serde_json::Value), ApiError> {
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return Err(unknown(method, path));
    };
    let segments: Vec<&str> = rest.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["health"]) => Ok((StatusCode::OK, value(&context.ask(Command::Health).await?))),
        (&Method::GET, ["faults"]) => Ok((StatusCode::OK, value(&context.ask(Command::List).await?))),
        (&Method::POST, ["faults"]) => {
            let request: ApplyRequest = parse(body)?;
            let applied = context.ask(|tx| Command::Apply(Box::new(request), tx)).await??;
            Ok((StatusCode::CREATED, value(&applied)))
        }
        (&Method::POST, ["prepare"]) => {
            let request: PrepareRequest = parse(body)?;
            let prepared = context.ask(|tx| Command::Prepare(request.target, tx)).await??;
            Ok((StatusCode::OK, value(&prepared)))
        }
        (&Method::POST, ["faults", id, "renew"]) => {
            let id = fault_id(id)?;
            let request: RenewRequest = parse(body)?;
            let renewed = context.ask(|tx| Command::Renew(id, request.lease_ms, tx)).await??;
            Ok((StatusCode::OK, value(&renewed)))
        }
        (&Method::DELETE, ["faults", id]) => {
            let id = fault_id(id)?;
            let reverted = context.ask(|tx| Command::Revert(id, tx)).await??;
            Ok((StatusCode::OK, value(&reverted)))
        }
        _ => Err(unknown(method, path)),
    }
}

/// Any answer, as JSON.
fn value(answer: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(answer).unwrap_or(serde_json::Value::Null)
}

fn unknown(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        404,
        format!("no endpoint {method} {}", chaos_model::spec::shorten(path, 80)),
        "GET /v1/health, GET /v1/faults, POST /v1/faults, POST /v1/faults/ID/renew, DELETE /v1/faults/ID (docs/agent.md)",
    )
}

fn fault_id(text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            400,
            format!("'{}' is not a fault id", chaos_model::spec::shorten(text, 40)),
            "use the id POST /v1/faults returned",
        )
    })
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            400,
            format!("the request body is not the JSON expected: {}", chaos_model::spec::shorten(&e.to_string(), 200)),
            "send {\"fault\": {\"kind\": ..., \"target\": ...}, \"lease_ms\": N} to apply, {\"lease_ms\": N} to renew (docs/agent.md)",
        )
    })
}

fn json_response(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    json_response(StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel thread that touches no kernel, and its context.
    fn context() -> Handle {
        let metrics = Arc::new(AgentMetrics::new());
        let (tx, rx) = mpsc::channel();
        let core = Core::detached(metrics.clone());
        std::thread::spawn(move || core.serve(rx));
        Handle::new(tx, metrics, body_limit(MAX_PEERS))
    }

    fn call(
        context: &Handle,
        method: Method,
        path: &str,
        body: &str,
    ) -> Result<(StatusCode, serde_json::Value), ApiError> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(route(context, &method, path, body.as_bytes()))
    }

    fn assert_problem(result: Result<(StatusCode, serde_json::Value), ApiError>, status: u16, words: &str) {
        let e = result.expect_err("an error");
        assert_eq!(e.status, status, "{e:?}");
        assert!(e.problem.contains(words), "{e:?}");
        assert!(!e.fix.is_empty());
        let json = serde_json::to_value(&e).unwrap();
        assert!(json["problem"].is_string() && json["fix"].is_string(), "{json}");
    }

    #[test]
    fn bad_requests_get_4xx_with_problem_and_fix() {
        let c = context();
        assert_problem(call(&c, Method::POST, "/v1/faults", "{not json"), 400, "not the JSON expected");
        assert_problem(call(&c, Method::POST, "/v1/faults", r#"{"lease_ms": 1000}"#), 400, "missing field `fault`");
        let bad_kind = r#"{"fault": {"kind": "lose", "target": "netns:a"}, "lease_ms": 1000}"#;
        assert_problem(call(&c, Method::POST, "/v1/faults", bad_kind), 400, "fault.kind");
        let bad_lease = r#"{"fault": {"kind": "partition", "target": "netns:a"}, "lease_ms": 5}"#;
        assert_problem(call(&c, Method::POST, "/v1/faults", bad_lease), 400, "lease_ms 5");
        assert_problem(call(&c, Method::POST, "/v1/prepare", r#"{"target": "nowhere"}"#), 400, "has no kind");
        assert_problem(call(&c, Method::POST, "/v1/prepare", r#"{"targets": []}"#), 400, "unknown field");
        assert_problem(call(&c, Method::POST, "/v1/faults/7/renew", r#"{"lease_ms": 1000}"#), 404, "no fault 7");
        assert_problem(call(&c, Method::POST, "/v1/faults/7/renew", r#"{"lease_ms": 1}"#), 400, "lease_ms 1");
        assert_problem(call(&c, Method::DELETE, "/v1/faults/7", ""), 404, "no fault 7");
        assert_problem(call(&c, Method::DELETE, "/v1/faults/x", ""), 400, "not a fault id");
        assert_problem(call(&c, Method::GET, "/v2/faults", ""), 404, "no endpoint");
        assert_problem(call(&c, Method::PUT, "/v1/faults", ""), 404, "no endpoint");
        let (status, list) = call(&c, Method::GET, "/v1/faults", "").unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["faults"].as_array().map(Vec::len), Some(0));
        let (_, health) = call(&c, Method::GET, "/v1/health", "").unwrap();
        assert_eq!(health["status"], "ok");
    }
}
