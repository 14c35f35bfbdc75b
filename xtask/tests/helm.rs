//! The Helm chart deploy/helm/chaos-ebpf, through a real helm: `helm lint --strict`
//! passes; what `helm template` renders with the default values and with
//! `targetNamespaces={a,b}` parses as YAML and has the properties the agent relies on
//! (host PID namespace, exactly the five capabilities and not privileged, NODE_NAME from
//! the downward API, one `--namespace` per target namespace, RBAC per namespace when
//! namespaces are named); the ServiceMonitor only when enabled; the plain manifests
//! deploy/kubernetes/chaos-ebpf.yaml are what `cargo xtask manifests` renders now; and
//! what the chart renders is valid Kubernetes 1.20 (kubernetes-validate, offline).
//!
//! Needs no root and no cluster. Without helm (or kubernetes-validate, for the last test)
//! a test ends as skipped with the reason (libtest-mimic), never as passed:
//! `bash scripts/helm.sh`, or scripts/setup.sh, installs both.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use charts::{documents, of_kind, skip};
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use serde_yaml::Value;

mod charts;

/// How the plain manifests are rendered, compiled in from xtask itself.
#[allow(dead_code)]
#[path = "../src/manifests.rs"]
mod manifests;

/// The capabilities the agent's container adds (values.yaml says why each).
const CAPABILITIES: [&str; 5] = ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"];

fn main() {
    let args = Arguments::from_args();
    let tests = vec![
        with_helm("helm_lint_strict_passes", lint_strict),
        with_helm("default_values_render_a_least_privilege_daemonset", default_daemonset),
        with_helm("default_values_grant_namespaced_access_cluster_wide", default_rbac),
        with_helm("target_namespaces_render_one_namespace_flag_and_one_role_each", target_namespaces),
        with_helm("service_monitor_only_when_enabled", service_monitor),
        with_helm("plain_manifests_are_fresh", plain_manifests_fresh),
        Trial::ignorable_test("rendered_objects_are_valid_kubernetes_1_20", valid_for_1_20),
    ];
    libtest_mimic::run(&args, tests).exit();
}

/// A test that needs helm: skipped with its reason when there is none.
fn with_helm(name: &'static str, test: fn() -> Result<(), Failed>) -> Trial {
    Trial::ignorable_test(name, move || {
        if let Err(why) = tool_version("helm", &["version", "--short"]) {
            return Ok(skip(
                name,
                &format!("{why}: install helm v4.2.3 with `bash scripts/helm.sh` (scripts/setup.sh)"),
            ));
        }
        test().map(|()| Completion::Completed)
    })
}

/// `tool args` ran and succeeded, or why not.
fn tool_version(tool: &str, args: &[&str]) -> Result<String, String> {
    match Command::new(tool).args(args).output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
        Ok(out) => Err(format!("`{tool} {}` failed ({})", args.join(" "), out.status)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("no `{tool}` in PATH")),
        Err(e) => Err(format!("running `{tool}`: {e}")),
    }
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

fn helm(args: &[&str]) -> Result<String, Failed> {
    manifests::helm(args).map_err(|e| format!("{e:#}").into())
}

/// `helm template chaos-ebpf <chart> --namespace chaos-ebpf` with `extra` arguments,
/// parsed into its YAML documents (comment-only documents left out).
fn render(extra: &[&str]) -> Result<Vec<Value>, Failed> {
    let mut args = vec!["template", manifests::RELEASE, manifests::CHART, "--namespace", manifests::RELEASE];
    args.extend_from_slice(extra);
    documents(&helm(&args)?)
}

fn one_of_kind<'a>(docs: &'a [Value], kind: &str) -> Result<&'a Value, Failed> {
    match of_kind(docs, kind).as_slice() {
        [one] => Ok(one),
        many => Err(format!("expected one {kind}, rendered {}", many.len()).into()),
    }
}

fn strings(value: &Value) -> Vec<&str> {
    value.as_sequence().map(|s| s.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// Whether a ClusterRole's or Role's rules grant anything on `resource`.
fn grants(role: &Value, resource: &str) -> bool {
    role["rules"].as_sequence().into_iter().flatten().any(|rule| strings(&rule["resources"]).contains(&resource))
}

/// The verbs a role grants on `resource` (over all its rules).
fn verbs<'a>(role: &'a Value, resource: &str) -> BTreeSet<&'a str> {
    role["rules"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter(|rule| strings(&rule["resources"]).contains(&resource))
        .flat_map(|rule| strings(&rule["verbs"]))
        .collect()
}

/// Every `privileged: true` anywhere in `value`.
fn privileged_anywhere(value: &Value) -> bool {
    match value {
        Value::Mapping(map) => map
            .iter()
            .any(|(k, v)| (k.as_str() == Some("privileged") && v.as_bool() == Some(true)) || privileged_anywhere(v)),
        Value::Sequence(seq) => seq.iter().any(privileged_anywhere),
        _ => false,
    }
}

fn agent_container(docs: &[Value]) -> Result<Value, Failed> {
    let ds = one_of_kind(docs, "DaemonSet")?;
    let containers = ds["spec"]["template"]["spec"]["containers"].as_sequence().cloned().unwrap_or_default();
    ensure!(containers.len() == 1, "the DaemonSet has {} containers, expected the agent alone", containers.len());
    Ok(containers[0].clone())
}

fn lint_strict() -> Result<(), Failed> {
    let out = helm(&["lint", "--strict", manifests::CHART])?;
    ensure!(out.contains("0 chart(s) failed"), "helm lint --strict:\n{out}");
    Ok(())
}

fn default_daemonset() -> Result<(), Failed> {
    let docs = render(&[])?;
    let ds = one_of_kind(&docs, "DaemonSet")?;
    ensure!(
        ds["metadata"]["namespace"].as_str() == Some("chaos-ebpf"),
        "the DaemonSet is not in the release namespace"
    );
    let pod = &ds["spec"]["template"]["spec"];
    ensure!(pod["hostPID"].as_bool() == Some(true), "hostPID is not true: {:?}", pod["hostPID"]);
    ensure!(pod["hostNetwork"].as_bool() == Some(true), "hostNetwork is not true");
    ensure!(pod["dnsPolicy"].as_str() == Some("ClusterFirstWithHostNet"), "dnsPolicy: {:?}", pod["dnsPolicy"]);
    ensure!(pod["terminationGracePeriodSeconds"].as_u64() == Some(30), "terminationGracePeriodSeconds is not 30");
    let tolerations = pod["tolerations"].as_sequence().cloned().unwrap_or_default();
    ensure!(
        tolerations.len() == 1
            && tolerations[0]["operator"].as_str() == Some("Exists")
            && tolerations[0]["key"].is_null(),
        "the tolerations are not one `operator: Exists` (every taint): {tolerations:?}"
    );
    let strategy = &ds["spec"]["updateStrategy"];
    ensure!(
        strategy["type"].as_str() == Some("RollingUpdate")
            && strategy["rollingUpdate"]["maxUnavailable"].as_u64() == Some(1),
        "updateStrategy: {strategy:?}"
    );
    ensure!(!docs.iter().any(privileged_anywhere), "something is rendered with privileged: true");

    let agent = agent_container(&docs)?;
    ensure!(agent["image"].as_str() == Some("localhost/chaos-ebpf:0.1.0"), "image: {:?}", agent["image"]);
    ensure!(agent["imagePullPolicy"].as_str() == Some("Never"), "imagePullPolicy: {:?}", agent["imagePullPolicy"]);
    let sc = &agent["securityContext"];
    ensure!(sc["runAsUser"].as_u64() == Some(0), "runAsUser is not 0");
    ensure!(strings(&sc["capabilities"]["add"]) == CAPABILITIES, "capabilities added: {:?}", sc["capabilities"]["add"]);
    ensure!(strings(&sc["capabilities"]["drop"]) == ["ALL"], "capabilities dropped: {:?}", sc["capabilities"]["drop"]);
    ensure!(sc["seccompProfile"]["type"].as_str() == Some("Unconfined"), "seccompProfile: {:?}", sc["seccompProfile"]);

    let args = strings(&agent["args"]);
    let mut command = strings(&agent["command"]);
    command.extend(&args);
    ensure!(
        command == ["chaos-ebpf", "agent", "--kubernetes", "--metrics-addr", "0.0.0.0:9465", "--log-level", "info"],
        "the agent's command line: {command:?}"
    );
    let env = agent["env"].as_sequence().cloned().unwrap_or_default();
    for (name, field) in
        [("NODE_NAME", "spec.nodeName"), ("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")]
    {
        ensure!(
            env.iter()
                .any(|e| e["name"].as_str() == Some(name)
                    && e["valueFrom"]["fieldRef"]["fieldPath"].as_str() == Some(field)),
            "no env {name} from fieldRef {field}: {env:?}"
        );
    }
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &agent[probe]["httpGet"];
        ensure!(
            get["path"].as_str() == Some("/metrics") && get["port"].as_str() == Some("metrics"),
            "{probe}: {get:?}"
        );
    }
    let ports = agent["ports"].as_sequence().cloned().unwrap_or_default();
    ensure!(
        ports.iter().any(|p| p["name"].as_str() == Some("metrics") && p["containerPort"].as_u64() == Some(9465)),
        "no metrics port 9465: {ports:?}"
    );

    // hostPath volumes, each mounted where the agent looks, the cgroup tree read-only.
    let volumes = pod["volumes"].as_sequence().cloned().unwrap_or_default();
    let mounts = agent["volumeMounts"].as_sequence().cloned().unwrap_or_default();
    for (path, kind, read_only) in [
        ("/sys/fs/bpf", "Directory", false),
        ("/run/chaos-ebpf", "DirectoryOrCreate", false),
        ("/sys/fs/cgroup", "Directory", true),
    ] {
        let volume = volumes
            .iter()
            .find(|v| v["hostPath"]["path"].as_str() == Some(path))
            .ok_or_else(|| format!("no hostPath volume {path}"))?;
        ensure!(volume["hostPath"]["type"].as_str() == Some(kind), "hostPath {path} is not of type {kind}");
        let mount = mounts
            .iter()
            .find(|m| m["name"] == volume["name"])
            .ok_or_else(|| format!("hostPath {path} is not mounted"))?;
        ensure!(mount["mountPath"].as_str() == Some(path), "hostPath {path} is mounted at {:?}", mount["mountPath"]);
        ensure!(
            mount["readOnly"].as_bool().unwrap_or(false) == read_only,
            "hostPath {path}: readOnly is not {read_only}"
        );
    }

    // The metrics Service selects the DaemonSet's pods.
    let service = one_of_kind(&docs, "Service")?;
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    let selector = service["spec"]["selector"].as_mapping().ok_or("the Service has no selector")?;
    ensure!(!selector.is_empty(), "the Service's selector is empty");
    for (k, v) in selector {
        ensure!(&labels[k] == v, "the Service selects {k:?}={v:?}, which the DaemonSet's pods lack");
    }
    ensure!(
        service["metadata"]["annotations"]["prometheus.io/scrape"].as_str() == Some("true"),
        "the Service has no prometheus.io/scrape annotation"
    );
    ensure!(service["spec"]["ports"][0]["port"].as_u64() == Some(9465), "the Service's port is not 9465");
    // Headless, so that it takes no address from the Service range (the lab fixes some).
    ensure!(service["spec"]["clusterIP"].as_str() == Some("None"), "the metrics Service is not headless");
    ensure!(of_kind(&docs, "Namespace").is_empty(), "a Namespace is rendered although createNamespace is false");
    Ok(())
}

fn default_rbac() -> Result<(), Failed> {
    let docs = render(&[])?;
    let cluster_role = one_of_kind(&docs, "ClusterRole")?;
    ensure!(verbs(cluster_role, "nodes") == BTreeSet::from(["get", "list", "watch"]), "nodes: {cluster_role:?}");
    ensure!(
        verbs(cluster_role, "pods") == BTreeSet::from(["get", "list", "watch", "delete"]),
        "the ClusterRole's verbs on pods: {:?}",
        verbs(cluster_role, "pods")
    );
    ensure!(
        verbs(cluster_role, "chaosexperiments") == BTreeSet::from(["get", "list", "watch", "patch", "update"]),
        "the ClusterRole's verbs on chaosexperiments: {:?}",
        verbs(cluster_role, "chaosexperiments")
    );
    ensure!(
        verbs(cluster_role, "chaosexperiments/status") == BTreeSet::from(["get", "patch", "update"]),
        "status verbs"
    );
    ensure!(verbs(cluster_role, "chaosexperiments/finalizers") == BTreeSet::from(["update"]), "finalizers verbs");
    ensure!(
        !grants(cluster_role, "secrets") && !grants(cluster_role, "*"),
        "the ClusterRole grants more than it should"
    );
    let roles = of_kind(&docs, "Role");
    ensure!(!roles.iter().any(|r| grants(r, "pods")), "a Role grants pods although every namespace is targeted");
    ensure!(roles.is_empty(), "Roles although every namespace is targeted: {}", roles.len());
    let binding = one_of_kind(&docs, "ClusterRoleBinding")?;
    ensure!(
        binding["subjects"][0]["name"] == one_of_kind(&docs, "ServiceAccount")?["metadata"]["name"]
            && binding["subjects"][0]["namespace"].as_str() == Some("chaos-ebpf"),
        "the ClusterRoleBinding does not bind the chart's ServiceAccount"
    );
    Ok(())
}

fn target_namespaces() -> Result<(), Failed> {
    let docs = render(&["--set", "targetNamespaces={a,b}"])?;
    let agent = agent_container(&docs)?;
    let args = strings(&agent["args"]);
    ensure!(args.starts_with(&["agent", "--kubernetes"]), "args: {args:?}");
    let namespaces: Vec<&str> = args.windows(2).filter(|w| w[0] == "--namespace").map(|w| w[1]).collect();
    ensure!(
        namespaces == ["a", "b"] && args.iter().filter(|a| **a == "--namespace").count() == 2,
        "--namespace flags: {args:?}"
    );

    for cluster_role in of_kind(&docs, "ClusterRole") {
        for resource in ["pods", "services", "chaosexperiments", "events"] {
            ensure!(
                !grants(cluster_role, resource),
                "a ClusterRole grants {resource} although targetNamespaces names the namespaces"
            );
        }
    }
    ensure!(grants(one_of_kind(&docs, "ClusterRole")?, "nodes"), "nodes are no longer granted cluster-wide");
    let pod_roles: Vec<&str> = of_kind(&docs, "Role")
        .into_iter()
        .filter(|r| grants(r, "pods"))
        .filter_map(|r| r["metadata"]["namespace"].as_str())
        .collect();
    ensure!(
        pod_roles == ["a", "b"],
        "Roles granting pods, by namespace: {pod_roles:?} (expected one in a and one in b)"
    );
    for role in of_kind(&docs, "Role").into_iter().filter(|r| grants(r, "pods")) {
        ensure!(
            verbs(role, "pods") == BTreeSet::from(["get", "list", "watch", "delete"])
                && grants(role, "chaosexperiments")
                && grants(role, "chaosexperiments/status"),
            "the Role in {:?} lacks what the agent does there",
            role["metadata"]["namespace"]
        );
    }
    for namespace in ["a", "b"] {
        let binding = of_kind(&docs, "RoleBinding")
            .into_iter()
            .find(|b| {
                b["metadata"]["namespace"].as_str() == Some(namespace) && b["roleRef"]["kind"].as_str() == Some("Role")
            })
            .ok_or_else(|| format!("no RoleBinding in {namespace}"))?;
        ensure!(
            binding["subjects"][0]["namespace"].as_str() == Some("chaos-ebpf"),
            "the RoleBinding in {namespace} does not bind the ServiceAccount of the release namespace"
        );
    }
    Ok(())
}

fn service_monitor() -> Result<(), Failed> {
    ensure!(of_kind(&render(&[])?, "ServiceMonitor").is_empty(), "a ServiceMonitor is rendered by default");
    let docs = render(&["--set", "serviceMonitor.enabled=true"])?;
    let monitor = one_of_kind(&docs, "ServiceMonitor")?;
    ensure!(
        monitor["apiVersion"].as_str() == Some("monitoring.coreos.com/v1"),
        "apiVersion {:?}",
        monitor["apiVersion"]
    );
    let service = one_of_kind(&docs, "Service")?;
    let selector =
        monitor["spec"]["selector"]["matchLabels"].as_mapping().ok_or("the ServiceMonitor has no selector")?;
    for (k, v) in selector {
        ensure!(&service["metadata"]["labels"][k] == v, "the ServiceMonitor selects {k:?}={v:?}, the Service lacks it");
    }
    ensure!(monitor["spec"]["endpoints"][0]["port"].as_str() == Some("metrics"), "the ServiceMonitor's port");
    Ok(())
}

fn plain_manifests_fresh() -> Result<(), Failed> {
    let path = manifests::repo_root().join(manifests::OUTPUT);
    let current = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let fresh = manifests::render().map_err(|e| format!("{e:#}"))?;
    ensure!(
        current == fresh,
        "{} is not what the chart renders now: run `cargo xtask manifests` and commit it",
        manifests::OUTPUT
    );
    let docs = documents(&current)?;
    let namespace = one_of_kind(&docs, "Namespace")?;
    ensure!(
        namespace["metadata"]["name"].as_str() == Some("chaos-ebpf"),
        "the Namespace is {:?}",
        namespace["metadata"]
    );
    let crd = one_of_kind(&docs, "CustomResourceDefinition")?;
    ensure!(
        crd["metadata"]["name"].as_str() == Some("chaosexperiments.chaos-ebpf.io"),
        "the CRD: {:?}",
        crd["metadata"]
    );
    ensure!(crd["spec"]["scope"].as_str() == Some("Namespaced"), "the CRD is not namespaced");
    ensure!(one_of_kind(&docs, "DaemonSet").is_ok(), "no DaemonSet in {}", manifests::OUTPUT);
    Ok(())
}

/// The default render with the CRD and Namespace, the render with target namespaces, and
/// the plain manifests, against Kubernetes 1.20's schemas (strict: unknown fields fail).
/// The ServiceMonitor is not in them (prometheus-operator's CRD).
fn valid_for_1_20() -> Result<Completion, Failed> {
    const NAME: &str = "rendered_objects_are_valid_kubernetes_1_20";
    if let Err(why) = tool_version("helm", &["version", "--short"]) {
        return Ok(skip(NAME, &format!("{why}: install helm v4.2.3 with `bash scripts/helm.sh` (scripts/setup.sh)")));
    }
    if let Err(why) = tool_version("kubernetes-validate", &["--version"]) {
        return Ok(skip(
            NAME,
            &format!("{why}: `pip install kubernetes-validate==1.24.0` (scripts/setup.sh installs it)"),
        ));
    }
    let dir = TempDir(std::env::temp_dir().join(format!("chaos-helm-test-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).map_err(|e| format!("{}: {e}", dir.0.display()))?;
    let base = ["template", manifests::RELEASE, manifests::CHART, "--namespace", manifests::RELEASE, "--include-crds"];
    let mut files = vec![manifests::repo_root().join(manifests::OUTPUT)];
    for (name, extra) in [
        ("defaults.yaml", vec!["--set", "createNamespace=true"]),
        ("targets.yaml", vec!["--set", "targetNamespaces={a,b}", "--set", "priorityClassName=system-node-critical"]),
    ] {
        let mut args = base.to_vec();
        args.extend(extra);
        let file = dir.0.join(name);
        std::fs::write(&file, helm(&args)?).map_err(|e| format!("{}: {e}", file.display()))?;
        files.push(file);
    }
    let out = Command::new("kubernetes-validate")
        .args(["--kubernetes-version", "1.20.0", "--strict", "--quiet"])
        .args(&files)
        .output()
        .map_err(|e| format!("running kubernetes-validate: {e}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success() && !text.contains("ERROR"), "kubernetes-validate ({}):\n{text}", out.status);
    Ok(Completion::Completed)
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
