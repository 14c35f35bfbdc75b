//! The `lab:` section of a scenario: what embedded lab to build (chaos-lab builds it).

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
