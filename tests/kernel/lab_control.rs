//! Member control of the cluster lab (chaos_lab::control), called as the engine calls it,
//! against a real 3-member lab brought up by the binary: leader found through etcd, leader
//! killed and a new one elected (timed), restart, graceful kill, pause/resume, certificate
//! expiry and its restore, `undo_all` and `lab down` after a pause and a swap. Traffic
//! goes only to the lab's members on its bridge.

use crate::lab_cluster::{
    assert_healthy, assert_no_lab_left, lab_down, lab_up, require_lab_programs, status_json, LabDown, STATE_DIR,
};
use crate::support::*;

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use chaos_lab::control::{undo_all, LabControl};

pub const TESTS: &[Test] = tests![lab_control_leader_kill_restart_pause, lab_control_cert_expiry_and_undo];

/// etcdctl against one member's endpoint only, with the lab's CA and client certificate.
pub fn etcdctl_one(lab: &serde_json::Value, member: &str, args: &[&str]) -> Output {
    let url = lab["members"].as_array().unwrap().iter().find(|m| m["name"] == member).unwrap()["client_url"]
        .as_str()
        .unwrap()
        .to_owned();
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={url}"))
        .arg(format!("--cacert={}", lab["ca"].as_str().unwrap()))
        .arg(format!("--cert={}", lab["client_cert"].as_str().unwrap()))
        .arg(format!("--key={}", lab["client_key"].as_str().unwrap()))
        .args(["--dial-timeout=1s", "--command-timeout=2s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running etcdctl")
}

pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `curl https://<member IP>:<port><path>` with the lab's CA and client certificate: its
/// exit code and output. curl says why TLS failed (etcdctl's gRPC dial only times out).
fn curl(lab: &serde_json::Value, member: &str, port: u16, path: &str) -> (i32, String) {
    let ip = lab["members"].as_array().unwrap().iter().find(|m| m["name"] == member).unwrap()["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--noproxy", "*"])
        .arg("--cacert")
        .arg(lab["ca"].as_str().unwrap())
        .arg("--cert")
        .arg(lab["client_cert"].as_str().unwrap())
        .arg("--key")
        .arg(lab["client_key"].as_str().unwrap())
        .arg(format!("https://{ip}:{port}{path}"))
        .stdin(Stdio::null())
        .output()
        .expect("running curl");
    (out.status.code().unwrap_or(-1), text(&out))
}

/// Waits (at most 10 s) until `lab status` shows every etcd member alive and healthy and one
/// leader; returns the lab's status. (The workloads' rates are windowed: right after a
/// disruption they still show it, so they are not asked here.)
fn wait_members_healthy(nodes: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = status_json();
        let lab = status["lab"].clone();
        let members = lab["members"].as_array().cloned().unwrap_or_default();
        if members.len() == nodes
            && members.iter().all(|m| m["healthy"] == true && m["alive"] == true)
            && members.iter().filter(|m| m["leader"] == true).count() == 1
        {
            return lab;
        }
        assert!(Instant::now() < deadline, "not {nodes} healthy members and one leader within 10 s: {lab:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A member other than `not`.
fn another(control: &LabControl, not: &str) -> String {
    control.members().into_iter().find(|m| m.name != not).unwrap().name
}

/// Waits (at most 10 s) until `member` answers `endpoint health` again.
fn wait_member_healthy(lab: &serde_json::Value, member: &str) -> Duration {
    let start = Instant::now();
    loop {
        let out = etcdctl_one(lab, member, &["endpoint", "health"]);
        if out.status.success() {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{member} not healthy again within 10 s: {}", text(&out));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn lab_control_leader_kill_restart_pause() {
    require_lab_programs();
    let _guard = LabDown;
    lab_up(3, &[]);
    let lab = assert_healthy(3);
    let mut control = LabControl::open(Path::new(STATE_DIR)).expect("open the lab");
    assert_eq!(control.members().len(), 3);

    // The leader, through etcd's API, is the one `lab status` names.
    let leader = control.leader().unwrap().expect("a leader");
    assert_eq!(lab["leader"], leader.as_str(), "{lab:#}");

    // SIGKILL the leader: the two others elect a new one.
    let start = Instant::now();
    let killed = control.kill(&leader, libc::SIGKILL, None).unwrap();
    assert_eq!(killed.signals, vec![libc::SIGKILL]);
    let (new_leader, waited) =
        control.wait_leader(Some(&leader), Duration::from_secs(10)).unwrap().expect("a new leader within 10 s");
    let election = start.elapsed();
    assert_ne!(new_leader, leader);
    println!(
        "REPORT|leader_election_ms={}|kill_ms={}|wait_ms={}",
        election.as_millis(),
        killed.elapsed.as_millis(),
        waited.as_millis()
    );
    let dead = control.members().into_iter().find(|m| m.name == leader).unwrap();
    assert!(!dead.alive, "{dead:?}");
    // A dead member cannot be killed again: the error says what to do.
    let again = control.kill(&leader, libc::SIGKILL, None).unwrap_err().to_string();
    assert!(again.contains("not running") && again.contains("restart"), "{again}");

    // Restart: it rejoins from its data directory; the lab is whole again.
    let restarted = control.restart(&leader).unwrap();
    println!("REPORT|member_restart_ms={}", restarted.elapsed.as_millis());
    let lab = wait_members_healthy(3);
    let pid = lab["members"].as_array().unwrap().iter().find(|m| m["name"] == leader.as_str()).unwrap()["pid"].clone();
    assert_eq!(pid, restarted.pid, "state.json records the new process: {lab:#}");

    // Graceful: SIGTERM is enough for etcd (no SIGKILL within the grace period).
    let follower = another(&control, control.leader().unwrap().as_deref().unwrap_or(""));
    let graceful = control.kill(&follower, libc::SIGTERM, Some(Duration::from_secs(5))).unwrap();
    assert_eq!(graceful.signals, vec![libc::SIGTERM], "{graceful:?}");
    assert!(graceful.elapsed < Duration::from_secs(5), "{graceful:?}");
    println!("REPORT|graceful_kill_ms={}", graceful.elapsed.as_millis());
    let log = std::fs::read_to_string(format!("{STATE_DIR}/{follower}/etcd.log")).unwrap();
    assert!(log.contains("received signal; shutting down"), "etcd's log names the signal");
    control.restart(&follower).unwrap();

    // Pause: the member answers nothing, the two others keep the quorum; resume: healthy.
    let paused = another(&control, control.leader().unwrap().as_deref().unwrap_or(""));
    control.pause(&paused).unwrap();
    assert!(control.members().iter().any(|m| m.name == paused && m.paused && m.alive));
    let out = etcdctl_one(&lab, &paused, &["endpoint", "health"]);
    assert!(!out.status.success(), "a paused member answered: {}", text(&out));
    let others: Vec<String> = control.members().into_iter().map(|m| m.name).filter(|n| *n != paused).collect();
    for other in &others {
        let out = etcdctl_one(&lab, other, &["put", "chaos-control", "written while one member is paused"]);
        assert!(out.status.success(), "{other}: {}", text(&out));
    }
    control.resume(&paused).unwrap();
    let back = wait_member_healthy(&lab, &paused);
    println!("REPORT|resume_to_healthy_ms={}", back.as_millis());
    assert!(!Path::new(&format!("{STATE_DIR}/control.json")).exists(), "nothing left to undo");
    wait_members_healthy(3);

    // Pausing the leader: the two others elect a new one; resumed, the old leader follows.
    let leader = control.leader().unwrap().expect("a leader");
    let start = Instant::now();
    control.pause(&leader).unwrap();
    let (new_leader, _) =
        control.wait_leader(Some(&leader), Duration::from_secs(10)).unwrap().expect("a new leader within 10 s");
    assert_ne!(new_leader, leader);
    println!("REPORT|leader_election_after_pause_ms={}", start.elapsed().as_millis());
    control.resume(&leader).unwrap();
    wait_member_healthy(&lab, &leader);
    wait_members_healthy(3);
    lab_down(3);
}

fn lab_control_cert_expiry_and_undo() {
    require_lab_programs();
    let _guard = LabDown;
    lab_up(3, &[]);
    let lab = assert_healthy(3);
    let mut control = LabControl::open(Path::new(STATE_DIR)).expect("open the lab");
    let member = another(&control, control.leader().unwrap().as_deref().unwrap_or(""));
    let cert = format!("{STATE_DIR}/{member}.pem");
    let original = std::fs::read_to_string(&cert).unwrap();

    // An expired certificate: etcdctl against that member fails TLS, curl names why.
    control.expire_cert(&member, None).unwrap();
    assert_ne!(std::fs::read_to_string(&cert).unwrap(), original);
    assert!(Path::new(&format!("{cert}.orig")).exists(), "the original is kept");
    let out = etcdctl_one(&lab, &member, &["endpoint", "health"]);
    assert!(!out.status.success(), "a member with an expired certificate answered: {}", text(&out));
    // Its peers refuse it, so it never joins and never serves its client port (etcd
    // serves clients once it published itself through raft): TLS on the peer port shows
    // the expired certificate.
    let (code, why) = curl(&lab, &member, 2380, "/version");
    assert!(code == 60 && why.contains("certificate has expired"), "curl: exit {code}: {why}");
    // The two others keep the quorum.
    let other = another(&control, &member);
    assert!(etcdctl_one(&lab, &other, &["put", "k", "v"]).status.success());

    // Restore: the original file, the member healthy again; a second restore does nothing.
    let start = Instant::now();
    control.restore_cert(&member).unwrap();
    println!("REPORT|restore_cert_ms={}", start.elapsed().as_millis());
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), original);
    assert!(!Path::new(&format!("{cert}.orig")).exists());
    control.restore_cert(&member).unwrap();
    assert!(etcdctl_one(&lab, &member, &["endpoint", "health"]).status.success());
    let (code, answer) = curl(&lab, &member, 2379, "/health");
    assert!(code == 0 && answer.contains("\"health\":\"true\""), "curl: exit {code}: {answer}");

    // Expires in 3 s: valid now, refused afterwards (new connections).
    control.expire_cert(&member, Some(Duration::from_secs(3))).unwrap();
    let (code, answer) = curl(&lab, &member, 2379, "/health");
    assert!(code == 0 && answer.contains("health"), "valid for 3 s: curl exit {code}: {answer}");
    std::thread::sleep(Duration::from_millis(3500));
    let (code, why) = curl(&lab, &member, 2379, "/health");
    assert!(code == 60 && why.contains("certificate has expired"), "curl: exit {code}: {why}");
    control.restore_cert(&member).unwrap();

    // What a crashed run leaves (a paused member, a swapped certificate) is undone by
    // undo_all: thawed, original back and loaded.
    let paused = another(&control, &member);
    control.pause(&paused).unwrap();
    control.expire_cert(&member, None).unwrap();
    drop(control);
    let undone = undo_all(Path::new(STATE_DIR)).unwrap();
    assert_eq!(undone.len(), 2, "{undone:?}");
    assert!(undone.iter().any(|l| l.contains(&format!("etcd {paused}")) && l.contains("thawed")), "{undone:?}");
    assert!(undone.iter().any(|l| l.contains(&format!("certificate of {member} restored"))), "{undone:?}");
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), original);
    wait_member_healthy(&lab, &paused);
    wait_members_healthy(3);
    assert!(undo_all(Path::new(STATE_DIR)).unwrap().is_empty(), "nothing left to undo");

    // `chaos-ebpf cleanup` (no run alive) undoes them as well.
    let mut control = LabControl::open(Path::new(STATE_DIR)).unwrap();
    control.pause(&paused).unwrap();
    let (code, out, err) = chaos_run(&["cleanup"]);
    assert!(out.contains(&format!("removed cluster lab: etcd {paused}")) && out.contains("thawed"), "{out}{err}");
    assert_eq!(code, 0, "{out}{err}");
    wait_member_healthy(&lab, &paused);
    assert!(!control.members().iter().any(|m| m.paused));

    // And `lab down` undoes them too, then removes everything.
    control.pause(&paused).unwrap();
    control.expire_cert(&member, None).unwrap();
    let out = lab_down(3);
    assert!(out.contains(&format!("etcd {paused}")) && out.contains("thawed"), "{out}");
    assert!(out.contains(&format!("original certificate of {member} put back")), "{out}");
    assert_no_lab_left();
}
