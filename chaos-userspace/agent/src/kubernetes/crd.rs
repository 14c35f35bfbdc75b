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
    /// whose metrics say it leads, asked when the actions are due, and when the faults
    /// begin (that pod stays their target until they end, also once it no longer leads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderSelector>,
    /// A timeline: faults and actions that start at an offset from the creation of the
    /// resource, the faults for a while. Without `duration`, an experiment whose faults
    /// are all in steps with a duration ends with its last step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub steps: Vec<ExperimentStep>,
    /// The steady-state hypothesis, as in a scenario file (docs/scenarios.md, kebab-case
    /// keys): checked by each node's agent that has selected pods, before its first fault
    /// (nothing is injected until every probe passed), while the faults are in force,
    /// and after the end (recovery). The verdict is in status.nodes[].hypothesis.
    /// Command probes are refused: they would run as the agent on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "embedded::<Option<chaos_model::scenario::RawHypothesis>>")]
    pub hypothesis: Option<chaos_model::scenario::RawHypothesis>,
    /// Abort guards, as in a scenario file: when one fires on any node, every node
    /// reverts its faults and the phase becomes Aborted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "embedded::<Vec<chaos_model::scenario::RawGuard>>")]
    pub abort: Vec<chaos_model::scenario::RawGuard>,
}

/// The schema of a scenario type embedded in the spec. A scenario file takes a duration
/// as a string or a bare number of seconds; Kubernetes takes one type per field (a
/// structural schema), and the agent reads a string: a duration is a string here.
fn embedded<T: JsonSchema>(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    fn strings_only(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if map.get("type").and_then(|t| t.as_array()).is_some_and(|t| t.iter().any(|t| t == "string")) {
                    map.insert("type".into(), "string".into());
                }
                map.values_mut().for_each(strings_only);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strings_only),
            _ => {}
        }
    }
    let mut value: serde_json::Value = T::json_schema(generator).into();
    strings_only(&mut value);
    schemars::Schema::try_from(value).unwrap_or_default()
}

/// One step of the timeline.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExperimentStep {
    /// Named in events and action records.
    pub name: String,
    /// When the step starts, from the creation of the resource (default 0s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// How long its faults stay; left out: until the experiment ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Faults, as in spec.faults, on the selected pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub faults: Vec<PodFault>,
    /// Pod actions, as in spec.actions, done once when the step starts (the leader is
    /// asked then).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub actions: Vec<PodAction>,
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
/// has `<metric> 1` (etcd's `etcd_server_is_leader` on 2381 by default), or with
/// `annotation`, the pod annotated `<annotation>: "true"` (set by the workload or an
/// operator). Exactly one pod must say so.
#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaderSelector {
    #[serde(default = "default_metrics_port")]
    pub metrics_port: u16,
    #[serde(default = "default_leader_metric")]
    pub metric: String,
    /// An annotation instead of the metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotation: Option<String>,
}

impl LeaderSelector {
    /// How the leader is found, for events.
    pub fn describe(&self) -> String {
        match &self.annotation {
            Some(key) => format!("annotation {key}: \"true\""),
            None => format!("{} 1 on port {}", self.metric, self.metrics_port),
        }
    }
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
    /// Pending, Running, Paused, Finished, Aborted (a guard fired) or Failed.
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
    /// With a leader selector and faults: the pod that led when the faults began, their
    /// target on this node until they end (also when it no longer leads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<PinnedPod>,
    /// The hypothesis and guards as this node's agent checked them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypothesis: Option<HypothesisStatus>,
    /// The last events on this node, newest last (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PinnedPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Where one node's check of the hypothesis is, and its verdict.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HypothesisStatus {
    /// Steady (checking before the faults; nothing is injected yet), During (faults may
    /// be in force), Recovery (after the end), Done, or SteadyFailed (the steady state
    /// was not reached: nothing was injected).
    pub stage: String,
    /// When Done: passed, failed or not judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Why, when the verdict is not passed or the steady state failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The guard that fired and what it saw: every node reverts its faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// Per probe and phase (Before, During, After): checks and failures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ProbeStatus>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeStatus {
    pub name: String,
    pub phase: String,
    pub checks: u32,
    pub failures: u32,
    /// Latency percentiles of the checks, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<f64>,
}

/// A pod action done (or failed): it is not done again.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ActionRecord {
    /// Its index in spec.actions followed by every step's actions, in order.
    pub index: u32,
    /// The step it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
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
