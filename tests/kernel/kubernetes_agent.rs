//! The agent as a DaemonSet on the test cluster (called by kubernetes.rs between `up`
//! and `down`): the image built by deploy/compose/images.sh and imported into the
//! cluster's containerd, the plain manifests deploy/kubernetes/chaos-ebpf.yaml applied,
//! and ChaosExperiment resources checked by traffic between pods.

use std::{
    path::Path,
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use crate::support::*;

pub const KUBECONFIG: &str = "/var/lib/chaos-ebpf/cluster/admin.kubeconfig";
const CONTAINERD: &str = "/run/chaos-ebpf/cluster/containerd/containerd.sock";
const NS: &str = "chaos-test";

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path).display().to_string()
}

/// kubectl with a hard limit: --request-timeout does not bound `exec` and `wait`.
pub fn kubectl(args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["-k", "5", "150", "kubectl", "--kubeconfig", KUBECONFIG, "--request-timeout=10s"])
        .args(args)
        .output()
        .expect("kubectl");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn must_kubectl(args: &[&str]) -> String {
    let (ok, text) = kubectl(args);
    assert!(ok, "kubectl {}: {text}", args.join(" "));
    text
}

fn apply(yaml: &str) {
    let mut child = Command::new("kubectl")
        .args(["--kubeconfig", KUBECONFIG, "--request-timeout=10s", "apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl apply");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), yaml.as_bytes()).expect("writing to kubectl");
    let out = child.wait_with_output().expect("kubectl apply");
    assert!(out.status.success(), "kubectl apply: {}{}", String::from_utf8_lossy(&out.stderr), yaml);
}

/// Polls `check` every 100 ms until it is true or `limit` passes; the time it took.
fn until(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if check() {
            return Some(t.elapsed());
        }
        sleep(Duration::from_millis(100));
    }
    None
}

/// Deletes what `what` names and waits until `kubectl get` finds none of it (kubectl's
/// own --wait would run into --request-timeout); the time that took. What is left at
/// the limit goes into the failure: pods still terminating, and the conditions a
/// namespace gives for not being gone yet.
fn delete_and_wait(what: &[&str], limit: Duration) -> Duration {
    let mut args = vec!["delete", "--wait=false", "--ignore-not-found"];
    args.extend(what);
    must_kubectl(&args);
    let mut get = vec!["get", "--ignore-not-found", "-o", "name"];
    get.extend(what);
    let gone = until(limit, || kubectl(&get).1.trim().is_empty());
    gone.unwrap_or_else(|| still_there(&kubectl(&get).1, limit))
}

/// Deletes what runs in `namespace` (its controllers and pods), waits until none of its
/// pods is left, then deletes `what` (which holds the namespace) as `delete_and_wait`
/// does; the time all that took, within `limit`. Kubernetes 1.20's namespace controller
/// retries a namespace that still holds pods with a doubling backoff, so a namespace
/// deleted with its pods took 11 to 80 s here; deleted once empty, it does not wait on
/// that backoff (the whole took 14 to 76 s, most of it the pods going).
fn delete_namespace_and_wait(namespace: &str, what: &[&str], limit: Duration) -> Duration {
    let t = Instant::now();
    let workloads = "daemonsets,deployments,statefulsets,replicasets,pods";
    must_kubectl(&["-n", namespace, "delete", "--wait=false", "--ignore-not-found", "--all", workloads]);
    let pods = ["-n", namespace, "get", "pods", "--ignore-not-found", "-o", "name"];
    if until(limit, || kubectl(&pods).1.trim().is_empty()).is_none() {
        still_there(&kubectl(&pods).1, limit);
    }
    delete_and_wait(what, limit.saturating_sub(t.elapsed()));
    t.elapsed()
}

/// Fails the test with what is still there after a delete, and why it may be: pods still
/// terminating, namespaces' conditions, and the errors of the components that delete.
fn still_there(left: &str, limit: Duration) -> ! {
    let pods = kubectl(&["get", "pods", "-A", "-o", "wide"]).1;
    let conditions = kubectl(&["get", "namespaces", "-o", "jsonpath={range .items[*]}{.metadata.name}: {.status.conditions}{\"\\n\"}{end}"]).1;
    panic!(
        "still there {limit:?} after the delete: {left}\npods:\n{pods}\nnamespaces:\n{conditions}\n\
         kube-controller-manager:\n{}\nkubelet:\n{}",
        errors_logged("kube-controller-manager"),
        errors_logged("kubelet")
    )
}

/// The last 15 error lines of a cluster component's log (cluster.sh keeps them in
/// /var/lib/chaos-ebpf/cluster/logs until `cluster down`), each cut to 300 bytes.
fn errors_logged(component: &str) -> String {
    let text = std::fs::read_to_string(format!("/var/lib/chaos-ebpf/cluster/logs/{component}.log")).unwrap_or_default();
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with('E')).collect();
    let last = &errors[errors.len().saturating_sub(15)..];
    last.iter().map(|l| l.get(..300).unwrap_or(l)).collect::<Vec<_>>().join("\n")
}

fn unix_seconds_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs_f64()
}

/// An RFC 3339 time of the status, in Unix seconds (through date(1)).
fn unix_seconds_of(rfc3339: &str) -> f64 {
    let out = sh("date", &["-d", rfc3339, "+%s.%N"]);
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("a time: {rfc3339:?}"))
}

fn pod_ip(name: &str) -> String {
    must_kubectl(&["-n", NS, "get", "pod", name, "-o", "jsonpath={.status.podIP}"]).trim().to_owned()
}

/// Whether pod `from` gets an HTTP answer from `ip`:8080 within a second.
fn reaches(from: &str, ip: &str) -> bool {
    // nc's -w bounds the connect only: a paused server that accepted would hold it.
    let request = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 2 nc -w 1 {ip} 8080");
    kubectl(&["-n", NS, "exec", from, "--", "sh", "-c", &request]).1.contains("chaos-ok")
}

fn status(name: &str) -> serde_json::Value {
    status_in(NS, name)
}

/// The status of experiment `name` in `namespace`.
fn status_in(namespace: &str, name: &str) -> serde_json::Value {
    let text = must_kubectl(&["-n", namespace, "get", "chaosexperiment", name, "-o", "json"]);
    serde_json::from_str::<serde_json::Value>(&text).expect("JSON")["status"].clone()
}

/// Waits until every pod of the lab workload is Ready (`after`: what came before, for
/// the message).
fn lab_ready(timeout: &str, after: &str) {
    let (ok, text) = kubectl(&["-n", "chaos-lab", "wait", "--for=condition=Ready", &format!("--timeout={timeout}"), "pod", "--all"]);
    assert!(ok, "the lab workload Ready{after}: {text}");
}

fn phase(name: &str) -> String {
    status(name)["phase"].as_str().unwrap_or("").to_owned()
}

/// Faults the agent on the node holds, from its metrics (hostNetwork: the node's 9465).
fn agent_faults() -> Option<u64> {
    let (code, body) = http_get("127.0.0.1:9465".parse().expect("addr"), "/metrics").ok()?;
    if code != 200 {
        return None;
    }
    body.lines().find(|l| l.starts_with("chaos_agent_faults_active ")).and_then(|l| l.split(' ').nth(1)?.parse::<f64>().ok()).map(|v| v as u64)
}

/// Network namespaces with chaos-ebpf programs attached besides the host's: what the
/// agent left on pods.
fn programs_on_pods() -> usize {
    loaded_chaos_programs().len()
}

/// A ChaosExperiment `name` in the test namespace; `spec` is the spec's body, indented.
fn experiment(name: &str, spec: &str) -> String {
    format!("apiVersion: chaos-ebpf.io/v1alpha1\nkind: ChaosExperiment\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n{spec}")
}

fn web_pod(name: &str, labels: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NS}, labels: {{{labels}}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: localhost/chaos-busybox:1
    imagePullPolicy: Never
    command: [sh, -c, 'mkdir -p /tmp/www && echo chaos-ok > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www']
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
"#
    )
}

/// Builds and imports the image, applies the plain manifests, waits for the agent.
pub fn install_agent() {
    let dir = std::env::temp_dir().join(format!("chaos-k8s-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let archive = dir.join("image.tar");
    let bin_dir = Path::new(bin()).parent().expect("bin dir").display().to_string();
    let out = sh("bash", &[&repo("deploy/compose/images.sh"), "--archive", &archive.display().to_string(), "--bin-dir", &bin_dir]);
    assert!(out.status.success(), "images.sh --archive: {}", String::from_utf8_lossy(&out.stderr));
    let out = sh("ctr", &["--address", CONTAINERD, "--namespace", "k8s.io", "images", "import", &archive.display().to_string()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "ctr images import: {}", String::from_utf8_lossy(&out.stderr));
    let t = Instant::now();
    must_kubectl(&["apply", "-f", &repo("deploy/kubernetes/chaos-ebpf.yaml")]);
    let (ok, text) = kubectl(&["-n", "chaos-ebpf", "rollout", "status", "daemonset/chaos-ebpf", "--timeout=90s"]);
    assert!(ok, "the agent DaemonSet did not become ready: {text}\n{}", agent_log());
    println!("REPORT|agent_ready|seconds={:.1}", t.elapsed().as_secs_f64());
}

pub fn agent_log() -> String {
    kubectl(&["-n", "chaos-ebpf", "logs", "daemonset/chaos-ebpf", "--tail=40"]).1
}

pub fn uninstall_agent() {
    delete_namespace_and_wait("chaos-ebpf", &["-f", &repo("deploy/kubernetes/chaos-ebpf.yaml")], Duration::from_secs(90));
    let gone = until(Duration::from_secs(30), || programs_on_pods() == 0);
    assert!(gone.is_some(), "chaos-ebpf programs left after the agent was deleted: {:?}", loaded_chaos_programs());
}

/// Partition, delete, loss with a seed on a label selector, pod restart, agent kill,
/// bad spec: each checked by traffic between pods and by the status.
pub fn experiments() {
    must_kubectl(&["create", "namespace", NS]);
    apply(&format!(
        "{}---\n{}---\n{}---\n{}",
        web_pod("server", "app: server, tier: web"),
        web_pod("client", "app: client"),
        web_pod("web-a", "tier: web, app: web-a"),
        web_pod("web-b", "tier: web, app: web-b"),
    ));
    let (ok, text) = kubectl(&["-n", NS, "wait", "--for=condition=Ready", "--timeout=90s", "pod", "--all"]);
    assert!(ok, "test pods Ready: {text}");
    let server = pod_ip("server");
    assert!(until(Duration::from_secs(10), || reaches("client", &server)).is_some(), "client reaches server before any fault");

    // 1. Partition the server from the client: apply -> traffic cut; the status names the pod.
    let partition = experiment(
        "cut-server",
        "  selector: {labelSelectors: {app: server}}
  seed: 7
  faults:
  - kind: partition
    peerPods: {labelSelectors: {app: client}}
",
    );
    let t = Instant::now();
    let applied_at = unix_seconds_now();
    apply(&partition);
    let cut = until(Duration::from_secs(15), || !reaches("client", &server));
    assert!(cut.is_some(), "the partition did not cut client -> server: {}", agent_log());
    println!("REPORT|apply_to_cut|ms={}", t.elapsed().as_millis());
    assert!(until(Duration::from_secs(10), || phase("cut-server") == "Running").is_some(), "{}", status("cut-server"));
    let s = status("cut-server");
    let pods = &s["nodes"][0]["pods"];
    assert_eq!(pods.as_array().map(Vec::len), Some(1), "one pod injected: {s}");
    assert_eq!(pods[0]["name"], "server", "{s}");
    assert_eq!(pods[0]["state"], "Injected", "{s}");
    // From before `kubectl apply` to the agent's "in force" time (the same clock).
    let from = unix_seconds_of(pods[0]["from"].as_str().unwrap_or(""));
    println!("REPORT|apply_to_faults_in_force|ms={:.0}", (from - applied_at) * 1000.0);
    assert_eq!(s["conditions"][0]["status"], "True", "{s}");
    // The same news as Kubernetes Events of the experiment (`kubectl describe`).
    let injected = until(Duration::from_secs(10), || {
        let events = kubectl(&["-n", NS, "get", "events", "--field-selector", "involvedObject.name=cut-server"]).1;
        events.contains("Injected") && events.contains("chaos-test/server")
    });
    assert!(injected.is_some(), "no Injected event: {}", kubectl(&["-n", NS, "get", "events"]).1);
    let web_a = pod_ip("web-a");
    assert!(reaches("client", &web_a), "the partition touches the server only: client -> web-a passes");
    assert!(reaches("web-a", &server), "the partition is from the client only: web-a -> server passes");

    // 2. Delete: traffic back, the finalizer gone, nothing held by the agent.
    let t = Instant::now();
    must_kubectl(&["-n", NS, "delete", "chaosexperiment", "cut-server", "--wait=false"]);
    let back = until(Duration::from_secs(15), || reaches("client", &server));
    assert!(back.is_some(), "traffic did not come back after the delete: {}", agent_log());
    println!("REPORT|delete_to_traffic_back|ms={}", t.elapsed().as_millis());
    let deleted = until(Duration::from_secs(15), || !kubectl(&["-n", NS, "get", "chaosexperiment", "cut-server"]).0);
    assert!(deleted.is_some(), "the resource stays (finalizer not removed): {}", agent_log());
    assert!(until(Duration::from_secs(5), || agent_faults() == Some(0)).is_some(), "the agent still holds faults");

    // 3. A bad spec: Valid=False naming the field, nothing applied.
    apply(&experiment(
        "bad",
        r#"  selector: {labelSelectors: {app: server}}
  faults:
  - {kind: loss, probability: 0.5, ports: "70000"}
"#,
    ));
    assert!(until(Duration::from_secs(10), || phase("bad") == "Failed").is_some(), "{}", status("bad"));
    let s = status("bad");
    let message = s["conditions"][0]["message"].as_str().unwrap_or("");
    assert_eq!(s["conditions"][0]["status"], "False", "{s}");
    assert!(message.starts_with("spec.faults[0].ports"), "the condition names the field: {message}");
    assert_eq!(agent_faults(), Some(0), "a bad spec applies nothing");
    assert!(reaches("client", &server));
    must_kubectl(&["-n", NS, "delete", "chaosexperiment", "bad"]);

    // 4. A pod action that is undone: the server's container paused (SIGSTOP to its
    // processes) until the experiment is deleted (SIGCONT).
    apply(&experiment(
        "freeze",
        "  selector: {labelSelectors: {app: server}}
  actions:
  - {kind: container-pause}
",
    ));
    assert!(until(Duration::from_secs(15), || !reaches("client", &server)).is_some(), "the paused server still answers");
    let record = status("freeze")["nodes"][0]["actions"][0].clone();
    assert!(record["result"].as_str().unwrap_or("").starts_with("paused container web"), "{record}");
    assert!(record["resumed"].is_null(), "{record}");
    delete_and_wait(&["-n", NS, "chaosexperiment", "freeze"], Duration::from_secs(20));
    assert!(until(Duration::from_secs(10), || reaches("client", &server)).is_some(), "the server did not resume");

    // 5. Loss with a fixed seed on a label selector, one of the three tier=web pods:
    // the same seed picks the same pod each time; packets are dropped there only.
    let loss = |name: &str| {
        experiment(
            name,
            "  selector: {labelSelectors: {tier: web}}
  mode: fixed
  value: 1
  seed: 42
  duration: 20s
  faults:
  - {kind: loss, probability: 0.5, proto: icmp}
",
        )
    };
    let picked = |name: &str| -> String {
        until(Duration::from_secs(10), || status(name)["nodes"][0]["pods"][0]["state"] == "Injected");
        status(name)["nodes"][0]["pods"][0]["name"].as_str().unwrap_or("").to_owned()
    };
    apply(&loss("lossy-1"));
    let first = picked("lossy-1");
    assert!(["server", "web-a", "web-b"].contains(&first.as_str()), "{}", status("lossy-1"));
    let ip = pod_ip(&first);
    let ping = kubectl(&["-n", NS, "exec", "client", "--", "ping", "-c", "40", "-i", "0.05", "-W", "1", &ip]).1;
    let received = parse_ping_received(&ping);
    // Each answer passes with p = 0.25 (0.5 each way): 10 expected; outside 1..=30 is a
    // chance below 1e-4 (the ICMP id, in the flow hash, differs per ping run).
    assert!((1..=30).contains(&received), "40 pings at p=0.5 each way: {received} came back ({ping})");
    let s = status("lossy-1");
    assert_eq!(s["selectedPods"], 1, "{s}");
    must_kubectl(&["-n", NS, "delete", "chaosexperiment", "lossy-1"]);
    apply(&loss("lossy-2"));
    assert_eq!(picked("lossy-2"), first, "the same seed picks the same pod");
    must_kubectl(&["-n", NS, "delete", "chaosexperiment", "lossy-2"]);
    let quiet = kubectl(&["-n", NS, "exec", "client", "--", "ping", "-c", "10", "-i", "0.05", "-W", "1", &ip]).1;
    assert_eq!(parse_ping_received(&quiet), 10, "no loss after the delete: {quiet}");

    // 6. A pod re-created during a fault gets it again (new UID, new namespace).
    apply(&partition);
    assert!(until(Duration::from_secs(15), || !reaches("client", &server)).is_some(), "partition again");
    let old_uid = must_kubectl(&["-n", NS, "get", "pod", "server", "-o", "jsonpath={.metadata.uid}"]);
    delete_and_wait(&["-n", NS, "pod", "server"], Duration::from_secs(60));
    apply(&web_pod("server", "app: server, tier: web"));
    must_kubectl(&["-n", NS, "wait", "--for=condition=Ready", "--timeout=60s", "pod/server"]);
    let server = pod_ip("server");
    let t = Instant::now();
    let again = until(Duration::from_secs(15), || {
        status("cut-server")["nodes"][0]["pods"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["state"] == "Injected" && p["uid"] != old_uid.trim()))
            && !reaches("client", &server)
    });
    assert!(again.is_some(), "the re-created pod did not get the partition: {}", status("cut-server"));
    println!("REPORT|recreated_pod_reinjected|ms={}", t.elapsed().as_millis());

    // 7. The agent killed (SIGKILL, no revert of its own) mid-experiment: its faults go
    // with it at once (TCX links die with the process), kubelet restarts it, and the new
    // agent applies them again.
    let agent = sh("pgrep", &["-f", "chaos-ebpf agent --kubernetes"]);
    let agent = String::from_utf8_lossy(&agent.stdout).trim().to_owned();
    assert!(!agent.is_empty() && !agent.contains('\n'), "one agent process on the node: {agent:?}");
    let t = Instant::now();
    must("kill", &["-KILL", &agent]);
    let freed = until(Duration::from_secs(15), || reaches("client", &server));
    assert!(freed.is_some(), "traffic did not pass after the agent was killed");
    println!("REPORT|agent_killed_to_traffic|ms={}", t.elapsed().as_millis());
    let (ok, text) = kubectl(&["-n", "chaos-ebpf", "rollout", "status", "daemonset/chaos-ebpf", "--timeout=90s"]);
    assert!(ok, "the agent came back: {text}");
    assert!(until(Duration::from_secs(20), || !reaches("client", &server)).is_some(), "the new agent applies the partition again");
    must_kubectl(&["-n", NS, "delete", "chaosexperiment", "cut-server"]);
    assert!(until(Duration::from_secs(15), || reaches("client", &server)).is_some(), "traffic back at the end");

    through_a_service(&server);
    steps_and_hypothesis(&server);
    let took = delete_namespace_and_wait(NS, &["namespace", NS], Duration::from_secs(180));
    println!("REPORT|test_namespace_deleted|seconds={:.1}", took.as_secs_f64());
}

/// The client partitioned from the server pods: also from their Service's ClusterIP,
/// which is what the client sends to (kube-proxy translates it outside the pod).
fn through_a_service(server: &str) {
    apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: server, namespace: {NS}}}\nspec:\n  selector: {{app: server}}\n  ports: [{{port: 8080, targetPort: 8080}}]\n"
    ));
    let service = must_kubectl(&["-n", NS, "get", "service", "server", "-o", "jsonpath={.spec.clusterIP}"]);
    let service = service.trim();
    assert!(until(Duration::from_secs(15), || reaches("client", service)).is_some(), "client -> the Service before the fault");
    apply(&experiment(
        "cut-client",
        "  selector: {labelSelectors: {app: client}}
  faults:
  - kind: partition
    peerPods: {labelSelectors: {app: server}}
",
    ));
    let cut = until(Duration::from_secs(15), || !reaches("client", service));
    assert!(cut.is_some(), "the ClusterIP of the peer pods' Service is not cut: {}", status("cut-client"));
    assert!(!reaches("client", server), "the peer pod's own IP is cut too");
    assert!(reaches("client", &pod_ip("web-a")), "other pods are not peers: client -> web-a passes");
    must_kubectl(&["-n", NS, "delete", "chaosexperiment", "cut-client"]);
    assert!(until(Duration::from_secs(15), || reaches("client", service)).is_some(), "the Service again after the delete");
    must_kubectl(&["-n", NS, "delete", "service", "server"]);
}

/// A hypothesis of one TCP probe of the server from the node, and a guard on it.
fn web_hypothesis(server: &str) -> String {
    format!(
        r#"  hypothesis:
    interval: 250ms
    recovery: 10s
    probes:
    - {{name: web, timeout: 500ms, tcp: {{connect: "{server}:8080"}}}}
  abort:
  - error-rate: {{probe: web, above: 0.5, for: 2s}}
"#
    )
}

/// A timeline with a hypothesis: the step's fault comes and goes at its offsets, the
/// probes (from the agent on the node) pass throughout, the verdict is passed. Then a
/// guard that fires: every fault reverted long before the step's end, phase Aborted.
fn steps_and_hypothesis(server: &str) {
    apply(&experiment(
        "timeline",
        &(String::from(
            r#"  selector: {labelSelectors: {app: server}}
  steps:
  - name: cut
    at: 3s
    duration: 4s
    faults:
    - kind: partition
      peerPods: {labelSelectors: {app: client}}
"#
        ) + &web_hypothesis(server)),
    ));
    let cut = until(Duration::from_secs(15), || !reaches("client", server));
    assert!(cut.is_some(), "the step's partition did not cut client -> server: {}", status("timeline"));
    let done = until(Duration::from_secs(30), || status("timeline")["nodes"][0]["hypothesis"]["stage"] == "Done");
    let s = status("timeline");
    assert!(done.is_some(), "the hypothesis was not judged: {s}\n{}", agent_log());
    assert_eq!(s["phase"], "Finished", "{s}");
    assert_eq!(s["nodes"][0]["hypothesis"]["verdict"], "passed", "{s}");
    assert!(reaches("client", server), "traffic back after the step");
    let created = unix_seconds_of(
        must_kubectl(&["-n", NS, "get", "chaosexperiment", "timeline", "-o", "jsonpath={.metadata.creationTimestamp}"])
            .trim(),
    );
    let pod = &s["nodes"][0]["pods"][0];
    assert_eq!(pod["state"], "Released", "{s}");
    let from = unix_seconds_of(pod["from"].as_str().unwrap_or("")) - created;
    let to = unix_seconds_of(pod["to"].as_str().unwrap_or("")) - created;
    println!("REPORT|step_window|from_s={from:.2}|to_s={to:.2}|planned_from_s=3|planned_to_s=7");
    // The creation time has whole seconds: the step starts 2 to 4 s after it.
    assert!((2.0..5.0).contains(&from) && (to - from - 4.0).abs() < 1.5, "the step's window: {from:.2} s to {to:.2} s: {s}");
    must_kubectl(&["-n", NS, "delete", "chaosexperiment", "timeline"]);

    apply(&experiment(
        "guarded",
        &(String::from(
            r#"  selector: {labelSelectors: {app: server}}
  steps:
  - name: isolate
    at: 1s
    duration: 60s
    faults:
    - {kind: partition, peers: [0.0.0.0/0]}
"#
        ) + &web_hypothesis(server)),
    ));
    let aborted = until(Duration::from_secs(20), || phase("guarded") == "Aborted");
    let s = status("guarded");
    assert!(aborted.is_some(), "the guard did not abort: {s}\n{}", agent_log());
    let why = s["nodes"][0]["hypothesis"]["aborted"].as_str().unwrap_or("");
    assert!(why.starts_with("error-rate guard"), "the guard and what it saw: {s}");
    assert!(until(Duration::from_secs(5), || agent_faults() == Some(0)).is_some(), "faults left after the abort");
    let pod = &s["nodes"][0]["pods"][0];
    let held = unix_seconds_of(pod["to"].as_str().unwrap_or("")) - unix_seconds_of(pod["from"].as_str().unwrap_or(""));
    println!("REPORT|guard_abort|fault_held_s={held:.2}|step_s=60");
    assert!(held < 15.0, "reverted by the guard, not by the step's end: held {held:.2} s: {s}");
    assert!(until(Duration::from_secs(10), || reaches("client", server)).is_some(), "traffic back after the abort");
    let judged = until(Duration::from_secs(20), || status("guarded")["nodes"][0]["hypothesis"]["verdict"] == "failed");
    assert!(judged.is_some(), "a fired guard fails the hypothesis: {}", status("guarded"));
    must_kubectl(&["-n", NS, "delete", "chaosexperiment", "guarded"]);
}

/// Whether etcd at `ip` says it leads (its metrics on 2381, reached from the host
/// through the pod bridge); None when it does not answer.
fn etcd_leads(ip: &str) -> Option<bool> {
    let (code, body) = http_get(format!("{ip}:2381").parse().ok()?, "/metrics").ok()?;
    (code == 200).then(|| body.lines().any(|l| l.trim() == "etcd_server_is_leader 1"))
}

/// The etcd pods of the lab workload: (name, IP).
fn etcd_pods() -> Vec<(String, String)> {
    let text = must_kubectl(&[
        "-n",
        "chaos-lab",
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/component=etcd",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.podIP}{\"\\n\"}{end}",
    ]);
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, ip)| !ip.is_empty())
        .map(|(n, ip)| (n.to_owned(), ip.to_owned()))
        .collect()
}

fn etcd_leader() -> Option<String> {
    let leaders: Vec<String> =
        etcd_pods().into_iter().filter(|(_, ip)| etcd_leads(ip) == Some(true)).map(|(n, _)| n).collect();
    (leaders.len() == 1).then(|| leaders[0].clone())
}

/// The lab workload's hostPath (etcd data and journals), which its chart never removes.
pub const LAB_DATA: &str = "/var/lib/chaos-ebpf/k8s-lab";

/// Removes the lab workload's hostPath when the test ends, also after a failure: a
/// leftover would give the next run's etcd members a stale cluster. After a failure the
/// lab's pods may still write there; `Down` removes it again once they are gone.
struct LabData;

impl Drop for LabData {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(LAB_DATA);
    }
}

/// The lab workload from deploy/kubernetes/lab.yaml (etcd StatefulSet, nodes,
/// Prometheus) and the leader-kill example: the agent deletes the pod that leads, once,
/// and another member leads after it.
pub fn leader_kill() {
    assert!(
        !Path::new(LAB_DATA).exists(),
        "{LAB_DATA} exists before the lab workload: a leftover etcd data directory would be reused; remove it"
    );
    let _data = LabData;
    let t = Instant::now();
    must_kubectl(&["apply", "-f", &repo("deploy/kubernetes/lab.yaml")]);
    sleep(Duration::from_secs(2));
    lab_ready("120s", "");
    println!("REPORT|lab_workload_ready|seconds={:.1}", t.elapsed().as_secs_f64());
    let leader = until(Duration::from_secs(30), || etcd_leader().is_some()).and_then(|_| etcd_leader());
    let leader = leader.expect("one etcd member leads");
    let t = Instant::now();
    must_kubectl(&["apply", "-f", &repo("deploy/kubernetes/examples/etcd-leader-kill.yaml")]);
    let record = || status_in("chaos-lab", "etcd-leader-kill")["nodes"][0]["actions"][0].clone();
    assert!(until(Duration::from_secs(20), || record()["result"] == "deleted").is_some(), "no kill recorded: {}", agent_log());
    assert_eq!(record()["pod"], leader.as_str(), "the pod that led was deleted: {}", record());
    let new_leader = until(Duration::from_secs(30), || etcd_leader().is_some_and(|l| l != leader));
    assert!(new_leader.is_some(), "no other member leads after the kill");
    println!("REPORT|leader_kill_to_new_leader|ms={}", t.elapsed().as_millis());
    // Once: the new leader is not deleted too.
    sleep(Duration::from_secs(3));
    let status = status_in("chaos-lab", "etcd-leader-kill");
    assert_eq!(status["nodes"][0]["actions"].as_array().map(Vec::len), Some(1), "one kill: {status}");
    must_kubectl(&["-n", "chaos-lab", "delete", "chaosexperiment", "etcd-leader-kill"]);
    leader_partition();
    node_from_etcd();
    let took = delete_namespace_and_wait("chaos-lab", &["-f", &repo("deploy/kubernetes/lab.yaml")], Duration::from_secs(180));
    println!("REPORT|lab_workload_deleted|seconds={:.1}", took.as_secs_f64());
}

/// The partition-pod example: one workload node cut off from etcd, which it reaches
/// through the members' ClusterIPs: its /health turns 503, another node's stays 200.
fn node_from_etcd() {
    let health = |ip: &str| http_get(format!("{ip}:9100").parse().ok()?, "/health").ok().map(|(code, _)| code);
    let status = || status_in("chaos-lab", "node-from-etcd")["nodes"][0].clone();
    // After the leader partition: every member and node healthy again first.
    lab_ready("60s", " again after the leader partition");
    must_kubectl(&["apply", "-f", &repo("deploy/kubernetes/examples/partition-pod.yaml")]);
    let injected = until(Duration::from_secs(20), || status()["pods"][0]["state"] == "Injected");
    assert!(injected.is_some(), "no node cut off: {}\n{}", status(), agent_log());
    let name = status()["pods"][0]["name"].as_str().unwrap_or("").to_owned();
    let ip = must_kubectl(&["-n", "chaos-lab", "get", "pod", &name, "-o", "jsonpath={.status.podIP}"]);
    let ip = ip.trim();
    let t = Instant::now();
    let unhealthy = until(Duration::from_secs(20), || health(ip) == Some(503));
    assert!(unhealthy.is_some(), "{name}'s /health did not turn 503: {:?} {}", health(ip), status());
    println!("REPORT|node_from_etcd_to_unhealthy|ms={}", t.elapsed().as_millis());
    let other = must_kubectl(&[
        "-n",
        "chaos-lab",
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/component=node",
        "-o",
        "jsonpath={range .items[*]}{.status.podIP}{\"\\n\"}{end}",
    ]);
    let other = other.lines().map(str::trim).find(|o| !o.is_empty() && *o != ip).expect("another node").to_owned();
    let healthy = until(Duration::from_secs(10), || health(&other) == Some(200));
    assert!(healthy.is_some(), "another node does not write to etcd meanwhile: {:?}", health(&other));
    delete_and_wait(&["-n", "chaos-lab", "chaosexperiment", "node-from-etcd"], Duration::from_secs(20));
    let healthy = until(Duration::from_secs(20), || health(ip) == Some(200));
    assert!(healthy.is_some(), "{name}'s /health is not 200 again after the delete: {:?}", health(ip));
}

/// The leader-partition example: the pod that leads when the fault begins is cut off from
/// the other members; they elect another leader, and the fault stays on the old one.
fn leader_partition() {
    lab_ready("120s", " again after the kill");
    let leader = until(Duration::from_secs(30), || etcd_leader().is_some()).and_then(|_| etcd_leader());
    let leader = leader.expect("one etcd member leads after the kill");
    let status = || status_in("chaos-lab", "etcd-leader-partition")["nodes"][0].clone();
    let t = Instant::now();
    must_kubectl(&["apply", "-f", &repo("deploy/kubernetes/examples/etcd-leader-partition.yaml")]);
    let pinned = until(Duration::from_secs(20), || status()["pods"][0]["state"] == "Injected");
    assert!(pinned.is_some(), "no fault on the leader: {}\n{}", status(), agent_log());
    assert_eq!(status()["leader"]["name"], leader.as_str(), "the pod that led is the target: {}", status());
    let moved = until(Duration::from_secs(30), || etcd_leader().is_some_and(|l| l != leader));
    assert!(moved.is_some(), "the other members did not elect another leader: {}", status());
    println!("REPORT|leader_partition_to_new_leader|ms={}", t.elapsed().as_millis());
    sleep(Duration::from_secs(3));
    let s = status();
    assert_eq!(s["leader"]["name"], leader.as_str(), "the fault stays on the old leader: {s}");
    assert_eq!(s["pods"].as_array().map(Vec::len), Some(1), "one pod cut: {s}");
    assert_eq!(s["pods"][0]["name"], leader.as_str(), "{s}");
    assert_eq!(s["pods"][0]["state"], "Injected", "{s}");
    delete_and_wait(&["-n", "chaos-lab", "chaosexperiment", "etcd-leader-partition"], Duration::from_secs(20));
    assert_eq!(agent_faults(), Some(0), "nothing held after the delete");
}
