//! The flags of `chaos-lab-node` (by hand: the lab crate stays free of clap, see
//! docs/architecture.md). Every problem names the flag and the fix.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use super::etcd::TlsFiles;

pub const USAGE: &str = "\
usage: chaos-lab-node --name NAME --etcd https://HOST:PORT[,...] --cacert FILE --cert FILE --key FILE
                      --listen IP:PORT [--write-rate 20/s] [--prefix /chaos-lab] [--journal FILE]
                      [--lease-ttl 5s] [--health-bound 3s] [--call-timeout 2s]
       chaos-lab-node verify --journal FILE --etcd https://HOST:PORT[,...] --cacert FILE --cert FILE --key FILE
(docs/workload.md describes each flag, the endpoints, the metrics and the journal)";

/// The flags every command shares: where etcd is and how to reach it.
#[derive(Clone, Debug)]
pub struct EtcdArgs {
    pub etcd: String,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub call_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct NodeArgs {
    pub name: String,
    pub etcd: String,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub listen: SocketAddr,
    /// Writes per second.
    pub write_rate: f64,
    pub prefix: String,
    pub journal: Option<PathBuf>,
    pub lease_ttl: Duration,
    /// /health is 200 while the last acknowledged write is at most this old.
    pub health_bound: Duration,
    /// Every call to etcd fails as a timeout after this long.
    pub call_timeout: Duration,
}

impl NodeArgs {
    pub fn tls(&self) -> TlsFiles<'_> {
        TlsFiles { cacert: self.cacert.as_deref(), cert: self.cert.as_deref(), key: self.key.as_deref() }
    }
}

#[derive(Clone, Debug)]
pub struct VerifyArgs {
    pub journal: PathBuf,
    pub etcd: EtcdArgs,
}

impl EtcdArgs {
    pub fn tls(&self) -> TlsFiles<'_> {
        TlsFiles { cacert: self.cacert.as_deref(), cert: self.cert.as_deref(), key: self.key.as_deref() }
    }
}

#[derive(Debug)]
pub enum Command {
    Help,
    Node(NodeArgs),
    Verify(VerifyArgs),
}

/// `5s`, `500ms` or a number of seconds.
fn duration(flag: &str, text: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    match number.parse::<f64>() {
        Ok(n) if n > 0.0 && n < 86_400.0 => Ok(Duration::from_secs_f64(n * scale)),
        _ => Err(format!("{flag} `{text}` is not a duration; give one like 5s or 500ms")),
    }
}

fn rate(text: &str) -> Result<f64, String> {
    let number = text.strip_suffix("/s").unwrap_or(text);
    match number.parse::<f64>() {
        Ok(n) if n > 0.0 && n <= 10_000.0 => Ok(n),
        _ => Err(format!(
            "--write-rate `{text}` is not a rate; give writes per second from 0.01/s to 10000/s, like 20/s"
        )),
    }
}

/// Parses the arguments after the program name.
pub fn parse(args: Vec<String>) -> Result<Command, String> {
    let mut args = args.into_iter().peekable();
    let verify = args.peek().map(String::as_str) == Some("verify");
    if verify {
        args.next();
    }
    let mut flags: Vec<(String, String)> = Vec::new();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(Command::Help);
        }
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name.to_owned(), value.to_owned()),
            _ if flag.starts_with("--") => {
                let value = args.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
                (flag, value)
            }
            _ => return Err(format!("unexpected argument `{flag}`\n{USAGE}")),
        };
        let known: &[&str] = if verify {
            &["--journal", "--etcd", "--cacert", "--cert", "--key", "--call-timeout"]
        } else {
            &[
                "--name",
                "--etcd",
                "--cacert",
                "--cert",
                "--key",
                "--listen",
                "--write-rate",
                "--prefix",
                "--journal",
                "--lease-ttl",
                "--health-bound",
                "--call-timeout",
            ]
        };
        if !known.contains(&name.as_str()) {
            return Err(format!("unknown flag {name}\n{USAGE}"));
        }
        if flags.iter().any(|(n, _)| *n == name) {
            return Err(format!("{name} is given twice; give it once"));
        }
        flags.push((name, value));
    }
    let get = |name: &str| flags.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let required = |name: &str| get(name).ok_or_else(|| format!("{name} is missing\n{USAGE}"));
    let path = |name: &str| get(name).map(PathBuf::from);
    let etcd = EtcdArgs {
        etcd: required("--etcd")?,
        cacert: path("--cacert"),
        cert: path("--cert"),
        key: path("--key"),
        call_timeout: get("--call-timeout")
            .map(|t| duration("--call-timeout", &t))
            .transpose()?
            .unwrap_or(Duration::from_secs(2)),
    };
    if verify {
        return Ok(Command::Verify(VerifyArgs { journal: PathBuf::from(required("--journal")?), etcd }));
    }
    let name = required("--name")?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
        return Err(format!("--name `{name}`: use letters, digits, '-', '_' and '.' only (it is part of etcd keys)"));
    }
    let listen_text = required("--listen")?;
    let listen: SocketAddr = listen_text
        .parse()
        .map_err(|_| format!("--listen `{listen_text}` is not an address; give IP:PORT, like 127.0.0.1:9100"))?;
    let prefix = get("--prefix").unwrap_or_else(|| "/chaos-lab".to_owned());
    if prefix.is_empty() || prefix.ends_with('/') {
        return Err(format!("--prefix `{prefix}`: give a key prefix without a trailing '/', like /chaos-lab"));
    }
    let lease_ttl =
        get("--lease-ttl").map(|t| duration("--lease-ttl", &t)).transpose()?.unwrap_or(Duration::from_secs(5));
    if lease_ttl < Duration::from_secs(2) || lease_ttl.subsec_nanos() != 0 {
        return Err(format!("--lease-ttl {lease_ttl:?}: etcd leases count whole seconds; give 2s or more, like 5s"));
    }
    Ok(Command::Node(NodeArgs {
        name,
        etcd: etcd.etcd,
        cacert: etcd.cacert,
        cert: etcd.cert,
        key: etcd.key,
        listen,
        write_rate: get("--write-rate").map(|r| rate(&r)).transpose()?.unwrap_or(20.0),
        prefix,
        journal: path("--journal"),
        lease_ttl,
        health_bound: get("--health-bound")
            .map(|t| duration("--health-bound", &t))
            .transpose()?
            .unwrap_or(Duration::from_secs(3)),
        call_timeout: etcd.call_timeout,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn a_node_with_defaults() {
        let Ok(Command::Node(node)) =
            parse(args("--name n1 --etcd https://127.0.0.1:2379 --cacert ca --cert c --key k --listen 127.0.0.1:9100"))
        else {
            panic!("not a node")
        };
        assert_eq!(node.write_rate, 20.0);
        assert_eq!(node.prefix, "/chaos-lab");
        assert_eq!(node.lease_ttl, Duration::from_secs(5));
        assert_eq!(node.health_bound, Duration::from_secs(3));
    }

    #[test]
    fn bad_flags_name_the_problem() {
        let base = "--name n1 --etcd https://127.0.0.1:2379 --listen 127.0.0.1:9100";
        for (extra, expected) in [
            ("--write-rate fast", "--write-rate `fast`"),
            ("--lease-ttl 1500ms", "--lease-ttl"),
            ("--prefix /x/", "trailing '/'"),
            ("--bogus 1", "unknown flag --bogus"),
            ("--name n2", "--name is given twice"),
        ] {
            let problem = parse(args(&format!("{base} {extra}"))).expect_err(extra);
            assert!(problem.contains(expected), "{extra}: {problem}");
        }
        assert!(parse(args("--name n1 --etcd https://x:1")).expect_err("no listen").contains("--listen is missing"));
        assert!(parse(args("--name a/b --etcd https://x:1 --listen 127.0.0.1:1"))
            .expect_err("slash")
            .contains("--name"));
    }

    #[test]
    fn verify_takes_the_journal_and_etcd() {
        let Ok(Command::Verify(verify)) = parse(args("verify --journal j --etcd https://127.0.0.1:2379")) else {
            panic!("not verify")
        };
        assert_eq!(verify.journal, PathBuf::from("j"));
        assert!(parse(args("verify --etcd https://127.0.0.1:2379")).expect_err("no journal").contains("--journal"));
        assert!(parse(args("verify --journal j --etcd e --listen 1")).expect_err("listen").contains("unknown flag"));
    }
}
