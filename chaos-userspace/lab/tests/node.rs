//! chaos-lab-node against a real single-member etcd on loopback with client-certificate TLS
//! (certificates minted here with rcgen): membership, health, writes, leaving on SIGTERM, a
//! paused etcd, and `verify` of the journal. No root needed; every process is killed by a
//! Drop guard, also when an assertion fails.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

const NODE: &str = env!("CARGO_BIN_EXE_chaos-lab-node");

/// A directory of the test's files, removed on drop; when the test failed, the tails of
/// the logs in it are printed first.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").subsec_nanos();
        let dir = std::env::temp_dir().join(format!("chaos-lab-node-test-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    eprintln!("--- last lines of {}:", path.display());
                    for line in tail.iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, killed (after a SIGCONT, in case the test stopped it) and reaped on drop.
struct Process {
    child: Child,
    what: &'static str,
}

impl Process {
    fn start(what: &'static str, command: &mut Command, log: &Path) -> Process {
        let log = std::fs::File::create(log).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Process { child, what }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success(), "kill {signal} {} failed", self.what);
    }

    /// Waits for the process to exit on its own, at most `bound`.
    fn wait_exit(&mut self, bound: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(start.elapsed() < bound, "{} did not exit within {bound:?}", self.what);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A CA, etcd's server certificate and a client certificate, as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn mint(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.distinguished_name.push(DnType::CommonName, "chaos-lab test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, cn: &str, usage: Vec<ExtendedKeyUsagePurpose>, file: &str| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = usage;
        let cert = params.signed_by(&key, &issuer).expect("sign");
        let (cert_path, key_path) = (dir.join(format!("{file}.crt")), dir.join(format!("{file}.key")));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    };
    let (server_cert, server_key) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        "etcd",
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        "server",
    );
    let (client_cert, client_key) = leaf(vec![], "chaos-lab-node", vec![ExtendedKeyUsagePurpose::ClientAuth], "client");
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, ca_cert.pem()).expect("write CA");
    Pki { ca, server_cert, server_key, client_cert, client_key }
}

/// The etcd binary, or a failure that says how to install it.
fn require_etcd() {
    let found = Command::new("etcd").arg("--version").output().is_ok_and(|o| o.status.success())
        && Command::new("etcdctl").arg("version").output().is_ok_and(|o| o.status.success());
    assert!(found, "etcd and etcdctl are needed by this test and were not found: `bash scripts/setup.sh` installs them (Debian's etcd-server and etcd-client)");
}

fn start_etcd(scratch: &Scratch, pki: &Pki, client_port: u16) -> Process {
    let peer_port = free_port();
    let client_url = format!("https://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    Process::start(
        "etcd",
        Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(scratch.path("etcd-data"))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("t={peer_url}"), "--client-cert-auth"])
            .arg("--cert-file")
            .arg(&pki.server_cert)
            .arg("--key-file")
            .arg(&pki.server_key)
            .arg("--trusted-ca-file")
            .arg(&pki.ca),
        &scratch.path("etcd.log"),
    )
}

fn tls_args(pki: &Pki) -> Vec<String> {
    [("--cacert", &pki.ca), ("--cert", &pki.client_cert), ("--key", &pki.client_key)]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_owned(), path.display().to_string()])
        .collect()
}

fn start_node(scratch: &Scratch, pki: &Pki, name: &'static str, etcd: &str, port: u16) -> Process {
    Process::start(
        name,
        Command::new(NODE)
            .args(["--name", name, "--etcd", etcd, "--listen", &format!("127.0.0.1:{port}"), "--write-rate", "20/s"])
            .arg("--journal")
            .arg(scratch.path(&format!("{name}.journal")))
            .args(tls_args(pki)),
        &scratch.path(&format!("{name}.log")),
    )
}

/// GET on loopback: (status, body), or None when the node does not answer.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())?;
    Some((status, body))
}

/// Polls `check` every 50 ms until it returns Some, at most `bound`; the failure names
/// `what` and the last observation.
fn wait_for<T>(what: &str, bound: Duration, mut check: impl FnMut() -> Result<T, String>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        match check() {
            Ok(value) => return (value, start.elapsed()),
            Err(last) if start.elapsed() > bound => panic!("{what}: not within {bound:?}; last seen: {last}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn members(port: u16) -> Result<serde_json::Value, String> {
    let (status, body) = get(port, "/members").ok_or("no answer")?;
    if status != 200 {
        return Err(format!("status {status}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
}

fn member_names(port: u16) -> Result<Vec<String>, String> {
    let view = members(port)?;
    Ok(view["members"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default())
}

/// The sum of the samples of metric `name` whose labels include every one of `labels`
/// (like `result="ok"`); panics when there is no such sample.
fn metric(port: u16, name: &str, labels: &[&str]) -> f64 {
    let (_, text) = get(port, "/metrics").expect("metrics answer");
    let samples: Vec<f64> = text
        .lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    assert!(!samples.is_empty(), "no sample of {name} {labels:?} in:\n{text}");
    samples.iter().sum()
}

fn etcdctl(pki: &Pki, endpoint: &str, args: &[&str]) -> Output {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--cacert"])
        .arg(&pki.ca)
        .arg("--cert")
        .arg(&pki.client_cert)
        .arg("--key")
        .arg(&pki.client_key)
        .args(args)
        .output()
        .expect("run etcdctl");
    assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn verify(pki: &Pki, etcd: &str, journal: &Path) -> Output {
    Command::new(NODE)
        .args(["verify", "--etcd", etcd, "--journal"])
        .arg(journal)
        .args(tls_args(pki))
        .output()
        .expect("run verify")
}

#[test]
fn two_nodes_on_a_real_etcd() {
    require_etcd();
    let scratch = Scratch::new("two");
    let pki = mint(&scratch.0);
    let client_port = free_port();
    let endpoint = format!("https://127.0.0.1:{client_port}");
    let etcd = start_etcd(&scratch, &pki, client_port);
    let (p1, p2) = (free_port(), free_port());
    let mut n1 = start_node(&scratch, &pki, "n1", &endpoint, p1);
    // n2's first endpoint refuses connections: its calls move on to the next one.
    let dead_endpoint = format!("https://127.0.0.1:{}", free_port());
    let mut n2 = start_node(&scratch, &pki, "n2", &format!("{dead_endpoint},{endpoint}"), p2);

    // Both register and see each other (the bound covers etcd's start).
    for port in [p1, p2] {
        // The leader is etcd's only member, by its name.
        let (view, took) = wait_for("both nodes and the leader in the view", Duration::from_secs(20), || {
            let view = members(port)?;
            let names: Vec<&String> = view["members"].as_object().map(|m| m.keys().collect()).unwrap_or_default();
            if names == ["n1", "n2"] && view["leader"] == "t" {
                Ok(view)
            } else {
                Err(format!("{view}"))
            }
        });
        eprintln!("view of :{port} complete after {took:?}: {view}");
        let n1 = &view["members"]["n1"];
        assert_eq!(n1["listen"], format!("127.0.0.1:{p1}"));
        assert!(n1["started_unix_ms"].as_u64().unwrap_or(0) > 0, "{view}");
    }
    for port in [p1, p2] {
        wait_for("/health 200", Duration::from_secs(5), || match get(port, "/health") {
            Some((200, body)) => Ok(body),
            other => Err(format!("{other:?}")),
        });
    }
    let before = metric(p1, "writes_total", &["result=\"ok\""]);
    let (_, took) = wait_for("writes_total grows", Duration::from_secs(5), || {
        let now = metric(p1, "writes_total", &["result=\"ok\""]);
        if now >= before + 10.0 {
            Ok(now)
        } else {
            Err(format!("{before} then {now}"))
        }
    });
    let mean_ms =
        1000.0 * metric(p1, "write_latency_seconds_sum", &[]) / metric(p1, "write_latency_seconds_count", &[]);
    eprintln!("10 more acknowledged writes in {took:?}; mean write latency {mean_ms:.2} ms");
    assert!(metric(p1, "reads_total", &["result=\"ok\""]) > 0.0, "reads of written keys");
    // etcd picks h2 when offered: without a fault every connection speaks it.
    assert!(metric(p1, "connections_total", &["transport=\"h2\""]) > 0.0, "connections over h2");
    assert_eq!(metric(p1, "connections_total", &["transport=\"http/1.1\""]), 0.0, "no connection fell back");
    assert_eq!(metric(p1, "transport_fallbacks_total", &[]), 0.0);
    assert!(metric(p1, "write_latency_seconds_count", &[]) > 0.0, "the latency histogram");

    // SIGTERM: n2 revokes its lease and leaves n1's view well before the lease (5 s) would expire.
    n2.signal("-TERM");
    let status = n2.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "n2 exits cleanly on SIGTERM: {status}");
    let (_, took) = wait_for("n2 gone from n1's view", Duration::from_secs(2), || match member_names(p1)? {
        names if names == ["n1"] => Ok(()),
        names => Err(format!("{names:?}")),
    });
    eprintln!("n2 left n1's view {took:?} after its exit");
    assert!(metric(p1, "membership_changes_total", &[]) >= 1.0);
    wait_for("the lease renewed", Duration::from_secs(5), || match metric(p1, "lease_renewals_total", &[]) {
        renewals if renewals > 0.0 => Ok(renewals),
        renewals => Err(format!("{renewals}")),
    });
    assert_eq!(metric(p1, "members", &["node=\"n1\""]), 1.0);

    // A paused etcd: /health turns 503 with a reason, errors grow; it recovers on SIGCONT.
    let errors_before = metric(p1, "etcd_errors_total", &[]);
    let write_errors_before = metric(p1, "writes_total", &["result=\"error\""]);
    etcd.signal("-STOP");
    // The bound (3 s) can pass before the write in flight times out: wait for the reason to name it.
    let (reason, took) =
        wait_for("/health 503 naming the write timeout", Duration::from_secs(10), || match get(p1, "/health") {
            Some((503, body)) if body.contains("did not answer in time") => Ok(body),
            other => Err(format!("{other:?}")),
        });
    eprintln!("/health 503 {took:?} after SIGSTOP: {reason}");
    assert!(reason.contains("no write acknowledged") && reason.contains("did not answer in time"), "{reason}");
    assert!(metric(p1, "etcd_errors_total", &[]) > errors_before, "etcd errors counted");
    assert!(metric(p1, "etcd_errors_total", &["kind=\"timeout\""]) > 0.0, "a paused etcd shows as timeouts");
    assert!(metric(p1, "writes_total", &["result=\"error\""]) > write_errors_before, "failed writes counted");
    etcd.signal("-CONT");
    let (_, took) = wait_for("/health 200 after SIGCONT", Duration::from_secs(15), || match get(p1, "/health") {
        Some((200, body)) => Ok(body),
        other => Err(format!("{other:?}")),
    });
    eprintln!("/health 200 again {took:?} after SIGCONT");

    // A lost lease (revoked behind the node's back): the node registers again under a new one.
    let registrations = metric(p1, "registrations_total", &[]);
    let leases = etcdctl(&pki, &endpoint, &["lease", "list"]);
    let leases = String::from_utf8_lossy(&leases.stdout).into_owned();
    let ids: Vec<&str> = leases.lines().skip(1).map(str::trim).filter(|l| !l.is_empty()).collect();
    assert_eq!(ids.len(), 1, "n1's lease alone is left: {leases}");
    etcdctl(&pki, &endpoint, &["lease", "revoke", ids[0]]);
    let (_, took) = wait_for("n1 registered again", Duration::from_secs(5), || {
        let again = metric(p1, "registrations_total", &[]);
        let names = member_names(p1)?;
        if again > registrations && names == ["n1"] {
            Ok(())
        } else {
            Err(format!("{again} registrations, {names:?}"))
        }
    });
    eprintln!("n1 registered again {took:?} after its lease was revoked");

    n1.signal("-TERM");
    assert!(n1.wait_exit(Duration::from_secs(5)).success(), "n1 exits cleanly");

    // Every acknowledged write of both nodes reads back.
    for name in ["n1", "n2"] {
        let journal = scratch.path(&format!("{name}.journal"));
        let lines = std::fs::read_to_string(&journal).expect("journal").lines().count();
        assert!(lines >= 10, "{name} journaled {lines} acknowledged writes");
        let out = verify(&pki, &endpoint, &journal);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "verify {name}: {stdout} {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(&format!("{lines} acknowledged writes, {lines} readable, 0 missing")), "{stdout}");
    }

    // Deleting one acknowledged key: verify exits 1 and names it.
    let journal = scratch.path("n1.journal");
    let first = std::fs::read_to_string(&journal).expect("journal").lines().next().expect("a line").to_owned();
    let key =
        serde_json::from_str::<serde_json::Value>(&first).expect("json line")["key"].as_str().expect("key").to_owned();
    let deleted = etcdctl(&pki, &endpoint, &["del", &key]);
    assert_eq!(String::from_utf8_lossy(&deleted.stdout).trim(), "1", "etcdctl del: {deleted:?}");
    let out = verify(&pki, &endpoint, &journal);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&format!("missing: {key} (acknowledged at revision")), "{stdout}");
    assert!(stdout.contains(" 1 missing, 0 mismatched"), "{stdout}");
}

/// `chaos-lab-node get URL --cacert CA`: (exit code, stdout, stderr).
fn node_get(pki: &Pki, url: &str) -> (Option<i32>, String, String) {
    let out = Command::new(NODE).args(["get", url, "--cacert"]).arg(&pki.ca).output().expect("run get");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The milliseconds in `get`'s stderr line `via ... (STATUS in MS ms)`.
fn took_ms(stderr: &str) -> u64 {
    let after = stderr.split(" in ").nth(1).unwrap_or_else(|| panic!("no time in: {stderr}"));
    after.split(" ms").next().and_then(|ms| ms.parse().ok()).unwrap_or_else(|| panic!("no time in: {stderr}"))
}

#[test]
fn get_answers_over_quic_and_falls_back_to_tcp() {
    require_etcd();
    let scratch = Scratch::new("quic");
    let pki = mint(&scratch.0);
    let client_port = free_port();
    let endpoint = format!("https://127.0.0.1:{client_port}");
    let _etcd = start_etcd(&scratch, &pki, client_port);
    // n1 serves HTTP/3 too, with etcd's server certificate (SAN 127.0.0.1, signed by the CA);
    // n2 has no QUIC listener: nothing listens on its UDP port.
    let (p1, p2) = (free_port(), free_port());
    let _n1 = Process::start(
        "n1",
        Command::new(NODE)
            .args(["--name", "n1", "--etcd", &endpoint, "--listen", &format!("127.0.0.1:{p1}")])
            .args(tls_args(&pki))
            .arg("--quic-cert")
            .arg(&pki.server_cert)
            .arg("--quic-key")
            .arg(&pki.server_key),
        &scratch.path("n1.log"),
    );
    let _n2 = Process::start(
        "n2",
        Command::new(NODE)
            .args(["--name", "n2", "--etcd", &endpoint, "--listen", &format!("127.0.0.1:{p2}")])
            .args(tls_args(&pki)),
        &scratch.path("n2.log"),
    );
    for port in [p1, p2] {
        wait_for("the node healthy over TCP", Duration::from_secs(20), || match get(port, "/health") {
            Some((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        });
    }

    // Over QUIC: the same answers as over TCP, from the same handlers.
    let (code, body, stderr) = node_get(&pki, &format!("http://127.0.0.1:{p1}/health"));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.starts_with("chaos-lab-node get: via h3 over QUIC (200 in "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    eprintln!("h3 GET: {stderr}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("health json");
    assert_eq!(health["status"], "ok", "{body}");
    let (code, body, stderr) = node_get(&pki, &format!("http://127.0.0.1:{p1}/members"));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("via h3 over QUIC"), "{stderr}");
    let view: serde_json::Value = serde_json::from_str(&body).expect("members json");
    assert_eq!(view["node"], "n1", "{body}");
    let (code, body, stderr) = node_get(&pki, &format!("http://127.0.0.1:{p1}/nothing"));
    assert_eq!(code, Some(1), "a 404 is no success: {stderr}");
    assert!(stderr.contains("via h3 over QUIC (404"), "an answer over QUIC is the answer: {stderr}");
    assert!(body.contains("no endpoint /nothing"), "{body}");

    // Nothing on n2's UDP port: the GET falls back to HTTP/1.1 over TCP within the QUIC bound.
    let (code, body, stderr) = node_get(&pki, &format!("http://127.0.0.1:{p2}/health"));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.starts_with("chaos-lab-node get: via http/1.1 over TCP (200 in "), "{stderr}");
    assert!(stderr.contains("QUIC gave no answer within 1 s"), "{stderr}");
    let took = took_ms(&stderr);
    assert!((1000..2500).contains(&took), "the fallback follows the 1 s QUIC bound: {took} ms; {stderr}");
    eprintln!("fallback GET: {took} ms");
    let health: serde_json::Value = serde_json::from_str(&body).expect("health json");
    assert_eq!(health["status"], "ok", "{body}");

    // A QUIC server whose certificate --cacert did not sign: a handshake error, then TCP.
    let other = Scratch::new("quic-other-ca");
    let other_pki = mint(&other.0);
    let (code, _, stderr) = node_get(&other_pki, &format!("http://127.0.0.1:{p1}/health"));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("via http/1.1 over TCP (200"), "{stderr}");
    assert!(stderr.contains("QUIC handshake failed"), "{stderr}");
    eprintln!("other CA: {stderr}");

    // Neither transport: exit 1 and both reasons.
    let (code, body, stderr) = node_get(&pki, &format!("http://127.0.0.1:{}/health", free_port()));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(body.is_empty(), "{body}");
    assert!(stderr.contains("no answer: QUIC gave no answer within 1 s; then TCP connect"), "{stderr}");
    eprintln!("nothing listening: {stderr}");
}

#[test]
fn bad_flags_exit_2_naming_the_fix() {
    let scratch = Scratch::new("flags");
    let journal = scratch.path("none.journal");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("addr").to_string();
    let absent = scratch.path("absent-ca.crt");
    let absent = absent.to_str().expect("utf-8");
    for (args, expected) in [
        (vec!["--name", "n1", "--etcd", "https://127.0.0.1:1", "--listen", "nowhere"], "--listen `nowhere`"),
        (vec!["--name", "n1", "--etcd", "127.0.0.1:1", "--listen", "127.0.0.1:0"], "give https://HOST:PORT"),
        (vec!["--name", "n1", "--etcd", "https://127.0.0.1:1", "--listen", "127.0.0.1:0"], "needs --cacert"),
        (vec!["--name", "n1", "--etcd", "http://127.0.0.1:1", "--listen", &taken], "Address already in use"),
        (
            vec!["--name", "n1", "--etcd", "https://127.0.0.1:1", "--listen", "127.0.0.1:0", "--cacert", absent],
            "--cacert",
        ),
        (
            vec!["verify", "--etcd", "https://127.0.0.1:1", "--journal", journal.to_str().expect("utf-8")],
            "cannot read --journal",
        ),
        (vec!["get", "http://127.0.0.1:1/health"], "get needs --cacert"),
        (vec!["get", "http://127.0.0.1:1/health", "--cacert", absent], "--cacert"),
        (
            vec![
                "--name",
                "n1",
                "--etcd",
                "http://127.0.0.1:1",
                "--listen",
                "127.0.0.1:0",
                "--quic-cert",
                absent,
                "--quic-key",
                absent,
            ],
            "--quic-cert",
        ),
    ] {
        let out = Command::new(NODE).args(&args).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(stderr.lines().all(|l| l.len() < 400), "{stderr}");
    }
}
