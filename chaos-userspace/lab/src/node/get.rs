//! `chaos-lab-node get URL --cacert FILE`: one GET of a node's endpoint, the client side of
//! the node's two listeners, with the transport fallback a blocked-QUIC fault meets.
//!
//! Fallback rule: the GET first goes as HTTP/3 over QUIC to the URL's host and port (UDP),
//! verifying the server certificate against `--cacert` (TLS 1.3, ALPN `h3`). When no
//! answer came within [`QUIC_BOUND`] (the handshake and the answer together: a dropped
//! packet, an ICMP unreachable and a silent server all look like this to QUIC), or the
//! handshake or the HTTP/3 exchange failed (a certificate the CA did not sign, a server
//! that does not speak h3), the same GET goes at once as HTTP/1.1 over TCP to the URL,
//! bounded by [`TCP_BOUND`]. An answer over QUIC, whatever its status, is the answer: only
//! a transport that failed makes the client fall back. stdout gets the answer's body,
//! stderr one line that says which transport answered and why QUIC was not used.
//! Exit 0 on a 2xx answer, 1 otherwise (an error status, or no answer on either), 2 on
//! bad flags.

use std::{
    net::{IpAddr, SocketAddr},
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Empty};
use hyper::{
    body::{Buf, Bytes},
    header, http, Request,
};
use hyper_util::rt::TokioIo;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::RootCertStore;
use tokio::net::TcpStream;

use super::{args::GetArgs, bounded, quic::ALPN_H3};

/// How long HTTP/3 over QUIC may take, handshake and answer, before the GET falls back.
pub const QUIC_BOUND: Duration = Duration::from_secs(1);
/// How long the HTTP/1.1 fallback may take, connection and answer.
pub const TCP_BOUND: Duration = Duration::from_secs(2);

/// An answer: its status and body.
struct Answered {
    status: u16,
    body: Vec<u8>,
}

fn roots(cacert: &std::path::Path) -> Result<RootCertStore, String> {
    super::pem::ca_roots(cacert, "the node's certificate")
}

/// The URL's host and port as a socket address (a name is looked up, within the bound).
async fn resolve(args: &GetArgs) -> Result<SocketAddr, String> {
    if let Ok(ip) = args.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, args.port));
    }
    let found = tokio::time::timeout(TCP_BOUND, tokio::net::lookup_host((args.host.as_str(), args.port)))
        .await
        .map_err(|_| format!("looking up {} took over {} s", args.host, TCP_BOUND.as_secs()))?
        .map_err(|e| format!("cannot look up {}: {e}", args.host))?;
    found.into_iter().next().ok_or_else(|| format!("{} has no address", args.host))
}

async fn get_h3(args: &GetArgs, address: SocketAddr, roots: RootCertStore) -> Result<Answered, String> {
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_H3.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| format!("QUIC cannot use this TLS setup: {e}"))?;
    let any: SocketAddr =
        if address.is_ipv6() { (IpAddr::from([0u16; 8]), 0).into() } else { ([0, 0, 0, 0], 0).into() };
    let mut endpoint = quinn::Endpoint::client(any).map_err(|e| format!("QUIC cannot bind a UDP socket: {e}"))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connection = endpoint
        .connect(address, &args.host)
        .map_err(|e| format!("QUIC cannot connect to {address}: {e}"))?
        .await
        .map_err(|e| format!("QUIC handshake failed: {e}"))?;
    let (mut driver, mut requests) = h3::client::new(h3_quinn::Connection::new(connection.clone()))
        .await
        .map_err(|e| format!("HTTP/3 setup failed: {e}"))?;
    let driving = tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    let uri = format!("https://{}{}", args.authority, args.path);
    let exchange = async {
        let request = http::Request::get(uri).body(()).map_err(|e| e.to_string())?;
        let mut stream = requests.send_request(request).await.map_err(|e| format!("sending the request: {e}"))?;
        // The end of a request without a body. A server that answered from the headers
        // alone may have stopped reading already (STOP_SENDING): that costs nothing here.
        let _ = stream.finish().await;
        let response = stream.recv_response().await.map_err(|e| format!("reading the answer's headers: {e}"))?;
        let mut body = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.map_err(|e| format!("reading the answer's body: {e}"))? {
            while chunk.has_remaining() {
                let part = chunk.chunk();
                body.extend_from_slice(part);
                let taken = part.len();
                chunk.advance(taken);
            }
        }
        Ok::<_, String>(Answered { status: response.status().as_u16(), body })
    };
    let result = exchange.await.map_err(|e| format!("HTTP/3 request failed: {e}"));
    connection.close(0u32.into(), b"done");
    driving.abort();
    result
}

async fn get_http1(args: &GetArgs, address: SocketAddr) -> Result<Answered, String> {
    let stream = TcpStream::connect(address).await.map_err(|e| format!("TCP connect to {address} failed: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake failed: {e}"))?;
    let driving = tokio::spawn(connection);
    let request = Request::get(args.path.as_str())
        .header(header::HOST, args.authority.as_str())
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| format!("HTTP/1.1 request failed: {e}"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| format!("HTTP/1.1 body failed: {e}"))?;
        Ok(Answered { status, body: body.to_bytes().to_vec() })
    }
    .await;
    driving.abort();
    result
}

/// Prints the answer (body to stdout, one line to stderr) and gives the exit code.
fn report(answer: Answered, via: &str, started: Instant, quic_failure: Option<&str>) -> ExitCode {
    use std::io::Write;
    let _ = std::io::stdout().write_all(&answer.body);
    let _ = std::io::stdout().flush();
    let took = started.elapsed().as_millis();
    match quic_failure {
        Some(why) => eprintln!("chaos-lab-node get: via {via} ({} in {took} ms): {why}", answer.status),
        None => eprintln!("chaos-lab-node get: via {via} ({} in {took} ms)", answer.status),
    }
    if (200..300).contains(&answer.status) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

pub async fn run(args: GetArgs) -> ExitCode {
    let roots = match roots(&args.cacert) {
        Ok(roots) => roots,
        Err(problem) => {
            eprintln!("chaos-lab-node get: {}", bounded(&problem, 400));
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let address = match resolve(&args).await {
        Ok(address) => address,
        Err(problem) => {
            eprintln!("chaos-lab-node get: {}: no answer: {}", args.url, bounded(&problem, 300));
            return ExitCode::from(1);
        }
    };
    let quic_failure = match tokio::time::timeout(QUIC_BOUND, get_h3(&args, address, roots)).await {
        Ok(Ok(answer)) => return report(answer, "h3 over QUIC", started, None),
        Ok(Err(why)) => bounded(&why, 200),
        Err(_) => format!("QUIC gave no answer within {} s", QUIC_BOUND.as_secs()),
    };
    let tcp_failure = match tokio::time::timeout(TCP_BOUND, get_http1(&args, address)).await {
        Ok(Ok(answer)) => return report(answer, "http/1.1 over TCP", started, Some(&quic_failure)),
        Ok(Err(why)) => bounded(&why, 200),
        Err(_) => format!("TCP gave no answer within {} s", TCP_BOUND.as_secs()),
    };
    eprintln!("chaos-lab-node get: {}: no answer: {quic_failure}; then {tcp_failure}", args.url);
    ExitCode::from(1)
}
