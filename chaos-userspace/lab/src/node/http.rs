//! The node's HTTP endpoints: /health, /members, /metrics, over HTTP/1.1 on TCP here and
//! over HTTP/3 on QUIC (quic.rs) with the same answers ([`answer`]).

use std::{convert::Infallible, sync::Arc};

use http_body_util::Full;
use hyper::{body::Bytes, header, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use super::Node;

/// One endpoint's answer, whatever the transport that carries it.
pub(super) struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Answer {
    Answer { status, content_type, body }
}

fn route(node: &Node, path: &str) -> Response<Full<Bytes>> {
    let answer = answer(node, path);
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() = answer.status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(answer.content_type));
    response
}

/// The answer to a GET of `path`.
pub(super) fn answer(node: &Node, path: &str) -> Answer {
    match path {
        "/health" => {
            let (healthy, body) = node.health();
            let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            respond(status, "application/json", body.to_string())
        }
        "/members" => {
            let view = node.view.lock().unwrap_or_else(|e| e.into_inner());
            let body = json!({
                "node": node.args.name,
                "members": view.members,
                "leader": view.leader,
                "changed_unix_ms": view.changed_unix_ms,
            });
            respond(StatusCode::OK, "application/json", body.to_string())
        }
        "/metrics" => respond(StatusCode::OK, "text/plain; version=0.0.4", node.metrics.render()),
        _ => respond(
            StatusCode::NOT_FOUND,
            "application/json",
            json!({"error": format!("no endpoint {path}; try /health, /members or /metrics")}).to_string(),
        ),
    }
}

pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: wait instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = route(&node, request.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
