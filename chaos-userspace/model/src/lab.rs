//! The `lab:` section of a scenario: what embedded lab to build (chaos-lab builds it);
//! and the `cluster:` section: which containers the lab's roles name instead.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::problem::Problem;

/// Lab namespaces are named chaos-lab-<node>; `cleanup` removes leftovers by this prefix.
pub const LAB_PREFIX: &str = "chaos-lab-";
const MAX_NODES: u32 = 64;
const MAX_RATE: u32 = 5000;

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabSpec {
    /// Nodes n1..nN, at 192.0.2.1..N.
    pub nodes: u32,
    pub traffic: Option<TrafficSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrafficSpec {
    pub from: String,
    pub to: String,
    /// UDP echo requests per second.
    pub rate: u32,
}

impl LabSpec {
    /// Checks the section; a problem names its field (`nodes`, `traffic`).
    pub fn validate(&self) -> Result<(), Problem> {
        if !(2..=MAX_NODES).contains(&self.nodes) {
            return Err(Problem::field(
                "nodes",
                format!("{} nodes; the lab has 2..{MAX_NODES}", self.nodes),
                "set nodes: 2 or more",
            ));
        }
        if let Some(t) = &self.traffic {
            for (field, node) in [("traffic", &t.from), ("traffic", &t.to)] {
                if self.node_index(node).is_none() {
                    return Err(Problem::field(
                        field,
                        format!("traffic names node '{node}', which the lab does not have"),
                        format!("use n1..n{}", self.nodes),
                    ));
                }
            }
            if t.from == t.to || !(1..=MAX_RATE).contains(&t.rate) {
                return Err(Problem::field(
                    "traffic",
                    "traffic needs two different nodes and a rate of 1..5000 per second",
                    "e.g. traffic: {from: n1, to: n2, rate: 200}",
                ));
            }
        }
        Ok(())
    }

    pub fn node_index(&self, name: &str) -> Option<u32> {
        name.strip_prefix('n')?.parse::<u32>().ok().filter(|i| (1..=self.nodes).contains(i))
    }

    pub fn describe(&self) -> String {
        let mut out = format!(
            "{} nodes (netns {LAB_PREFIX}n1..n{}, 192.0.2.1..{} on one bridge)",
            self.nodes, self.nodes, self.nodes
        );
        if let Some(t) = &self.traffic {
            out += &format!("; UDP echo probe {} -> {} at {}/s", t.from, t.to, t.rate);
        }
        out
    }
}

pub fn node_address(index: u32) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, index as u8)
}

/// `cluster:`: the lab's roles (`node:NAME`, `leader`, `followers`, `minority`,
/// `majority`) name these containers instead of the cluster lab's members: the etcd
/// members of a compose stack, say. Each member is a running container with the label;
/// its etcd, at the container's address and `etcd-metrics-port`, says who leads.
/// `certs` enables `cert-expiry` on the members, `workload` enables `surge`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterSpec {
    /// The members: running containers with this label (`KEY=VALUE`).
    pub containers: String,
    /// Where each member's etcd serves /metrics over plain HTTP, default 2379 (its client
    /// port when that is plain HTTP; the stack's TLS etcd serves them on 2381).
    pub etcd_metrics_port: Option<u16>,
    /// The members' PKI, as a directory this run can write: `ca.pem`, `ca-key.pem` and
    /// per member `<container name>.pem` and `<container name>-key.pem`, which each
    /// member's etcd serves (and uses with its peers). Needed by `cert-expiry`, which
    /// swaps a member's pair for an expired one from the same CA and restarts it.
    pub certs: Option<String>,
    /// The workload nodes: running containers with this label (`KEY=VALUE`). Needed by
    /// `surge`, which starts clones of one of them; every one of them observes it.
    pub workload: Option<String>,
    /// Where the workload nodes serve /members over plain HTTP, default 9100.
    pub workload_port: Option<u16>,
}

/// `KEY=VALUE` of a label field, or a problem naming `field`.
fn label_of<'a>(field: &'static str, text: &'a str) -> Result<(&'a str, &'a str), Problem> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !value.is_empty() && key.len() <= 256 && value.len() <= 256 => {
            Ok((key, value))
        }
        _ => Err(Problem::field(
            field,
            format!("'{}' is not a label KEY=VALUE", crate::spec::shorten(text, 60)),
            format!("name the containers' label, e.g. {field}: io.chaos-ebpf.stack=etcd"),
        )),
    }
}

impl ClusterSpec {
    pub const DEFAULT_ETCD_METRICS_PORT: u16 = 2379;
    pub const DEFAULT_WORKLOAD_PORT: u16 = 9100;

    /// The members' label as (key, value); a problem names the field.
    pub fn label(&self) -> Result<(&str, &str), Problem> {
        label_of("containers", &self.containers)
    }

    /// The workload nodes' label, when given.
    pub fn workload_label(&self) -> Result<Option<(&str, &str)>, Problem> {
        self.workload.as_deref().map(|w| label_of("workload", w)).transpose()
    }

    pub fn etcd_metrics_port(&self) -> u16 {
        self.etcd_metrics_port.unwrap_or(Self::DEFAULT_ETCD_METRICS_PORT)
    }

    pub fn workload_port(&self) -> u16 {
        self.workload_port.unwrap_or(Self::DEFAULT_WORKLOAD_PORT)
    }

    pub fn validate(&self) -> Result<(), Problem> {
        self.label()?;
        self.workload_label()?;
        if self.etcd_metrics_port == Some(0) {
            return Err(Problem::field("etcd-metrics-port", "port 0", "give the port of etcd's /metrics, e.g. 2379"));
        }
        if self.workload_port == Some(0) {
            return Err(Problem::field("workload-port", "port 0", "give the workload nodes' port, e.g. 9100"));
        }
        if self.workload_port.is_some() && self.workload.is_none() {
            return Err(Problem::field("workload-port", "a port without workload", "add workload: KEY=VALUE"));
        }
        if let Some(certs) = &self.certs {
            if !certs.starts_with('/') || certs.len() > 4096 {
                return Err(Problem::field(
                    "certs",
                    format!("'{}' is not an absolute path", crate::spec::shorten(certs, 60)),
                    "give the PKI directory as an absolute path, e.g. certs: /pki",
                ));
            }
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        let mut out =
            format!("the containers labelled {} (etcd metrics on :{})", self.containers, self.etcd_metrics_port());
        if let Some(certs) = &self.certs {
            out += &format!(", certificates in {certs}");
        }
        if let Some(workload) = &self.workload {
            out += &format!(", workload nodes labelled {workload} (on :{})", self.workload_port());
        }
        out
    }
}
