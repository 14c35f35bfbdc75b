//! Project tasks: `cargo xtask test` runs every test (unit tests, then the privileged
//! kernel tests, one at a time because they assert on machine-wide BPF state).

use std::process::Command;

use anyhow::{bail, Context, Result};

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo).args(args).status().with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => {
            cargo(&["test", "--workspace", "--bins", "--lib"])?;
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc_geteuid() } != 0 {
                bail!("the kernel tests need root (they create network namespaces and load BPF programs): run `sudo cargo xtask test`");
            }
            let mut kernel = vec!["test", "-p", "chaos-userspace", "--test", "kernel", "--", "--test-threads=1"];
            kernel.extend(args[1..].iter().map(String::as_str));
            cargo(&kernel)
        }
        _ => {
            eprintln!("usage: cargo xtask test [TEST-FILTER]\n\n  test   unit tests, then the privileged kernel tests (needs root)");
            std::process::exit(2);
        }
    }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
