//! A client of the agent's local API, for `inject` and `agent status`: blocking calls,
//! one connection each (HTTP/1.1 over the Unix socket, on a small runtime of its own).

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use chaos_model::spec::{FaultSpec, Problem};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use crate::api::{
    ApiError, Applied, ApplyRequest, FaultList, FaultWire, Health, PrepareRequest, Prepared, RenewRequest, Renewed,
    Reverted,
};

/// How long one call may take before it is given up.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Client {
    socket: PathBuf,
    runtime: tokio::runtime::Runtime,
}

/// A client of the agent listening on `socket`, or None when none listens there (no
/// socket, or a dead agent's).
pub fn connect(socket: &Path) -> Result<Option<Client>> {
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("connecting to the agent at {}", socket.display())),
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(Some(Client { socket: socket.to_owned(), runtime }))
}

impl Client {
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn health(&self) -> Result<Health> {
        self.call(Method::GET, "/v1/health", None)
    }

    /// Applies a fault with a lease; the answer has its id, rules and apply time.
    pub fn apply(&self, fault: &FaultSpec, lease: Duration, seed: Option<u64>) -> Result<Applied> {
        self.apply_as(fault, lease, seed, None)
    }

    /// As [`Client::apply`], with the rule id of the drop decisions (a scenario's).
    pub fn apply_as(
        &self,
        fault: &FaultSpec,
        lease: Duration,
        seed: Option<u64>,
        rule_id: Option<u32>,
    ) -> Result<Applied> {
        let fault = FaultWire::from_spec(fault).context("encoding the fault for the agent")?;
        let request = ApplyRequest { fault, lease_ms: lease.as_millis() as u64, seed, rule_id };
        self.call(Method::POST, "/v1/faults", Some(serde_json::to_vec(&request)?))
    }

    /// Has the agent load its programs into `target`'s namespaces ahead of its faults.
    pub fn prepare(&self, target: &str) -> Result<Prepared> {
        let request = PrepareRequest { target: target.to_owned() };
        self.call(Method::POST, "/v1/prepare", Some(serde_json::to_vec(&request)?))
    }

    pub fn renew(&self, id: u64, lease: Duration) -> Result<Renewed> {
        let request = RenewRequest { lease_ms: lease.as_millis() as u64 };
        self.call(Method::POST, &format!("/v1/faults/{id}/renew"), Some(serde_json::to_vec(&request)?))
    }

    /// Reverts a fault; the answer has its final counters.
    pub fn revert(&self, id: u64) -> Result<Reverted> {
        self.call(Method::DELETE, &format!("/v1/faults/{id}"), None)
    }

    pub fn list(&self) -> Result<FaultList> {
        self.call(Method::GET, "/v1/faults", None)
    }

    /// One request; a 4xx answer is a `Problem` (bad input, exit 2), a 5xx an error.
    fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<T> {
        let (status, bytes) = self
            .runtime
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, self.request(method.clone(), path, body)).await })
            .map_err(|_| {
                anyhow!("the agent at {} did not answer {method} {path} within 10 s", self.socket.display())
            })??;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).with_context(|| format!("reading the agent's answer to {path}"));
        }
        let error: ApiError = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            ApiError::new(status, String::from_utf8_lossy(&bytes).chars().take(200).collect::<String>(), "")
        });
        if (400..500).contains(&status) {
            return Err(Problem::new(format!("the agent refused it: {}", error.problem), error.fix).into());
        }
        Err(anyhow!("the agent failed ({status}): {}; fix: {}", error.problem, error.fix))
    }

    async fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<(u16, Bytes)> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .with_context(|| format!("connecting to the agent at {}", self.socket.display()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "chaos-ebpf-agent")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        driver.abort();
        Ok((status, bytes))
    }
}
