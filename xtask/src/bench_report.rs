//! docs/bench.md, made from the JSON files the benchmark parts write in target/bench
//! (packet.json, throughput.json, apply.json, hyper.json): each part's table and the
//! issue's goals with the measured figure and PASS or MISS. A part not run is said to be
//! missing, never filled in.

use std::{fmt::Write as _, fs, path::Path, process::Command};

use anyhow::{Context, Result};
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench");
const OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/bench.md");

fn load(name: &str) -> Option<Value> {
    let text = fs::read_to_string(Path::new(DIR).join(format!("{name}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

/// When a part's JSON was written (UTC), so a page made from parts of several runs says so.
fn measured_at(name: &str) -> String {
    let path = Path::new(DIR).join(format!("{name}.json"));
    Command::new("date")
        .args(["-u", "-r"])
        .arg(&path)
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "MISS"
    }
}

fn machine() -> String {
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("Linux {kernel}, {cpus} CPUs")
}

fn packet(md: &mut String, goals: &mut Vec<String>) {
    let _ = writeln!(md, "## Per packet (BPF_PROG_TEST_RUN)\n");
    let Some(p) = load("packet") else {
        let _ = writeln!(md, "Not measured in this run (`cargo xtask bench packet`).\n");
        return;
    };
    let _ = writeln!(md, "Measured {}.\n", measured_at("packet"));
    let floor = f(&p["floor_ns"]);
    let _ = writeln!(
        md,
        "A 64-byte UDP frame through the egress program of an instance the benchmark loads itself, \
         the mean of 200,000 runs per sample, 7 samples; the floor is the smallest classifier \
         (`r0 = -1; exit`) measured in the same run: **{floor:.0} ns**.\n"
    );
    let _ = writeln!(md, "| case | ns (median) | min-max | over the floor | vs 1 rule |\n|---|---:|---:|---:|---:|");
    let cases = p["cases"].as_array().cloned().unwrap_or_default();
    for c in &cases {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0}-{:.0} | {:.0} | {} |",
            c["case"].as_str().unwrap_or("?"),
            f(&c["ns_median"]),
            f(&c["ns_min"]),
            f(&c["ns_max"]),
            f(&c["ns_over_floor"]),
            c["vs_one_rule"].as_f64().map_or("-".to_owned(), |r| format!("{r:.2}"))
        );
    }
    let over = |prefix: &str| -> Vec<f64> {
        cases
            .iter()
            .filter(|c| c["case"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .map(|c| f(&c["ns_over_floor"]))
            .collect()
    };
    for (name, prefix, goal) in [("a partition rule", "partition, ", 100.0), ("a loss rule", "loss", 150.0)] {
        let values = over(prefix);
        if let Some(worst) = values.iter().copied().reduce(f64::max) {
            goals.push(format!(
                "| per packet, {name}: <= {goal:.0} ns over the floor | {worst:.0} ns (worst case) | {} |",
                verdict(worst <= goal)
            ));
        }
        let spread = values.iter().copied().reduce(f64::max).unwrap_or(0.0)
            / values.iter().copied().reduce(f64::min).unwrap_or(1.0).max(1.0);
        if !values.is_empty() {
            goals.push(format!(
                "| per packet, {name}: flat (within 20%) from 1 to 1,000 rules and 1 to 32 experiments | \
                 largest / smallest {spread:.2} | {} |",
                verdict(spread <= 1.2)
            ));
        }
    }
    let _ = writeln!(md);
}

fn throughput(md: &mut String) {
    let _ = writeln!(md, "## Throughput with and without faults\n");
    let Some(t) = load("throughput") else {
        let _ = writeln!(md, "Not measured in this run (`cargo xtask bench throughput`).\n");
        return;
    };
    let _ = writeln!(md, "Measured {}.\n", measured_at("throughput"));
    let _ = writeln!(
        md,
        "64-byte UDP datagrams from one sender over a veth between two namespaces, {} interleaved \
         repetitions of {} s; chaos-ebpf at the tc egress hook, {} and nft at netfilter's output \
         hook. Received datagrams per second; the egress program's ns per packet from the kernel's \
         run-time stats of the program the run loaded.\n",
        t["reps"],
        t["seconds"],
        t["iptables"].as_str().unwrap_or("iptables")
    );
    let _ =
        writeln!(md, "| case | pkt/s (median) | min-max | vs baseline | egress ns/pkt |\n|---|---:|---:|---:|---:|");
    for c in t["cases"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0}-{:.0} | {:.3} | {} |",
            c["case"].as_str().unwrap_or("?"),
            f(&c["pps_median"]),
            f(&c["pps_min"]),
            f(&c["pps_max"]),
            f(&c["vs_baseline"]),
            c["egress_ns_per_packet"].as_f64().map_or("-".to_owned(), |v| format!("{v:.0}"))
        );
    }
    let _ = writeln!(md, "\n| chaos-ebpf | against | ratio of medians |\n|---|---|---:|");
    for r in t["ratios"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {} | {:.3} |",
            r["case"].as_str().unwrap_or("?"),
            r["against"].as_str().unwrap_or("?"),
            f(&r["ratio"])
        );
    }
    let _ = writeln!(md);
}

fn apply(md: &mut String, goals: &mut Vec<String>) {
    let _ = writeln!(md, "## Partition apply and revert\n");
    let Some(a) = load("apply") else {
        let _ = writeln!(md, "Not measured in this run (`cargo xtask bench apply`).\n");
        return;
    };
    let _ = writeln!(md, "Measured {}.\n", measured_at("apply"));
    let _ = writeln!(
        md,
        "{} ({} repetitions per size). The agent's times are the client's: an HTTP request to \
         the resident agent until its answer; `Instance` is the datapath called in process. \
         {}.\n",
        a["what"].as_str().unwrap_or(""),
        a["reps"],
        a["iptables"].as_str().unwrap_or("iptables")
    );
    let cell = |v: &Value| match v["median_ms"].as_f64() {
        Some(m) => format!("{m:.2} ({:.2}-{:.2})", f(&v["min_ms"]), f(&v["max_ms"])),
        None => v["not_measured"].as_str().map_or("-".to_owned(), |w| format!("not measured: {w}")),
    };
    let _ = writeln!(
        md,
        "| peers | agent apply ms | Instance apply ms | nft set apply ms | iptables-restore apply ms | agent / nft | \
         agent / iptables |\n|---:|---:|---:|---:|---:|---:|---:|"
    );
    for size in a["sizes"].as_array().into_iter().flatten() {
        let t = &size["tools"];
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.3} | {:.3} |",
            size["n"],
            cell(&t["agent"]["apply"]),
            cell(&t["instance"]["apply"]),
            cell(&t["nft"]["apply"]),
            cell(&t["iptables"]["apply"]),
            f(&size["ratios"]["apply_agent_over_nft"]),
            f(&size["ratios"]["apply_agent_over_iptables"])
        );
    }
    let _ = writeln!(
        md,
        "\n| peers | agent revert ms | nft revert ms | iptables revert ms | agent / nft |\n|---:|---:|---:|---:|---:|"
    );
    for size in a["sizes"].as_array().into_iter().flatten() {
        let t = &size["tools"];
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.3} |",
            size["n"],
            cell(&t["agent"]["revert"]),
            cell(&t["nft"]["revert"]),
            cell(&t["iptables"]["revert"]),
            f(&size["ratios"]["revert_agent_over_nft"])
        );
    }
    let _ = writeln!(
        md,
        "\nTraffic back after the revert (a datagram every {} ms through the cut; from the revert \
         request to the first datagram that arrives; measured before the sizes above, on a settled system):\n\n| tool | peers | p50 ms | p99 ms | max ms | \
         repetitions |\n|---|---:|---:|---:|---:|---:|",
        a["traffic_back"]["send_every_ms"]
    );
    for r in a["traffic_back"]["results"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {} |",
            r["tool"].as_str().unwrap_or("?"),
            r["n"],
            f(&r["p50_ms"]),
            f(&r["p99_ms"]),
            f(&r["max_ms"]),
            r["reps"]
        );
    }
    let _ = writeln!(md);
    goal_rows(&a, goals);
}

/// Goal rows of a part's JSON: objects with `goal`, `pass`, the figure as `measured` (or
/// `figure`), and `target` when the goal's text does not hold it.
fn goal_rows(v: &Value, goals: &mut Vec<String>) {
    for g in v["goals"].as_array().into_iter().flatten() {
        let text = g["goal"].as_str().unwrap_or("?");
        let goal = match g["target"].as_str() {
            Some(target) if !text.contains(target) => format!("{text}: {target}"),
            _ => text.to_owned(),
        };
        goals.push(format!(
            "| {goal} | {} | {} |",
            g["measured"].as_str().or(g["figure"].as_str()).unwrap_or("?"),
            verdict(g["pass"].as_bool().unwrap_or(false))
        ));
    }
}

/// A part written by another module: its own markdown (`markdown`) and goal rows (`goals`:
/// objects with goal, target, measured, pass).
fn part(md: &mut String, goals: &mut Vec<String>, name: &str, title: &str, command: &str) {
    let _ = writeln!(md, "## {title}\n");
    let Some(v) = load(name) else {
        let _ = writeln!(md, "Not measured in this run (`{command}`).\n");
        return;
    };
    let _ = writeln!(md, "Measured {}.\n", measured_at(name));
    match v["markdown"].as_str() {
        Some(text) => {
            let _ = writeln!(md, "{}\n", text.trim_end());
        }
        None => {
            let _ = writeln!(md, "```json\n{}\n```\n", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
    }
    goal_rows(&v, goals);
}

/// Writes docs/bench.md from what target/bench holds.
pub fn write() -> Result<()> {
    let mut md = String::new();
    let mut goals = Vec::new();
    let _ = writeln!(
        md,
        "# Benchmarks\n\nWritten by `cargo xtask bench` ({}). Each figure is the median of its \
         repetitions with min-max; every ratio compares cases measured in the same run (each \
         part says when it ran; `cargo xtask bench PART` reruns one). target/bench/*.json holds \
         every sample.\n",
        machine()
    );
    let mut body = String::new();
    packet(&mut body, &mut goals);
    throughput(&mut body);
    apply(&mut body, &mut goals);
    part(&mut body, &mut goals, "hyper", "Hyperscale partitions", "cargo xtask bench hyper");
    let _ = writeln!(md, "## Goals\n\n| goal | measured | |\n|---|---|---|");
    for g in &goals {
        let _ = writeln!(md, "{g}");
    }
    let _ = writeln!(md, "\n{body}");
    fs::write(OUT, md).with_context(|| format!("writing {OUT}"))?;
    println!("\nwrote docs/bench.md");
    Ok(())
}
