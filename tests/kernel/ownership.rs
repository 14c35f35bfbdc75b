//! chaos-ebpf never breaks what it does not own: an fq someone else configured is used
//! only when its limits hold delayed packets (and never deleted), runs share the fq
//! chaos-ebpf installed and the last one out restores the original qdisc, a multiqueue
//! `mq` keeps its layout, and ingress delay refuses devices that are not veths (IFLA_LINK
//! of a macvlan names its parent, which would be delayed instead).

use crate::support::*;

pub const TESTS: &[Test] = tests![
    ingress_delay_refuses_a_macvlan,
    foreign_fq_with_small_limits_is_refused,
    foreign_fq_is_used_and_kept,
    runs_share_the_fq_and_the_last_restores,
    mq_keeps_its_layout_with_fq_under_each_queue,
    a_full_hook_is_refused_before_anything_changes,
];

fn qdisc_lines(pair: &Pair) -> Vec<String> {
    // Without statistics: kinds, handles, parents and options only.
    let out = sh("ip", &["netns", "exec", &pair.a, "tc", "qdisc", "show", "dev", "va"]);
    // The clsact qdisc of the netlink attach path (Linux < 6.6) is not a root qdisc.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("clsact"))
        .map(|l| {
            // The reference count changes with the attach path; it is not configuration.
            let words: Vec<&str> = l.split_whitespace().collect();
            let refcnt = words.iter().position(|w| *w == "refcnt");
            words
                .iter()
                .enumerate()
                .filter(|(i, _)| refcnt.is_none_or(|r| *i != r && *i != r + 1))
                .map(|(_, w)| *w)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// A namespace whose only device is a macvlan whose parent (the veth vb) lives in
/// another namespace: ingress delay there must be refused, not land on the parent.
fn ingress_delay_refuses_a_macvlan() {
    let pair = Pair::new("mv");
    must("ip", &["-n", &pair.b, "link", "add", "mv0", "link", "vb", "type", "macvlan"]);
    let ns = "cet-mv-only";
    let _ = sh("ip", &["netns", "del", ns]);
    must("ip", &["netns", "add", ns]);
    struct Del(&'static str);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = sh("ip", &["netns", "del", self.0]);
        }
    }
    let _del = Del(ns);
    must("ip", &["-n", &pair.b, "link", "set", "mv0", "netns", ns]);
    must("ip", &["-n", ns, "link", "set", "mv0", "up"]);
    // What chaos-ebpf could change on the parent: its segment limit and its qdiscs (the
    // link's operational state moves on its own as the macvlan comes up).
    let settings = || {
        let link = String::from_utf8_lossy(&sh("ip", &["-n", &pair.b, "-d", "link", "show", "vb"]).stdout).into_owned();
        let segs = link.split_whitespace().skip_while(|w| *w != "gso_max_segs").nth(1).unwrap_or("").to_owned();
        let qdiscs =
            String::from_utf8_lossy(&sh("ip", &["-n", &pair.b, "tc", "qdisc", "show", "dev", "vb"]).stdout).into_owned();
        (segs, qdiscs)
    };
    let before = settings();
    let (code, out, err) = chaos_run(&[
        "inject",
        "delay",
        "--target",
        &format!("netns:{ns}"),
        "--delay",
        "50ms",
        "--direction",
        "ingress",
        "--duration",
        "2s",
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("mv0") && err.contains("not a veth"), "{err}");
    assert_eq!(settings(), before, "the macvlan's parent was changed");
    assert!(!String::from_utf8_lossy(&sh("ip", &["-n", &pair.b, "tc", "qdisc", "show", "dev", "vb"]).stdout)
        .contains("fq"));
    assert_nothing_left();
}

/// fq's default flow_limit (100) would drop delayed packets beyond 100 per flow: exit 2
/// naming the limit, and the foreign fq is left exactly as it was.
fn foreign_fq_with_small_limits_is_refused() {
    let pair = Pair::new("ffq");
    need_fq(&pair);
    must("ip", &["netns", "exec", &pair.a, "tc", "qdisc", "add", "dev", "va", "root", "handle", "7:", "fq"]);
    let before = qdisc_lines(&pair);
    let target = pair.target();
    let (code, out, err) =
        chaos_run(&["inject", "delay", "--target", &target, "--delay", "50ms", "--duration", "2s"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("flow_limit") && err.contains("did not create"), "{err}");
    assert_eq!(qdisc_lines(&pair), before, "the foreign fq was changed");
    assert_nothing_left();
}

/// A foreign fq with limits that hold delayed packets is used as it is and stays after
/// the run (chaos-ebpf did not create it).
fn foreign_fq_is_used_and_kept() {
    let pair = Pair::new("kfq");
    need_fq(&pair);
    must(
        "ip",
        &[
            "netns", "exec", &pair.a, "tc", "qdisc", "add", "dev", "va", "root", "handle", "7:", "fq", "limit",
            "100000", "flow_limit", "10000", "horizon", "20s",
        ],
    );
    let before = qdisc_lines(&pair);
    let baseline = median(&ping_rtts(&pair.a, "192.0.2.2", 10, 0.05));
    let target = pair.target();
    let chaos = Chaos::start(&["inject", "delay", "--target", &target, "--delay", "50ms", "--duration", "5m"]);
    let delayed = median(&ping_rtts(&pair.a, "192.0.2.2", 10, 0.05));
    assert!((delayed - baseline - 50.0).abs() < 10.0, "median RTT {delayed:.2} ms, baseline {baseline:.2} ms");
    assert_eq!(qdisc_lines(&pair), before, "the foreign fq was replaced during the run");
    let (code, _, err) = chaos.interrupt();
    assert_eq!(code, 1, "{err}");
    assert_eq!(qdisc_lines(&pair), before, "the foreign fq was not left as it was");
    assert_nothing_left();
}

/// Two delay runs on one device: the second uses the fq the first installed; the first
/// out leaves it (the second still delays); the last out restores the default qdisc.
fn runs_share_the_fq_and_the_last_restores() {
    let pair = Pair::new("sfq");
    need_fq(&pair);
    let before = qdisc_lines(&pair);
    let baseline = median(&ping_rtts(&pair.a, "192.0.2.2", 10, 0.05));
    let target = pair.target();
    let first = Chaos::start(&["inject", "delay", "--target", &target, "--delay", "30ms", "--duration", "5m"]);
    let second = Chaos::start(&[
        "inject", "delay", "--target", &target, "--delay", "60ms", "--proto", "icmp", "--duration", "5m",
    ]);
    let (code, _, err) = first.interrupt();
    assert_eq!(code, 1, "{err}");
    assert!(qdisc_lines(&pair).iter().any(|l| l.contains("qdisc fq ce00:")), "{:?}", qdisc_lines(&pair));
    let delayed = median(&ping_rtts(&pair.a, "192.0.2.2", 10, 0.05));
    assert!(
        (delayed - baseline - 60.0).abs() < 10.0,
        "the second run's delay stopped with the first run: {delayed:.2} ms, baseline {baseline:.2} ms"
    );
    let (code, _, err) = second.interrupt();
    assert_eq!(code, 1, "{err}");
    assert_eq!(qdisc_lines(&pair), before, "the last run out did not restore the original qdisc");
    assert_nothing_left();
}

/// A multiqueue device keeps its mq: fq goes under each transmit queue, and the
/// original children come back afterwards.
fn mq_keeps_its_layout_with_fq_under_each_queue() {
    let pair = Pair::new("mq");
    need_fq(&pair);
    // A veth of 4 queues in its own pair inside the test namespaces.
    must(
        "ip",
        &[
            "-n", &pair.a, "link", "add", "vq", "numtxqueues", "4", "type", "veth", "peer", "name", "vqp",
            "numrxqueues", "4",
        ],
    );
    must("ip", &["-n", &pair.a, "link", "set", "vq", "up"]);
    must("ip", &["-n", &pair.a, "link", "set", "vqp", "up"]);
    must("ip", &["netns", "exec", &pair.a, "tc", "qdisc", "add", "dev", "vq", "root", "handle", "1:", "mq"]);
    let show = || {
        String::from_utf8_lossy(&sh("ip", &["netns", "exec", &pair.a, "tc", "qdisc", "show", "dev", "vq"]).stdout)
            .into_owned()
    };
    let before = show();
    assert!(before.contains("qdisc mq 1: root"), "{before}");
    let target = pair.target();
    let chaos = Chaos::start(&["inject", "delay", "--target", &target, "--delay", "20ms", "--duration", "5m"]);
    let during = show();
    let _ = chaos.interrupt();
    let after = show();
    println!("before:\n{before}during:\n{during}after:\n{after}");
    assert!(during.contains("qdisc mq 1: root"), "mq was replaced: {during}");
    assert_eq!(during.matches("qdisc fq ").count(), 4, "not one fq per queue: {during}");
    // Kind, parent and options of each qdisc, in a stable order (the kernel numbers the
    // re-created children's handles anew and dumps them in its own order).
    let kinds = |text: &str| -> Vec<String> {
        let mut list: Vec<String> = text
            .lines()
            .filter(|l| !l.contains("clsact"))
            .map(|l| l.split_whitespace().take(2).chain(l.split(" parent ").nth(1)).collect())
            .collect();
        list.sort();
        list
    };
    assert_eq!(kinds(&after), kinds(&before), "the original children did not come back");
    assert_nothing_left();
}

/// A TCX hook holds at most 63 programs. A run that would be the 64th is refused with
/// exit 2 and a fix that applies (end stacked runs), before it changes any device.
fn a_full_hook_is_refused_before_anything_changes() {
    if !kernel_has_tcx() {
        skip("TCX (Linux >= 6.6) has the 63-program limit per hook; the netlink path has none");
    }
    let pair = Pair::new("full");
    let foreign: Vec<ForeignPass> = (0..63).map(|_| ForeignPass::attach(&pair.a, "va", false)).collect();
    let before = String::from_utf8_lossy(&sh("ip", &["-n", &pair.a, "-d", "link", "show", "va"]).stdout).into_owned();
    let target = pair.target();
    let (code, out, err) =
        chaos_run(&["inject", "loss", "--target", &target, "--probability", "0.1", "--duration", "2s"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("already runs 63 BPF programs") && err.contains("end some of the stacked runs"), "{err}");
    let after = String::from_utf8_lossy(&sh("ip", &["-n", &pair.a, "-d", "link", "show", "va"]).stdout).into_owned();
    assert_eq!(before, after, "the device was changed before the refusal");
    drop(foreign);
    assert_nothing_left();
}
