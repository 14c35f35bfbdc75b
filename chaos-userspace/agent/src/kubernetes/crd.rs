//! The `ChaosExperiment` custom resource (chaos-ebpf.io/v1alpha1): its spec, status
//! and the CRD derived from them (`cargo xtask crd` writes it into the Helm chart; a
//! stale copy fails the tests). docs/kubernetes.md is the reference.
//!
//! The spec is the scenario's network-fault vocabulary (the same kinds, fields and
//! parsers as `inject` and the agent's API) with Kubernetes selectors in place of a
//! target; the status is written by each node's agent into its own entry of
//! `status.nodes` (server-side apply with one field manager per node, the list keyed by
//! node), so that agents never overwrite each other.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The annotation that pauses an experiment: its faults are reverted while it is "true".
pub const PAUSED_ANNOTATION: &str = "chaos-ebpf.io/paused";

/// A network chaos experiment on pods, reconciled by the chaos-ebpf agent of every node
/// that runs a selected pod.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[kube(
    group = "chaos-ebpf.io",
    version = "v1alpha1",
    kind = "ChaosExperiment",
    namespaced,
    status = "ChaosExperimentStatus",
    shortname = "chaosexp",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Selected","type":"integer","jsonPath":".status.selectedPods"}"#,
    printcolumn = r#"{"name":"Duration","type":"string","jsonPath":".spec.duration"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChaosExperimentSpec {
    /// The pods the faults act on.
    pub selector: PodSelector,
    /// How many of the matching pods: all (default), one, fixed (`value` pods) or
    /// percent (`value` percent, rounded up). The choice is a hash of the seed and each
    /// pod's namespace/name, so the same seed picks the same pods again.
    #[serde(default)]
    pub mode: Mode,
    /// With mode fixed: the number of pods; with mode percent: the percentage (1-100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u32>,
    /// Seeds the choice of pods and every drop decision; the same seed gives the same
    /// pods and the same drops.
    #[serde(default)]
    pub seed: u64,
    /// How long the faults stay after the resource is created (e.g. `30s`, `5m`); left
    /// out: until the resource is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// The network faults, each applied to every selected pod's network namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub faults: Vec<PodFault>,
    /// Pod actions, each done once per selected pod when the experiment starts (by the
    /// agent of the pod's node; recorded in the status, never repeated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub actions: Vec<PodAction>,
    /// Select the leading member among the matching pods instead of by mode: the one
    /// whose metrics say it leads, asked when the actions run (for actions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderSelector>,
}

/// A pod action.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodAction {
    /// pod-delete (through the API, as `kubectl delete pod`), container-kill (a
    /// signal to the container's main process; the kubelet restarts it per the pod's
    /// restartPolicy) or container-pause (SIGSTOP to every process of the container,
    /// SIGCONT when the experiment ends, is paused or deleted).
    pub kind: String,
    /// container-kill: the signal (SIGKILL default, SIGTERM, SIGINT, SIGSTOP, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// container-kill and container-pause: the container's name (default: the pod's
    /// first container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// The leader among the matching pods: the pod whose `http://<pod IP>:<metricsPort>/metrics`
/// has `<metric> 1` (etcd's `etcd_server_is_leader` on 2381 by default).
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaderSelector {
    #[serde(default = "default_metrics_port")]
    pub metrics_port: u16,
    #[serde(default = "default_leader_metric")]
    pub metric: String,
}

fn default_metrics_port() -> u16 {
    2381
}

fn default_leader_metric() -> String {
    "etcd_server_is_leader".into()
}

/// Which pods: those in `namespaces` (default: the experiment's own) that carry every
/// label of `labelSelectors`, whose names are in `pods` when given, and that run on a
/// node carrying every label of `nodeSelectors`. Only running pods with an IP count.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSelector {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label_selectors: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selectors: BTreeMap<String, String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    All,
    One,
    Fixed,
    Percent,
}

/// One network fault, as a scenario step or `inject` gives it, without a target (the
/// selected pods are the targets).
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodFault {
    /// loss, partition, blackhole, delay, rate, tls-refuse, ... (docs/faults.md).
    pub kind: String,
    /// Loss: the probability each packet is dropped (0-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    /// Partition: oneway or both (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Only traffic to and from these prefixes (CIDRs; an address is a /32 or /128).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// Only traffic to and from these pods' IPs, resolved from the API at each
    /// reconcile (a peer pod that restarts with a new IP is followed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_pods: Option<PeerPods>,
    /// tcp, udp or icmp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// A port or a range (`5432`, `8000-8080`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
    /// ingress, egress or both (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// Delay: how long (`100ms`); needs sch_fq on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<String>,
}

/// Peer pods: `namespaces` (default: the experiment's own) and labels.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerPods {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label_selectors: BTreeMap<String, String>,
}

/// What the agents report. Top-level fields follow from the spec and the clock alone,
/// so every agent writes the same values; `nodes` has one entry per node, each written
/// by that node's agent only.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChaosExperimentStatus {
    /// Pending, Running, Paused, Finished or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the faults end (RFC 3339), for an experiment with a duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    /// Pods selected over all nodes (as every agent computes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_pods: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub nodes: Vec<NodeStatus>,
}

/// A condition: `Valid` (the spec is accepted; False names the field, the problem and
/// the fix) or `Injected` (faults are in force on some pod).
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// One node's agent's report.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub node: String,
    /// The agent's pod (or process) that wrote this entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodInjection>,
    /// Sums over this node's faults of this experiment.
    #[serde(default)]
    pub packets_seen: u64,
    #[serde(default)]
    pub packets_dropped: u64,
    /// The pod actions this node's agent did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ActionRecord>,
    /// The last events on this node, newest last (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
}

/// A pod action done (or failed): it is not done again.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ActionRecord {
    /// Its index in spec.actions.
    pub index: u32,
    pub kind: String,
    pub namespace: String,
    pub pod: String,
    /// When it was done (RFC 3339).
    pub at: String,
    /// What happened: done, or why not.
    pub result: String,
    /// container-pause: the container's runtime id (to resume it, also after an agent
    /// restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// container-pause: when it was resumed (none: still paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<String>,
}

/// One selected pod on a node.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodInjection {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Injected, Failed (message says why) or Released.
    pub state: String,
    /// When the faults came into force (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// When they were taken away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub packets_dropped: u64,
}

/// The CRD as YAML, as `cargo xtask crd` writes it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let yaml = serde_yaml::to_string(&ChaosExperiment::crd()).expect("a CRD serialises");
    format!("# Generated from chaos-userspace/agent/src/kubernetes/crd.rs by `cargo xtask crd`: do not edit.\n{yaml}")
}

/// Where the CRD is checked in: the Helm chart's crds/ (deploy/kubernetes/chaos-ebpf.yaml
/// is rendered from the chart).
pub const CRD_PATH: &str = "deploy/helm/chaos-ebpf/crds/chaosexperiments.yaml";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_crd_is_fresh() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/helm/chaos-ebpf/crds/chaosexperiments.yaml");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == crd_yaml(),
            "{CRD_PATH} is not the CRD of the spec types: run `cargo xtask crd` to regenerate it"
        );
    }

    /// Kubernetes takes only structural schemas: every level typed, no $ref, and the
    /// keyed lists that keep the nodes' status entries apart.
    #[test]
    fn crd_schema_is_structural_and_keyed() {
        let text = crd_yaml();
        assert!(!text.contains("$ref") && !text.contains("anyOf") && !text.contains("oneOf"), "{text}");
        let crd: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert!(version["subresources"]["status"].is_object());
        let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        assert_eq!(status["nodes"]["x-kubernetes-list-type"], "map");
        assert_eq!(status["nodes"]["x-kubernetes-list-map-keys"][0], "node");
        let faults = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["faults"];
        assert_eq!(faults["maxItems"], 16);
    }
}
