//! etcd 3.4's JSON gateway (grpc-gateway in front of the v3 API, on the client port) over
//! HTTPS with a client certificate. A fresh connection per call, like the engine's probes:
//! no pool hides a fault, and a paused server shows as a timeout of the call that met it.
//!
//! Transport fallback, the rule a transport-downgrade fault meets: over TLS a call offers
//! ALPN `h2` and `http/1.1` and speaks HTTP/2 when etcd picks h2. When that handshake
//! fails (a reset, an alert, or no answer within [`H2_HANDSHAKE_BOUND`]), the call is
//! retried at once on a new connection that offers no ALPN (HTTP/1.1: etcd sorts gateway
//! from gRPC traffic by what it reads), and calls stay on HTTP/1.1 for
//! [`H2_RETRY_AFTER`] before offering h2 again. `connections_total{transport}` and
//! `transport_fallbacks_total` count what happened.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::STANDARD, Engine};
use http_body_util::{BodyExt, Full};
use hyper::{
    body::{Bytes, Incoming},
    header, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::{IntCounter, IntCounterVec, Opts};
use rustls::ClientConfig;
use rustls_pki_types::{pem::PemObject, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Why a call to etcd failed; `kind` is the `kind` label of `etcd_errors_total`.
#[derive(Debug)]
pub enum EtcdError {
    /// No answer within the call's bound (a paused or partitioned member).
    Timeout,
    Connect(String),
    Tls(String),
    /// etcd answered with an error (HTTP status and etcd's message).
    Status(u16, String),
    /// An answer this client could not read.
    Protocol(String),
}

impl EtcdError {
    pub fn kind(&self) -> &'static str {
        match self {
            EtcdError::Timeout => "timeout",
            EtcdError::Connect(_) => "connect",
            EtcdError::Tls(_) => "tls",
            EtcdError::Status(..) => "status",
            EtcdError::Protocol(_) => "protocol",
        }
    }
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::Timeout => write!(f, "etcd did not answer in time"),
            EtcdError::Connect(e) => write!(f, "cannot connect to etcd: {e}"),
            EtcdError::Tls(e) => write!(f, "TLS with etcd failed: {e}"),
            EtcdError::Status(code, msg) => write!(f, "etcd answered {code}: {}", super::bounded(msg, 200)),
            EtcdError::Protocol(e) => write!(f, "unreadable answer from etcd: {}", super::bounded(e, 200)),
        }
    }
}

struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
}

/// How long a handshake offering h2 may take before the call falls back to HTTP/1.1.
pub const H2_HANDSHAKE_BOUND: Duration = Duration::from_secs(1);
/// How long calls stay on HTTP/1.1 after an h2 handshake failed.
pub const H2_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The two TLS client configurations: offering h2 (and http/1.1), and offering no ALPN.
struct Tls {
    h2_first: TlsConnector,
    http1: TlsConnector,
}

/// Connections by the transport they spoke, and fallbacks from h2 to HTTP/1.1
/// (registered with the node's metrics, see Metrics::register_transport).
pub struct TransportMetrics {
    /// `transport`: h2 | http/1.1.
    pub connections: IntCounterVec,
    pub fallbacks: IntCounter,
}

impl TransportMetrics {
    fn new() -> TransportMetrics {
        let connections = IntCounterVec::new(
            Opts::new("connections_total", "Connections to etcd by the transport they spoke"),
            &["transport"],
        )
        .expect("valid");
        for transport in ["h2", "http/1.1"] {
            connections.with_label_values(&[transport]);
        }
        let fallbacks = IntCounter::new(
            "transport_fallbacks_total",
            "Calls whose h2 handshake failed and that were retried over HTTP/1.1",
        )
        .expect("valid");
        TransportMetrics { connections, fallbacks }
    }
}

/// Where etcd is and how to reach it: the client side of every call.
pub struct Etcd {
    endpoints: Vec<Endpoint>,
    tls: Option<Tls>,
    /// The endpoint calls go to; moves on to the next after a failed call.
    current: AtomicUsize,
    call_timeout: Duration,
    /// Calls offer h2 again from this time on (ms since `epoch`).
    h2_after_ms: AtomicU64,
    epoch: Instant,
    pub transport: TransportMetrics,
}

/// The TLS files of the flags `--cacert`, `--cert`, `--key`.
pub struct TlsFiles<'a> {
    pub cacert: Option<&'a Path>,
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
}

fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(format!("etcd endpoint `{url}` has no scheme; give https://HOST:PORT"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) =
        rest.rsplit_once(':').ok_or_else(|| format!("etcd endpoint `{url}` has no port; give https://HOST:PORT"))?;
    let port: u16 = port.parse().map_err(|_| format!("etcd endpoint `{url}`: `{port}` is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let server_name = ServerName::try_from(host.clone())
        .map_err(|_| format!("etcd endpoint `{url}`: `{host}` is neither an IP address nor a DNS name"))?;
    Ok(Endpoint { tls, host, port, server_name })
}

fn tls_connectors(files: &TlsFiles) -> Result<Tls, String> {
    let cacert =
        files.cacert.ok_or("an https:// etcd endpoint needs --cacert FILE (the CA that signed etcd's certificate)")?;
    let roots = super::pem::ca_roots(cacert, "etcd's certificate")?;
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let http1 = match (files.cert, files.key) {
        (Some(cert), Some(key)) => {
            let chain = super::pem::certificates("--cert", cert, "the client certificate")?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                format!("--key {}: {e}; give the PEM file of the client certificate's key", key.display())
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("--cert and --key do not make a client identity: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err("--cert and --key go together: give both (the client certificate and its key) or neither".into())
        }
    };
    let mut h2_first = http1.clone();
    h2_first.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // No ALPN on the fallback: etcd's listener sorts HTTP/1.1 (the gateway) from gRPC by
    // what it reads, and a rule refusing h2 has nothing to match.
    Ok(Tls { h2_first: TlsConnector::from(Arc::new(h2_first)), http1: TlsConnector::from(Arc::new(http1)) })
}

pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub fn unb64(value: &Value) -> Option<Vec<u8>> {
    STANDARD.decode(value.as_str().unwrap_or("")).ok()
}

/// An int64 of the gateway's JSON (a string) or a plain number; absent = 0 (proto3 omits zeros).
pub fn int(value: &Value) -> i64 {
    match value {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// A uint64 of the gateway's JSON (member IDs use the whole range); absent = 0.
pub fn uint(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

/// The end of the range of every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// One key and value read back.
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl Etcd {
    /// `endpoints`: the comma-separated list of `--etcd`.
    pub fn new(endpoints: &str, files: &TlsFiles, call_timeout: Duration) -> Result<Etcd, String> {
        let endpoints: Vec<Endpoint> = endpoints
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse_endpoint(s.trim()))
            .collect::<Result<_, _>>()?;
        if endpoints.is_empty() {
            return Err("--etcd names no endpoint; give https://HOST:PORT[,...]".into());
        }
        let tls = if endpoints.iter().any(|e| e.tls) { Some(tls_connectors(files)?) } else { None };
        Ok(Etcd {
            endpoints,
            tls,
            current: AtomicUsize::new(0),
            call_timeout,
            h2_after_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            transport: TransportMetrics::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<TcpStream, EtcdError> {
        let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| EtcdError::Connect(format!("{}:{}: {e}", endpoint.host, endpoint.port)))?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    async fn send(&self, endpoint: &Endpoint, path: &str, body: &Value) -> Result<Response<Incoming>, EtcdError> {
        let request = |uri: String| {
            Request::post(uri)
                .header(header::HOST, format!("{}:{}", endpoint.host, endpoint.port))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .map_err(|e| EtcdError::Protocol(e.to_string()))
        };
        let tls = match (&self.tls, endpoint.tls) {
            (Some(tls), true) => tls,
            _ => {
                let tcp = self.connect(endpoint).await?;
                self.transport.connections.with_label_values(&["http/1.1"]).inc();
                return exchange_http1(TokioIo::new(tcp), request(path.to_owned())?).await;
            }
        };
        if self.now_ms() >= self.h2_after_ms.load(Ordering::Relaxed) {
            let tcp = self.connect(endpoint).await?;
            match tokio::time::timeout(H2_HANDSHAKE_BOUND, tls.h2_first.connect(endpoint.server_name.clone(), tcp))
                .await
            {
                Ok(Ok(stream)) => {
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    if h2 {
                        self.transport.connections.with_label_values(&["h2"]).inc();
                        // HTTP/2 requests carry the scheme and authority.
                        let uri = format!("https://{}:{}{path}", endpoint.host, endpoint.port);
                        return exchange_h2(TokioIo::new(stream), request(uri)?).await;
                    }
                    self.transport.connections.with_label_values(&["http/1.1"]).inc();
                    return exchange_http1(TokioIo::new(stream), request(path.to_owned())?).await;
                }
                // The handshake offering h2 was refused or went unanswered: the fallback.
                Ok(Err(_)) | Err(_) => {
                    self.transport.fallbacks.inc();
                    let until = self.now_ms() + H2_RETRY_AFTER.as_millis() as u64;
                    self.h2_after_ms.store(until, Ordering::Relaxed);
                }
            }
        }
        let tcp = self.connect(endpoint).await?;
        let stream =
            tls.http1.connect(endpoint.server_name.clone(), tcp).await.map_err(|e| EtcdError::Tls(e.to_string()))?;
        self.transport.connections.with_label_values(&["http/1.1"]).inc();
        exchange_http1(TokioIo::new(stream), request(path.to_owned())?).await
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoints[self.current.load(Ordering::Relaxed) % self.endpoints.len()]
    }

    fn failed(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    /// One unary call of the gateway (`path` like `/v3/kv/put`), bounded by the call timeout.
    pub async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let endpoint = self.endpoint();
        let outcome = tokio::time::timeout(self.call_timeout, async {
            let response = self.send(endpoint, path, &body).await?;
            let status = response.status();
            let bytes =
                response.into_body().collect().await.map_err(|e| EtcdError::Protocol(e.to_string()))?.to_bytes();
            let value: Value = serde_json::from_slice(&bytes)
                .map_err(|e| EtcdError::Protocol(format!("{e}: {}", String::from_utf8_lossy(&bytes))))?;
            if status != StatusCode::OK {
                let message = value.get("message").or(value.get("error")).and_then(Value::as_str).unwrap_or("");
                return Err(EtcdError::Status(status.as_u16(), message.to_owned()));
            }
            Ok(value)
        })
        .await
        .unwrap_or(Err(EtcdError::Timeout));
        if outcome.is_err() {
            self.failed();
        }
        outcome
    }

    /// Puts a key; returns the revision etcd acknowledged it at.
    pub async fn put(&self, key: &[u8], value: &[u8], lease: Option<i64>) -> Result<i64, EtcdError> {
        let mut body = json!({"key": b64(key), "value": b64(value)});
        if let Some(lease) = lease {
            body["lease"] = json!(lease.to_string());
        }
        let answer = self.call("/v3/kv/put", body).await?;
        Ok(int(&answer["header"]["revision"]))
    }

    /// Every key from `key` (alone, or up to `range_end`).
    pub async fn range(&self, key: &[u8], range_end: Option<&[u8]>) -> Result<Vec<Kv>, EtcdError> {
        let mut body = json!({"key": b64(key)});
        if let Some(end) = range_end {
            body["range_end"] = json!(b64(end));
        }
        let answer = self.call("/v3/kv/range", body).await?;
        let kvs = answer["kvs"].as_array().map(Vec::as_slice).unwrap_or_default();
        kvs.iter()
            .map(|kv| {
                Ok(Kv {
                    key: unb64(&kv["key"]).ok_or_else(|| EtcdError::Protocol("a key is not base64".into()))?,
                    value: unb64(&kv["value"]).unwrap_or_default(),
                })
            })
            .collect()
    }

    pub async fn grant(&self, ttl_seconds: i64) -> Result<i64, EtcdError> {
        let answer = self.call("/v3/lease/grant", json!({"TTL": ttl_seconds.to_string()})).await?;
        match int(&answer["ID"]) {
            0 => Err(EtcdError::Protocol(format!("lease grant without an ID: {answer}"))),
            id => Ok(id),
        }
    }

    /// Renews a lease once; returns its new TTL (0: the lease is gone).
    pub async fn keepalive(&self, lease: i64) -> Result<i64, EtcdError> {
        let answer = self.call("/v3/lease/keepalive", json!({"ID": lease.to_string()})).await?;
        Ok(int(&answer["result"]["TTL"]))
    }

    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", json!({"ID": lease.to_string()})).await.map(drop)
    }

    /// The leader's member name (or its ID in hex when the member list has no name for it).
    pub async fn leader(&self) -> Result<Option<String>, EtcdError> {
        let status = self.call("/v3/maintenance/status", json!({})).await?;
        let leader = uint(&status["leader"]);
        if leader == 0 {
            return Ok(None);
        }
        let members = self.call("/v3/cluster/member/list", json!({})).await?;
        let name = members["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| uint(&m["ID"]) == leader)
            .and_then(|m| m["name"].as_str())
            .filter(|name| !name.is_empty())
            .map(str::to_owned);
        Ok(Some(name.unwrap_or_else(|| format!("{leader:x}"))))
    }

    /// Opens a watch of every key under `prefix`; the answer's body is the stream of
    /// events, one JSON object per line. Only opening it is bounded by the call timeout.
    pub async fn watch(&self, prefix: &[u8]) -> Result<Incoming, EtcdError> {
        let endpoint = self.endpoint();
        let body = json!({"create_request": {"key": b64(prefix), "range_end": b64(&prefix_end(prefix))}});
        let outcome = tokio::time::timeout(self.call_timeout, self.send(endpoint, "/v3/watch", &body))
            .await
            .unwrap_or(Err(EtcdError::Timeout))
            .and_then(|response| match response.status() {
                StatusCode::OK => Ok(response.into_body()),
                status => Err(EtcdError::Status(status.as_u16(), "watch refused".into())),
            });
        if outcome.is_err() {
            self.failed();
        }
        outcome
    }
}

async fn exchange_http1<I>(io: I, request: Request<Full<Bytes>>) -> Result<Response<Incoming>, EtcdError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| EtcdError::Connect(e.to_string()))?;
    // The connection task ends with the exchange (or when the caller drops the body).
    tokio::spawn(connection);
    sender.send_request(request).await.map_err(|e| EtcdError::Connect(e.to_string()))
}

async fn exchange_h2<I>(io: I, request: Request<Full<Bytes>>) -> Result<Response<Incoming>, EtcdError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .map_err(|e| EtcdError::Connect(e.to_string()))?;
    // As for HTTP/1.1: the connection task ends when the sender and the body are gone.
    tokio::spawn(connection);
    sender.send_request(request).await.map_err(|e| EtcdError::Connect(e.to_string()))
}
