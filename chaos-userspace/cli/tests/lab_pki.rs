//! `chaos-ebpf lab pki`: the PKI the compose stack's etcd uses. Minted files and their
//! modes; a second mint into the same directory and bad members are refused (exit 2)
//! and change nothing.

mod common;

use std::{fs, os::unix::fs::PermissionsExt, path::Path, process::Command};

use common::TempDir;

fn pki(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chaos-ebpf")).args(["lab", "pki"]).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn mints_a_ca_a_pair_per_member_and_a_client_then_refuses_a_second_ca() {
    let temp = TempDir::new("lab-pki").expect("the temp dir");
    let root = &temp.0;
    let dir = root.join("pki");
    let dir_arg = dir.display().to_string();
    let (code, text) =
        pki(&["--dir", &dir_arg, "--member", "etcd-a=198.51.100.98", "--member", "etcd-b=198.51.100.99"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(mode(&dir), 0o700);
    for (file, want) in [
        ("ca.pem", 0o644),
        ("ca-key.pem", 0o600),
        ("etcd-a.pem", 0o644),
        ("etcd-a-key.pem", 0o600),
        ("etcd-b.pem", 0o644),
        ("etcd-b-key.pem", 0o600),
        ("client.pem", 0o644),
        ("client-key.pem", 0o600),
    ] {
        let path = dir.join(file);
        assert_eq!(mode(&path), want, "{file}");
        assert!(fs::read_to_string(&path).unwrap().starts_with("-----BEGIN"), "{file} is not PEM");
    }
    let ca = fs::read(dir.join("ca.pem")).unwrap();
    let (code, text) = pki(&["--dir", &dir_arg, "--member", "etcd-a=198.51.100.98"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("already holds a CA"), "{text}");
    assert_eq!(fs::read(dir.join("ca.pem")).unwrap(), ca, "the CA was replaced");

    let fresh = root.join("bad");
    let fresh_arg = fresh.display().to_string();
    for bad in ["etcd-a", "etcd-a=fd00::1", "=198.51.100.98", "-a=198.51.100.98", "a b=198.51.100.98"] {
        let (code, text) = pki(&["--dir", &fresh_arg, &format!("--member={bad}")]);
        assert_eq!(code, 2, "{bad}: {text}");
        assert!(text.contains("not NAME=IPv4"), "{bad}: {text}");
        assert!(!fresh.exists(), "{bad}: the directory was created");
    }
    let (code, text) = pki(&["--dir", &fresh_arg, "--member", "a=198.51.100.1", "--member", "a=198.51.100.2"]);
    assert_eq!(code, 2, "a member twice: {text}");
}
