//! Project tasks.
//!
//! - `cargo xtask test`: unit tests, then the privileged kernel tests (one at a time:
//!   they assert on machine-wide BPF state) here and on Debian kernels (vm.rs); it ends
//!   with each kernel's counts and every skipped test with its reason (`KernelRun`).
//! - `cargo xtask bench`: the datapath's cost, as ratios against a baseline measured in
//!   the same run (bench.rs).
//! - `cargo xtask cluster up|down|status`: a single-node Kubernetes built from Debian's
//!   source package (cluster.rs, deploy/kubernetes/cluster.sh, docs/kubernetes.md).
//! - `cargo xtask manifests [--check]`: deploy/kubernetes/chaos-ebpf.yaml rendered from
//!   the Helm chart deploy/helm/chaos-ebpf (manifests.rs).

mod bench;
mod bench_apply;
mod bench_hyper;
mod bench_packet;
mod bench_report;
mod bench_throughput;
mod cluster;
mod manifests;
mod vm;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo).args(args).status().with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// What one run of the kernel test binary showed on one kernel, read from its output:
/// the `KERNEL-TESTS|kernel=..|passed=..|failed=..|skipped=..` line and one
/// `SKIP|<test>|<reason>` line per skipped test (tests/kernel/main.rs prints them).
pub struct KernelRun {
    /// Where it ran: "host" or "VM 6.1".
    pub place: String,
    /// `uname -r` of that kernel, once the count line is read.
    pub release: Option<String>,
    pub passed: u64,
    pub failed: u64,
    pub skipped: Vec<(String, String)>,
    /// Whatever else makes the run a failure (exit code, a module that did not load).
    pub problems: Vec<String>,
}

impl KernelRun {
    pub fn new(place: &str) -> KernelRun {
        KernelRun {
            place: place.to_owned(),
            release: None,
            passed: 0,
            failed: 0,
            skipped: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Takes in one line of the test binary's output (anywhere in the line: a serial
    /// console may prefix it).
    pub fn read_line(&mut self, line: &str) {
        if let Some(rest) = line.split("KERNEL-TESTS|").nth(1) {
            for field in rest.trim().split('|') {
                match field.split_once('=') {
                    Some(("kernel", v)) => self.release = Some(v.to_owned()),
                    Some(("passed", v)) => self.passed = v.parse().unwrap_or(0),
                    Some(("failed", v)) => self.failed = v.parse().unwrap_or(0),
                    _ => {}
                }
            }
        } else if let Some(rest) = line.split("SKIP|").nth(1) {
            let (test, reason) = rest.trim().split_once('|').unwrap_or((rest.trim(), "no reason given"));
            self.skipped.push((test.to_owned(), reason.to_owned()));
        }
    }

    /// Called once the binary has exited with `code`.
    pub fn finish(&mut self, code: i32) {
        if self.release.is_none() {
            self.problems.push(format!("the test binary printed no KERNEL-TESTS count line (exit {code})"));
        } else if self.passed + self.failed + self.skipped.len() as u64 == 0 {
            self.problems.push("no kernel test matched the filter".into());
        }
        if code != 0 {
            self.problems.push(format!("exit {code}"));
        }
    }

    pub fn failed(&self) -> bool {
        self.failed > 0 || !self.problems.is_empty()
    }

    fn print(&self) {
        let release = self.release.as_deref().unwrap_or("?");
        let mut line = format!(
            "xtask: kernel tests on {} ({release}): {} passed, {} failed, {} skipped",
            self.place,
            self.passed,
            self.failed,
            self.skipped.len()
        );
        if !self.problems.is_empty() {
            line += &format!("; FAILED: {}", self.problems.join("; "));
        }
        eprintln!("{line}");
        for (test, reason) in &self.skipped {
            eprintln!("xtask:   skipped {test}: {reason}");
        }
    }
}

/// Prints every run's counts and skips (never counted as passes), names the tests that
/// were skipped on every kernel of this run (tested on none), and fails if a run failed.
pub fn conclude(runs: &[KernelRun]) -> Result<()> {
    eprintln!();
    for run in runs {
        run.print();
    }
    if let (Some(first), true) = (runs.first(), runs.len() > 1) {
        let nowhere: Vec<&str> = first
            .skipped
            .iter()
            .map(|(test, _)| test.as_str())
            .filter(|test| runs.iter().all(|r| r.skipped.iter().any(|(t, _)| t == test)))
            .collect();
        if !nowhere.is_empty() {
            eprintln!("xtask: skipped on every kernel of this run (tested on none of them): {}", nowhere.join(", "));
        }
    }
    let failed: Vec<&str> = runs.iter().filter(|r| r.failed()).map(|r| r.place.as_str()).collect();
    if !failed.is_empty() {
        bail!("kernel tests failed on: {}", failed.join(", "));
    }
    Ok(())
}

/// The kernel tests on this machine's kernel; their output is passed through and read.
fn host_kernel_tests(filters: &[String]) -> Result<KernelRun> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec!["test", "-p", "chaos-cli", "--test", "kernel", "--", "--test-threads=1"];
    args.extend(filters.iter().map(String::as_str));
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut child =
        Command::new(&cargo).args(&args).stdout(Stdio::piped()).spawn().with_context(|| format!("running {cargo}"))?;
    let mut run = KernelRun::new("host");
    for line in BufReader::new(child.stdout.take().expect("piped")).lines().map_while(Result::ok) {
        println!("{line}");
        run.read_line(&line);
    }
    let status = child.wait()?;
    run.finish(status.code().unwrap_or(-1));
    Ok(run)
}

pub fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root (network namespaces, BPF programs): run it as root, e.g. `sudo cargo xtask ...`");
    }
    Ok(())
}

const USAGE: &str = "usage: cargo xtask <task>

  test [--no-vm] [FILTER]
                  unit tests, the privileged kernel tests on this kernel, then the
                  same tests on Debian 6.1 and 6.12 under qemu (needs root)
  vm-test [FILTER]
                  the kernel tests inside Debian 6.1 and 6.12 kernels under qemu
                  (sch_fq, sch_netem, the pre-TCX netlink path); downloads the kernels
  schema          write scenarios/chaos-ebpf.schema.json, the JSON Schema of scenario
                  files, from chaos-model's parser types
  crd             write deploy/helm/chaos-ebpf/crds/chaosexperiments.yaml, the
                  ChaosExperiment CRD, from chaos-agent's spec and status types
  manifests [--check]
                  write deploy/kubernetes/chaos-ebpf.yaml and lab.yaml, the plain
                  manifests, from the Helm charts deploy/helm/chaos-ebpf and chaos-lab
                  (needs helm: scripts/helm.sh); `--check` exits 1 when a file is not
                  what its chart renders
  bench [packet|throughput|apply|hyper|report]
                  the datapath against baselines measured in the same run (needs
                  root): `packet` the per-packet cost in BPF_PROG_TEST_RUN;
                  `throughput` UDP throughput with and without faults vs iptables
                  and nft; `apply` partition apply and revert for 1 to 1M peers,
                  agent vs nft vs iptables-restore; `hyper [--nodes 32,128]
                  [--reps N] [--budget SECONDS]` partitions over 32 to 1,024 light
                  nodes vs iptables/nft per node and one nft bridge table; `report`
                  docs/bench.md again from
                  target/bench/*.json. With no part: all of them, then docs/bench.md
  bench hyper [--nodes 32,128] [--reps N] [--budget SECONDS]
                  sizes, repetitions and the time budget of a slow baseline's
                  repetitions. `bench` runs xtask again as a release build: the
                  datapath it measures in process is optimized, as shipped
  cluster up|down|status|build|test
                  a single-node Kubernetes 1.20 built from Debian's source package
                  (cached in /var/cache/chaos-ebpf/kubernetes), its own etcd,
                  containerd, CNI bridge and kube-proxy; `down` puts the host back and
                  checks it; `build` only builds (cached); `test` runs the cluster
                  test: up, the agent's chart and experiments, the lab workload, down
                  (needs root; docs/kubernetes.md)";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => {
            let no_vm = args.iter().any(|a| a == "--no-vm");
            let filters: Vec<String> = args[1..].iter().filter(|a| *a != "--no-vm").cloned().collect();
            cargo(&["test", "--workspace", "--bins", "--lib"])?;
            // The layer rules of docs/architecture.md, on the resolved dependency graph.
            cargo(&["test", "-p", "chaos-cli", "--test", "layers"])?;
            // The hypothesis checker against real local servers (HTTP, TCP, dnsmasq,
            // commands, Prometheus): no root needed.
            cargo(&["test", "-p", "chaos-engine", "--test", "hypothesis"])?;
            cargo(&["test", "-p", "chaos-engine", "--test", "probe_spans"])?;
            // report.html in headless Chromium (no root; skipped, with its reason, without one).
            cargo(&["test", "-p", "chaos-cli", "--test", "report_html"])?;
            // `lab pki`, the compose stack's certificates: no root needed.
            cargo(&["test", "-p", "chaos-cli", "--test", "lab_pki"])?;
            // The lab's workload (chaos-lab-node) against a real etcd on loopback: no root needed.
            cargo(&["test", "-p", "chaos-lab", "--test", "node"])?;
            // The lab workload's chart (etcd, nodes, Prometheus): its rendering checked.
            cargo(&["test", "-p", "xtask", "--test", "lab_chart"])?;
            // The Helm chart rendered by helm (lint, properties of what it renders, the
            // plain manifests fresh): no root, no cluster; skipped with its reason
            // without helm.
            cargo(&["test", "-p", "xtask", "--test", "helm"])?;
            require_root("the kernel tests")?;
            // `lab up` starts the workload binary found next to chaos-ebpf.
            cargo(&["build", "-p", "chaos-lab", "--bin", "chaos-lab-node"])?;
            // The Kubernetes test cluster's binaries, so that the cluster test runs: 5-7
            // min on a fresh machine, cached after (/var/cache/chaos-ebpf/kubernetes).
            // Without them that test is skipped with its reason.
            if filters.is_empty() || filters.iter().any(|f| "kubernetes_cluster".contains(f.as_str())) {
                if let Err(e) = cluster::build() {
                    eprintln!("xtask: {e:#}: the Kubernetes cluster test will be skipped");
                }
            }
            let mut runs = vec![host_kernel_tests(&filters)?];
            if no_vm {
                eprintln!("xtask: --no-vm: skipping the tests on Debian kernels (cargo xtask vm-test)");
            } else if runs[0].failed() {
                eprintln!("xtask: the kernel tests failed on this kernel: not starting the VM tests");
            } else {
                match vm::run(&filters) {
                    Ok(vm_runs) => runs.extend(vm_runs),
                    Err(e) => {
                        // Still list what the host run showed (its skips above all).
                        let _ = conclude(&runs);
                        return Err(e.context("the VM tests did not run"));
                    }
                }
            }
            conclude(&runs)
        }
        // The benchmarks run the datapath in this process (bench hyper's and bench apply's
        // Instance, bench packet's loader): measured as shipped, optimized. `cargo xtask`
        // builds xtask without optimizations, which made the 1,024-node matrix's compile
        // take 10-17 ms instead of about 1 ms: run again as a release build.
        Some("bench") if cfg!(debug_assertions) => {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(&cargo)
                .args(["run", "--quiet", "--release", "--package", "xtask", "--"])
                .args(&args)
                .status()
                .with_context(|| format!("running {cargo}"))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Some("bench") if args.get(1).map(String::as_str) == Some("hyper") => bench_hyper::run(&args[2..]),
        Some("bench") => bench::run(args.get(1).map(String::as_str)),
        Some("schema") => {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/chaos-ebpf.schema.json");
            std::fs::write(&path, chaos_model::json_schema())?;
            eprintln!("xtask: wrote {}", path.display());
            Ok(())
        }
        Some("crd") => {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(chaos_agent::kubernetes::crd::CRD_PATH);
            std::fs::create_dir_all(path.parent().expect("a directory"))?;
            std::fs::write(&path, chaos_agent::kubernetes::crd::crd_yaml())?;
            eprintln!("xtask: wrote {}", path.display());
            Ok(())
        }
        Some("cluster") if args.get(1).map(String::as_str) == Some("test") => {
            // The cluster test (tests/kernel/kubernetes.rs): up, the agent's chart and
            // experiments, the lab workload and the leader kill, down, the host checked.
            require_root("the cluster test")?;
            cargo(&["build", "-p", "chaos-lab", "--bin", "chaos-lab-node"])?;
            cluster::build()?;
            conclude(&[host_kernel_tests(&["kubernetes_cluster".to_owned()])?])
        }
        Some("cluster") => cluster::run(&args[1..]),
        Some("manifests") => manifests::run(&args[1..]),
        Some("vm-test") => {
            require_root("the VM tests")?;
            conclude(&vm::run(&args[1..])?)
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}
