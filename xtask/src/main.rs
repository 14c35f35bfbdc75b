//! Project tasks.
//!
//! - `cargo xtask test`: unit tests, then the privileged kernel tests (one at a time:
//!   they assert on machine-wide BPF state).
//! - `cargo xtask bench`: the datapath's cost, as ratios against a baseline measured in
//!   the same run (bench.rs).

mod bench;
mod vm;

use std::process::Command;

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
  bench           per-packet cost and throughput of the datapath against a baseline
                  without it, measured in the same run (needs root)";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => {
            let no_vm = args.iter().any(|a| a == "--no-vm");
            let filters: Vec<String> = args[1..].iter().filter(|a| *a != "--no-vm").cloned().collect();
            cargo(&["test", "--workspace", "--bins", "--lib"])?;
            require_root("the kernel tests")?;
            let mut kernel = vec!["test", "-p", "chaos-userspace", "--test", "kernel", "--", "--test-threads=1"];
            kernel.extend(filters.iter().map(String::as_str));
            cargo(&kernel)?;
            if no_vm {
                eprintln!("xtask: --no-vm: skipping the tests on Debian kernels (cargo xtask vm-test)");
                return Ok(());
            }
            vm::run(&filters)
        }
        Some("bench") => bench::run(),
        Some("vm-test") => {
            require_root("the VM tests")?;
            vm::run(&args[1..])
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}
