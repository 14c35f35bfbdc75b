//! Builds the eBPF object (../chaos-ebpf) for bpfel-unknown-none and leaves it in OUT_DIR,
//! where src/instance.rs embeds it with `include_bytes_aligned!`.
//!
//! Two toolchain routes (docs/building.md):
//! - Debian: /usr/bin/rustc from rustc-web with libstd-rust-web-dev-bpf, which ships a
//!   precompiled `core` for bpfel-unknown-none (no build-std). Used when present.
//! - Upstream: a rustup nightly with rust-src, `-Z build-std=core`.
//!
//! `CHAOS_EBPF_OBJECT=/path/to/object` skips the build and embeds that file instead.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const TARGET: &str = "bpfel-unknown-none";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let ebpf_dir = manifest_dir.join("../../chaos-ebpf");
    let common_dir = manifest_dir.join("../../chaos-ebpf-common");
    for path in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join(".cargo/config.toml"),
        common_dir.join("src"),
        common_dir.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-env-changed=CHAOS_EBPF_OBJECT");
    let dest = out_dir.join("chaos-ebpf.o");

    if let Ok(prebuilt) = env::var("CHAOS_EBPF_OBJECT") {
        std::fs::copy(&prebuilt, &dest).unwrap_or_else(|e| panic!("copying CHAOS_EBPF_OBJECT={prebuilt}: {e}"));
        return;
    }

    // One BPF target dir for every host profile, so debug and release share the build.
    let target_dir = workspace_target_dir(&manifest_dir, &out_dir).join("bpf");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&ebpf_dir);
    // The outer build's settings (host rustc, rustflags, features, jobserver) must not
    // leak into the BPF build.
    for (key, _) in env::vars() {
        if (key.starts_with("CARGO") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTDOC")
            || key == "RUSTFLAGS"
        {
            cmd.env_remove(&key);
        }
    }
    let flags = ["-Cdebuginfo=2", "-Clink-arg=--btf", "-Ctarget-cpu=v3"].join("\x1f");
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags)
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", "bpf-linker")
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);

    let debian_rustc = Path::new("/usr/bin/rustc");
    if debian_rustc.exists() && Path::new("/usr/lib/rustlib").join(TARGET).exists() {
        cmd.env("RUSTC", debian_rustc);
    } else {
        // Upstream route: rustup's nightly with rust-src.
        cmd.env("RUSTUP_TOOLCHAIN", "nightly").args(["-Z", "build-std=core"]);
    }

    let status = cmd.status().unwrap_or_else(|e| panic!("running {cargo}: {e}"));
    if !status.success() {
        panic!(
            "building the eBPF object ({}) failed.\n\
             The BPF toolchain is probably missing: run `bash scripts/setup.sh` (installs \
             rustc-web, libstd-rust-web-dev-bpf, llvm-22 and bpf-linker), or set \
             CHAOS_EBPF_OBJECT to a prebuilt object.",
            ebpf_dir.display()
        );
    }
    let built = target_dir.join(TARGET).join("release").join("chaos-ebpf");
    std::fs::copy(&built, &dest).unwrap_or_else(|e| panic!("copying {} to {}: {e}", built.display(), dest.display()));
}

/// `target/` of the workspace: OUT_DIR is `<target>/<profile>/build/<pkg>-<hash>/out`
/// (or `<target>/<triple>/<profile>/...` when cross-compiling), so walk up to the
/// directory that holds `CACHEDIR.TAG`, falling back to `<workspace>/target`.
fn workspace_target_dir(manifest_dir: &Path, out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").exists())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest_dir.join("../../target"))
}
