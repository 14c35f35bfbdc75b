//! tls-refuse: ClientHellos offering a refused ALPN protocol or TLS version, parsed in
//! the kernel program, are answered with a TCP reset (the client fails at once) or
//! dropped with the rest of their connection (the client times out); other ClientHellos
//! and other TCP traffic on the port pass. A real `openssl s_server` in one namespace,
//! `openssl s_client` and curl in the other.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::support::*;

pub const TESTS: &[Test] = tests![
    tls_refuse_reset_refuses_h2_and_passes_http1,
    tls_refuse_drop_silences_the_connection,
    tls_refuse_by_version_lets_tls12_through,
];

/// openssl s_server in a namespace (killed on drop) with a self-signed certificate in a
/// temporary directory (removed on drop).
struct TlsServer {
    children: Vec<Child>,
    dir: PathBuf,
}

impl TlsServer {
    /// Serves TLS 1.2 and 1.3 with ALPN h2 and http/1.1 on port 443 of both address
    /// families; `-www` answers an HTTP GET with a status page.
    fn start(ns: &str) -> TlsServer {
        if !installed("openssl") {
            skip("openssl is not installed (scripts/setup.sh installs it)");
        }
        let dir = std::env::temp_dir().join(format!("chaos-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
        // A config of its own: the VM images have no /usr/lib/ssl/openssl.cnf, and req
        // needs a distinguished_name section even with -subj.
        let config = dir.join("req.cnf");
        std::fs::write(&config, "[req]\ndistinguished_name = dn\n[dn]\n").unwrap();
        let gen = sh(
            "openssl",
            &[
                "req",
                "-x509",
                "-config",
                config.to_str().unwrap(),
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=chaos-test",
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                cert.to_str().unwrap(),
            ],
        );
        assert!(gen.status.success(), "openssl req: {}", String::from_utf8_lossy(&gen.stderr));
        // s_server's listening socket is IPv6-only: one server per address family.
        let children = ["192.0.2.2:443", "[fd00::2]:443"]
            .into_iter()
            .map(|addr| {
                Command::new("ip")
                    .args(["netns", "exec", ns, "openssl", "s_server", "-quiet", "-www", "-accept", addr])
                    .args(["-cert", cert.to_str().unwrap(), "-key", key.to_str().unwrap(), "-alpn", "h2,http/1.1"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start openssl s_server")
            })
            .collect();
        let server = TlsServer { children, dir };
        let deadline = Instant::now() + Duration::from_secs(5);
        let v6: std::net::SocketAddr = "[fd00::2]:443".parse().unwrap();
        while tcp_connect(ns, sock(ADDR_B, 443), Duration::from_millis(200)).is_err()
            || tcp_connect(ns, v6, Duration::from_millis(200)).is_err()
        {
            // tcp_connect runs in the server's own namespace: its address is local there.
            assert!(Instant::now() < deadline, "openssl s_server did not listen within 5 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn installed(program: &str) -> bool {
    Command::new(program).arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// One s_client handshake from `ns` (stdin closed, so it ends after the handshake),
/// bounded by `limit` (killed then): (exit code, elapsed, stdout + stderr). Exit 124 =
/// timed out, as timeout(1) says it.
fn s_client(ns: &str, server: &str, args: &[&str], limit: Duration) -> (i32, Duration, String) {
    use std::io::Read;
    let start = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "openssl", "s_client", "-connect", server])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            break 124;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    let (mut out, mut err) = (String::new(), String::new());
    let _ = child.stdout.take().unwrap().read_to_string(&mut out);
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (code, elapsed, format!("{out}{err}"))
}

fn negotiated(text: &str, protocol: &str) -> bool {
    text.contains(&format!("ALPN protocol: {protocol}"))
}

/// What the client saw of a reset: openssl reports errno 104 (ECONNRESET).
fn was_reset(text: &str) -> bool {
    text.contains("errno=104") || text.contains("Connection reset")
}

fn tls_refuse_reset_refuses_h2_and_passes_http1() {
    require_root();
    let pair = Pair::new("tlsrst");
    let _server = TlsServer::start(&pair.b);
    // Plain TCP on the same fault's ports: not TLS, never refused.
    tcp_echo_server(&pair.b, sock(ADDR_B, 444));
    let target = pair.target();
    let chaos = Chaos::start(&[
        "inject",
        "tls-refuse",
        "--target",
        &target,
        "--alpn",
        "h2",
        "--mode",
        "reset",
        "--ports",
        "443-444",
        "--duration",
        "5m",
        "--output",
        "json",
    ]);
    let limit = Duration::from_secs(5);
    let mut reset_ms = Vec::new();
    for server in ["192.0.2.2:443", "[fd00::2]:443"] {
        let (code, elapsed, text) = s_client(&pair.a, server, &["-alpn", "h2"], limit);
        assert!(code != 0 && code != 124, "s_client offering h2 to {server} was not refused at once ({code}): {text}");
        assert!(was_reset(&text), "s_client offering h2 to {server} did not see a reset: {text}");
        assert!(elapsed < Duration::from_secs(1), "reset took {elapsed:?} for {server}");
        reset_ms.push(elapsed.as_secs_f64() * 1000.0);
        let (code, _, text) = s_client(&pair.a, server, &["-alpn", "http/1.1"], limit);
        assert!(code == 0 && negotiated(&text, "http/1.1"), "http/1.1 only to {server} was refused ({code}): {text}");
        // h2 among others is still an offer of h2.
        let (code, _, text) = s_client(&pair.a, server, &["-alpn", "http/1.1,h2"], limit);
        assert!(code != 0 && was_reset(&text), "a ClientHello offering http/1.1 and h2 passed: {text}");
    }
    let mut plain = tcp_connect(&pair.a, sock(ADDR_B, 444), Duration::from_secs(2)).expect("plain TCP on 444");
    assert!(tcp_echo(&mut plain, Duration::from_secs(2)), "plain TCP on a tls-refuse port did not pass");
    // The client's fallback: curl asks for HTTP/2 first and fails at once; HTTP/1.1
    // (ALPN http/1.1 only) then works.
    if installed("curl") {
        let curl = |version: &str| {
            let start = Instant::now();
            let out = sh(
                "ip",
                &["netns", "exec", &pair.a, "curl", "-sS", "-k", "-m", "5", version, "-o", "/dev/null", "-w", "%{http_version}", "https://192.0.2.2/"],
            );
            (out.status.code().unwrap_or(-1), start.elapsed(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
        };
        let (code, elapsed, _, err) = curl("--http2");
        assert!(code != 0 && elapsed < Duration::from_secs(1), "curl --http2 was not refused at once ({code}, {elapsed:?}): {err}");
        println!("curl --http2: exit {code} after {:.1} ms: {}", elapsed.as_secs_f64() * 1000.0, err.trim());
        let (code, _, version, err) = curl("--http1.1");
        // s_server -www answers HTTP/1.0.
        assert!(code == 0 && version.starts_with('1'), "curl --http1.1 fell back and failed ({code}): {err}");
    } else {
        let (code, _, text) = s_client(&pair.a, "192.0.2.2:443", &["-alpn", "http/1.1"], limit);
        assert!(code == 0 && negotiated(&text, "http/1.1"), "the fallback without h2 failed: {text}");
    }
    let (code, out, err) = chaos.interrupt();
    assert_eq!(code, 1, "{err}");
    let rule = counters(&out, 0);
    // 2 families x (h2, http/1.1+h2) refused, curl --http2 too.
    assert!(counter(&rule, "dropped") >= 4, "counters: {rule}");
    assert_eq!(counter(&rule, "errors"), 0, "counters: {rule}");
    assert_nothing_left();
    println!("REPORT|tls_refuse_reset_ms={:.1}", reset_ms.iter().cloned().fold(0.0, f64::max));
}

fn tls_refuse_drop_silences_the_connection() {
    require_root();
    let pair = Pair::new("tlsdrop");
    let _server = TlsServer::start(&pair.b);
    let target = pair.target();
    let chaos = Chaos::start(&[
        "inject", "tls-refuse", "--target", &target, "--alpn", "h2", "--mode", "drop", "--duration", "5m", "--output", "json",
    ]);
    let limit = Duration::from_secs(3);
    // http/1.1 first: s_server serves one connection at a time, and a dropped
    // connection stays half-open on its side (that is what a drop does).
    let (code, _, text) = s_client(&pair.a, "192.0.2.2:443", &["-alpn", "http/1.1"], limit);
    assert!(code == 0 && negotiated(&text, "http/1.1"), "http/1.1 only was refused ({code}): {text}");
    let (code, _, text) = s_client(&pair.a, "192.0.2.2:443", &["-alpn", "h2"], limit);
    assert_eq!(code, 124, "s_client offering h2 ended within {limit:?} under a drop: {text}");
    assert!(!negotiated(&text, "h2"), "{text}");
    let (code, out, err) = chaos.interrupt();
    assert_eq!(code, 1, "{err}");
    let rule = counters(&out, 0);
    // The ClientHello and its retransmissions (TCP resends within 3 s), the FIN at the end.
    let dropped = counter(&rule, "dropped");
    assert!(dropped >= 3, "the refused connection's later packets were not dropped: {rule}");
    println!("drop mode: {dropped} packets of the refused connection dropped in {limit:?}");
    assert_nothing_left();
}

fn tls_refuse_by_version_lets_tls12_through() {
    require_root();
    let pair = Pair::new("tlsver");
    let _server = TlsServer::start(&pair.b);
    let target = pair.target();
    let chaos = Chaos::start(&[
        "inject", "tls-refuse", "--target", &target, "--tls-versions", "1.3", "--duration", "5m", "--output", "json",
    ]);
    let limit = Duration::from_secs(5);
    // s_client offers 1.3 and 1.2 in supported_versions by default: refused.
    let (code, _, text) = s_client(&pair.a, "192.0.2.2:443", &[], limit);
    assert!(code != 0 && was_reset(&text), "a ClientHello offering TLS 1.3 passed: {text}");
    let (code, _, text) = s_client(&pair.a, "192.0.2.2:443", &["-tls1_3"], limit);
    assert!(code != 0 && was_reset(&text), "a TLS 1.3-only ClientHello passed: {text}");
    // -tls1_2 sends no supported_versions: legacy_version 1.2 is what it offers.
    let (code, _, text) = s_client(&pair.a, "192.0.2.2:443", &["-tls1_2"], limit);
    assert!(code == 0 && text.contains("TLSv1.2"), "TLS 1.2 was refused by a 1.3 rule ({code}): {text}");
    let (code, out, err) = chaos.interrupt();
    assert_eq!(code, 1, "{err}");
    let rule = counters(&out, 0);
    assert!(counter(&rule, "dropped") >= 2, "counters: {rule}");
    assert_nothing_left();
}
