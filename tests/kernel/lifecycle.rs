//! A run's life as the ledger and the kernel see it: cleanup never touches a live run,
//! a stopped run is live, a dead run's record is collected, a fault that did not run its
//! course is never reported as success, Ctrl-C acts at once at any moment, a closed
//! output pipe does not stop an experiment, a SIGSTOPped run's fault ends with its lease,
//! and SIGKILL reverts at once with TCX (by the lease without it).

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::support::*;

pub const TESTS: &[Test] = tests![
    cleanup_never_touches_live_runs,
    stopped_run_is_live_until_forced,
    lapsed_lease_is_not_success,
    detached_program_is_not_success,
    vanished_namespace_is_not_success,
    removed_cgroup_is_not_success,
    dead_run_is_collected_by_status,
    ctrl_c_acts_within_300ms_at_any_moment,
    closed_output_pipe_does_not_stop_the_experiment,
    lease_expires_under_sigstop,
    sigkill_reverts_immediately,
];

fn partition(target: &str, duration: &str, lease: &str) -> Chaos {
    Chaos::start(&["inject", "partition", "--target", target, "--duration", duration, "--lease", lease])
}

fn cut(pair: &Pair) -> bool {
    pair.ping(&pair.a, "192.0.2.2", 2, Duration::from_millis(200)) == 0
}

/// Runs started while `cleanup` runs again and again (as a user cleaning up after a
/// crash while experiments start) all run their course: cleanup never detaches a live
/// run's programs, even before its record lists them.
fn cleanup_never_touches_live_runs() {
    let pair = Pair::new("live");
    let target = pair.target();
    let runs: Vec<_> = (0..3)
        .map(|i| {
            let child = Command::new(bin())
                .args(["inject", "loss", "--target", &target, "--probability", "0.1", "--duration", "3s"])
                .args(["--seed", &i.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn chaos-ebpf");
            own_pid(child.id());
            Chaos { child }
        })
        .collect();
    let start = Instant::now();
    let mut cleanups = 0;
    while start.elapsed() < Duration::from_millis(2500) {
        let (code, out, err) = chaos_run(&["cleanup"]);
        assert_eq!(code, 0, "cleanup with live runs: {out}{err}");
        assert!(!out.contains("removed TCX link"), "cleanup detached a live run's link: {out}");
        cleanups += 1;
    }
    println!("{cleanups} cleanups while 3 runs started and ran");
    // Three runs verify their programs at once: under TCG emulation, with the CPU shared,
    // that alone took over 15 s once (the verifier's thread was still in bpf_prog_load).
    let limit = Duration::from_secs(if emulated() { 60 } else { 15 });
    for run in runs {
        let (code, out, err) = run.finish(limit);
        assert_eq!(code, 0, "a run that cleanup left alone completes: {out}{err}");
        assert!(out.contains("completed"), "{out}");
    }
    assert_nothing_left();
}

/// A stopped (SIGSTOP) run is alive: cleanup reports it, exits 0 and advises --force;
/// --force detaches it; the run, resumed, reports that its fault was cut short (exit 1).
fn stopped_run_is_live_until_forced() {
    let pair = Pair::new("stop");
    let target = pair.target();
    let chaos = partition(&target, "5m", "30s");
    assert!(cut(&pair));
    chaos.signal(libc::SIGSTOP);
    let (code, out, err) = chaos_run(&["cleanup"]);
    assert_eq!(code, 0, "a stopped run is not a failure of cleanup: {out}{err}");
    assert!(out.contains("stopped") && out.contains("--force"), "{out}");
    assert!(cut(&pair), "cleanup without --force touched the stopped run");
    let (code, out, err) = chaos_run(&["status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("STOPPED"), "{out}");
    let (code, out, err) = chaos_run(&["cleanup", "--force"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("removed TCX link") || out.contains("removed netlink filter"), "{out}");
    assert!(!cut(&pair), "--force left the fault in place");
    chaos.signal(libc::SIGCONT);
    let (code, out, err) = chaos.finish(Duration::from_secs(10));
    assert_eq!(code, 1, "a fault someone removed did not run its course: {out}{err}");
    assert!(out.contains("FAILED") && out.contains("detached by someone else"), "{out}");
    assert_nothing_left();
}

/// A run stopped for longer than its lease had its faults lapse: it must say so and
/// exit 1 when it resumes, not "completed".
fn lapsed_lease_is_not_success() {
    let pair = Pair::new("lapse");
    let target = pair.target();
    let chaos = Chaos::start(&["inject", "partition", "--target", &target, "--duration", "6s", "--lease", "1s"]);
    chaos.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(2000));
    assert!(!cut(&pair), "the lease did not end the fault of a stopped run");
    chaos.signal(libc::SIGCONT);
    let (code, out, err) = chaos.finish(Duration::from_secs(15));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("leases lapsed"), "{out}");
    assert!(out.contains("in force"), "the report says when the fault was in force: {out}");
    assert_nothing_left();
}

/// Ids of the TCX links that run chaos-ebpf programs.
fn tcx_link_ids() -> Vec<String> {
    chaos_links(&loaded_chaos_programs()).iter().filter_map(|l| l["id"].as_u64()).map(|id| id.to_string()).collect()
}

/// Someone else detaches the run's program: the run ends at its next lease renewal
/// with exit 1 and says what happened.
fn detached_program_is_not_success() {
    let pair = Pair::new("detach");
    let target = pair.target();
    let chaos = partition(&target, "5m", "1s");
    if kernel_has_tcx() {
        let links = tcx_link_ids();
        assert!(!links.is_empty(), "no TCX link found");
        for id in &links {
            must("bpftool", &["link", "detach", "id", id]);
        }
    } else {
        must("ip", &["netns", "exec", &pair.a, "tc", "filter", "del", "dev", "va", "egress"]);
    }
    let (code, out, err) = chaos.finish(Duration::from_secs(5));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("detached by someone else"), "{out}");
    let (code, out, err) = chaos_run(&["cleanup"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_nothing_left();
}

/// The target's namespace is deleted during the fault: exit 1, "gone".
fn vanished_namespace_is_not_success() {
    let pair = Pair::new("vanish");
    let target = pair.target();
    let chaos = partition(&target, "5m", "1s");
    must("ip", &["netns", "del", &pair.a]);
    let (code, out, err) = chaos.finish(Duration::from_secs(5));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("is gone"), "{out}");
    assert_nothing_left();
}

/// A cgroup target removed during the fault (and re-created at the same path, which is
/// a new cgroup): exit 1, the report names it.
fn removed_cgroup_is_not_success() {
    let pair = Pair::new("cgvanish");
    let cgroup = TestCgroup::new("vanish");
    let mut sleeper = cgroup.spawn("ip", &["netns", "exec", &pair.a, "sleep", "30"]);
    std::thread::sleep(Duration::from_millis(200));
    let target = format!("cgroup:{}", cgroup.relative);
    let chaos = Chaos::start(&[
        "inject",
        "blackhole",
        "--target",
        &target,
        "--proto",
        "udp",
        "--ports",
        "9",
        "--duration",
        "5m",
        "--lease",
        "1s",
    ]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    std::thread::sleep(Duration::from_millis(100));
    std::fs::remove_dir(&cgroup.dir).expect("removing the empty test cgroup");
    std::fs::create_dir(&cgroup.dir).expect("re-creating it");
    let (code, out, err) = chaos.finish(Duration::from_secs(5));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("was removed") && out.contains("new target"), "{out}");
    assert_nothing_left();
}

/// A killed run's record: `status` says it is dead and what it left, removes the
/// leftovers and forgets it.
fn dead_run_is_collected_by_status() {
    let pair = Pair::new("dead");
    let target = pair.target();
    let chaos = Chaos::start(&["inject", "loss", "--target", &target, "--probability", "0.5", "--duration", "5m"]);
    let pid = chaos.child.id();
    chaos.signal(libc::SIGKILL);
    chaos.finish(Duration::from_secs(5));
    assert!(std::path::Path::new(&format!("/run/chaos-ebpf/{pid}.json")).exists(), "no record to collect");
    let (code, out, err) = chaos_run(&["status"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("pid {pid}: dead")), "{out}");
    assert!(!out.contains("Gone") && !out.contains("s left"), "{out}");
    assert!(!std::path::Path::new(&format!("/run/chaos-ebpf/{pid}.json")).exists(), "status did not collect it");
    // The device settings the dead run changed are back too.
    assert_eq!(gso_max_segs(&pair.a, "va"), 65535, "gso_max_segs not restored after the dead run");
    let (code, out, _) = chaos_run(&["status"]);
    assert_eq!(code, 0);
    assert!(!out.contains("dead"), "collected twice: {out}");
    assert_nothing_left();
}

/// SIGINT at any moment of a run's start (resolving, loading, attaching, first rule):
/// exit 1 within 300 ms, nothing left. Under qemu's TCG emulation (the VM tests) every
/// instruction is tens of times slower: there the bound is 1.5 s (a SIGINT 20 ms after
/// the start took 439 ms on 6.1, the one at 0 ms 296 ms), and what is checked is the
/// exit code and that nothing is left.
fn ctrl_c_acts_within_300ms_at_any_moment() {
    let bound = if emulated() { Duration::from_millis(1500) } else { Duration::from_millis(300) };
    let pair = Pair::new("sigint");
    let target = pair.target();
    let mut worst = Duration::ZERO;
    // Counted from the moment chaos-ebpf catches SIGINT (its handler shows in SigCgt):
    // before that the process is still being exec'd and has created nothing.
    for delay_ms in [0u64, 20, 50, 100, 150, 200, 300, 500] {
        let child = Command::new(bin())
            .args(["inject", "loss", "--target", &target, "--probability", "0.5", "--duration", "5m"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        own_pid(child.id());
        let pid = child.id();
        let chaos = Chaos { child };
        let caught = Instant::now();
        while !catches_sigint(pid) {
            assert!(caught.elapsed() < Duration::from_secs(5), "chaos-ebpf never installed its SIGINT handler");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        let sent = Instant::now();
        chaos.signal(libc::SIGINT);
        let mut chaos = chaos;
        while chaos.child.try_wait().unwrap().is_none() && sent.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if chaos.child.try_wait().unwrap().is_none() {
            // Where each thread waits, for the failure message.
            let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| {
                    d.flatten()
                        .map(|t| {
                            let wchan = std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
                            let syscall = std::fs::read_to_string(t.path().join("syscall")).unwrap_or_default();
                            format!("{:?}: wchan {wchan} syscall {}", t.file_name(), syscall.trim())
                        })
                        .collect()
                })
                .unwrap_or_default();
            chaos.signal(libc::SIGKILL);
            let (_, out, err) = chaos.finish(Duration::from_secs(5));
            panic!("SIGINT {delay_ms} ms after start: no exit within 10 s; threads {tasks:?}\n{out}{err}");
        }
        let (code, out, err) = chaos.finish(Duration::from_secs(10));
        let took = sent.elapsed();
        worst = worst.max(took);
        println!("SIGINT {delay_ms} ms after start: exit {code} after {took:?}");
        assert_eq!(code, 1, "an interrupted run: {out}{err}");
        assert!(took < bound, "SIGINT {delay_ms} ms after start took {took:?} (bound {bound:?}): {err}");
        assert!(err.lines().all(|l| l.len() < 400), "an error line runs long: {err}");
        assert_nothing_left();
        assert_eq!(gso_max_segs(&pair.a, "va"), 65535, "settings left after SIGINT at {delay_ms} ms");
    }
    println!("REPORT|sigint_worst_ms|{:.1}", worst.as_secs_f64() * 1000.0);
}

/// Whether process `pid` has a handler for SIGINT (bit 2 of SigCgt in its status).
fn catches_sigint(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGINT - 1)) != 0)
}

/// `chaos-ebpf ... | head -1`: stdout and stderr closed under the running experiment.
/// It goes on, reverts, and exits 0 without a panic.
fn closed_output_pipe_does_not_stop_the_experiment() {
    let pair = Pair::new("pipe");
    let target = pair.target();
    let mut child = Command::new(bin())
        .args(["inject", "partition", "--target", &target, "--duration", "3s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    own_pid(child.id());
    // Close both read ends at once, as `| head -1` does after its line.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let record = format!("/run/chaos-ebpf/{}.json", child.id());
    let started = Instant::now();
    while !std::fs::read_to_string(&record).unwrap_or_default().contains("\"rule_id\"") {
        assert!(started.elapsed() < Duration::from_secs(20), "the rule was not installed");
        assert!(child.try_wait().unwrap().is_none(), "chaos-ebpf exited before its fault");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(cut(&pair), "the fault is not in force");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "a closed pipe ended the run with {status:?} (101 is a panic)");
    assert!(!cut(&pair), "the fault outlived the run");
    assert_nothing_left();
}

/// A SIGSTOPped chaos-ebpf stops faulting when its lease runs out; after SIGKILL
/// nothing is left.
fn lease_expires_under_sigstop() {
    require_root();
    let pair = Pair::new("lease");
    let target = pair.target();
    let chaos = Chaos::start(&["inject", "partition", "--target", &target, "--duration", "5m", "--lease", "1s"]);
    assert_eq!(pair.ping(&pair.a, "192.0.2.2", 3, Duration::from_millis(200)), 0);
    chaos.signal(libc::SIGSTOP);
    // Renewed every third of the lease, so at the stop 0.67-1.0 s of it are left: the
    // fault must hold that long (the lease, not the stop, ends it) and no longer.
    let recovered = udp_time_until_passes(&pair.a, &pair.b, ADDR_B, 5998, Duration::from_secs(5))
        .expect("the fault outlived its lease under SIGSTOP");
    println!("SIGSTOP: traffic flowed again after {recovered:?} (lease 1s, 1 ms probe)");
    assert!(recovered >= Duration::from_millis(500), "the fault ended {recovered:?} after the stop, before its lease");
    assert!(recovered <= Duration::from_millis(1500), "took {recovered:?}");
    let status = chaos_run(&["status", "--output", "json"]);
    assert!(status.1.contains("\"stopped\""), "status does not show the hung run: {}", status.1);
    chaos.signal(libc::SIGKILL);
    let (code, _, _) = chaos.finish(Duration::from_secs(5));
    assert_eq!(code, -1, "killed by a signal");
    // The dead run's state file is what `cleanup` removes.
    let (code, out, err) = chaos_run(&["cleanup"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("clean"), "{out}");
    assert_nothing_left();
}

/// SIGKILL reverts at once with TCX (links go with the process). Without TCX (netlink
/// filters outlive the process) the lease ends the fault, and `cleanup` removes the rest.
fn sigkill_reverts_immediately() {
    require_root();
    let pair = Pair::new("kill");
    let target = pair.target();
    let tcx = kernel_has_tcx();
    let lease = if tcx { "30s" } else { "1s" };
    let chaos = Chaos::start(&["inject", "partition", "--target", &target, "--duration", "5m", "--lease", lease]);
    assert_eq!(pair.ping(&pair.a, "192.0.2.2", 3, Duration::from_millis(200)), 0);
    chaos.signal(libc::SIGKILL);
    let recovered = udp_time_until_passes(&pair.a, &pair.b, ADDR_B, 5999, Duration::from_secs(5))
        .expect("traffic did not flow after SIGKILL");
    println!("SIGKILL: traffic flowed again {recovered:?} after the kill (lease {lease}, TCX {tcx}, 1 ms probe)");
    println!("REPORT|sigkill_to_traffic_ms|{:.2}|tcx={tcx}|lease={lease}", recovered.as_secs_f64() * 1000.0);
    let bound = if tcx { Duration::from_secs(1) } else { Duration::from_millis(2500) };
    assert!(recovered < bound, "took {recovered:?}");
    chaos.finish(Duration::from_secs(5));
    let (code, out, err) = chaos_run(&["cleanup"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!pair.qdiscs(&pair.a, "va").contains("clsact"), "a qdisc was left");
    assert_nothing_left();
}
