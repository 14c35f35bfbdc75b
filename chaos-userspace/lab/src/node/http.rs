//! The node's HTTP endpoints: /health, /members, /metrics.

use std::{convert::Infallible, sync::Arc};

use http_body_util::Full;
use hyper::{body::Bytes, header, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use super::Node;

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

fn route(node: &Node, path: &str) -> Response<Full<Bytes>> {
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
