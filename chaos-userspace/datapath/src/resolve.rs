//! Resolving a target (`iface:`, `netns:`, `cgroup:`, `pid:`) to kernel objects: the
//! network namespaces to load into, the interfaces to attach to, and the interface and
//! cgroup filters of the rule. Every failure is an `Error::Unsupported` (exit 2, nothing changed).

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::{
    error::Error,
    netns::{self, Interface, Netns, NetnsId, ARPHRD_ETHER},
};

/// What a fault acts on, as the kernel knows it (the model's target specs map onto
/// this one to one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An interface in the tool's own network namespace.
    Iface(String),
    /// Every interface except lo in a named namespace (`ip netns`) or a namespace path.
    Netns(String),
    /// A cgroup v2 path, relative to the cgroup2 mount or absolute.
    Cgroup(String),
    /// The cgroup and network namespace of a process.
    Pid(u32),
}

impl Target {
    /// Whether the kernel can tell this target's packets apart on ingress: a cgroup is
    /// known from the sending socket, which exists on egress only.
    pub fn egress_only(&self) -> bool {
        matches!(self, Target::Cgroup(_) | Target::Pid(_))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Iface(v) => write!(f, "iface:{v}"),
            Target::Netns(v) => write!(f, "netns:{v}"),
            Target::Cgroup(v) => write!(f, "cgroup:{v}"),
            Target::Pid(v) => write!(f, "pid:{v}"),
        }
    }
}

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
pub fn resolve(spec: &Target) -> Result<Vec<Resolved>> {
    match spec {
        Target::Iface(name) => {
            let netns = Netns::current()?;
            let all = netns::interfaces()?;
            let Some(iface) = all.iter().find(|i| &i.name == name).cloned() else {
                let names = chaos_ebpf_common::text::list_some(all.iter().map(|i| &i.name), 8);
                return Err(Error::unsupported(
                    format!("interface '{name}' not found in this network namespace (have: {names})"),
                    "name an existing interface (`ip link`), or run inside its namespace with `ip netns exec NS chaos-ebpf ...`, or target netns:NS",
                )
                .into());
            };
            check_ethernet(&iface, spec)?;
            Ok(vec![Resolved { netns, ifindex: iface.index, interfaces: vec![iface], cgroup_id: 0, cgroup_level: 0 }])
        }
        Target::Netns(name) => {
            let netns = open_netns(name)?;
            let interfaces = netns_interfaces(&netns, spec)?;
            Ok(vec![Resolved { netns, interfaces, ifindex: 0, cgroup_id: 0, cgroup_level: 0 }])
        }
        Target::Cgroup(path) => {
            let cgroup = Cgroup::find(path)?;
            let mut namespaces: BTreeMap<NetnsId, Netns> = BTreeMap::new();
            for pid in cgroup.member_pids()? {
                if let Ok(ns) = Netns::open(&PathBuf::from(format!("/proc/{pid}/ns/net"))) {
                    namespaces.entry(ns.id).or_insert(ns);
                }
            }
            if namespaces.is_empty() {
                // Guessing a namespace (ours, say) would attach where the cgroup's future
                // processes may never be: a fault that silently does nothing.
                return Err(empty_cgroup(spec));
            }
            namespaces
                .into_values()
                .map(|netns| {
                    let interfaces = netns_interfaces(&netns, spec)?;
                    Ok(Resolved { netns, interfaces, ifindex: 0, cgroup_id: cgroup.id, cgroup_level: cgroup.level })
                })
                .collect()
        }
        Target::Pid(pid) => {
            let cgroup = Cgroup::of_pid(*pid)?;
            let netns = open_pid_netns(*pid)?;
            let interfaces = netns_interfaces(&netns, spec)?;
            Ok(vec![Resolved { netns, interfaces, ifindex: 0, cgroup_id: cgroup.id, cgroup_level: cgroup.level }])
        }
    }
}

/// The network namespace a `netns:` target names, checked to be one: `Netns::open`
/// opens any file, and entering /etc/hostname fails later with EINVAL (exit 1).
pub fn open_netns(name: &str) -> Result<Netns> {
    let path = netns::path_for(name);
    let not_a_namespace = || {
        Error::unsupported(
            format!(
                "netns:{}: {} is not a network namespace",
                chaos_ebpf_common::text::shorten(name, 80),
                path.display()
            ),
            "name a namespace from `ip netns list`, or give /proc/PID/ns/net or a bind mount of one",
        )
    };
    // Namespace files are regular (empty) files; opening a FIFO would block forever
    // and a device could be anything.
    if fs::metadata(&path).is_ok_and(|m| !m.is_file()) {
        return Err(not_a_namespace().into());
    }
    let netns = Netns::open(&path).map_err(|e| {
        Error::unsupported(
            format!(
                "network namespace '{}' cannot be opened at {}: {e}",
                chaos_ebpf_common::text::shorten(name, 80),
                path.display()
            ),
            "create it (`ip netns add NAME`) or name an existing one (`ip netns list`), or give a path such as /proc/PID/ns/net",
        )
    })?;
    if !is_network_namespace(&netns) {
        return Err(not_a_namespace().into());
    }
    Ok(netns)
}

/// The network namespace of a running process.
pub fn open_pid_netns(pid: u32) -> Result<Netns> {
    Netns::open(&PathBuf::from(format!("/proc/{pid}/ns/net"))).map_err(|e| {
        Error::unsupported(
            format!("cannot open the network namespace of process {pid}: {e}"),
            "check that the process still runs (and that chaos-ebpf may read /proc/PID/ns/net)",
        )
        .into()
    })
}

/// Whether the file is a network namespace: the nsfs ioctl NS_GET_NSTYPE needs no
/// privileges and changes nothing (an ordinary file answers ENOTTY).
pub fn is_network_namespace(netns: &Netns) -> bool {
    // NS_GET_NSTYPE = _IO(0xb7, 0x3): returns the namespace's CLONE_NEW* type.
    nix::ioctl_none!(ns_get_nstype, 0xb7, 0x3);
    // SAFETY: an ioctl without an argument on an fd we own.
    matches!(unsafe { ns_get_nstype(netns.raw_fd()) }, Ok(kind) if kind == libc::CLONE_NEWNET)
}

fn empty_cgroup(spec: &Target) -> anyhow::Error {
    Error::unsupported(
        format!("{spec} has no processes, so there is no network namespace to attach the fault in"),
        "start the workload in the cgroup first, or target its network namespace (netns:NAME) or interface",
    )
    .into()
}

/// The checks of `resolve` that need no privileges (no setns): the namespace exists and
/// is one, the cgroup exists inside the mount and has processes, the process exists.
/// Returns what it could not check.
pub fn check_unprivileged(spec: &Target) -> Result<Vec<String>> {
    let permission = |e: &anyhow::Error| {
        e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
        }) || format!("{e:#}").contains("Permission denied")
    };
    let mut unchecked = Vec::new();
    match spec {
        Target::Iface(_) => {
            // Listing links of our own namespace needs no privileges.
            resolve(spec)?;
        }
        Target::Netns(name) => match open_netns(name) {
            Ok(_) => unchecked.push(format!("the interfaces of {spec}")),
            Err(e) if permission(&e) => unchecked.push(format!("{spec} (cannot open it)")),
            Err(e) => return Err(e),
        },
        Target::Cgroup(path) => {
            let cgroup = Cgroup::find(path)?;
            if cgroup.member_pids()?.is_empty() {
                return Err(empty_cgroup(spec));
            }
            unchecked.push(format!("the network namespaces of {spec}"));
        }
        Target::Pid(pid) => {
            Cgroup::of_pid(*pid)?;
            unchecked.push(format!("the network namespace of {spec}"));
        }
    }
    Ok(unchecked)
}

fn check_ethernet(iface: &Interface, spec: &Target) -> Result<()> {
    if iface.hw_type != ARPHRD_ETHER {
        return Err(Error::unsupported(
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
fn netns_interfaces(netns: &Netns, spec: &Target) -> Result<Vec<Interface>> {
    let all = netns.run(netns::interfaces)??;
    let mut chosen = Vec::new();
    for iface in all {
        if iface.hw_type == ARPHRD_LOOPBACK
            || (iface.hw_type != ARPHRD_ETHER && !iface.up)
            || crate::devices::is_segmenter(&iface.name)
        {
            continue;
        }
        check_ethernet(&iface, spec)?;
        chosen.push(iface);
    }
    if chosen.is_empty() {
        return Err(Error::unsupported(
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
    Err(Error::unsupported(
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
    /// `path` relative to the cgroup2 root, or absolute (inside the mount). `..`, and
    /// anything that resolves outside the cgroup2 mount (a symlink), is refused: the
    /// fault would filter on a cgroup id that no packet carries and silently do nothing.
    pub fn find(path: &str) -> Result<Self> {
        let root = cgroup2_root()?;
        let given = Path::new(path);
        if given.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(Error::unsupported(
                format!("cgroup path '{}' contains '..'", chaos_ebpf_common::text::shorten(path, 80)),
                format!(
                    "give the cgroup's path below {} without '..' (e.g. cgroup:system.slice/x.service)",
                    root.display()
                ),
            )
            .into());
        }
        let relative = given.strip_prefix(&root).unwrap_or(given);
        let relative = relative.strip_prefix("/").unwrap_or(relative);
        let dir = root.join(relative);
        let not_found = |e: std::io::Error| {
            Error::unsupported(
                format!("cgroup '{}' not found at {}: {e}", chaos_ebpf_common::text::shorten(path, 80), dir.display()),
                format!("give a cgroup v2 path relative to {} (e.g. cgroup:docker/ID) or create it", root.display()),
            )
        };
        // Resolved (the kernel bounds symlink chains with ELOOP) and checked to stay in
        // the mount and to be a cgroup2 directory.
        let real = fs::canonicalize(&dir).map_err(not_found)?;
        let real_root = fs::canonicalize(&root).unwrap_or_else(|_| root.clone());
        let Ok(below_root) = real.strip_prefix(&real_root) else {
            return Err(Error::unsupported(
                format!(
                    "cgroup '{}' resolves to {}, outside the cgroup2 mount {}",
                    chaos_ebpf_common::text::shorten(path, 80),
                    real.display(),
                    root.display()
                ),
                format!("give a cgroup path below {}", root.display()),
            )
            .into());
        };
        let meta = fs::symlink_metadata(&real).map_err(not_found)?;
        if !meta.is_dir() || !is_cgroup2(&real) {
            return Err(Error::unsupported(
                format!(
                    "cgroup '{}': {} is not a cgroup v2 directory",
                    chaos_ebpf_common::text::shorten(path, 80),
                    real.display()
                ),
                format!("give a cgroup directory below {}", root.display()),
            )
            .into());
        }
        let level = below_root.components().count() as u32;
        if level == 0 {
            return Err(Error::unsupported(
                "the root cgroup holds every process: faulting it would hit the whole machine",
                "target a child cgroup, an interface or a network namespace",
            )
            .into());
        }
        Ok(Self { dir: real, id: meta.ino(), level })
    }

    /// The cgroup v2 of a process, from /proc/PID/cgroup (`0::/path`).
    pub fn of_pid(pid: u32) -> Result<Self> {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| {
            Error::unsupported(format!("process {pid} not found: {e}"), "give the id of a running process")
        })?;
        let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
            return Err(Error::unsupported(
                format!("process {pid} has no cgroup v2 membership"),
                "mount cgroup v2 and place the process in a cgroup",
            )
            .into());
        };
        if path == "/" {
            return Err(Error::unsupported(
                format!("process {pid} is in the root cgroup, so its cgroup holds every process there"),
                "move the process into a cgroup of its own (write its pid into NEW/cgroup.procs) or target its netns",
            )
            .into());
        }
        Self::find(path)
    }

    /// Processes in this cgroup and below. The walk never follows symlinks (cgroupfs
    /// has none, but a path can lead elsewhere) and is bounded in depth and size, so
    /// that no directory structure can make it loop or run without end.
    pub fn member_pids(&self) -> Result<Vec<u32>> {
        const MAX_DIRS: usize = 100_000;
        const MAX_DEPTH: usize = 64;
        let mut pids = Vec::new();
        let mut stack = vec![(self.dir.clone(), 0usize)];
        let mut visited = 0usize;
        while let Some((dir, depth)) = stack.pop() {
            visited += 1;
            if visited > MAX_DIRS {
                return Err(Error::unsupported(
                    format!("{} has more than {MAX_DIRS} cgroups below it", self.dir.display()),
                    "target a smaller cgroup subtree",
                )
                .into());
            }
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            if depth >= MAX_DEPTH {
                continue;
            }
            if let Ok(entries) = fs::read_dir(&dir) {
                // DirEntry::file_type does not follow symlinks.
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| (e.path(), depth + 1)),
                );
            }
        }
        Ok(pids)
    }
}

/// Whether `path` is on a cgroup v2 filesystem.
fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// The far end of `iface` (in `netns`) when it is a veth: its namespace and interface.
/// `None` for any other kind of device: IFLA_LINK also names the parent of a macvlan,
/// ipvlan or vlan, which is not where the target's traffic comes from.
pub fn far_end(netns: &Netns, iface: &Interface) -> Result<Option<(Netns, Interface)>> {
    let info = netns
        .run(|| crate::netlink::link_info(iface.index))?
        .with_context(|| format!("reading the link of {}", iface.name))?;
    let (Some("veth"), Some((peer_index, nsid))) = (info.kind.as_deref(), info.link) else {
        return Ok(None);
    };
    let peer_netns = match nsid {
        None => Netns::open(&netns.path)?,
        Some(nsid) => netns
            .run(|| {
                netns::all_namespaces()
                    .into_iter()
                    .find(|ns| crate::netlink::nsid_of(ns.raw_fd()).is_ok_and(|id| id == nsid))
            })?
            .ok_or_else(|| {
                Error::unsupported(
                    format!("the far end of {} is in a namespace chaos-ebpf cannot open", iface.name),
                    "name that namespace with `ip netns` or keep a process in it, or fault its egress directly",
                )
            })?,
    };
    let peer_iface = peer_netns
        .run(netns::interfaces)??
        .into_iter()
        .find(|i| i.index == peer_index)
        .ok_or_else(|| anyhow::anyhow!("the far end of {} (ifindex {peer_index}) vanished", iface.name))?;
    Ok(Some((peer_netns, peer_iface)))
}

/// For faulting what a target receives with departure times (which act on egress only):
/// the far end of each of its veths, as one target per far-end interface. A far end in
/// the same namespace is found too; an interface without one (a physical NIC, a macvlan)
/// cannot be delayed on ingress this way, which is exit 2.
pub fn veth_peers(spec: &Target, target: &Resolved) -> Result<Vec<Resolved>> {
    let mut out = Vec::new();
    for iface in target.interfaces.iter().filter(|i| target.ifindex == 0 || i.index == target.ifindex) {
        let Some((peer_netns, peer_iface)) = far_end(&target.netns, iface)? else {
            return Err(Error::unsupported(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A symlink loop and deep nesting: the walk ends, bounded, without following links.
    #[test]
    fn member_walk_is_bounded_and_follows_no_symlinks() {
        let dir = std::env::temp_dir().join(format!("chaos-cgroup-walk-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut deep = dir.clone();
        for i in 0..100 {
            deep = deep.join(format!("d{i}"));
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(dir.join("cgroup.procs"), "1\n").unwrap();
        fs::write(dir.join("d0").join("cgroup.procs"), "2\n").unwrap();
        std::os::unix::fs::symlink(&dir, dir.join("d0").join("loop")).unwrap();
        std::os::unix::fs::symlink(&dir, dir.join("loop")).unwrap();
        let start = std::time::Instant::now();
        let pids = Cgroup { dir: dir.clone(), id: 0, level: 1 }.member_pids();
        let _ = fs::remove_dir_all(&dir);
        let mut pids = pids.unwrap();
        pids.sort();
        assert_eq!(pids, [1, 2], "each directory once, links not followed");
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }
}
