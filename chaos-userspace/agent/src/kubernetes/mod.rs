//! The Kubernetes controller of the node agent (`chaos-ebpf agent --kubernetes`): each
//! node's agent watches `ChaosExperiment` resources and pods, applies the faults of the
//! experiments that select pods on its own node through the agent's core (the same map
//! writes, leases and revert as the local API), follows pod churn, reports into its own
//! entry of the status, and reverts through a per-node finalizer when a resource is
//! deleted. docs/kubernetes.md describes the behaviour.

pub mod crd;
mod probing;
mod procfs;
mod select;
mod state;
mod steps;

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::{
    api::{Api, Patch, PatchParams},
    runtime::{reflector, watcher, WatchStreamExt},
    Client,
};
use tokio::sync::Notify;

use crate::{core::warn, server::Handle};
use crd::ChaosExperiment;

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// This node's name (the DaemonSet passes spec.nodeName as NODE_NAME).
    pub node: String,
    /// The namespaces whose experiments and pods this agent acts on; empty: all.
    pub namespaces: Vec<String>,
    /// The agent's pod, named in the status (POD_NAME), or the host's process.
    pub agent: String,
    /// Where the pods' processes are (/proc; the agent runs with hostPID).
    pub proc_root: PathBuf,
}

/// A connected client, made before the agent loads anything so that a missing
/// configuration changes nothing (exit 2 naming the fix).
pub async fn connect() -> Result<Client> {
    Client::try_default().await.map_err(|e| {
        chaos_datapath::Error::unsupported(
            format!("no Kubernetes API server to talk to: {e}"),
            "run the agent in a pod (the Helm chart sets it up) or set KUBECONFIG to a kubeconfig file",
        )
        .into()
    })
}

/// Lease of every fault the controller holds: renewed at each pass (every RESYNC at
/// most), so a controller that stops renewing loses its faults within it.
const LEASE: Duration = Duration::from_secs(10);
/// A pass over every experiment at least this often (renewals, durations ending, pods
/// whose processes were not there yet).
const RESYNC: Duration = Duration::from_secs(2);

/// Watches experiments, pods and nodes in the chosen namespaces and reconciles every
/// experiment on each change and at least every RESYNC, until the agent stops.
pub async fn run(client: Client, handle: Handle, options: KubeOptions) {
    let wake = Arc::new(Notify::new());
    let scopes: Vec<Option<String>> =
        if options.namespaces.is_empty() { vec![None] } else { options.namespaces.iter().cloned().map(Some).collect() };
    let mut experiments = Vec::new();
    let mut pods = Vec::new();
    let mut services = Vec::new();
    for scope in &scopes {
        experiments.push(watch::<ChaosExperiment>(api(&client, scope.as_deref()), wake.clone()));
        pods.push(watch::<Pod>(api(&client, scope.as_deref()), wake.clone()));
        services.push(watch::<Service>(api(&client, scope.as_deref()), wake.clone()));
    }
    let nodes = watch::<Node>(Api::all(client.clone()), wake.clone());
    let mut controller = state::Controller::new(client, handle, options, wake.clone());
    // The next start or end of a step: a pass then, not up to RESYNC later.
    let mut boundary: Option<Duration> = None;
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(boundary.map_or(RESYNC, |b| b.min(RESYNC))) => {}
        }
        // Events come in bursts (a Deployment's pods); one pass takes them all.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let experiments: Vec<Arc<ChaosExperiment>> = experiments.iter().flat_map(|s| s.state()).collect();
        let pods: Vec<Arc<Pod>> = pods.iter().flat_map(|s| s.state()).collect();
        let services: Vec<Arc<Service>> = services.iter().flat_map(|s| s.state()).collect();
        let node_labels: BTreeMap<String, BTreeMap<String, String>> = nodes
            .state()
            .iter()
            .filter_map(|n| Some((n.metadata.name.clone()?, n.metadata.labels.clone().unwrap_or_default())))
            .collect();
        boundary = controller.pass(&experiments, &pods, &services, &node_labels).await;
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A reflector store kept up to date in the background; `wake` is notified on each
/// change. Watch errors are logged and retried with backoff.
fn watch<K>(api: Api<K>, wake: Arc<Notify>) -> reflector::Store<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    <K as kube::Resource>::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default()).default_backoff().reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => wake.notify_one(),
                Err(e) => warn(&format!("watching {}: {e}", K::kind(&Default::default()))),
            }
        }
    });
    store
}

/// Server-side apply by this node's field manager: its finalizer and its status entry
/// are its own, so agents on other nodes never overwrite them.
fn apply_params(node: &str) -> PatchParams {
    PatchParams::apply(&format!("chaos-ebpf-agent.{node}")).force()
}

async fn patch_status(api: &Api<ChaosExperiment>, name: &str, node: &str, status: serde_json::Value) -> Result<()> {
    let body = serde_json::json!({
        "apiVersion": "chaos-ebpf.io/v1alpha1",
        "kind": "ChaosExperiment",
        "status": status,
    });
    api.patch_status(name, &apply_params(node), &Patch::Apply(&body))
        .await
        .with_context(|| format!("writing the status of {name}"))?;
    Ok(())
}

/// This node's finalizer on an experiment, present or not.
async fn set_finalizer(api: &Api<ChaosExperiment>, name: &str, node: &str, present: bool) -> Result<()> {
    let finalizers: Vec<String> = if present { vec![finalizer(node)] } else { Vec::new() };
    let body = serde_json::json!({
        "apiVersion": "chaos-ebpf.io/v1alpha1",
        "kind": "ChaosExperiment",
        "metadata": { "finalizers": finalizers },
    });
    // A separate field manager from the status': an apply owns what it names, and the
    // status apply names no finalizer.
    api.patch(name, &PatchParams::apply(&format!("chaos-ebpf-agent.{node}.finalizer")).force(), &Patch::Apply(&body))
        .await
        .with_context(|| format!("{} the finalizer of {name}", if present { "adding" } else { "removing" }))?;
    Ok(())
}

/// The finalizer of one node's agent: `chaos-ebpf.io/revert.<node>` (the name part cut
/// to the 63 characters Kubernetes allows).
pub fn finalizer(node: &str) -> String {
    let name: String = format!("revert.{node}").chars().take(63).collect();
    format!("chaos-ebpf.io/{}", name.trim_end_matches(['.', '-']))
}
