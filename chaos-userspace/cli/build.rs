//! The version meta.json records besides the crate's: `git describe` of the checkout the
//! binary is built from (CHAOS_EBPF_GIT_DESCRIBE; empty outside a git checkout).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok().filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    // Again when the checked-out commit or the index changes (a commit changes both).
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/index");
    }
    let describe = git(&["describe", "--always", "--dirty", "--tags"]).unwrap_or_default();
    println!("cargo:rustc-env=CHAOS_EBPF_GIT_DESCRIBE={describe}");
}
