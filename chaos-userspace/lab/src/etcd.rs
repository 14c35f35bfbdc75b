//! etcd members (Debian's etcd 3.4) with client and peer TLS, and what the lab asks
//! them through `etcdctl` (Debian's etcd-client): health, leader and raft term.
//!
//! Why etcdctl rather than an HTTPS client in chaos-ebpf: it is etcd's own client, so
//! "healthy" means what etcd means by it (a quorum read through raft, not only a
//! process that answers), `endpoint status` gives leader and term without a gRPC stack
//! in the binary, and a user can run the very command the lab runs.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::certs::{CertFiles, LabCerts};

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

pub fn client_url(ip: Ipv4Addr) -> String {
    format!("https://{ip}:{CLIENT_PORT}")
}

pub fn peer_url(ip: Ipv4Addr) -> String {
    format!("https://{ip}:{PEER_PORT}")
}

/// The command line of one member; `cluster` is every `(name, ip)`.
pub fn member_command(
    name: &str,
    ip: Ipv4Addr,
    cluster: &[(String, Ipv4Addr)],
    token: &str,
    data_dir: &Path,
    own: &CertFiles,
    ca: &Path,
) -> Command {
    let initial: Vec<String> = cluster.iter().map(|(n, i)| format!("{n}={}", peer_url(*i))).collect();
    let mut cmd = Command::new("etcd");
    cmd.arg(format!("--name={name}"))
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--listen-client-urls={}", client_url(ip)))
        .arg(format!("--advertise-client-urls={}", client_url(ip)))
        .arg(format!("--listen-peer-urls={}", peer_url(ip)))
        .arg(format!("--initial-advertise-peer-urls={}", peer_url(ip)))
        .arg(format!("--initial-cluster={}", initial.join(",")))
        .arg("--initial-cluster-state=new")
        .arg(format!("--initial-cluster-token={token}"))
        .arg(format!("--cert-file={}", own.cert.display()))
        .arg(format!("--key-file={}", own.key.display()))
        .arg(format!("--trusted-ca-file={}", ca.display()))
        .arg("--client-cert-auth")
        .arg(format!("--peer-cert-file={}", own.cert.display()))
        .arg(format!("--peer-key-file={}", own.key.display()))
        .arg(format!("--peer-trusted-ca-file={}", ca.display()))
        .arg("--peer-client-cert-auth")
        .arg("--logger=zap")
        .arg("--log-outputs=stderr")
        // Debian's etcd reads ETCD_* variables too: none of the caller's may change the lab.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()));
    cmd
}

/// `etcdctl` with the lab's TLS files against `endpoints`, bounded by its own timeouts
/// (an endpoint that does not answer costs `COMMAND_TIMEOUT`).
pub fn etcdctl(certs: &LabCerts, endpoints: &[String]) -> Command {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg(format!("--cacert={}", certs.ca.display()))
        .arg(format!("--cert={}", certs.client.cert.display()))
        .arg(format!("--key={}", certs.client.key.display()))
        .arg("--dial-timeout=1s")
        .arg(format!("--command-timeout={}ms", COMMAND_TIMEOUT.as_millis()))
        .stdin(Stdio::null());
    cmd
}

#[derive(Debug, Clone, Deserialize)]
struct HealthLine {
    endpoint: String,
    health: bool,
    #[serde(default)]
    error: Option<String>,
}

/// Health of each endpoint: `Ok(())` or the reason it is not healthy.
pub fn health(certs: &LabCerts, endpoints: &[String]) -> Result<Vec<(String, Result<(), String>)>> {
    let out = etcdctl(certs, endpoints)
        .args(["endpoint", "health", "--write-out=json"])
        .output()
        .context("running etcdctl endpoint health")?;
    // etcdctl exits 1 when an endpoint is unhealthy but still prints every endpoint.
    let lines: Vec<HealthLine> = serde_json::from_slice(&out.stdout).with_context(|| {
        format!("etcdctl endpoint health: {}", crate::cluster::short(&String::from_utf8_lossy(&out.stderr)))
    })?;
    Ok(endpoints
        .iter()
        .map(|e| {
            let verdict = match lines.iter().find(|l| &l.endpoint == e) {
                Some(l) if l.health => Ok(()),
                Some(l) => Err(crate::cluster::short(l.error.as_deref().unwrap_or("unhealthy"))),
                None => Err("no answer".to_owned()),
            };
            (e.clone(), verdict)
        })
        .collect())
}

#[derive(Debug, Clone, Deserialize)]
struct StatusLine {
    #[serde(rename = "Endpoint")]
    endpoint: String,
    #[serde(rename = "Status")]
    status: StatusBody,
}

#[derive(Debug, Clone, Deserialize)]
struct StatusBody {
    header: StatusHeader,
    leader: u64,
    #[serde(rename = "raftTerm")]
    raft_term: u64,
}

#[derive(Debug, Clone, Deserialize)]
struct StatusHeader {
    member_id: u64,
}

/// What an endpoint says about itself: is it the leader, and the raft term it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStatus {
    pub endpoint: String,
    pub is_leader: bool,
    pub raft_term: u64,
}

/// `etcdctl endpoint status` of every endpoint that answers.
pub fn status(certs: &LabCerts, endpoints: &[String]) -> Result<Vec<EndpointStatus>> {
    let out = etcdctl(certs, endpoints)
        .args(["endpoint", "status", "--write-out=json"])
        .output()
        .context("running etcdctl endpoint status")?;
    parse_status(&out.stdout).with_context(|| {
        format!("etcdctl endpoint status: {}", crate::cluster::short(&String::from_utf8_lossy(&out.stderr)))
    })
}

fn parse_status(stdout: &[u8]) -> Result<Vec<EndpointStatus>> {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let lines: Vec<StatusLine> = serde_json::from_slice(stdout)?;
    Ok(lines
        .into_iter()
        .map(|l| EndpointStatus {
            endpoint: l.endpoint,
            is_leader: l.status.leader != 0 && l.status.leader == l.status.header.member_id,
            raft_term: l.status.raft_term,
        })
        .collect())
}

/// Where a member keeps its data and log.
pub fn member_dir(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(name)
}

/// etcdctl's --command-timeout: a healthy member answers in milliseconds; `lab up` polls
/// health while members start, so this is also the polling granularity then.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(1500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_the_leader_and_term() {
        let json = br#"[{"Endpoint":"https://198.51.100.1:2379","Status":{"header":{"cluster_id":1,"member_id":11,"revision":1,"raft_term":2},"version":"3.4.23","dbSize":20480,"leader":11,"raftIndex":8,"raftTerm":2,"raftAppliedIndex":8,"dbSizeInUse":20480}},{"Endpoint":"https://198.51.100.2:2379","Status":{"header":{"cluster_id":1,"member_id":12,"revision":1,"raft_term":2},"leader":11,"raftTerm":2}}]"#;
        let status = parse_status(json).unwrap();
        assert_eq!(status.len(), 2);
        assert!(status[0].is_leader && !status[1].is_leader);
        assert_eq!(status[1].raft_term, 2);
        assert!(parse_status(b"\n").unwrap().is_empty());
    }
}
