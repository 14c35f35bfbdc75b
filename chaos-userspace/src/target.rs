//! Resolving a target (`iface:`, `netns:`, `cgroup:`, `pid:`) to kernel objects: the
//! network namespaces to load into, the interfaces to attach to, and the interface and
//! cgroup filters of the rule. Every failure is a `Failure` (exit 2, nothing changed).

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::{
    error::Failure,
    netns::{self, Interface, Netns, NetnsId, ARPHRD_ETHER},
    spec::TargetSpec,
};

const ARPHRD_LOOPBACK: u16 = 772;

/// A target, bound to one network namespace.
#[derive(Debug)]
pub struct Resolved {
    pub netns: Netns,
    /// Interfaces to attach the classifiers to.
    pub interfaces: Vec<Interface>,
    /// Rule filter: only this interface (0 = any of the attached ones).
    pub ifindex: u32,
    /// Rule filter: only this cgroup subtree (0 = any).
    pub cgroup_id: u64,
    pub cgroup_level: u32,
}

/// Resolves a target; a cgroup whose processes live in several namespaces gives one
/// `Resolved` per namespace.
pub fn resolve(spec: &TargetSpec) -> Result<Vec<Resolved>> {
    match spec {
        TargetSpec::Iface(name) => {
            let netns = Netns::current()?;
            let all = netns::interfaces()?;
            let Some(iface) = all.iter().find(|i| &i.name == name).cloned() else {
                let names: Vec<_> = all.iter().map(|i| i.name.as_str()).collect();
                return Err(Failure::environment(
                    format!("interface '{name}' not found in this network namespace (have: {})", names.join(", ")),
                    "name an existing interface (`ip link`), or run inside its namespace with `ip netns exec NS chaos-ebpf ...`, or target netns:NS",
                )
                .into());
            };
            check_ethernet(&iface, spec)?;
            Ok(vec![Resolved { netns, ifindex: iface.index, interfaces: vec![iface], cgroup_id: 0, cgroup_level: 0 }])
        }
        TargetSpec::Netns(name) => {
            let path = netns::path_for(name);
            let netns = Netns::open(&path).map_err(|e| {
                Failure::environment(
                    format!("network namespace '{name}' cannot be opened at {}: {e}", path.display()),
                    "create it (`ip netns add NAME`) or name an existing one (`ip netns list`), or give a path such as /proc/PID/ns/net",
                )
            })?;
            let interfaces = netns_interfaces(&netns, spec)?;
            Ok(vec![Resolved { netns, interfaces, ifindex: 0, cgroup_id: 0, cgroup_level: 0 }])
        }
        TargetSpec::Cgroup(path) => {
            let cgroup = Cgroup::find(path)?;
            let mut namespaces: BTreeMap<NetnsId, Netns> = BTreeMap::new();
            for pid in cgroup.member_pids() {
                if let Ok(ns) = Netns::open(&PathBuf::from(format!("/proc/{pid}/ns/net"))) {
                    namespaces.entry(ns.id).or_insert(ns);
                }
            }
            if namespaces.is_empty() {
                // No process yet: its future members will most likely share ours.
                let ns = Netns::current()?;
                namespaces.insert(ns.id, ns);
            }
            namespaces
                .into_values()
                .map(|netns| {
                    let interfaces = netns_interfaces(&netns, spec)?;
                    Ok(Resolved { netns, interfaces, ifindex: 0, cgroup_id: cgroup.id, cgroup_level: cgroup.level })
                })
                .collect()
        }
        TargetSpec::Pid(pid) => {
            let cgroup = Cgroup::of_pid(*pid)?;
            let netns = Netns::open(&PathBuf::from(format!("/proc/{pid}/ns/net"))).map_err(|e| {
                Failure::environment(
                    format!("cannot open the network namespace of process {pid}: {e}"),
                    "check that the process still runs",
                )
            })?;
            let interfaces = netns_interfaces(&netns, spec)?;
            Ok(vec![Resolved { netns, interfaces, ifindex: 0, cgroup_id: cgroup.id, cgroup_level: cgroup.level }])
        }
    }
}

fn check_ethernet(iface: &Interface, spec: &TargetSpec) -> Result<()> {
    if iface.hw_type != ARPHRD_ETHER {
        return Err(Failure::environment(
            format!(
                "{spec}: interface {} is not an Ethernet device (hardware type {}); the classifier parses Ethernet frames only",
                iface.name, iface.hw_type
            ),
            "target an Ethernet or veth interface",
        )
        .into());
    }
    Ok(())
}

/// The interfaces of a namespace that carry its traffic: all but loopback. Non-Ethernet
/// devices that are down (the tunl0/sit0 stubs tunnel modules create in every
/// namespace) are skipped; one that is up cannot be parsed, which is an error rather
/// than a silent gap in the fault.
fn netns_interfaces(netns: &Netns, spec: &TargetSpec) -> Result<Vec<Interface>> {
    let all = {
        let _inside = netns.enter()?;
        netns::interfaces()?
    };
    let mut chosen = Vec::new();
    for iface in all {
        if iface.hw_type == ARPHRD_LOOPBACK || (iface.hw_type != ARPHRD_ETHER && !iface.up) {
            continue;
        }
        check_ethernet(&iface, spec)?;
        chosen.push(iface);
    }
    if chosen.is_empty() {
        return Err(Failure::environment(
            format!("{spec}: network namespace {} has no interface to fault besides lo", netns.path.display()),
            "add a veth or other Ethernet interface to it first",
        )
        .into());
    }
    Ok(chosen)
}

/// Mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup` on unified systems,
/// `/sys/fs/cgroup/unified` in hybrid mode).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        // ... mount_point ... - fstype source options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2") {
            if let Some(mount_point) = left.split_whitespace().nth(4) {
                return Ok(PathBuf::from(mount_point));
            }
        }
    }
    Err(Failure::environment(
        "no cgroup v2 hierarchy is mounted",
        "mount one: `mount -t cgroup2 none /sys/fs/cgroup/unified` (cgroup and pid targets need it)",
    )
    .into())
}

#[derive(Debug)]
pub struct Cgroup {
    pub dir: PathBuf,
    /// The cgroup v2 id: the inode number of its directory.
    pub id: u64,
    /// Depth below the root (root = 0).
    pub level: u32,
}

impl Cgroup {
    /// `path` relative to the cgroup2 root, or absolute (inside or outside the mount).
    pub fn find(path: &str) -> Result<Self> {
        let root = cgroup2_root()?;
        let relative = Path::new(path)
            .strip_prefix(&root)
            .unwrap_or(Path::new(path))
            .strip_prefix("/")
            .unwrap_or(Path::new(path).strip_prefix(&root).unwrap_or(Path::new(path)));
        let dir = root.join(relative);
        let meta = fs::metadata(&dir).map_err(|e| {
            Failure::environment(
                format!("cgroup '{path}' not found at {}: {e}", dir.display()),
                format!("give a cgroup v2 path relative to {} (e.g. cgroup:docker/ID) or create it", root.display()),
            )
        })?;
        let level = relative.components().count() as u32;
        if level == 0 {
            return Err(Failure::input(
                "the root cgroup holds every process: faulting it would hit the whole machine",
                "target a child cgroup, an interface or a network namespace",
            )
            .into());
        }
        Ok(Self { dir, id: meta.ino(), level })
    }

    /// The cgroup v2 of a process, from /proc/PID/cgroup (`0::/path`).
    pub fn of_pid(pid: u32) -> Result<Self> {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| {
            Failure::environment(format!("process {pid} not found: {e}"), "give the id of a running process")
        })?;
        let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
            return Err(Failure::environment(
                format!("process {pid} has no cgroup v2 membership"),
                "mount cgroup v2 and place the process in a cgroup",
            )
            .into());
        };
        if path == "/" {
            return Err(Failure::input(
                format!("process {pid} is in the root cgroup, so its cgroup holds every process there"),
                "move the process into a cgroup of its own (write its pid into NEW/cgroup.procs) or target its netns",
            )
            .into());
        }
        Self::find(path)
    }

    /// Processes in this cgroup and below.
    pub fn member_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(dir) = stack.pop() {
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            if let Ok(entries) = fs::read_dir(&dir) {
                stack.extend(entries.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
            }
        }
        pids
    }
}

/// The far end of `iface` (in `netns`) when it is a veth: its namespace and interface.
/// `None` for any other kind of device: IFLA_LINK also names the parent of a macvlan,
/// ipvlan or vlan, which is not where the target's traffic comes from.
pub fn far_end(netns: &Netns, iface: &Interface) -> Result<Option<(Netns, Interface)>> {
    let info = {
        let _inside = netns.enter()?;
        crate::netlink::link_info(iface.index).with_context(|| format!("reading the link of {}", iface.name))?
    };
    let (Some("veth"), Some((peer_index, nsid))) = (info.kind.as_deref(), info.link) else {
        return Ok(None);
    };
    let peer_netns = match nsid {
        None => Netns::open(&netns.path)?,
        Some(nsid) => {
            let _inside = netns.enter()?;
            netns::all_namespaces()
                .into_iter()
                .find(|ns| crate::netlink::nsid_of(ns.raw_fd()).is_ok_and(|id| id == nsid))
                .ok_or_else(|| {
                    Failure::environment(
                        format!("the far end of {} is in a namespace chaos-ebpf cannot open", iface.name),
                        "name that namespace with `ip netns` or keep a process in it, or fault its egress directly",
                    )
                })?
        }
    };
    let peer_iface = {
        let _inside = peer_netns.enter()?;
        netns::interfaces()?.into_iter().find(|i| i.index == peer_index)
    }
    .ok_or_else(|| anyhow::anyhow!("the far end of {} (ifindex {peer_index}) vanished", iface.name))?;
    Ok(Some((peer_netns, peer_iface)))
}

/// For faulting what a target receives with departure times (which act on egress only):
/// the far end of each of its veths, as one target per far-end interface. A far end in
/// the same namespace is found too; an interface without one (a physical NIC, a macvlan)
/// cannot be delayed on ingress this way, which is exit 2.
pub fn veth_peers(spec: &TargetSpec, target: &Resolved) -> Result<Vec<Resolved>> {
    let mut out = Vec::new();
    for iface in target.interfaces.iter().filter(|i| target.ifindex == 0 || i.index == target.ifindex) {
        let Some((peer_netns, peer_iface)) = far_end(&target.netns, iface)? else {
            return Err(Failure::environment(
                format!("{spec}: {} is not a veth, so it has no far end where what it receives could be delayed by departure times", iface.name),
                "delay the sender's egress instead (target the sending namespace or interface with direction egress)",
            )
            .into());
        };
        check_ethernet(&peer_iface, spec)?;
        out.push(Resolved {
            netns: peer_netns,
            ifindex: peer_iface.index,
            interfaces: vec![peer_iface],
            cgroup_id: 0,
            cgroup_level: 0,
        });
    }
    Ok(out)
}
