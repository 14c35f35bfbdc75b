//! A pod's processes on this node, found in /proc by their cgroup path: the pod's
//! network namespace (/proc/PID/ns/net of a process of the pod, found by the pod's UID)
//! and a container's main process (found by the container's id), for pod actions. The
//! kubelet names a pod's cgroup `pod<UID>` with the cgroupfs driver
//! (`.../kubepods/besteffort/pod1b2c-...`) and `...-pod<UID with underscores>.slice` with
//! the systemd driver, in the v1 hierarchies and the unified tree alike, so one scan of
//! /proc/*/cgroup serves cgroup v1 and v2 without the CRI socket, and every pod of a
//! pass. The agent runs with the host's PID namespace (hostPID), so /proc lists the pods'
//! processes.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Where a pod's network namespace is, and which one it is (its inode: a pod whose
/// sandbox is re-created gets another).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetns {
    pub path: PathBuf,
    pub inode: u64,
}

/// The processes of the pods on this node, from one scan of /proc: a pass looks up
/// each of its pods here instead of reading every /proc/PID/cgroup once per pod.
pub struct PodProcesses {
    proc_root: PathBuf,
    /// Pod UID (with dashes, as in the API) to the pids of its processes.
    by_uid: HashMap<String, Vec<u32>>,
}

impl PodProcesses {
    /// Reads /proc/PID/cgroup of every process under `proc_root` (/proc) once.
    pub fn scan(proc_root: &Path) -> Self {
        let mut by_uid: HashMap<String, Vec<u32>> = HashMap::new();
        for pid in pids(proc_root) {
            let Ok(cgroups) = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")) else {
                continue;
            };
            // Every v1 hierarchy repeats the pod's path: each UID counts once per process.
            let uids: HashSet<String> = path_components(&cgroups).filter_map(pod_uid_in).collect();
            for uid in uids {
                by_uid.entry(uid).or_default().push(pid);
            }
        }
        PodProcesses { proc_root: proc_root.to_owned(), by_uid }
    }

    /// The network namespace of the pod with `uid`. None when no process of the pod runs
    /// (yet).
    pub fn netns_of_pod(&self, uid: &str) -> Option<PodNetns> {
        // The oldest process of the pod is its sandbox's (pause): it lives as long as the
        // pod, while an application container may restart and a `kubectl exec` comes and
        // goes. Not the lowest pid: once pids wrap, an exec's pid is lower than the pause's.
        let pid = oldest_first(&self.proc_root, self.by_uid.get(uid)?.iter().copied()).into_iter().next()?;
        let path = self.proc_root.join(pid.to_string()).join("ns/net");
        let inode = std::fs::metadata(&path).ok()?.ino();
        Some(PodNetns { path, inode })
    }
}

/// The pod UID a cgroup path component names: `pod<UID>` (cgroupfs driver) or
/// `...-pod<UID with underscores>.slice` (systemd driver); None for any other component.
fn pod_uid_in(component: &str) -> Option<String> {
    let uid = match component.strip_suffix(".slice") {
        // A UID is hex and dashes: the last "pod" is the one before it.
        Some(slice) => slice[slice.rfind("pod")? + 3..].replace('_', "-"),
        None => component.strip_prefix("pod")?.to_owned(),
    };
    (!uid.is_empty() && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')).then_some(uid)
}

/// The main process of the container with `id` (the hex id of its CRI containerID,
/// `containerd://<id>`): the oldest in its cgroup (cgroupfs: `.../<id>`; systemd:
/// `cri-containerd-<id>.scope`), not a process `kubectl exec` started in it.
pub fn container_pid(proc_root: &Path, id: &str) -> Option<u32> {
    container_pids(proc_root, id).into_iter().next()
}

/// Every process of the container with `id`, oldest first.
pub fn container_pids(proc_root: &Path, id: &str) -> Vec<u32> {
    if id.len() < 12 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Vec::new();
    }
    pids_in(proc_root, |part| part == id || part.strip_suffix(".scope").is_some_and(|s| s.ends_with(id)))
}

/// The pids one of whose cgroup paths has a component `ours` accepts, oldest first.
fn pids_in(proc_root: &Path, ours: impl Fn(&str) -> bool) -> Vec<u32> {
    let matching = pids(proc_root).filter(|pid| {
        let Ok(cgroups) = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")) else {
            return false;
        };
        // Bound before the block ends: the iterator borrows `cgroups`.
        let found = path_components(&cgroups).any(&ours);
        found
    });
    oldest_first(proc_root, matching)
}

/// The components of every cgroup path in a /proc/PID/cgroup (lines
/// `hierarchy-ID:controllers:path`).
fn path_components(cgroups: &str) -> impl Iterator<Item = &str> {
    cgroups.lines().flat_map(|line| line.splitn(3, ':').nth(2).unwrap_or("").split('/'))
}

/// Every pid under `proc_root`.
fn pids(proc_root: &Path) -> impl Iterator<Item = u32> {
    let entries = std::fs::read_dir(proc_root).into_iter().flatten();
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
}

/// `pids` by start time, oldest first; a process whose start time cannot be read comes last.
fn oldest_first(proc_root: &Path, pids: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut started: Vec<(u64, u32)> = pids.map(|pid| (start_time(proc_root, pid).unwrap_or(u64::MAX), pid)).collect();
    started.sort_unstable();
    started.into_iter().map(|(_, pid)| pid).collect()
}

/// A process's start time in clock ticks after boot: field 22 of /proc/PID/stat, counted
/// after the command name, which is in parentheses and may hold spaces.
fn start_time(proc_root: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that started `pid` ticks after boot, unless `started` says otherwise.
    fn process(root: &Path, pid: u32, cgroup: &str) {
        process_started(root, pid, u64::from(pid), cgroup);
    }

    fn process_started(root: &Path, pid: u32, started: u64, cgroup: &str) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(dir.join("ns")).unwrap();
        std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        std::fs::write(dir.join("ns/net"), "").unwrap();
        // The command name may hold spaces and parentheses.
        let stat = format!("{pid} (sh (x) y) S 1 {pid} {pid} 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 {started} 2 3 4\n");
        std::fs::write(dir.join("stat"), stat).unwrap();
    }

    #[test]
    fn the_oldest_process_wins_also_after_pids_wrapped() {
        let root = std::env::temp_dir().join(format!("chaos-netns-wrap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let uid = "1b2c3d4e-aaaa-bbbb-cccc-000000000003";
        // The pause process (30000) and the main process (30050) of the pod, then a
        // `kubectl exec` that got pid 2662 after the pids wrapped.
        process_started(&root, 30000, 500, &format!("0::/kubepods/pod{uid}/aaaa0000aaaa0000\n"));
        process_started(&root, 30050, 510, &format!("0::/kubepods/pod{uid}/bbbb0000bbbb0000\n"));
        process_started(&root, 2662, 9000, &format!("0::/kubepods/pod{uid}/bbbb0000bbbb0000\n"));
        assert_eq!(PodProcesses::scan(&root).netns_of_pod(uid).expect("the pod").path, root.join("30000/ns/net"));
        assert_eq!(container_pid(&root, "bbbb0000bbbb0000"), Some(30050));
        assert_eq!(container_pids(&root, "bbbb0000bbbb0000"), [30050, 2662]);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn finds_the_pod_by_uid_in_either_cgroup_driver() {
        let root = std::env::temp_dir().join(format!("chaos-netns-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let uid = "1b2c3d4e-aaaa-bbbb-cccc-000000000001";
        process(&root, 40, "12:pids:/\n0::/\n");
        process(
            &root,
            77,
            &format!("12:pids:/kubepods/besteffort/pod{uid}/abc\n0::/kubepods/besteffort/pod{uid}/abc\n"),
        );
        process(&root, 90, &format!("12:pids:/kubepods/besteffort/pod{uid}/def\n"));
        process(
            &root,
            120,
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod9f_00_11.slice/cri-containerd-x.scope\n",
        );
        std::fs::create_dir_all(root.join("self")).unwrap();
        let processes = PodProcesses::scan(&root);
        let found = processes.netns_of_pod(uid).expect("the pod's oldest process");
        assert_eq!(found.path, root.join("77/ns/net"));
        assert_eq!(processes.by_uid[uid], [77, 90], "one entry per process, also with two hierarchies");
        assert!(processes.netns_of_pod("9f-00-11").is_some(), "systemd driver names");
        assert!(processes.netns_of_pod("1b2c3d4e-aaaa-bbbb-cccc-000000000002").is_none());
        assert!(processes.netns_of_pod("1b2c3d4e").is_none(), "a prefix of a UID is not the pod");
        assert_eq!(processes.by_uid.len(), 2, "only pods' cgroups: {:?}", processes.by_uid.keys());
        process(&root, 95, &format!("12:pids:/kubepods/besteffort/pod{uid}/abcdef0123456789\n"));
        process(&root, 96, &format!("12:pids:/kubepods/besteffort/pod{uid}/abcdef0123456789\n"));
        assert_eq!(container_pid(&root, "abcdef0123456789"), Some(95));
        assert_eq!(container_pids(&root, "abcdef0123456789"), [95, 96]);
        assert_eq!(container_pid(&root, "abcdef01234567"), None, "a prefix of an id is not the container");
        assert_eq!(container_pid(&root, "../x"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
