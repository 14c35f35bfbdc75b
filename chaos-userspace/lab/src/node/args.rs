//! The flags of `chaos-lab-node` (by hand: the lab crate stays free of clap, see
//! docs/architecture.md). Every problem names the flag and the fix.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use super::etcd::TlsFiles;

pub const USAGE: &str = "\
usage: chaos-lab-node --name NAME --etcd https://HOST:PORT[,...] --cacert FILE --cert FILE --key FILE
                      --listen IP:PORT [--write-rate 20/s] [--prefix /chaos-lab] [--journal FILE]
                      [--lease-ttl 5s] [--health-bound 3s] [--call-timeout 2s]
                      [--quic-cert FILE --quic-key FILE]
       chaos-lab-node verify --journal FILE --etcd https://HOST:PORT[,...] --cacert FILE --cert FILE --key FILE
       chaos-lab-node get http://HOST:PORT/PATH --cacert FILE
       chaos-lab-node echo --netns-list FILE [--port 7] [--ready FILE]
--quic-cert/--quic-key (PEM): also serve the same endpoints over HTTP/3 (QUIC) on UDP at the
  --listen address with this server certificate; without them there is no QUIC listener.
get: one GET with a fallback rule: HTTP/3 over QUIC to HOST:PORT (UDP) first, verifying the
  server certificate against --cacert, at most 1 s for handshake and answer; if that fails
  (no answer in time, ICMP unreachable, handshake or HTTP/3 error), at once HTTP/1.1 over TCP
  to the URL (at most 2 s). Prints the body to stdout and to stderr which transport answered
  and why QUIC was not used; exits 0 on a 2xx answer, 1 otherwise, 2 on bad flags.
echo: the light-node lab's responder (docs/lab.md): enters every network namespace named in
  --netns-list (one path a line), opens UDP and TCP --port there and echoes both; writes
  --ready once every socket is open; runs until SIGTERM.
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
    /// The server certificate and key (PEM) of the HTTP/3 listener; None: no QUIC listener.
    pub quic: Option<(PathBuf, PathBuf)>,
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

/// `get URL --cacert FILE` (node/get.rs).
#[derive(Clone, Debug)]
pub struct GetArgs {
    /// The URL as given (for messages).
    pub url: String,
    /// The URL's host, without brackets for IPv6 (the name the server certificate must have).
    pub host: String,
    pub port: u16,
    /// HOST:PORT as in the URL (the Host header and the h3 authority).
    pub authority: String,
    /// The path and query, `/` when the URL has none.
    pub path: String,
    pub cacert: PathBuf,
}

#[derive(Debug)]
pub enum Command {
    Help,
    Node(NodeArgs),
    Verify(VerifyArgs),
    Get(GetArgs),
    Echo(crate::hyper::echo::EchoArgs),
}

/// `http://HOST[:PORT][/PATH]`, the URL `get` takes.
fn get_url(url: &str) -> Result<GetArgs, String> {
    let fix = "give one like http://198.51.100.2:9100/health";
    let uri: hyper::http::Uri = url.parse().map_err(|e| format!("URL `{url}`: {e}; {fix}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "URL `{url}`: give an http:// URL (the node's TCP listener speaks plain HTTP/1.1; QUIC is tried on the same port); {fix}"
        ));
    }
    let authority = uri.authority().ok_or_else(|| format!("URL `{url}` has no host; {fix}"))?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    if host.is_empty() || authority.as_str().contains('@') {
        return Err(format!("URL `{url}`: give a host without user info; {fix}"));
    }
    let port = authority.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".to_owned());
    Ok(GetArgs {
        url: url.to_owned(),
        host,
        port,
        authority: authority.as_str().to_owned(),
        path,
        cacert: PathBuf::new(),
    })
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
    let is_get = args.peek().map(String::as_str) == Some("get");
    let echo = args.peek().map(String::as_str) == Some("echo");
    if verify || is_get || echo {
        args.next();
    }
    let mut flags: Vec<(String, String)> = Vec::new();
    let mut url: Option<String> = None;
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(Command::Help);
        }
        if is_get && !flag.starts_with("--") && url.is_none() {
            url = Some(flag);
            continue;
        }
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name.to_owned(), value.to_owned()),
            _ if flag.starts_with("--") => {
                let value = args.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
                (flag, value)
            }
            _ => return Err(format!("unexpected argument `{flag}`\n{USAGE}")),
        };
        let known: &[&str] = if echo {
            &["--netns-list", "--port", "--ready"]
        } else if verify {
            &["--journal", "--etcd", "--cacert", "--cert", "--key", "--call-timeout"]
        } else if is_get {
            &["--cacert"]
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
                "--quic-cert",
                "--quic-key",
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
    if echo {
        let port = get("--port").unwrap_or_else(|| "7".to_owned());
        return Ok(Command::Echo(crate::hyper::echo::EchoArgs {
            netns_list: PathBuf::from(required("--netns-list")?),
            port: port.parse().map_err(|_| format!("--port `{port}` is not a port number; give one like 7"))?,
            ready: path("--ready"),
        }));
    }
    if is_get {
        let url = url.ok_or_else(|| format!("get needs a URL, like http://198.51.100.2:9100/health\n{USAGE}"))?;
        let mut args = get_url(&url)?;
        args.cacert = path("--cacert").ok_or_else(|| {
            "get needs --cacert FILE: the CA that signed the node's certificate (QUIC always verifies it)".to_owned()
        })?;
        return Ok(Command::Get(args));
    }
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
        quic: match (path("--quic-cert"), path("--quic-key")) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(
                    "--quic-cert and --quic-key go together: give both (the server certificate and its key) or neither"
                        .into(),
                )
            }
        },
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
    fn get_takes_a_url_and_the_ca() {
        let Ok(Command::Get(get)) = parse(args("get http://198.51.100.2:9100/health --cacert ca.pem")) else {
            panic!("not get")
        };
        assert_eq!((get.host.as_str(), get.port, get.path.as_str()), ("198.51.100.2", 9100, "/health"));
        assert_eq!(get.authority, "198.51.100.2:9100");
        assert_eq!(get.cacert, PathBuf::from("ca.pem"));
        let Ok(Command::Get(v6)) = parse(args("get --cacert ca http://[::1]:9100")) else { panic!("not get") };
        assert_eq!((v6.host.as_str(), v6.path.as_str()), ("::1", "/"));
        for (text, expected) in [
            ("get http://127.0.0.1:9100/health", "--cacert"),
            ("get --cacert ca", "needs a URL"),
            ("get https://127.0.0.1:9100/ --cacert ca", "give an http:// URL"),
            ("get http://127.0.0.1:9100/ --cacert ca --etcd x", "unknown flag --etcd"),
            ("get http://127.0.0.1:9100/ http://127.0.0.1:1/ --cacert ca", "unexpected argument `http://127.0.0.1:1/`"),
        ] {
            let problem = parse(args(text)).expect_err(text);
            assert!(problem.contains(expected), "{text}: {problem}");
        }
    }

    #[test]
    fn quic_flags_go_together() {
        let base = "--name n1 --etcd https://127.0.0.1:2379 --listen 127.0.0.1:9100";
        let Ok(Command::Node(node)) = parse(args(&format!("{base} --quic-cert c --quic-key k"))) else {
            panic!("not a node")
        };
        assert_eq!(node.quic, Some((PathBuf::from("c"), PathBuf::from("k"))));
        let Ok(Command::Node(node)) = parse(args(base)) else { panic!("not a node") };
        assert_eq!(node.quic, None);
        assert!(parse(args(&format!("{base} --quic-cert c"))).expect_err("alone").contains("go together"));
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
