//! The node's HTTP/3 listener: the same /health, /members and /metrics answers as the TCP
//! listener (http::answer), over QUIC on UDP at the same address and port, so that a fault
//! blocking UDP to that port leaves the TCP answers standing (the fallback `get` shows).
//! Only with `--quic-cert` and `--quic-key` (the server certificate clients verify; QUIC
//! has no plaintext mode); without them the node has no QUIC listener.

use std::{net::SocketAddr, path::Path, sync::Arc};

use hyper::{body::Bytes, header, http};
use quinn::crypto::rustls::QuicServerConfig;
use rustls_pki_types::{pem::PemObject, PrivateKeyDer};

use super::Node;

/// How long the listener waits for the end of a request before answering anyway.
const REQUEST_END_BOUND: std::time::Duration = std::time::Duration::from_secs(1);

/// The ALPN of HTTP/3 (RFC 9114), the only protocol the QUIC listener speaks.
pub const ALPN_H3: &[u8] = b"h3";

/// quinn's server configuration with the certificate chain in `cert` and its key in `key`
/// (PEM), for HTTP/3 only.
pub fn server_config(cert: &Path, key: &Path) -> Result<quinn::ServerConfig, String> {
    let chain = super::pem::certificates("--quic-cert", cert, "the node's server certificate")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!("--quic-key {}: {e}; give the PEM file of the --quic-cert certificate's key", key.display())
    })?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("--quic-cert and --quic-key do not make a server identity: {e}"))?;
    tls.alpn_protocols = vec![ALPN_H3.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| format!("QUIC cannot use this TLS setup: {e}"))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// Binds the QUIC endpoint on `listen` (UDP); the error names the flag and the fix.
pub fn bind(config: quinn::ServerConfig, listen: SocketAddr) -> Result<quinn::Endpoint, String> {
    quinn::Endpoint::server(config, listen).map_err(|e| {
        format!("cannot listen for QUIC on UDP {listen} (--listen with --quic-cert): {e}; give a free local address")
    })
}

/// Accepts QUIC connections and answers each HTTP/3 request on its own task.
pub async fn serve(node: Arc<Node>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let node = node.clone();
        tokio::spawn(async move {
            // A handshake that fails (a client that does not trust the certificate, say)
            // only ends that connection.
            let Ok(connection) = incoming.await else { return };
            let Ok(mut h3) = h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(connection)).await
            else {
                return;
            };
            while let Ok(Some(resolver)) = h3.accept().await {
                let node = node.clone();
                tokio::spawn(async move {
                    let Ok((request, mut stream)) = resolver.resolve_request().await else { return };
                    // Read the request to its end (a GET has no body: only its FIN)
                    // before answering, so that no part of the stream is dropped unread:
                    // quinn would tell the client to stop sending (STOP_SENDING), which
                    // can fail the client's own end of the request.
                    let drained = tokio::time::timeout(REQUEST_END_BOUND, async {
                        while let Ok(Some(_)) = stream.recv_data().await {}
                    });
                    let _ = drained.await;
                    let answer = super::http::answer(&node, request.uri().path());
                    let response = http::Response::builder()
                        .status(answer.status)
                        .header(header::CONTENT_TYPE, answer.content_type)
                        .body(());
                    let Ok(response) = response else { return };
                    // A client that went away mid-answer: nothing to tell it.
                    if stream.send_response(response).await.is_ok()
                        && stream.send_data(Bytes::from(answer.body)).await.is_ok()
                    {
                        let _ = stream.finish().await;
                    }
                });
            }
        });
    }
}
