//! Partition matrices as a run applies them (issue 11). A matrix step becomes one
//! partition fault on the light-node lab's hub namespace, where every node's veth ends as
//! a bridge port: a packet from a node enters the hub at its port's ingress, with the
//! node's address as source. One rule there, matching (source group, destination group)
//! for every cut pair, drops what the matrix cuts; its lease write turns the whole matrix
//! on and its removal heals it, so no node sees half a partition.
//!
//! The engine never imports the lab (docs/architecture.md): the CLI describes the lab's
//! nodes as a [`Fabric`].

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use anyhow::Result;
use chaos_datapath::error::Error;
use chaos_model::{
    matrix::{BoundMatrix, GroupMember},
    plan::{Plan, PlannedFault},
    spec::{shorten, Cidr, Direction, FaultKind, FaultSpec, Proto, TargetSpec},
};

/// Where a matrix acts: the namespace holding every node's port, and each node's addresses.
#[derive(Debug, Clone)]
pub struct Fabric {
    /// The hub's network namespace (`ip netns` name).
    pub netns: String,
    /// Node name (`n3`) to its addresses.
    pub nodes: BTreeMap<String, Vec<IpAddr>>,
}

/// Whether the plan has a matrix step (the CLI then asks the lab for its [`Fabric`]).
pub fn has_matrices(plan: &Plan) -> bool {
    plan.steps.iter().any(|s| s.matrix.is_some())
}

/// Binds every matrix step to `fabric`: the step gets one partition fault (ingress, on
/// the hub namespace) carrying its groups as address prefixes. Shuffled halves are
/// decided now with the step's seed, so the plan gets the run's seed if it had none.
/// Returns the bound plan and a line per matrix for the run's notices.
pub fn bind_matrices(plan: &Plan, fabric: Option<&Fabric>) -> Result<(Plan, Vec<String>)> {
    if !has_matrices(plan) {
        return Ok((plan.clone(), Vec::new()));
    }
    let mut bound = plan.clone();
    let seed = plan.seed_or_random();
    bound.seed = Some(seed);
    let mut next_id = plan.steps.iter().flat_map(|s| s.faults.iter().map(|f| f.rule_id)).max().unwrap_or(0) + 1;
    let mut notes = Vec::new();
    for step in &mut bound.steps {
        let Some(spec) = &step.matrix else { continue };
        let matrix = spec.expand(step.seed(seed));
        let step_name = shorten(&step.name, 40);
        let mut groups = Vec::with_capacity(matrix.groups().len());
        for group in matrix.groups() {
            let mut prefixes = Vec::with_capacity(group.members.len());
            for member in &group.members {
                match member {
                    GroupMember::Cidr(c) => prefixes.push(c.cidr()),
                    GroupMember::Node(name) => {
                        let fabric = fabric.ok_or_else(|| no_fabric(&step_name))?;
                        let addrs = fabric.nodes.get(name).ok_or_else(|| unknown_node(&step_name, name, fabric))?;
                        prefixes.extend(addrs.iter().map(|&addr| host_prefix(addr)));
                    }
                    GroupMember::Cgroup(path) => {
                        return Err(Error::unsupported(
                            format!(
                                "step '{step_name}': group '{}' has cgroup:{}; run applies matrices of lab nodes and \
                                 addresses only",
                                shorten(&group.name, 30),
                                shorten(path, 60)
                            ),
                            "use a partition fault with target: cgroup:PATH and peers: for a cgroup",
                        )
                        .into())
                    }
                }
            }
            groups.push(prefixes);
        }
        let fabric = fabric.ok_or_else(|| no_fabric(&step_name))?;
        let summary = format!("partition matrix ({}): {}", spec.form.name(), matrix.counts());
        notes.push(format!("step {}: {summary}, on the bridge ports of netns {}", step.name, fabric.netns));
        let fault = FaultSpec {
            kind: FaultKind::Partition,
            target: TargetSpec::Netns(fabric.netns.clone()),
            probability: None,
            burst: None,
            mode: None,
            peers: Vec::new(),
            proto: Proto::Any,
            ports: None,
            direction: Direction::Ingress,
            shadow: false,
            delay: None,
            jitter: None,
            distribution: None,
            rate_bytes_per_sec: None,
            tls: None,
        };
        let cuts = matrix.cut_pairs().iter().copied().collect();
        step.faults.push(PlannedFault {
            rule_id: next_id,
            spec: fault,
            lab_peers: Vec::new(),
            matrix: Some(Arc::new(BoundMatrix { summary, groups, cuts })),
        });
        next_id += 1;
    }
    Ok((bound, notes))
}

fn host_prefix(addr: IpAddr) -> Cidr {
    Cidr { addr, len: if addr.is_ipv4() { 32 } else { 128 } }
}

fn no_fabric(step: &str) -> anyhow::Error {
    Error::unsupported(
        format!("step '{step}' is a partition matrix of lab nodes, and no light-node lab is up"),
        "start one: chaos-ebpf lab up --workload echo --nodes N (and give run the same --lab-dir as lab --state-dir)",
    )
    .into()
}

fn unknown_node(step: &str, name: &str, fabric: &Fabric) -> anyhow::Error {
    Error::unsupported(
        format!(
            "step '{step}': node {} is not in the light-node lab ({} nodes)",
            shorten(name, 30),
            fabric.nodes.len()
        ),
        "name nodes the lab has (`chaos-ebpf lab status`), or start a larger lab",
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Plan {
        chaos_model::scenario::parse("m.yaml", text).unwrap()
    }

    fn fabric(n: u32) -> Fabric {
        let nodes = (1..=n)
            .map(|i| {
                let v4: IpAddr = format!("198.18.0.{i}").parse().unwrap();
                let v6: IpAddr = format!("fd42:c4a0:100::{i:x}").parse().unwrap();
                (format!("n{i}"), vec![v4, v6])
            })
            .collect();
        Fabric { netns: "hub".into(), nodes }
    }

    /// Each group becomes its nodes' addresses (both families) and CIDRs; the cut pairs
    /// index the groups; the fault is an ingress partition on the hub namespace.
    #[test]
    fn a_matrix_step_becomes_one_fault_on_the_hub() {
        let p = plan(
            "apiVersion: chaos-ebpf/v1\nseed: 1\ngroups: {a: [node:n1-n2], b: [node:n3, 10.9.0.0/16], c: [node:n4]}\n\
             steps:\n  - {name: split, partition: {groups: [a, b, c], cut: [[a, b], [b, '->', c]]}, duration: 1s}\n",
        );
        let (bound, notes) = bind_matrices(&p, Some(&fabric(4))).unwrap();
        let faults = &bound.steps[0].faults;
        assert_eq!(faults.len(), 1);
        assert_eq!(faults[0].spec.target, TargetSpec::Netns("hub".into()));
        assert_eq!(faults[0].spec.direction, Direction::Ingress);
        let m = faults[0].matrix.as_ref().unwrap();
        let text = |g: &Vec<Cidr>| g.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        assert_eq!(
            text(&m.groups[0]),
            ["198.18.0.1/32", "fd42:c4a0:100::1/128", "198.18.0.2/32", "fd42:c4a0:100::2/128"]
        );
        assert_eq!(text(&m.groups[1]), ["198.18.0.3/32", "fd42:c4a0:100::3/128", "10.9.0.0/16"]);
        assert_eq!(m.cuts, [(0, 1), (1, 0), (1, 2)]);
        assert!(notes[0].contains("3 groups, 5 members; 3 cut pairs"), "{notes:?}");
    }

    /// Without a lab, with a node the lab lacks, or with a cgroup member: refused, naming
    /// the step and the fix.
    #[test]
    fn matrices_that_cannot_be_bound_are_refused() {
        let p = plan(
            "apiVersion: chaos-ebpf/v1\ngroups: {a: [node:n1], b: [node:n9]}\nsteps:\n  - {name: split, partition: \
             {groups: [a, b], cut: [[a, b]]}, duration: 1s}\n",
        );
        let e = bind_matrices(&p, None).unwrap_err().to_string();
        assert!(e.contains("step 'split' is a partition matrix of lab nodes, and no light-node lab is up"), "{e}");
        let e = bind_matrices(&p, Some(&fabric(4))).unwrap_err().to_string();
        assert!(e.contains("node n9 is not in the light-node lab (4 nodes)"), "{e}");
        let p = plan(
            "apiVersion: chaos-ebpf/v1\ngroups: {a: [node:n1], b: ['cgroup:/x']}\nsteps:\n  - {name: split, \
             partition: {groups: [a, b], cut: [[a, b]]}, duration: 1s}\n",
        );
        let e = bind_matrices(&p, Some(&fabric(4))).unwrap_err().to_string();
        assert!(e.contains("group 'b' has cgroup:/x"), "{e}");
    }

    /// Shuffled halves are decided once with the run's seed, which the bound plan keeps.
    #[test]
    fn shuffled_halves_keep_the_seed_they_were_drawn_with() {
        let p = plan(
            "apiVersion: chaos-ebpf/v1\nsteps:\n  - {name: split, partition: {halves: {of: node:n1-n8, shuffle: true}}, \
             duration: 1s}\n",
        );
        let (bound, _) = bind_matrices(&p, Some(&fabric(8))).unwrap();
        let seed = bound.seed.expect("the run's seed");
        let again = Plan { seed: Some(seed), ..p.clone() };
        let (same, _) = bind_matrices(&again, Some(&fabric(8))).unwrap();
        assert_eq!(bound.steps[0].faults[0].matrix, same.steps[0].faults[0].matrix);
    }
}
