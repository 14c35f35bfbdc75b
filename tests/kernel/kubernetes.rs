//! The single-node Kubernetes test cluster (`cargo xtask cluster up|down`,
//! deploy/kubernetes/cluster.sh, docs/kubernetes.md): it comes up on this machine, its
//! node is Ready, a pod reaches another pod through a ClusterIP Service, and `down`
//! leaves the host as it was. The test runs the script `cargo xtask cluster` runs (not
//! cargo itself, from inside a test); it needs the Kubernetes binaries built once by
//! `cargo xtask cluster up` and skips without them (and so inside the qemu VMs).

use std::{fs, path::Path, path::PathBuf, process::Command, time::Instant};

use crate::support::*;

#[path = "kubernetes_agent.rs"]
mod agent;

pub const TESTS: &[Test] = tests![kubernetes_cluster_comes_up_serves_a_service_and_leaves_nothing];

const CACHE_BIN: &str = "/var/cache/chaos-ebpf/kubernetes/bin";
/// What kubelet, kube-proxy and the CNI bridge plugin set (the script records and puts
/// back the same list).
const SYSCTLS: &[&str] = &[
    "net/ipv4/ip_forward",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
];
/// The cluster's processes, as their command lines start.
const PROCESSES: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "etcd --name chaos-k8s",
    "containerd --config /var/lib/chaos-ebpf/cluster",
    "containerd-shim-runc-v2 .*-address /run/chaos-ebpf/cluster",
];

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes/cluster.sh")
}

fn cluster(verb: &str) -> (i32, String) {
    let out = Command::new("bash").arg(script()).arg(verb).output().expect("bash deploy/kubernetes/cluster.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

use agent::kubectl;

/// The host's side of what the cluster changes, to compare after `down`.
#[derive(Debug, PartialEq)]
struct Host {
    iptables: String,
    ip6tables: String,
    sysctls: Vec<(String, String)>,
    interfaces: Vec<String>,
    mounts: Vec<String>,
    processes: Vec<String>,
}

fn rules(tool: &str) -> String {
    String::from_utf8_lossy(&sh(tool, &[]).stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

fn host() -> Host {
    let interfaces = String::from_utf8_lossy(&sh("ip", &["-o", "link", "show"]).stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect();
    let mounts = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(str::to_owned)
        .collect();
    let processes = PROCESSES
        .iter()
        .flat_map(|p| {
            let out = sh("pgrep", &["-a", "-f", &format!("^([^ ]*/)?{p}")]);
            String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect::<Vec<_>>()
        })
        .collect();
    Host {
        iptables: rules("iptables-save"),
        ip6tables: rules("ip6tables-save"),
        sysctls: SYSCTLS
            .iter()
            .map(|s| {
                (s.to_string(), fs::read_to_string(format!("/proc/sys/{s}")).unwrap_or_default().trim().to_owned())
            })
            .collect(),
        interfaces,
        mounts,
        processes,
    }
}

/// Takes the cluster down if the test ends early, and removes what its pods left on the host.
struct Down(bool);

impl Drop for Down {
    fn drop(&mut self) {
        if self.0 {
            let (code, text) = cluster("down");
            eprintln!("cluster down after a failure (exit {code}): {text}");
            // The lab's pods, when a failure left them running, wrote their hostPath
            // until `down` stopped them.
            let _ = fs::remove_dir_all(agent::LAB_DATA);
        }
    }
}

/// `up` brings the cluster up from the cached binaries: node Ready; a pod reaches a pod
/// through a ClusterIP Service (the script's own check, then again from this test);
/// `down` exits 0 and the host's iptables, ip6tables, sysctls, interfaces and mounts are
/// as before, with none of the cluster's processes left; a second `down` says nothing is up.
fn kubernetes_cluster_comes_up_serves_a_service_and_leaves_nothing() {
    require_root();
    let cached = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"]
        .iter()
        .all(|b| Path::new(CACHE_BIN).join(b).exists());
    if !cached {
        skip("no Kubernetes build cached: run `cargo xtask cluster up` once (5-7 min)");
    }
    if !sh("pgrep", &["-x", "dockerd"]).stdout.is_empty() {
        skip("a dockerd runs here: the cluster refuses to start next to it (its containerd and iptables chains)");
    }
    let before = host();
    assert!(before.processes.is_empty(), "the cluster's processes run before the test: {:?}", before.processes);
    let mut guard = Down(true);
    let t = Instant::now();
    let (code, text) = cluster("up");
    assert_eq!(code, 0, "cluster up: {text}");
    assert!(text.contains("through the ClusterIP Service"), "{text}");
    println!("REPORT|cluster_up|seconds={:.1}", t.elapsed().as_secs_f64());

    let (ok, ready) =
        kubectl(&["get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}"]);
    assert!(ok && ready.trim() == "True", "node Ready: {ready}");
    let (ok, ip) = kubectl(&["-n", "chaos-k8s-check", "get", "service", "server", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(ok && ip.starts_with("198.51.100."), "service IP: {ip}");
    let request = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {} 80", ip.trim());
    let mut reply = String::new();
    for _ in 0..10 {
        reply = kubectl(&["-n", "chaos-k8s-check", "exec", "client", "--", "sh", "-c", &request]).1;
        if reply.contains("chaos-k8s-ok") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    assert!(reply.contains("chaos-k8s-ok"), "pod client through Service {ip}: {reply}");

    agent::install_agent();
    agent::experiments();
    agent::leader_kill();
    agent::uninstall_agent();

    let t = Instant::now();
    let (code, text) = cluster("down");
    guard.0 = false;
    assert_eq!(code, 0, "cluster down: {text}");
    println!("REPORT|cluster_down|seconds={:.1}", t.elapsed().as_secs_f64());
    let after = host();
    assert_eq!(after.iptables, before.iptables, "iptables after down");
    assert_eq!(after.ip6tables, before.ip6tables, "ip6tables after down");
    assert_eq!(after.sysctls, before.sysctls, "sysctls after down");
    assert_eq!(after.interfaces, before.interfaces, "interfaces after down");
    assert_eq!(after.mounts, before.mounts, "mounts after down");
    assert!(after.processes.is_empty(), "left after down: {:?}", after.processes);
    for dir in ["/var/lib/kubelet", "/var/lib/chaos-ebpf/cluster", "/run/chaos-ebpf/cluster", agent::LAB_DATA] {
        assert!(!Path::new(dir).exists(), "{dir} left after down");
    }
    let (code, text) = cluster("down");
    assert!(code == 0 && text.contains("nothing is up"), "a second down: {code} {text}");
}
