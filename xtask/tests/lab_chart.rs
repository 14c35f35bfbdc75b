//! The lab workload's Helm chart (deploy/helm/chaos-lab) without a cluster: `helm lint
//! --strict`, then `helm template` with its defaults and with `etcd.members=5,
//! nodes.replicas=7`, parsed as YAML: the StatefulSet has one pod per member, each member
//! its own ClusterIP Service at a distinct address inside the Service range, the nodes'
//! `--etcd` names exactly those addresses (and etcd's `--initial-cluster` too), nothing
//! names a host by DNS (the test cluster has none), the Deployment has the replicas asked
//! for. Also: an address outside the range is refused, the alert rules are the compose
//! stack's file, the chart's appVersion is the workspace version, and
//! deploy/kubernetes/lab.yaml is what deploy/kubernetes/render.sh makes of the chart now.
//!
//! Needs no root and no cluster. Without helm every test ends as skipped with the reason
//! (libtest-mimic), never as passed.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use charts::{documents, of_kind, skip};
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use serde_yaml::Value;

mod charts;

/// The test cluster's Service range (docs/addresses.md), the chart's default.
const SERVICE_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 51, 100, 192), 26);

type Test = fn(&Path) -> Result<(), Failed>;

fn main() {
    let args = Arguments::from_args();
    let tests: Vec<(&str, Test)> = vec![
        ("lab_chart_lints_strict", lints_strict),
        ("lab_chart_defaults_3_members_5_nodes", |helm| renders(helm, &[], 3, 5)),
        ("lab_chart_5_members_7_nodes", |helm| renders(helm, &["etcd.members=5,nodes.replicas=7"], 5, 7)),
        ("lab_chart_refuses_bad_addresses", refuses_bad_addresses),
        ("lab_chart_alert_rules_and_version", alert_rules_and_version),
        ("lab_yaml_is_fresh", lab_yaml_fresh),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, test)| {
            Trial::ignorable_test(name, move || match helm() {
                Ok(helm) => test(&helm).map(|()| Completion::Completed),
                Err(why) => Ok(skip(name, &why)),
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> String {
    repo().join("deploy/helm/chaos-lab").display().to_string()
}

/// helm on PATH, or why there is none.
fn helm() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join("helm")).find(|candidate| candidate.is_file()).ok_or_else(|| {
        "no helm on PATH: install helm v3 or v4 (docs/kubernetes.md, \"The lab workload on Kubernetes\")".into()
    })
}

/// Runs helm: Ok(stdout) on exit 0, Err(stderr) otherwise.
fn run_helm(helm: &Path, args: &[&str]) -> Result<Result<String, String>, Failed> {
    let out = Command::new(helm).args(args).output().map_err(|e| format!("running {}: {e}", helm.display()))?;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    Ok(if out.status.success() { Ok(text(&out.stdout)) } else { Err(text(&out.stderr)) })
}

fn template(helm: &Path, sets: &[&str]) -> Result<String, Failed> {
    let chart = chart();
    let mut args = vec!["template", "chaos-lab", chart.as_str(), "--namespace", "chaos-lab"];
    for set in sets {
        args.extend(["--set", set]);
    }
    run_helm(helm, &args)?.map_err(|e| format!("helm template {sets:?} failed: {e}").into())
}

fn lints_strict(helm: &Path) -> Result<(), Failed> {
    run_helm(helm, &["lint", "--strict", &chart()])?.map(drop).map_err(|e| format!("helm lint --strict: {e}").into())
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(value, |v, key| v.get(*key))?.as_str()
}

fn component(doc: &Value) -> Option<&str> {
    str_at(doc, &["metadata", "labels", "app.kubernetes.io/component"])
}

/// A host address of the Service range (neither its network nor its broadcast address).
fn in_service_net(ip: Ipv4Addr) -> bool {
    let (net, prefix) = SERVICE_NET;
    let (ip, net) = (u32::from(ip), u32::from(net));
    ip > net && ip < net + (1u32 << (32 - prefix)) - 1
}

/// Every string of every container's command and args in the documents.
fn container_strings(docs: &[&Value]) -> Vec<String> {
    let mut out = Vec::new();
    for doc in docs {
        let containers = doc["spec"]["template"]["spec"]["containers"].as_sequence();
        for container in containers.into_iter().flatten() {
            for key in ["command", "args"] {
                for item in container[key].as_sequence().into_iter().flatten() {
                    out.extend(item.as_str().map(str::to_owned));
                }
            }
        }
    }
    out
}

/// The host of every http:// or https:// URL in `text`.
fn url_hosts(text: &str) -> Vec<String> {
    let mut hosts = Vec::new();
    for scheme in ["http://", "https://"] {
        for (at, _) in text.match_indices(scheme) {
            let rest = &text[at + scheme.len()..];
            let end = rest.find(|c: char| matches!(c, ':' | '/' | ',' | '"') || c.is_whitespace());
            hosts.push(rest[..end.unwrap_or(rest.len())].to_owned());
        }
    }
    hosts
}

fn renders(helm: &Path, sets: &[&str], members: usize, replicas: u64) -> Result<(), Failed> {
    let rendered = template(helm, sets)?;
    let docs = documents(&rendered)?;
    for doc in &docs {
        for label in ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"] {
            if str_at(doc, &["metadata", "labels", label]).is_none() {
                let (kind, name) = (str_at(doc, &["kind"]), str_at(doc, &["metadata", "name"]));
                return Err(format!("{kind:?} {name:?} has no label {label}").into());
            }
        }
    }

    let statefulsets = of_kind(&docs, "StatefulSet");
    let [etcd] = statefulsets.as_slice() else {
        return Err(format!("{} StatefulSets, want 1", statefulsets.len()).into());
    };
    if etcd["spec"]["replicas"].as_u64() != Some(members as u64) {
        return Err(format!("the etcd StatefulSet has replicas {:?}, want {members}", etcd["spec"]["replicas"]).into());
    }

    // One ClusterIP Service per member, selecting that member's pod.
    let services = of_kind(&docs, "Service");
    let mut ips = Vec::new();
    for i in 0..members {
        let name = format!("chaos-lab-etcd-{i}");
        let service = services
            .iter()
            .find(|s| str_at(s, &["metadata", "name"]) == Some(name.as_str()))
            .ok_or_else(|| format!("no Service {name}"))?;
        if str_at(service, &["spec", "selector", "statefulset.kubernetes.io/pod-name"]) != Some(name.as_str()) {
            return Err(format!("Service {name} does not select the pod {name}").into());
        }
        let ip: Ipv4Addr = str_at(service, &["spec", "clusterIP"])
            .ok_or_else(|| format!("Service {name} has no fixed clusterIP"))?
            .parse()
            .map_err(|e| format!("Service {name}'s clusterIP: {e}"))?;
        if !in_service_net(ip) {
            return Err(
                format!("Service {name}'s clusterIP {ip} is outside {}/{}", SERVICE_NET.0, SERVICE_NET.1).into()
            );
        }
        ips.push(ip);
    }
    let etcd_services = services.iter().filter(|s| component(s) == Some("etcd")).count();
    if etcd_services != members {
        return Err(format!("{etcd_services} etcd Services for {members} members").into());
    }
    if ips.iter().collect::<BTreeSet<_>>().len() != members {
        return Err(format!("the members' ClusterIPs are not distinct: {ips:?}").into());
    }
    // Prometheus' fixed address is another one of the range.
    if let Some(ip) =
        services.iter().find(|s| component(s) == Some("prometheus")).and_then(|s| str_at(s, &["spec", "clusterIP"]))
    {
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("Prometheus' clusterIP: {e}"))?;
        if !in_service_net(ip) || ips.contains(&ip) {
            return Err(format!("Prometheus' clusterIP {ip} is outside the range or a member's").into());
        }
    }

    // The nodes: replicas, and --etcd = every member's client URL, in member order.
    let deployments = of_kind(&docs, "Deployment");
    let nodes = deployments
        .iter()
        .find(|d| component(d) == Some("node"))
        .ok_or("no Deployment labelled app.kubernetes.io/component: node")?;
    if nodes["spec"]["replicas"].as_u64() != Some(replicas) {
        return Err(
            format!("the nodes' Deployment has replicas {:?}, want {replicas}", nodes["spec"]["replicas"]).into()
        );
    }
    let node_args = container_strings(&[nodes]);
    let etcd_flag = node_args
        .iter()
        .find_map(|a| a.strip_prefix("--etcd="))
        .ok_or_else(|| format!("the nodes have no --etcd=: {node_args:?}"))?;
    let want_urls: Vec<String> = ips.iter().map(|ip| format!("http://{ip}:2379")).collect();
    if etcd_flag.split(',').collect::<Vec<_>>() != want_urls {
        return Err(format!("the nodes' --etcd is {etcd_flag}, want {}", want_urls.join(",")).into());
    }
    for flag in ["--name=$(POD_NAME)", "--listen=$(POD_IP):9100", "--journal=/journal/$(POD_NAME).jsonl"] {
        if !node_args.iter().any(|a| a == flag) {
            return Err(format!("the nodes have no {flag}: {node_args:?}").into());
        }
    }

    // etcd's --initial-cluster names the same addresses, each member by its pod name.
    let etcd_script = container_strings(&[etcd]).join(" ");
    let want_cluster: Vec<String> =
        ips.iter().enumerate().map(|(i, ip)| format!("chaos-lab-etcd-{i}=http://{ip}:2380")).collect();
    if !etcd_script.contains(&format!("--initial-cluster {}", want_cluster.join(","))) {
        return Err(format!("etcd's --initial-cluster is not {}: {etcd_script}", want_cluster.join(",")).into());
    }

    // No DNS names: every URL in a command or argument has an IPv4 address as its host
    // (or $ip, the member's own address chosen from the list checked above).
    let workloads: Vec<&Value> = deployments.iter().chain(statefulsets.iter()).copied().collect();
    for text in container_strings(&workloads) {
        for host in url_hosts(&text) {
            if host != "$ip" && host.parse::<Ipv4Addr>().is_err() {
                return Err(
                    format!("a container's arguments name the host `{host}`: the cluster has no DNS ({text})").into()
                );
            }
        }
    }
    for dns in [".svc", "cluster.local"] {
        if rendered.contains(dns) {
            return Err(format!("the rendered manifests mention `{dns}`: the cluster has no DNS").into());
        }
    }

    // The image: the workspace version, never pulled.
    let image = format!("localhost/chaos-ebpf:{}", env!("CARGO_PKG_VERSION"));
    for doc in &workloads {
        for container in doc["spec"]["template"]["spec"]["containers"].as_sequence().into_iter().flatten() {
            if container["image"].as_str() != Some(image.as_str())
                || container["imagePullPolicy"].as_str() != Some("Never")
            {
                let (name, got, pull) = (&container["name"], &container["image"], &container["imagePullPolicy"]);
                return Err(format!("container {name:?}: image {got:?} pull {pull:?}, want {image} Never").into());
            }
        }
    }
    Ok(())
}

fn refuses_bad_addresses(helm: &Path) -> Result<(), Failed> {
    for (set, says) in [
        ("etcd.firstClusterIP=198.51.100.253", "etcd member 2's ClusterIP 198.51.100.255 is not a host address"),
        ("etcd.clusterIPs={198.51.100.200,198.51.100.200,198.51.100.201}", "not distinct"),
        ("etcd.clusterIPs={198.51.100.200}", "has 1 addresses for 3 members"),
        ("prometheus.clusterIP=198.51.100.100", "prometheus.clusterIP 198.51.100.100 is not a host address"),
        ("prometheus.clusterIP=198.51.100.241", "also an etcd member's"),
    ] {
        match run_helm(helm, &["template", "chaos-lab", &chart(), "--set", set])? {
            Ok(_) => return Err(format!("helm template --set {set} rendered; want a refusal").into()),
            Err(e) if e.contains(says) => {}
            Err(e) => return Err(format!("--set {set} was refused without saying `{says}`: {e}").into()),
        }
    }
    Ok(())
}

fn alert_rules_and_version(_: &Path) -> Result<(), Failed> {
    let read = |path: PathBuf| std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()));
    let chart = PathBuf::from(chart());
    if read(chart.join("files/alerts.yml"))? != read(repo().join("deploy/compose/prometheus/alerts.yml"))? {
        return Err("deploy/helm/chaos-lab/files/alerts.yml differs from deploy/compose/prometheus/alerts.yml".into());
    }
    let meta: Value =
        serde_yaml::from_slice(&read(chart.join("Chart.yaml"))?).map_err(|e| format!("Chart.yaml: {e}"))?;
    if meta["appVersion"].as_str() != Some(env!("CARGO_PKG_VERSION")) {
        let got = &meta["appVersion"];
        return Err(format!(
            "Chart.yaml's appVersion {got:?} is not the workspace version {}",
            env!("CARGO_PKG_VERSION")
        )
        .into());
    }
    Ok(())
}

fn lab_yaml_fresh(helm: &Path) -> Result<(), Failed> {
    let dir = helm.parent().map(|d| d.display().to_string()).unwrap_or_default();
    let out = Command::new("bash")
        .arg(repo().join("deploy/kubernetes/render.sh"))
        .arg("--check")
        .env("PATH", format!("{dir}:{}", std::env::var("PATH").unwrap_or_default()))
        .output()
        .map_err(|e| format!("running render.sh: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned().into());
    }
    Ok(())
}
