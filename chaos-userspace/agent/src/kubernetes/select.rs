//! Which pods an experiment acts on: the selector's filters, then the mode applied to a
//! ranking by a hash of the seed and each pod's namespace/name. Every agent computes the
//! same choice from the same pod list, and a pod re-created under its name (a
//! StatefulSet's) is picked again.

use std::{collections::BTreeMap, sync::Arc};

use chaos_model::Problem;
use k8s_openapi::api::core::v1::Pod;

use super::crd::{Mode, PodSelector};

/// A candidate: a running pod with an IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    pub ip: String,
}

/// The running pods with an IP (and not being deleted) that `selector` matches, given
/// the labels of each node. `default_namespace` stands for an empty namespace list.
pub fn matching(
    pods: &[Arc<Pod>],
    selector: &PodSelector,
    default_namespace: &str,
    node_labels: &BTreeMap<String, BTreeMap<String, String>>,
) -> Vec<Candidate> {
    let namespaces: Vec<&str> = if selector.namespaces.is_empty() {
        vec![default_namespace]
    } else {
        selector.namespaces.iter().map(String::as_str).collect()
    };
    let mut out: Vec<Candidate> = pods
        .iter()
        .filter_map(|pod| {
            let meta = &pod.metadata;
            let namespace = meta.namespace.as_deref()?;
            let name = meta.name.as_deref()?;
            if !namespaces.contains(&namespace) || meta.deletion_timestamp.is_some() {
                return None;
            }
            if !selector.pods.is_empty() && !selector.pods.iter().any(|p| p == name) {
                return None;
            }
            let labels = meta.labels.clone().unwrap_or_default();
            if !has_all(&labels, &selector.label_selectors) {
                return None;
            }
            let status = pod.status.as_ref()?;
            if status.phase.as_deref() != Some("Running") {
                return None;
            }
            let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
            let node = pod.spec.as_ref()?.node_name.clone()?;
            if !selector.node_selectors.is_empty() {
                let labels = node_labels.get(&node)?;
                if !has_all(labels, &selector.node_selectors) {
                    return None;
                }
            }
            Some(Candidate {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                uid: meta.uid.clone().unwrap_or_default(),
                node,
                ip,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

pub fn has_all(labels: &BTreeMap<String, String>, wanted: &BTreeMap<String, String>) -> bool {
    wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// How many of `n` candidates the mode takes (checked: `check_mode`).
pub fn how_many(mode: Mode, value: Option<u32>, n: usize) -> usize {
    match mode {
        Mode::All => n,
        Mode::One => n.min(1),
        Mode::Fixed => n.min(value.unwrap_or(0) as usize),
        Mode::Percent => (n * value.unwrap_or(0) as usize).div_ceil(100).min(n),
    }
}

/// The mode's value, checked.
pub fn check_mode(mode: Mode, value: Option<u32>) -> Result<(), Problem> {
    match (mode, value) {
        (Mode::Fixed, Some(v)) if v >= 1 => Ok(()),
        (Mode::Fixed, _) => Err(Problem::new("spec.value: mode fixed needs a value of 1 or more", "set spec.value: N")),
        (Mode::Percent, Some(v)) if (1..=100).contains(&v) => Ok(()),
        (Mode::Percent, _) => {
            Err(Problem::new("spec.value: mode percent needs a value from 1 to 100", "set spec.value: 50 for half"))
        }
        (Mode::All | Mode::One, Some(_)) => Err(Problem::new(
            "spec.value: only modes fixed and percent take a value",
            "remove spec.value, or set spec.mode: fixed or percent",
        )),
        (Mode::All | Mode::One, None) => Ok(()),
    }
}

/// The candidates the mode picks: ranked by SipHash(seed, namespace/name), the first
/// `how_many`, returned in namespace/name order.
pub fn pick(candidates: Vec<Candidate>, mode: Mode, value: Option<u32>, seed: u64) -> Vec<Candidate> {
    let take = how_many(mode, value, candidates.len());
    if take == candidates.len() {
        return candidates;
    }
    let mut ranked: Vec<(u64, Candidate)> =
        candidates.into_iter().map(|c| (rank(seed, &c.namespace, &c.name), c)).collect();
    ranked.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| (&a.1.namespace, &a.1.name).cmp(&(&b.1.namespace, &b.1.name))));
    let mut chosen: Vec<Candidate> = ranked.into_iter().take(take).map(|(_, c)| c).collect();
    chosen.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    chosen
}

/// A pod's rank: the name folded into words (FNV-1a), then keyed by the seed.
fn rank(seed: u64, namespace: &str, name: &str) -> u64 {
    let mut fnv: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in namespace.bytes().chain([b'/']).chain(name.bytes()) {
        fnv = (fnv ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    chaos_ebpf_common::siphash24(seed, 0x706f_6473, &[fnv, (namespace.len() + name.len()) as u64])
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use kube::api::ObjectMeta;

    fn pod(namespace: &str, name: &str, labels: &[(&str, &str)], phase: &str, ip: Option<&str>) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec { node_name: Some("node-a".into()), ..PodSpec::default() }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ip: ip.map(str::to_owned),
                ..PodStatus::default()
            }),
        })
    }

    fn names(c: &[Candidate]) -> Vec<&str> {
        c.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn selector_filters_namespace_labels_names_phase_and_ip() {
        let pods = vec![
            pod("lab", "n-1", &[("app", "node")], "Running", Some("10.0.0.1")),
            pod("lab", "n-0", &[("app", "node")], "Running", Some("10.0.0.2")),
            pod("lab", "etcd-0", &[("app", "etcd")], "Running", Some("10.0.0.3")),
            pod("lab", "n-2", &[("app", "node")], "Pending", None),
            pod("other", "n-9", &[("app", "node")], "Running", Some("10.0.0.9")),
        ];
        let mut selector = PodSelector::default();
        selector.label_selectors.insert("app".into(), "node".into());
        let none = BTreeMap::new();
        assert_eq!(names(&matching(&pods, &selector, "lab", &none)), ["n-0", "n-1"]);
        selector.pods = vec!["n-1".into()];
        assert_eq!(names(&matching(&pods, &selector, "lab", &none)), ["n-1"]);
        selector.pods.clear();
        selector.namespaces = vec!["lab".into(), "other".into()];
        assert_eq!(names(&matching(&pods, &selector, "x", &none)), ["n-0", "n-1", "n-9"]);
        selector.node_selectors.insert("zone".into(), "a".into());
        assert!(matching(&pods, &selector, "x", &none).is_empty(), "no node carries zone=a");
        let labels = BTreeMap::from([("node-a".to_owned(), BTreeMap::from([("zone".to_owned(), "a".to_owned())]))]);
        assert_eq!(matching(&pods, &selector, "x", &labels).len(), 3);
    }

    #[test]
    fn modes_pick_the_same_pods_for_the_same_seed() {
        let candidates: Vec<Candidate> = (0..10)
            .map(|i| Candidate {
                namespace: "lab".into(),
                name: format!("n-{i}"),
                uid: format!("u{i}"),
                node: "a".into(),
                ip: format!("10.0.0.{i}"),
            })
            .collect();
        assert_eq!(pick(candidates.clone(), Mode::All, None, 1).len(), 10);
        assert_eq!(pick(candidates.clone(), Mode::Percent, Some(25), 1).len(), 3);
        let three = pick(candidates.clone(), Mode::Fixed, Some(3), 7);
        assert_eq!(three.len(), 3);
        let mut shuffled = candidates.clone();
        shuffled.reverse();
        assert_eq!(pick(shuffled, Mode::Fixed, Some(3), 7), three, "order of the list does not matter");
        let choices: std::collections::BTreeSet<Vec<String>> = (0..20)
            .map(|seed| pick(candidates.clone(), Mode::One, None, seed).into_iter().map(|c| c.name).collect())
            .collect();
        assert!(choices.len() > 3, "other seeds pick other pods: {choices:?}");
        assert!(check_mode(Mode::Fixed, None).is_err() && check_mode(Mode::Percent, Some(101)).is_err());
        assert!(check_mode(Mode::All, Some(2)).unwrap_err().problem.starts_with("spec.value"));
    }
}
