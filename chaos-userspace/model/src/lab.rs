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
/// its etcd, at the container's address and `etcd-client-port`, says who leads.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterSpec {
    /// The members: running containers with this label (`KEY=VALUE`).
    pub containers: String,
    /// Where each member's etcd answers clients (plain HTTP), default 2379.
    pub etcd_client_port: Option<u16>,
}

impl ClusterSpec {
    pub const DEFAULT_ETCD_CLIENT_PORT: u16 = 2379;

    /// The label as (key, value); a problem names the field.
    pub fn label(&self) -> Result<(&str, &str), Problem> {
        match self.containers.split_once('=') {
            Some((key, value)) if !key.is_empty() && !value.is_empty() && key.len() <= 256 && value.len() <= 256 => {
                Ok((key, value))
            }
            _ => Err(Problem::field(
                "containers",
                format!("'{}' is not a label KEY=VALUE", crate::spec::shorten(&self.containers, 60)),
                "name the members' label, e.g. containers: io.chaos-ebpf.stack=etcd",
            )),
        }
    }

    pub fn etcd_client_port(&self) -> u16 {
        self.etcd_client_port.unwrap_or(Self::DEFAULT_ETCD_CLIENT_PORT)
    }

    pub fn validate(&self) -> Result<(), Problem> {
        self.label()?;
        if self.etcd_client_port == Some(0) {
            return Err(Problem::field("etcd-client-port", "port 0", "give etcd's client port, e.g. 2379"));
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        format!("the containers labelled {} (etcd on :{})", self.containers, self.etcd_client_port())
    }
}
