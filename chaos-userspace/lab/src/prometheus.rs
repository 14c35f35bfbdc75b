//! The lab's Prometheus (Debian's prometheus 2.42) in the root namespace on a loopback
//! port: it scrapes every etcd member's /metrics over TLS with the lab's client
//! certificate (etcd serves them on its client URL, which requires one), the workload
//! nodes listed in a file_sd file the lab writes (its workload nodes, and surge nodes
//! while they run: Prometheus re-reads the file, no restart), and chaos-ebpf's own
//! metrics endpoint (scraped whether or not a run serves it: `up` is 0 meanwhile).

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::certs::LabCerts;

/// Where `run` and `inject` serve their metrics by default (`--metrics-addr`; the CLI's
/// DEFAULT_METRICS_ADDR, which the lab crate cannot name: it is below the CLI).
pub const CHAOS_METRICS: &str = "127.0.0.1:9464";
/// The scrape interval: Prometheus 2.42 scrapes first about 5 s after start anyway.
const SCRAPE_INTERVAL: &str = "5s";

/// The file_sd file of workload nodes (JSON targets; `[]` while there are none).
pub fn nodes_file(dir: &Path) -> PathBuf {
    dir.join("nodes.json")
}

/// Writes the file_sd file: one target per node `(name, address)`, labelled `lab_node`.
/// Replaced at once (a new file renamed over it), so Prometheus never reads half of it.
pub fn write_nodes_file(path: &Path, nodes: &[(String, SocketAddr)]) -> Result<()> {
    let groups: Vec<serde_json::Value> = nodes
        .iter()
        .map(|(name, addr)| serde_json::json!({"targets": [addr.to_string()], "labels": {"lab_node": name}}))
        .collect();
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&groups)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

pub fn config_file(dir: &Path) -> PathBuf {
    dir.join("prometheus.yml")
}

/// A loopback port that is free right now.
pub fn free_loopback_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// prometheus.yml for the members `(name, ip)`.
pub fn config(certs: &LabCerts, members: &[(String, Ipv4Addr)], nodes_file: &Path) -> String {
    let mut text = format!(
        "# Written by `chaos-ebpf lab up`; removed by `chaos-ebpf lab down`.\n\
         global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  scrape_timeout: 4s\n\
         scrape_configs:\n  - job_name: etcd\n    scheme: https\n    tls_config:\n      \
         ca_file: {}\n      cert_file: {}\n      key_file: {}\n    static_configs:\n",
        certs.ca.display(),
        certs.client.cert.display(),
        certs.client.key.display()
    );
    for (name, ip) in members {
        text.push_str(&format!(
            "      - targets: ['{ip}:{}']\n        labels: {{member: '{name}'}}\n",
            crate::etcd::CLIENT_PORT
        ));
    }
    text.push_str(&format!(
        "  - job_name: lab-nodes\n    file_sd_configs:\n      - files: ['{}']\n        refresh_interval: 5s\n\
         \x20 - job_name: chaos-ebpf\n    static_configs:\n      - targets: ['{CHAOS_METRICS}']\n",
        nodes_file.display()
    ));
    text
}

pub fn command(dir: &Path, port: u16) -> Command {
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config_file(dir).display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        // Its default console paths are Debian's; the lab needs none.
        .arg("--log.level=warn");
    cmd
}

/// GET over HTTP/1.0 on loopback, bounded: (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_get_at(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), path)
}

/// GET over HTTP/1.0 to `addr` (Prometheus, a workload node on the bridge), bounded: 1 s
/// to connect, 2 s per read or write, 1 MiB: (status, body).
pub fn http_get_at(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    stream.take(1 << 20).read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Prometheus answers /-/ready with 200.
pub fn ready(port: u16) -> bool {
    matches!(http_get(port, "/-/ready"), Ok((200, _)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::CertFiles;

    #[test]
    fn config_scrapes_members_over_tls_and_the_chaos_endpoint() {
        let certs = LabCerts {
            ca: "/s/ca.pem".into(),
            ca_key: "/s/ca-key.pem".into(),
            client: CertFiles { cert: "/s/client.pem".into(), key: "/s/client-key.pem".into() },
            members: Vec::new(),
        };
        let members =
            vec![("n1".to_owned(), Ipv4Addr::new(198, 51, 100, 1)), ("n2".into(), Ipv4Addr::new(198, 51, 100, 2))];
        let text = config(&certs, &members, Path::new("/s/prometheus/nodes.json"));
        assert!(text.contains("scheme: https"));
        assert!(text.contains("cert_file: /s/client.pem"));
        assert!(text.contains("targets: ['198.51.100.2:2379']\n        labels: {member: 'n2'}"));
        assert!(text.contains("files: ['/s/prometheus/nodes.json']"));
        assert!(text.contains("targets: ['127.0.0.1:9464']"));
        // The file is valid YAML for Prometheus' loader when promtool is here.
        let dir = std::env::temp_dir().join(format!("chaos-prom-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("prometheus.yml");
        // Without the TLS files promtool would complain about them, not about the syntax.
        let plain = text.replace("/s/", &format!("{}/", dir.display()));
        for file in ["ca.pem", "client.pem", "client-key.pem"] {
            std::fs::write(dir.join(file), "").unwrap();
        }
        std::fs::create_dir_all(dir.join("prometheus")).unwrap();
        std::fs::write(dir.join("prometheus/nodes.json"), "[]").unwrap();
        std::fs::write(&path, plain).unwrap();
        if let Ok(out) = Command::new("promtool").args(["check", "config", "--syntax-only"]).arg(&path).output() {
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nodes_file_is_file_sd_json() {
        let dir = std::env::temp_dir().join(format!("chaos-prom-nodes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = nodes_file(&dir);
        write_nodes_file(&path, &[("n1".into(), "198.51.100.1:9100".parse().unwrap())]).unwrap();
        let groups: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(groups, serde_json::json!([{"targets": ["198.51.100.1:9100"], "labels": {"lab_node": "n1"}}]));
        write_nodes_file(&path, &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), "[]");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
