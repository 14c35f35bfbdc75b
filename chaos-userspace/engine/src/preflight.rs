//! Everything a run checks before it changes anything, shared by `--dry-run` and the
//! real run so that a dry run accepts exactly what a run accepts: the plan's limits,
//! privileges, every target resolved (namespace, interfaces, cgroup members, far ends),
//! rules and peers per network namespace, and sch_fq for delay and rate. Reads only:
//! the one thing it creates, a scratch network namespace to try sch_fq in, belongs to a
//! thread and goes with it.

use std::collections::BTreeMap;

use anyhow::Result;
use chaos_ebpf_common::{MAX_PEERS_LIMIT as MAX_PEERS, MAX_RULES};

use chaos_datapath::{
    dispatch::{Addressing, Compiler},
    error::{self, Error},
    netlink,
    netns::NetnsId,
    resolve::{self as target, Resolved},
};
use chaos_model::{
    lab::LAB_PREFIX,
    plan::Plan,
    spec::{FaultSpec, Problem, TargetSpec},
};

use crate::run::target_of;

/// What the checks found.
pub struct Preflight {
    /// Targets by resolution key (the target, or "TARGET (far end)" for faults on the far
    /// end of its veths), as a run would resolve them. Empty without privileges.
    pub resolved: BTreeMap<String, Vec<Resolved>>,
    /// What the process lacks to run faults (empty: nothing); see `error::missing_privileges`.
    pub missing_privileges: Vec<String>,
    /// Checks a dry run without privileges could not do, one phrase each.
    pub unchecked: Vec<String>,
}

/// Runs every check. `dry_run`: missing privileges are not an error; the checks that
/// need them are listed in `unchecked` instead.
pub fn check(plan: &Plan, dry_run: bool) -> Result<Preflight> {
    plan.check_limits().map_err(|e| Problem::new(e.problem, e.fix))?;
    // A matrix step has no rules until `matrix::bind_matrices` gives it its fault: a run
    // would take it for a pause and cut nothing.
    if let Some(step) = plan.steps.iter().find(|s| s.matrix.is_some() && !s.faults.iter().any(|f| f.matrix.is_some())) {
        return Err(anyhow::anyhow!(
            "step '{}' is a partition matrix not bound to the lab's nodes",
            chaos_model::spec::shorten(&step.name, 40)
        ));
    }
    let missing = error::missing_privileges();
    let privileged = missing.is_empty();
    if !privileged && !dry_run {
        error::require_root("running faults")?;
    }
    let mut unchecked = Vec::new();
    let mut resolved: BTreeMap<String, Vec<Resolved>> = BTreeMap::new();
    for fault in plan.steps.iter().flat_map(|s| &s.faults) {
        let key = resolution_key(&fault.spec);
        if resolved.contains_key(&key) {
            continue;
        }
        if let TargetSpec::Lab(selector) = &fault.spec.target {
            // Bound to members' namespaces when the run starts (the lab says who leads then).
            unchecked.push(format!("lab target {selector} (bound when the run starts)"));
            continue;
        }
        if plan.lab.is_some() && is_lab_target(&fault.spec.target) {
            // Created at the start of the run; Lab::create refuses existing ones.
            continue;
        }
        if privileged {
            let mut targets = target::resolve(&target_of(&fault.spec.target)?)?;
            if fault.spec.acts_on_far_end() {
                let mut far_ends = Vec::new();
                for t in &targets {
                    far_ends.extend(target::veth_peers(&target_of(&fault.spec.target)?, t)?);
                }
                targets = far_ends;
            }
            resolved.insert(key, targets);
        } else {
            unchecked.extend(target::check_unprivileged(&target_of(&fault.spec.target)?)?);
            resolved.insert(key, Vec::new());
        }
    }
    if privileged {
        check_per_namespace(plan, &resolved)?;
    } else {
        unchecked.push("rules and peers per network namespace (targets unresolved)".into());
    }
    if plan.steps.iter().flat_map(|s| &s.faults).any(|f| f.spec.kind.needs_fq()) {
        if privileged {
            check_fq()?;
        } else {
            unchecked.push("that the kernel has sch_fq (delay and rate need it)".into());
        }
    }
    Ok(Preflight { resolved, missing_privileges: missing, unchecked })
}

/// Faults on the same target share its resolution, except those acting on its far end
/// (the same key run.rs uses).
pub fn resolution_key(spec: &FaultSpec) -> String {
    if spec.acts_on_far_end() {
        format!("{} (far end)", spec.target)
    } else {
        spec.target.to_string()
    }
}

fn is_lab_target(target: &TargetSpec) -> bool {
    matches!(target, TargetSpec::Netns(name) if name.starts_with(LAB_PREFIX))
}

/// At every moment a window opens, the rules each namespace then has in force (one per
/// fault and resolved target in it, summed over the steps whose windows overlap there: a
/// netns with many veths whose far ends share one namespace puts several there) fit
/// `MAX_RULES`, and their peers fit `MAX_PEERS`.
fn check_per_namespace(plan: &Plan, resolved: &BTreeMap<String, Vec<Resolved>>) -> Result<()> {
    let opens = plan.steps.iter().flat_map(|s| s.windows.iter().map(|w| w.start));
    for at in opens {
        let in_force: Vec<_> =
            plan.steps.iter().filter(|s| s.windows.iter().any(|w| w.start <= at && at < w.end)).collect();
        let mut per_netns: BTreeMap<NetnsId, (String, usize, usize)> = BTreeMap::new();
        // What the kernel's lookup maps would hold: faults stacked on the same packets.
        let mut compilers: BTreeMap<NetnsId, Compiler> = BTreeMap::new();
        for fault in in_force.iter().flat_map(|s| &s.faults) {
            for r in resolved.get(&resolution_key(&fault.spec)).into_iter().flatten() {
                let entry = per_netns.entry(r.netns.id).or_insert_with(|| (r.netns.path.display().to_string(), 0, 0));
                entry.1 += 1;
                entry.2 += fault.spec.peers.len() + fault.matrix.as_ref().map_or(0, |m| m.prefixes());
                let compiler = compilers.entry(r.netns.id).or_default();
                let rule = fault.spec.rule(0, fault.rule_id, r.ifindex, r.cgroup_id);
                let peers: Vec<_> = fault.spec.peers.iter().map(|p| p.prefix()).collect();
                let groups: Vec<Vec<_>> = fault
                    .matrix
                    .iter()
                    .flat_map(|m| &m.groups)
                    .map(|g| g.iter().map(|p| p.prefix()).collect())
                    .collect();
                let addressing = match &fault.matrix {
                    Some(m) => Addressing::Matrix { groups: &groups, cuts: &m.cuts },
                    None => Addressing::Peers(&peers),
                };
                let (_, addrs) = compiler.rule_addrs(&rule, addressing);
                compiler.set_rule(entry.1 as u32, addrs);
            }
        }
        let steps = chaos_model::spec::list_some(in_force.iter().map(|s| chaos_model::spec::shorten(&s.name, 40)), 4);
        let when = chaos_model::spec::format_duration(at);
        for (id, compiler) in &mut compilers {
            if let Err(e) = compiler.compile(chaos_ebpf_common::MAX_DISPATCH as usize) {
                return Err(Problem::new(
                    format!("at {when} the steps in force ({steps}) in network namespace {}: {e}", per_netns[id].0),
                    "spread the faults over time (after: instead of with:), or merge faults on the same traffic",
                )
                .into());
            }
        }
        for (path, rules, peers) in per_netns.values() {
            if *rules > MAX_RULES as usize {
                return Err(Problem::new(
                    format!(
                        "at {when} the steps in force ({steps}) need {rules} rules in network namespace {path}; at most {MAX_RULES}"
                    ),
                    "spread the faults over time (after: instead of with:), or target fewer interfaces at once",
                )
                .into());
            }
            if *peers > MAX_PEERS as usize {
                return Err(Problem::new(
                    format!(
                        "at {when} the steps in force ({steps}) need {peers} peer entries in network namespace {path}; at most {MAX_PEERS}"
                    ),
                    "cover the peers with wider prefixes, or spread the faults over time",
                )
                .into());
            }
        }
    }
    Ok(())
}

/// Whether the kernel can create an sch_fq qdisc, tried on the loopback of a scratch
/// network namespace: made by unshare(CLONE_NEWNET) on a short-lived thread, so that
/// nothing the user owns is touched and the kernel destroys the namespace (with the
/// qdisc) when the thread exits.
pub fn check_fq() -> Result<()> {
    let outcome = std::thread::spawn(|| -> std::io::Result<()> {
        // SAFETY: unshare affects only this thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // lo is ifindex 1 in a new namespace.
        let settings = netlink::FqSettings { limit: 100, flow_limit: 10, horizon_us: 1_000_000 };
        netlink::replace_qdisc(1, 0xffff_ffff, 0, "fq", &netlink::fq_options(&settings))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the sch_fq probe thread panicked"))?;
    outcome.map_err(|e| {
        Error::unsupported(
            format!("delay and rate need the sch_fq qdisc, and this kernel has no sch_fq (creating one failed: {e})"),
            "load it (`modprobe sch_fq`) or use a kernel with CONFIG_NET_SCH_FQ; loss, partition and blackhole work without it",
        )
        .into()
    })
}

#[cfg(test)]
mod tests {
    /// A matrix step that was not bound to the lab's nodes is refused: run would take it
    /// for a pause.
    #[test]
    fn unbound_partition_matrices_are_refused() {
        let plan = chaos_model::scenario::parse(
            "m.yaml",
            "apiVersion: chaos-ebpf/v1\ngroups: {a: [node:n1], b: [node:n2]}\nsteps:\n  - {name: split, partition: {groups: [a, b], cut: [[a, b]]}, duration: 1s}\n",
        )
        .unwrap();
        for dry_run in [true, false] {
            let e = super::check(&plan, dry_run).err().expect("refused");
            assert!(e.to_string().contains("step 'split' is a partition matrix not bound to the lab's nodes"), "{e}");
        }
    }
}
