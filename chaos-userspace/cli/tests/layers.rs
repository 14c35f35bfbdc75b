//! The layers of ../../docs/architecture.md, checked on the dependency graph Cargo
//! resolves for each crate on its own (`cargo tree -p CRATE -e normal`: features as that
//! crate's build unifies them, so the datapath turning on chaos-ebpf-common's aya impls
//! does not count against the model): a crate may not reach, directly or through any
//! normal dependency, a crate above it or a library its layer must stay free of. Cargo
//! already refuses an import of a crate that is not a dependency; this test refuses the
//! dependency.

use std::{collections::BTreeSet, process::Command};

/// Crate -> what it must never reach.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "chaos-ebpf-common",
        &[
            "aya-obj",
            "chaos-datapath",
            "chaos-model",
            "chaos-engine",
            "chaos-lab",
            "chaos-agent",
            "chaos-cli",
            "tokio",
            "clap",
        ],
    ),
    (
        "chaos-datapath",
        &[
            "chaos-model",
            "chaos-engine",
            "chaos-lab",
            "chaos-agent",
            "chaos-cli",
            "clap",
            "tokio",
            "serde_yaml",
            "bollard",
            "kube",
        ],
    ),
    // clap only with the model's `clap` feature, which the CLI turns on to derive `inject`.
    (
        "chaos-model",
        &["aya", "aya-obj", "chaos-datapath", "chaos-engine", "chaos-lab", "chaos-agent", "chaos-cli", "tokio", "clap"],
    ),
    ("chaos-engine", &["chaos-lab", "chaos-agent", "chaos-cli", "clap", "kube"]),
    ("chaos-lab", &["chaos-agent", "chaos-cli", "clap"]),
    // The agent may import the datapath, the model and the engine; never the lab or the CLI.
    ("chaos-agent", &["chaos-lab", "chaos-cli", "clap"]),
];

#[test]
fn no_crate_reaches_a_layer_above_it() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    let mut violations = Vec::new();
    for (krate, forbidden) in FORBIDDEN {
        let out = Command::new(&cargo)
            .args(["tree", "--manifest-path", manifest, "-p", krate, "-e", "normal", "--prefix", "none"])
            .args(["--format", "{p}", "--offline"])
            .output()
            .expect("running cargo tree");
        assert!(out.status.success(), "cargo tree -p {krate}: {}", String::from_utf8_lossy(&out.stderr));
        let reached: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        assert!(reached.contains(*krate), "cargo tree -p {krate} did not list the crate itself");
        for bad in *forbidden {
            if reached.contains(*bad) {
                violations
                    .push(format!("{krate} reaches {bad} (`cargo tree -p {krate} -e normal -i {bad}` shows how)"));
            }
        }
    }
    assert!(violations.is_empty(), "forbidden dependency edges:\n{}", violations.join("\n"));
}
