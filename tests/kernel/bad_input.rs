//! Bad input, tried as a new user would: every case is exit 2 with a message that names
//! the problem and the fix (or a tip, or the usage), and nothing left behind; malformed
//! scenarios point at their file, line and column, and `plan` works without root. The
//! `input_*` tests also hold every line to 300 characters and every refusal to a time
//! and memory bound (no hang, no runaway CPU or memory), and a dry run refuses what a
//! run refuses.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::support::*;

pub const TESTS: &[Test] = tests![
    input_scenario_files_are_bounded,
    input_values_and_limits_are_checked_up_front,
    input_targets_are_checked_before_anything_changes,
    input_missing_privileges_are_named,
    input_root_in_a_user_namespace_is_not_privileged,
    bad_input_exits_2_and_changes_nothing,
];

/// A scratch directory for scenario files, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("chaos-input-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs chaos-ebpf (as `uid` if given) and asserts exit 2 within `limit`, a message
/// containing `expect` and a fix, no line longer than 300 characters, nothing left.
fn refused_as(args: &[&str], uid: Option<u32>, expect: &str, limit: Duration) -> String {
    let start = Instant::now();
    let (code, out, err) = chaos_run_as(args, uid);
    let took = start.elapsed();
    let shown: Vec<String> = args.iter().map(|a| a.chars().take(60).collect()).collect();
    assert_eq!(code, 2, "{shown:?} gave exit {code}: {}{}", &out[..out.len().min(500)], &err[..err.len().min(500)]);
    assert!(took < limit, "{shown:?} took {took:?}");
    assert!(err.contains(expect), "{shown:?}: message lacks '{expect}': {err}");
    assert!(err.contains("fix"), "{shown:?}: no fix offered: {err}");
    for line in out.lines().chain(err.lines()) {
        assert!(line.len() <= 300, "{shown:?}: a line of {} characters: {}...", line.len(), &line[..200]);
    }
    assert_nothing_left();
    err
}

fn refused(args: &[&str], expect: &str) -> String {
    refused_as(args, None, expect, Duration::from_secs(5))
}

/// The largest resident set of any child waited for so far, in KiB.
fn children_max_rss_kib() -> i64 {
    // SAFETY: getrusage writes into the zeroed struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    usage.ru_maxrss
}

/// Scenario files that cost without bound before: a FIFO (blocked forever), /dev/zero
/// (read without end), a directory, a file over 1 MiB, a YAML alias bomb (over 4 GB of
/// memory), 400 KB of nested brackets (82 s of CPU), custom tags. Each is refused in
/// under a second by validate, plan, run --dry-run and run.
pub fn input_scenario_files_are_bounded() {
    require_root();
    let scratch = Scratch::new("files");
    let fifo = scratch.0.join("fifo.yaml");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let big =
        scratch.write("big.yaml", &format!("# {}\nsteps: [{{fault: none, duration: 1s}}]\n", "x".repeat(1 << 20)));
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        bomb += &format!("a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 10].join(", "));
    }
    bomb += "steps: [{fault: none, duration: 1s}]\n";
    let bomb = scratch.write("bomb.yaml", &bomb);
    let nested = scratch.write("nested.yaml", &format!("steps: {}{}\n", "[".repeat(200_000), "]".repeat(200_000)));
    let tag = scratch.write("tag.yaml", "steps:\n  - fault: !foo loss\n    target: netns:x\n    duration: 1s\n");
    let cases: [(&str, &str); 7] = [
        (fifo.to_str().unwrap(), "FIFO"),
        ("/dev/zero", "device"),
        (scratch.0.to_str().unwrap(), "directory"),
        (&big, "at most 1048576"),
        (&bomb, "aliases"),
        (&nested, "nests deeper than 64"),
        (&tag, "tag '!foo'"),
    ];
    for (file, expect) in cases {
        for command in [&["validate", file][..], &["plan", file], &["run", "--dry-run", file], &["run", file]] {
            refused_as(command, None, expect, Duration::from_secs(1));
        }
    }
    let rss = children_max_rss_kib();
    println!("REPORT|input_files|max_child_rss_kib={rss}");
    assert!(rss < 256 * 1024, "a child used {rss} KiB");
}

/// Values out of range on the command line and in files: durations (which panicked or
/// overflowed), their sum, protected ranges, peers. All refused up front, also by a
/// dry run.
pub fn input_values_and_limits_are_checked_up_front() {
    require_root();
    let pair = Pair::new("inval");
    let target = pair.target();
    let loss = ["inject", "loss", "--target", &target, "--probability", "0.1"];
    for (extra, expect) in [
        (&["--duration", "1e20"][..], "maximum of 7 days"),
        (&["--duration", "1e19"], "maximum of 7 days"),
        (&["--duration", "8d"], "maximum of 7 days"),
        (&["--duration", "1s", "--lease", "1e20"], "maximum of 7 days"),
        (&["--duration", "1s", "--lease", "10m"], "300ms..5m"),
    ] {
        for dry in [false, true] {
            let mut args = loss.to_vec();
            args.extend(extra);
            if dry {
                args.push("--dry-run");
            }
            refused(&args, expect);
        }
    }
    // 7 more protected ranges make 9 with the defaults; the map holds 8.
    let protects: Vec<String> = (1..=7).map(|p| format!("tcp:{p}")).collect();
    let mut args = loss.to_vec();
    args.extend(["--duration", "1s"]);
    for p in &protects {
        args.extend(["--protect", p.as_str()]);
    }
    refused(&args, "9 protected port ranges");
    args.push("--dry-run");
    refused(&args, "9 protected port ranges");
    let scratch = Scratch::new("values");
    let sum = scratch.write("sum.yaml", &format!("apiVersion: chaos-ebpf/v1\nsteps:\n{}", "  - {fault: none, duration: 100h}\n".repeat(3)));
    // Nine faults without peers on one target at once: one more than can act on the
    // same packets.
    let stacked_file = scratch.write(
        "stacked.yaml",
        &format!(
            "apiVersion: chaos-ebpf/v1\nsteps:\n  - {{name: s0, fault: loss, target: {target}, probability: 0.1, duration: 1s}}\n{}",
            (1..9)
                .map(|i| format!("  - {{name: s{i}, with: s0, fault: loss, target: {target}, probability: 0.1, duration: 1s}}\n"))
                .collect::<String>()
        ),
    );
    let protect_file = scratch.write(
        "protect.yaml",
        &format!("apiVersion: chaos-ebpf/v1\nprotect: [{}]\nsteps: [{{fault: none, duration: 1s}}]\n", protects.join(", ")),
    );
    for (file, expect) in [
        (&sum, "sum.yaml:4:"),
        (&stacked_file, "stacked.yaml:11:"),
        (&protect_file, "9 protected"),
    ] {
        refused(&["validate", file], expect);
        refused(&["run", "--dry-run", file], expect);
        refused(&["run", file], expect);
    }
    assert!(!pair.qdiscs(&pair.a, "va").contains("clsact"));
}

/// Two namespaces, `a` with `count` veths whose far ends are all in `b`; deleted on drop.
struct FarEnds {
    a: String,
    b: String,
}

impl FarEnds {
    fn new(count: u32) -> FarEnds {
        let far = FarEnds { a: "cet-far-a".into(), b: "cet-far-b".into() };
        for ns in [&far.a, &far.b] {
            let _ = sh("ip", &["netns", "del", ns]);
            must("ip", &["netns", "add", ns]);
        }
        for i in 0..count {
            must(
                "ip",
                &[
                    "-n",
                    &far.a,
                    "link",
                    "add",
                    &format!("fa{i}"),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &format!("fb{i}"),
                    "netns",
                    &far.b,
                ],
            );
        }
        far
    }
}

impl Drop for FarEnds {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = sh("ip", &["netns", "del", ns]);
        }
    }
}

/// Targets that silently did nothing or failed late: a cgroup path with `..` (escaped
/// the cgroup root, exit 0), a netns path that is not a namespace (exit 1), an empty
/// cgroup (resolved to chaos-ebpf's own namespace), a missing namespace in a dry run, a
/// step that needs more than 32 rules in one namespace (hit mid-run), delay without
/// sch_fq in a dry run.
pub fn input_targets_are_checked_before_anything_changes() {
    require_root();
    let loss = ["--probability", "0.1", "--duration", "1s"];
    let inject = |target: &str, dry: bool| {
        let mut args = vec!["inject", "loss", "--target", target];
        args.extend(loss);
        if dry {
            args.push("--dry-run");
        }
        args.into_iter().map(str::to_owned).collect::<Vec<String>>()
    };
    let empty = TestCgroup::new("input-empty");
    let empty_target = format!("cgroup:{}", empty.relative);
    // A FIFO as a namespace path blocked the open forever.
    let scratch = Scratch::new("targets");
    let fifo = scratch.0.join("ns-fifo");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let fifo_target = format!("netns:{}", fifo.display());
    // A regular file such as /etc/hostname (which the VMs lack): exit 1 at setns before.
    let plain_target = format!("netns:{}", scratch.write("hostname", "host\n"));
    for (target, expect) in [
        ("cgroup:../..", "contains '..'"),
        ("cgroup:/sys/fs/cgroup/../../etc", "contains '..'"),
        (plain_target.as_str(), "is not a network namespace"),
        (fifo_target.as_str(), "is not a network namespace"),
        ("netns:/dev/zero", "is not a network namespace"),
        (empty_target.as_str(), "has no processes"),
        ("netns:cet-input-missing", "cet-input-missing"),
        ("iface:0123456789abcdef", "not an interface name"),
    ] {
        for dry in [false, true] {
            let args = inject(target, dry);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            refused(&args, expect);
        }
    }
    drop(empty);

    // 33 far ends in one namespace: an ingress delay puts 33 rules there, one per far
    // end's veth. Each is found by its own interface, so none stacks on another: the
    // dry run (which counts per namespace and compiles the lookup maps) accepts what
    // the 32 slots of earlier versions refused.
    let far = FarEnds::new(33);
    let target = format!("netns:{}", far.a);
    let args =
        ["inject", "delay", "--target", &target, "--delay", "10ms", "--direction", "ingress", "--duration", "1s", "--dry-run"];
    let (code, out, err) = chaos_run(&args);
    assert!(code == 0 || err.contains("sch_fq"), "exit {code}: {out}{err}");
    assert!(!err.contains("rules in network namespace"), "{err}");
    drop(far);

    // Delay without sch_fq: a dry run says so, as the run does.
    let pair = Pair::new("infq");
    let has_fq =
        sh("ip", &["netns", "exec", &pair.a, "tc", "qdisc", "replace", "dev", "va", "root", "fq"]).status.success();
    if has_fq {
        must("ip", &["netns", "exec", &pair.a, "tc", "qdisc", "del", "dev", "va", "root"]);
        let target = pair.target();
        let (code, _, err) =
            chaos_run(&["inject", "delay", "--target", &target, "--delay", "10ms", "--duration", "1s", "--dry-run"]);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("resolves to"), "{err}");
    } else {
        let before = pair.qdiscs(&pair.a, "va");
        let target = pair.target();
        refused(
            &["inject", "delay", "--target", &target, "--delay", "10ms", "--duration", "1s", "--dry-run"],
            "no sch_fq",
        );
        assert_eq!(pair.qdiscs(&pair.a, "va"), before);
    }
}

/// Without capabilities, and as euid 0 in a user namespace: running faults, status and
/// cleanup are exit 2 naming what is missing (cleanup used to say "clean"); a dry run
/// does what it can, says what it could not, and is exit 0.
pub fn input_missing_privileges_are_named() {
    require_root();
    let pair = Pair::new("inpriv");
    let target = pair.target();
    let run = ["inject", "loss", "--target", &target, "--probability", "0.1", "--duration", "1s"];
    let nobody = Some(65534);
    let err = refused_as(&run, nobody, "CAP_SYS_ADMIN, CAP_NET_ADMIN", Duration::from_secs(5));
    assert!(err.contains("needs root"), "{err}");
    for command in [&["status"][..], &["cleanup"], &["cleanup", "--all"]] {
        let err = refused_as(command, nobody, "missing effective capabilities", Duration::from_secs(5));
        assert!(!err.contains("clean\n") && !err.contains("nothing left"), "{err}");
    }
    let mut dry = run.to_vec();
    dry.push("--dry-run");
    let (code, out, err) = chaos_run_as(&dry, nobody);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("loss_threshold"), "{out}");
    assert!(err.contains("dry run without privileges") && err.contains("not checked"), "{err}");
    // Unprivileged checks still apply: a missing namespace is refused.
    refused_as(
        &[
            "inject",
            "loss",
            "--target",
            "netns:cet-input-none",
            "--probability",
            "0.1",
            "--duration",
            "1s",
            "--dry-run",
        ],
        nobody,
        "cet-input-none",
        Duration::from_secs(5),
    );

    assert!(!pair.qdiscs(&pair.a, "va").contains("clsact"));
}

/// euid 0 in a user namespace (`unshare -U -r`) holds every capability there and none
/// that the BPF and TC checks count: running faults, status and cleanup are exit 2
/// naming the user namespace, not exit 1 half-way.
pub fn input_root_in_a_user_namespace_is_not_privileged() {
    require_root();
    let pair = Pair::new("inuserns");
    let target = pair.target();
    let run = ["inject", "loss", "--target", &target, "--probability", "0.1", "--duration", "1s"];
    // euid 0 in a user namespace holds every capability there, none that counts.
    let probe = Command::new("unshare").args(["-U", "-r", "true"]).stderr(Stdio::null()).status();
    if !probe.is_ok_and(|s| s.success()) {
        skip("this kernel does not allow user namespaces (`unshare -U -r true` failed)");
    }
    for command in [vec!["cleanup"], vec!["status"], run.to_vec()] {
        let start = Instant::now();
        let out = Command::new("unshare").args(["-U", "-r", bin()]).args(&command).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {err}");
        assert!(err.contains("user namespace") && err.contains("fix"), "{command:?}: {err}");
        assert!(err.lines().all(|l| l.len() <= 300), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_nothing_left();
    }
    assert!(!pair.qdiscs(&pair.a, "va").contains("clsact"));
}

fn assert_usage_error(args: &[&str], expect: &str) {
    let (code, out, err) = chaos_run(args);
    assert_eq!(code, 2, "{args:?} gave exit {code}: {out}{err}");
    assert!(err.contains(expect), "{args:?}: message lacks '{expect}': {err}");
    assert!(err.contains("fix") || err.contains("tip") || err.contains("Usage"), "{args:?}: no fix offered: {err}");
    assert_nothing_left();
}

fn bad_input_exits_2_and_changes_nothing() {
    require_root();
    let dir = std::env::temp_dir().join(format!("chaos-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let malformed = write("malformed.yaml", "steps: [\n  - fault: loss\n");
    assert_usage_error(&["run", &malformed], "malformed.yaml:");
    let unknown = write(
        "unknown.yaml",
        "apiVersion: chaos-ebpf/v1\nsteps:\n  - fault: loss\n    target: netns:x\n    probability: 0.1\n    duration: 1s\n    colour: red\n",
    );
    assert_usage_error(&["validate", &unknown], "unknown.yaml:7:");
    assert_usage_error(&["run", &unknown], "unknown field `colour`");
    let range =
        write("range.yaml", "apiVersion: chaos-ebpf/v1\nsteps:\n  - fault: loss\n    target: netns:x\n    probability: 1.3\n    duration: 1s\n");
    assert_usage_error(&["run", &range], "range.yaml:5:18");
    // Command lines: (target, extra arguments, what the message must name).
    let loss = ["loss", "--probability", "0.1", "--duration", "1s"];
    for (target, args, expect) in [
        ("netns:x", &["loss", "--probability", "1.3", "--duration", "1s"][..], "outside 0..1"),
        ("netns:no-such-ns", &loss[..], "no-such-ns"),
        ("iface:no-such-if0", &loss[..], "no-such-if0"),
        ("pid:999999999", &loss[..], "999999999"),
        ("veth0", &loss[..], "has no kind"),
        ("netns:x", &["partition", "--mode", "oneway", "--duration", "1s"][..], "direction"),
        ("netns:x", &["loss", "--probability", "0.1", "--duration", "soon"][..], "not a duration"),
        ("cgroup:x", &["partition", "--duration", "1s"][..], "egress only"),
        ("netns:x", &["delay", "--delay", "10ms", "--direction", "both", "--duration", "1s"][..], "one direction"),
        ("netns:x", &["rate", "--rate", "10mb", "--duration", "1s"][..], "not a rate"),
    ] {
        let mut full = vec!["inject", args[0], "--target", target];
        full.extend(&args[1..]);
        assert_usage_error(&full, expect);
    }
    let unknown_target = write(
        "target.yaml",
        "apiVersion: chaos-ebpf/v1\ntargets:\n  a: netns:x\nsteps:\n  - fault: loss\n    target: b\n    probability: 0.1\n    duration: 1s\n",
    );
    assert_usage_error(&["validate", &unknown_target], "target.yaml:6:13: unknown target 'b'");
    // Not root: exit 2 before anything is touched; validate and plan need no root.
    let pair = Pair::new("bad");
    let target = pair.target();
    let (code, _, err) =
        chaos_run_as(&["inject", "loss", "--target", &target, "--probability", "0.1", "--duration", "1s"], Some(65534));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("needs root") && err.contains("fix"), "{err}");
    let good = write(
        "good.yaml",
        "apiVersion: chaos-ebpf/v1\nseed: 1\nsteps:\n  - fault: loss\n    target: netns:x\n    probability: 0.1\n    duration: 1s\n",
    );
    let (code, out, err) = chaos_run_as(&["plan", &good], Some(65534));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("loss_threshold=0x199999999999"), "{out}");
    assert!(!pair.qdiscs(&pair.a, "va").contains("clsact"));
    assert_nothing_left();
    let _ = std::fs::remove_dir_all(&dir);
}
