//! The dashboard page the metrics endpoint serves at / and /dashboard: live charts of
//! the Prometheus that scrapes this agent (`--prometheus-url`), and the read-only proxy
//! of Prometheus' query API at /api/v1/query and /api/v1/query_range that the page falls
//! back to when the browser cannot reach Prometheus itself (no CORS, or an address only
//! the agent resolves, as a compose service name).
//!
//! The panels and their PromQL are the Grafana dashboard's
//! (deploy/compose/grafana/chaos-ebpf.json), embedded here: one list of queries for
//! Grafana, this page and the test that runs them (tests/kernel/dashboard.rs).

use std::{fmt, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::api::ApiError;

/// The page: plain HTML, CSS and JS, charts drawn as SVG; nothing loaded from elsewhere.
const PAGE: &str = include_str!("dashboard.html");
/// The Grafana dashboard whose panels the page draws.
const GRAFANA: &str = include_str!("../../../deploy/compose/grafana/chaos-ebpf.json");
/// Where the page's configuration goes (a JSON object in a script tag).
const CONFIG_SLOT: &str = "/*CONFIG*/null";

/// A proxied query gets this long (Prometheus' own default query timeout is 2 min; a
/// dashboard refreshing every 2 s has no use for an answer later than this).
const PROXY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest Prometheus answer passed on (a range query of a few series over minutes is
/// kilobytes; this bounds the agent's memory per request).
const PROXY_MAX_BODY: usize = 8 * 1024 * 1024;

/// `--prometheus-url`: where the Prometheus that scrapes this agent answers, as the
/// browser and the agent both reach it (http or https, an optional path prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrometheusUrl {
    /// The URL as given, without a trailing slash.
    pub url: String,
    /// `host:port` for the agent's proxy; None for https (the agent speaks no TLS).
    authority: Option<(String, u16)>,
    /// The path prefix (`/prometheus` behind a reverse proxy), empty for none.
    path: String,
}

impl PrometheusUrl {
    /// Parses `http[s]://HOST[:PORT][/PATH]`.
    pub fn parse(text: &str) -> Result<PrometheusUrl, String> {
        let fix = "give the URL of Prometheus' web address, e.g. --prometheus-url http://127.0.0.1:9090";
        let trimmed = text.trim().trim_end_matches('/');
        let (tls, rest) = if let Some(rest) = trimmed.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = trimmed.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(format!("'{}' is not an http:// or https:// URL; {fix}", chaos_model::spec::shorten(text, 80)));
        };
        let (host_port, path) = rest.split_once('/').map_or((rest, String::new()), |(h, p)| (h, format!("/{p}")));
        if host_port.is_empty() || path.contains(['?', '#']) || host_port.contains(['@', ' ']) {
            return Err(format!("'{}' has no usable host, or a query; {fix}", chaos_model::spec::shorten(text, 80)));
        }
        // An IPv6 literal is bracketed: [::1]:9090.
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                let port = port.parse::<u16>().map_err(|_| format!("'{port}' is not a port; {fix}"))?;
                (host, port)
            }
            _ => (host_port, if tls { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(PrometheusUrl { url: trimmed.to_owned(), authority: (!tls).then_some((host, port)), path })
    }
}

impl fmt::Display for PrometheusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// The page for `prometheus` (None: a page that says how to set it).
pub fn page(prometheus: Option<&PrometheusUrl>) -> Response<Full<Bytes>> {
    let body = match prometheus {
        Some(url) => {
            let config = serde_json::json!({
                "prometheus": url.url,
                "dashboard": serde_json::from_str::<serde_json::Value>(GRAFANA).unwrap_or_default(),
            });
            // In a <script> element only `</` could end it early.
            PAGE.replacen(CONFIG_SLOT, &config.to_string().replace("</", "<\\/"), 1)
        }
        None => UNSET.to_owned(),
    };
    Response::builder()
        .header("content-type", "text/html; charset=utf-8")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

const UNSET: &str = r#"<!doctype html><html><head><meta charset="utf-8"><title>chaos-ebpf dashboard</title>
<link rel="icon" href="data:,"></head><body style="font:15px system-ui,sans-serif;max-width:46em;margin:2em auto">
<h1>chaos-ebpf dashboard: no Prometheus configured</h1>
<p>This page draws its charts from the Prometheus that scrapes this agent. Start the agent with
<code>--prometheus-url</code>, for example:</p>
<pre>sudo chaos-ebpf agent --metrics-addr 0.0.0.0:9465 --prometheus-url http://127.0.0.1:9090</pre>
<p>The agent's own metrics are at <a href="/metrics">/metrics</a>; docs/agent.md describes the page.</p>
</body></html>
"#;

/// GET /api/v1/query or /api/v1/query_range with `query` (the raw query string),
/// passed to Prometheus and its answer passed back (status, JSON body). Problems are
/// answered as 502 with Prometheus' own error shape, which the page shows.
pub async fn proxy(prometheus: Option<&PrometheusUrl>, path: &str, query: Option<&str>) -> Response<Full<Bytes>> {
    let Some(url) = prometheus else {
        return error(&ApiError::new(
            404,
            "no Prometheus to ask: the agent runs without --prometheus-url",
            "start the agent with --prometheus-url http://HOST:PORT",
        ));
    };
    let Some((host, port)) = &url.authority else {
        return prometheus_error(format!(
            "the agent cannot proxy to {url}: it speaks no TLS; the browser must reach it itself (Prometheus' --web.cors.origin)"
        ));
    };
    let target = format!("{}{path}?{}", url.path, query.unwrap_or(""));
    match tokio::time::timeout(PROXY_TIMEOUT, forward(host, *port, &target)).await {
        Ok(Ok((status, body))) => Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("cache-control", "no-store")
            .body(Full::new(body))
            .expect("a valid response"),
        Ok(Err(e)) => prometheus_error(format!("asking {url}: {e}")),
        Err(_) => prometheus_error(format!("{url} did not answer within {PROXY_TIMEOUT:?}")),
    }
}

async fn forward(host: &str, port: u16, target: &str) -> Result<(StatusCode, Bytes), String> {
    let stream = TcpStream::connect((host, port)).await.map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    // The connection is driven until the answer is read; dropping the sender ends it.
    tokio::spawn(connection);
    let host_header = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let request = Request::get(target)
        .header("host", host_header)
        .header("accept", "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("building the request: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("GET {target}: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), PROXY_MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the answer (at most {PROXY_MAX_BODY} bytes): {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// Prometheus' error shape (`status`, `errorType`, `error`), so the page shows it as it
/// shows Prometheus' own.
fn prometheus_error(problem: String) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"status": "error", "errorType": "unavailable", "error": problem});
    Response::builder()
        .status(StatusCode::BAD_GATEWAY)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

fn error(e: &ApiError) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(e).unwrap_or_default())))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_urls() {
        let u = PrometheusUrl::parse("http://127.0.0.1:9090/").unwrap();
        assert_eq!(
            (u.url.as_str(), u.authority.clone(), u.path.as_str()),
            ("http://127.0.0.1:9090", Some(("127.0.0.1".into(), 9090)), "")
        );
        let u = PrometheusUrl::parse("http://prometheus/prom").unwrap();
        assert_eq!((u.authority.clone(), u.path.as_str()), (Some(("prometheus".into(), 80)), "/prom"));
        let u = PrometheusUrl::parse("http://[::1]:9090").unwrap();
        assert_eq!(u.authority, Some(("::1".into(), 9090)));
        assert_eq!(PrometheusUrl::parse("https://p.example").unwrap().authority, None);
        for bad in ["127.0.0.1:9090", "ftp://x", "http://", "http://h:notaport", "http://h/x?y"] {
            assert!(PrometheusUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_page_carries_the_grafana_panels() {
        let grafana: serde_json::Value = serde_json::from_str(GRAFANA).expect("the Grafana JSON parses");
        assert!(grafana["panels"].as_array().is_some_and(|p| !p.is_empty()));
        assert!(PAGE.contains(CONFIG_SLOT), "the page has its configuration slot");
        assert!(PAGE.len() < 25 * 1024, "the page is {} bytes", PAGE.len());
    }
}
