//! Sender throughput with and without faults, against iptables and nft doing the same on
//! the same veth in the same run: 64-byte UDP datagrams blasted from one namespace to the
//! other for `SECONDS`, received datagrams per second counted. Cases, interleaved over
//! `REPS` repetitions so that drift hits all of them alike:
//!
//! - baseline: nothing in the path;
//! - idle: a rule that every packet meets and none matches (a partition from
//!   198.51.100.0/24, which sends nothing): chaos-ebpf at the tc egress hook, iptables
//!   and nft at netfilter's output hook;
//! - loss 1%: every packet decided, 1% dropped (chaos-ebpf's SipHash of the packet;
//!   iptables `statistic --mode random`; nft `numgen random`).
//!
//! Reported: median, min and max of received datagrams/s, and each median's ratio to the
//! baseline's; chaos-ebpf's own egress program's ns per packet (`run_time_ns / run_cnt`
//! of the program ids the injecting process holds, with kernel.bpf_stats_enabled=1).

use std::{
    fs,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::bench::{blast_for, in_ns, median_and_range, Chaos, NS_A};

const REPS: usize = 5;
const SECONDS: f64 = 1.0;

/// What a case puts in the path; removed when dropped.
enum Setup {
    Nothing,
    Chaos(Chaos),
    Netfilter(&'static str),
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Setup::Netfilter(tool) = self {
            let _ = match *tool {
                "iptables" => in_ns(&["iptables", "-F", "OUTPUT"]),
                _ => in_ns(&["nft", "delete", "table", "inet", "chaos_bench"]),
            };
        }
    }
}

fn nft(rule: &str) -> Result<Setup> {
    let script = format!(
        "table inet chaos_bench {{\n  chain out {{\n    type filter hook output priority 0;\n    {rule}\n  }}\n}}\n"
    );
    let file = std::env::temp_dir().join(format!("chaos-bench-{}.nft", std::process::id()));
    fs::write(&file, script)?;
    let applied = in_ns(&["nft", "-f", file.to_str().unwrap_or_default()]);
    let _ = fs::remove_file(&file);
    applied?;
    Ok(Setup::Netfilter("nft"))
}

fn iptables(rule: &[&str]) -> Result<Setup> {
    let mut args = vec!["iptables", "-A", "OUTPUT"];
    args.extend_from_slice(rule);
    in_ns(&args)?;
    Ok(Setup::Netfilter("iptables"))
}

fn chaos(bin: &str, fault: &[&str]) -> Result<Setup> {
    let target = format!("netns:{NS_A}");
    let mut args = vec!["inject"];
    args.extend_from_slice(fault);
    args.extend(["--target", &target, "--duration", "5m", "--seed", "1", "--direction", "egress", "--no-agent"]);
    Ok(Setup::Chaos(Chaos::start(bin, &args)?))
}

/// (run_time_ns, run_cnt) of the chaos_egress program the process `pid` holds.
fn egress_stats(pid: u32) -> Result<(u64, u64)> {
    let mut ids = Vec::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        let info = fs::read_to_string(fd.path()).unwrap_or_default();
        ids.extend(
            info.lines().filter_map(|l| l.strip_prefix("prog_id:")).filter_map(|v| v.trim().parse::<u64>().ok()),
        );
    }
    for id in ids {
        let out = Command::new("bpftool").args(["prog", "show", "id", &id.to_string(), "--json"]).output()?;
        let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if p["name"] == "chaos_egress" {
            return Ok((p["run_time_ns"].as_u64().unwrap_or(0), p["run_cnt"].as_u64().unwrap_or(0)));
        }
    }
    bail!("process {pid} holds no chaos_egress program")
}

type Make<'a> = Box<dyn Fn() -> Result<Setup> + 'a>;

/// Runs the cases and prints the table; the JSON of target/bench/throughput.json.
pub fn run(bin: &str) -> Result<serde_json::Value> {
    let cases: Vec<(&str, &str, Make)> = vec![
        ("baseline (nothing in the path)", "baseline", Box::new(|| Ok(Setup::Nothing))),
        (
            "chaos-ebpf idle rule",
            "idle",
            Box::new(|| chaos(bin, &["partition", "--mode", "oneway", "--peer", "198.51.100.0/24"])),
        ),
        ("iptables idle rule", "idle", Box::new(|| iptables(&["-d", "198.51.100.0/24", "-j", "DROP"]))),
        ("nft idle rule", "idle", Box::new(|| nft("ip daddr 198.51.100.0/24 drop"))),
        ("chaos-ebpf loss 1%", "loss", Box::new(|| chaos(bin, &["loss", "--probability", "0.01"]))),
        (
            "iptables loss 1%",
            "loss",
            Box::new(|| {
                iptables(&["-p", "udp", "-m", "statistic", "--mode", "random", "--probability", "0.01", "-j", "DROP"])
            }),
        ),
        ("nft loss 1%", "loss", Box::new(|| nft("meta l4proto udp numgen random mod 100 < 1 drop"))),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut program_ns: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let started = Instant::now();
    for rep in 0..REPS {
        for (i, (name, _, make)) in cases.iter().enumerate() {
            let setup = make().with_context(|| format!("setting up {name}"))?;
            let before = match &setup {
                Setup::Chaos(c) => Some(egress_stats(c.pid())?),
                _ => None,
            };
            let pps = blast_for(Duration::from_secs_f64(SECONDS))?;
            if let (Setup::Chaos(c), Some((t0, n0))) = (&setup, before) {
                let (t1, n1) = egress_stats(c.pid())?;
                program_ns[i].push((t1 - t0) as f64 / (n1 - n0).max(1) as f64);
            }
            drop(setup);
            samples[i].push(pps);
        }
        eprintln!("throughput: repetition {} of {REPS} done ({:.0} s)", rep + 1, started.elapsed().as_secs_f64());
    }
    let (base, _, _) = median_and_range(&mut samples[0].clone());
    println!(
        "\n{:<32} {:>14} {:>20} {:>9} {:>14}",
        "UDP 64 B, one sender", "median pkt/s", "range", "vs base", "egress ns/pkt"
    );
    let mut rows = Vec::new();
    for (i, (name, kind, _)) in cases.iter().enumerate() {
        let (median, lo, hi) = median_and_range(&mut samples[i]);
        let ns = (!program_ns[i].is_empty()).then(|| median_and_range(&mut program_ns[i]).0);
        println!(
            "{name:<32} {median:>14.0} {:>20} {:>9.3} {:>14}",
            format!("{lo:.0}-{hi:.0}"),
            median / base,
            ns.map_or("-".to_owned(), |v| format!("{v:.1}"))
        );
        rows.push(serde_json::json!({
            "case": name, "kind": kind, "pps_median": median, "pps_min": lo, "pps_max": hi,
            "vs_baseline": median / base, "egress_ns_per_packet": ns, "samples": samples[i],
        }));
    }
    // chaos-ebpf against each tool doing the same, per kind.
    let median_of = |case: &str| rows.iter().find(|r| r["case"] == case).and_then(|r| r["pps_median"].as_f64());
    let mut ratios = Vec::new();
    for (ours, kind) in [("chaos-ebpf idle rule", "idle"), ("chaos-ebpf loss 1%", "loss")] {
        for tool in ["iptables", "nft"] {
            let theirs = format!("{tool} {}", if kind == "idle" { "idle rule" } else { "loss 1%" });
            if let (Some(a), Some(b)) = (median_of(ours), median_of(&theirs)) {
                println!("{ours} / {theirs}: {:.3}", a / b);
                ratios.push(serde_json::json!({"case": ours, "against": theirs, "ratio": a / b}));
            }
        }
    }
    println!(
        "\n(veth between two namespaces, {REPS} interleaved repetitions of {SECONDS} s; iptables is {})",
        iptables_backend()
    );
    Ok(serde_json::json!({
        "reps": REPS, "seconds": SECONDS, "iptables": iptables_backend(), "cases": rows, "ratios": ratios,
    }))
}

fn iptables_backend() -> String {
    Command::new("iptables")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
