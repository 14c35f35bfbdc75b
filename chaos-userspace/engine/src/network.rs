//! The network side of a fault, shared by a run (run.rs) and the resident agent
//! (chaos-agent): resolving the targets a fault acts on, loading an instance, preparing
//! the devices its rules need (one segment per buffer, GRO off, sch_fq, segmenter
//! pairs), attaching, building the rule and its peer entries, and releasing the devices.

use std::path::Path;

use anyhow::{Context, Result};
use chaos_datapath::{
    devices,
    error::Error,
    instance::{Capacity, Instance, PeerEntry},
    netns::{Interface, Netns, NetnsId},
    resolve::{self as target, Resolved, Target},
    AttachMode,
};
use chaos_ebpf_common::{ProtectedPorts, Rule};
use chaos_model::spec::{Direction, FaultSpec};

/// Faults on the same target share its resolution, except those acting on its far end.
pub fn resolution_key(spec: &FaultSpec) -> String {
    if spec.acts_on_far_end() {
        format!("{} (far end)", spec.target)
    } else {
        spec.target.to_string()
    }
}

/// The targets a fault's rules go on: `targets` themselves, or, for a fault acting on
/// the far end of the target's veths, those far ends.
pub fn acting_targets(spec: &FaultSpec, target: &Target, targets: Vec<Resolved>) -> Result<Vec<Resolved>> {
    if !spec.acts_on_far_end() {
        return Ok(targets);
    }
    let mut peers = Vec::new();
    for t in &targets {
        peers.extend(target::veth_peers(target, t)?);
    }
    Ok(peers)
}

/// Loads the programs into the namespace at `path`, which must still be namespace `id`.
/// A verifier failure's full log goes to a file, its first line into the error (exit 2).
pub fn load_instance(
    path: &Path,
    id: NetnsId,
    mode: AttachMode,
    protected: &[ProtectedPorts],
    judge_bit: u32,
    capacity: Capacity,
) -> Result<Instance> {
    let netns = Netns::open(path).with_context(|| format!("opening {}", path.display()))?;
    if netns.id != id {
        return Err(Error::unsupported(
            format!("network namespace {} changed while chaos-ebpf was starting", path.display()),
            "run again",
        )
        .into());
    }
    Instance::load_with(netns, mode, protected, judge_bit, capacity).map_err(|e| {
        let full = format!("{e:#}");
        let log = std::env::temp_dir().join(format!("chaos-ebpf-verifier-{}.log", std::process::id()));
        let saved = std::fs::write(&log, &full).is_ok();
        let first = full.lines().next().unwrap_or("").chars().take(200).collect::<String>();
        Error::unsupported(
            format!(
                "the kernel refused the chaos-ebpf programs: {first}{}",
                if saved { format!(" (full verifier log in {})", log.display()) } else { String::new() }
            ),
            "check that the kernel has BPF, BTF and clsact/TCX support (docs/building.md lists what is needed)",
        )
        .into()
    })
}

/// What a fault needs of the devices its rules act on: one segment per buffer where it
/// decides, GRO off where it decides on ingress, sch_fq where it sets departure times,
/// a segmenter pair for the buffers the stack builds anyway. (Its own devices, the far
/// ends of its veths.)
pub fn device_needs(spec: &FaultSpec) -> (devices::Needs, devices::Needs) {
    let egress = matches!(spec.direction, Direction::Egress | Direction::Both) || spec.acts_on_far_end();
    let ingress = matches!(spec.direction, Direction::Ingress | Direction::Both) && !spec.acts_on_far_end();
    let own =
        devices::Needs { segment_egress: egress, unmerge_ingress: ingress, fq: spec.kind.needs_fq(), segmenter: true };
    // What the target receives over a veth was segmented (or not) by the far end.
    let far = devices::Needs { segment_egress: ingress, ..devices::Needs::default() };
    (own, far)
}

/// The devices a cgroup or pid target's traffic to the fault's peers leaves through (its
/// namespace's routes to each peer prefix's address), so that device settings and qdiscs
/// change there only; None (every interface of the namespace) for other targets and for
/// faults without peers.
pub fn devices_used(spec: &FaultSpec, target: &Resolved) -> Result<Option<Vec<u32>>> {
    if !spec.target.egress_only() || spec.peers.is_empty() {
        return Ok(None);
    }
    target.netns.run(|| {
        let mut used = Vec::new();
        for peer in &spec.peers {
            let oif = chaos_datapath::netlink::route_oif(peer.addr)
                .with_context(|| format!("looking up the route to {peer} in {}", target.netns.path.display()))?;
            used.extend(oif);
        }
        Ok(Some(used))
    })?
}

/// A device this process registered in the shared device records.
pub struct HeldDevice {
    pub netns: Netns,
    pub iface: Interface,
    /// Its segmenter pair, where this process decides on it.
    pub segmenter: Option<devices::Segmenter>,
    /// Everything asked of it so far (to register again after a release).
    pub needs: devices::Needs,
}

/// Registers this process as a user of `iface` with `needs` (nothing when it needs
/// nothing) and remembers it in `held` (once per device).
pub fn hold_device(held: &mut Vec<HeldDevice>, netns: &Netns, iface: &Interface, needs: devices::Needs) -> Result<()> {
    if !needs.any() {
        return Ok(());
    }
    let at = match held.iter().position(|h| h.netns.id == netns.id && h.iface.index == iface.index) {
        Some(at) => at,
        None => {
            let netns = Netns::open(&netns.path)?;
            held.push(HeldDevice { netns, iface: iface.clone(), segmenter: None, needs: devices::Needs::default() });
            held.len() - 1
        }
    };
    let had = held[at].needs;
    held[at].needs = devices::Needs {
        segment_egress: had.segment_egress || needs.segment_egress,
        unmerge_ingress: had.unmerge_ingress || needs.unmerge_ingress,
        fq: had.fq || needs.fq,
        segmenter: had.segmenter || needs.segmenter,
    };
    if let Some(segmenter) = netns.run(|| devices::acquire(&netns.path, netns.id, iface, needs))?? {
        held[at].segmenter = Some(segmenter);
    }
    Ok(())
}

/// The devices one fault's rules on target `r` act on, with what each needs: its own
/// devices (those its peers route through, for a cgroup or pid target) and the far ends
/// of its veths.
pub fn fault_devices(spec: &FaultSpec, r: &Resolved) -> Result<Vec<(Netns, Interface, devices::Needs)>> {
    let (own, far) = device_needs(spec);
    let used = devices_used(spec, r)?;
    let mut out = Vec::new();
    for iface in r.interfaces.iter().filter(|i| r.ifindex == 0 || i.index == r.ifindex) {
        if !used.as_ref().is_none_or(|used| used.contains(&iface.index)) {
            continue;
        }
        if own.any() {
            out.push((r.netns.try_clone()?, iface.clone(), own));
        }
        if far.any() {
            if let Some((peer_netns, peer_iface)) = target::far_end(&r.netns, iface)? {
                out.push((peer_netns, peer_iface, far));
            }
        }
    }
    Ok(out)
}

/// Prepares the devices one fault's rules on target `r` act on ([`fault_devices`]).
pub fn hold_fault_devices(held: &mut Vec<HeldDevice>, spec: &FaultSpec, r: &Resolved) -> Result<()> {
    for (netns, iface, needs) in fault_devices(spec, r)? {
        hold_device(held, &netns, &iface, needs)?;
    }
    Ok(())
}

/// Whether `held` has `iface` of `netns` with at least `needs` in place.
pub fn holds(held: &[HeldDevice], netns: &Netns, iface: &Interface, needs: devices::Needs) -> bool {
    held.iter().any(|h| {
        h.netns.id == netns.id
            && h.iface.index == iface.index
            && (h.needs.segment_egress || !needs.segment_egress)
            && (h.needs.unmerge_ingress || !needs.unmerge_ingress)
            && (h.needs.fq || !needs.fq)
            && (h.needs.segmenter || !needs.segmenter)
    })
}

/// Attaches the instance of `r`'s namespace to `r`'s interfaces, and the judge programs
/// to the segmenter pairs of the devices held there.
pub fn attach_target(instance: &mut Instance, r: &Resolved, held: &[HeldDevice]) -> Result<()> {
    let segmenters = held.iter().filter(|h| h.netns.id == r.netns.id).filter_map(|h| {
        let segmenter = h.segmenter.as_ref()?;
        r.interfaces.iter().any(|i| i.index == h.iface.index).then_some((&h.iface, segmenter))
    });
    instance.attach(&r.interfaces).and_then(|()| instance.attach_segmenters(segmenters)).map_err(|e| {
        Error::unsupported(
            format!("attaching to {} failed: {e:#}", r.netns.path.display()),
            "check the interfaces still exist; `--attach netlink` works on kernels without TCX",
        )
        .into()
    })
}

/// Takes this process off a held device's record, restoring what no other user needs.
pub fn release_device(h: &HeldDevice) -> Result<()> {
    h.netns
        .run(|| devices::release(h.netns.id, h.iface.index))
        .and_then(|r| r)
        .map(|_| ())
        .with_context(|| format!("restoring {}", h.iface.name))
}

/// Restores a held device's settings but keeps its segmenter pair (and the judge
/// programs attached to it): what a resident process does while no fault uses it.
pub fn relax_device(h: &HeldDevice) -> Result<()> {
    let keep = devices::Needs { segmenter: h.needs.segmenter, ..devices::Needs::default() };
    h.netns
        .run(|| devices::release_to(h.netns.id, h.iface.index, keep))
        .and_then(|r| r)
        .map(|_| ())
        .with_context(|| format!("restoring {}", h.iface.name))
}

/// The kernel rule of a fault on a resolved target.
pub fn rule_for(spec: &FaultSpec, seed: u64, rule_id: u32, r: &Resolved) -> Rule {
    let mut rule = spec.rule(seed, rule_id, r.ifindex, r.cgroup_id);
    rule.cgroup_level = r.cgroup_level;
    rule
}

/// The peer prefixes of a fault.
pub fn peer_entries(spec: &FaultSpec) -> Vec<PeerEntry> {
    spec.peers.iter().map(|p| p.prefix()).collect()
}
