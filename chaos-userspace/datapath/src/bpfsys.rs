//! Finding and detaching chaos-ebpf attachments owned by other processes (for `status`
//! and `cleanup`). aya lists programs and links; detaching a link by id is two raw bpf(2)
//! calls it does not wrap.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use aya::maps::{MapData, MapInfo, PerCpuArray};
use aya::programs::{links::LinkType, loaded_links, loaded_programs};
use chaos_ebpf_common::{names, RuleCounters};

const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// A TCX link whose program is one of ours.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OurLink {
    pub link_id: u32,
    pub program_id: u32,
    pub program: String,
}

/// Ids and names of loaded chaos-ebpf programs.
pub fn our_programs() -> Vec<(u32, String)> {
    loaded_programs()
        .flatten()
        .filter_map(|p| {
            let name = p.name_as_str()?.to_owned();
            names::PROGRAMS.contains(&name.as_str()).then_some((p.id(), name))
        })
        .collect()
}

/// TCX links that run chaos-ebpf programs and are attached to an interface.
pub fn our_links() -> Vec<OurLink> {
    let programs = our_programs();
    loaded_links()
        .flatten()
        .filter(|l| matches!(l.link_type(), Ok(LinkType::Tcx)))
        .filter_map(|l| {
            let (_, name) = programs.iter().find(|(id, _)| *id == l.program_id())?;
            // A detached link (by `cleanup --force`) lives on in its holder, inert.
            if tcx_link_ifindex(l.id()).ok()? == 0 {
                return None;
            }
            Some(OurLink { link_id: l.id(), program_id: l.program_id(), program: name.clone() })
        })
        .collect()
}

fn link_fd(link_id: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u8; 16];
    attr[..4].copy_from_slice(&link_id.to_ne_bytes());
    // SAFETY: bpf(2) with an attr buffer of the size we pass.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_GET_FD_BY_ID, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The interface a TCX link is attached to; 0 once it was detached (the link object
/// lives on while a process holds it).
pub fn tcx_link_ifindex(link_id: u32) -> io::Result<u32> {
    let fd = link_fd(link_id)?;
    // struct bpf_link_info: type, id, prog_id, then (8-aligned) the union whose tcx
    // member starts with the ifindex.
    let mut info = [0u64; 8];
    let mut attr = [0u8; 16];
    attr[..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(std::mem::size_of_val(&info) as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    // SAFETY: bpf(2) writes at most info_len bytes to `info`, which outlives the call.
    if unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, attr.as_mut_ptr(), attr.len()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info[2] as u32)
}

/// Detaches a link by id (the program stops running on that hook at once), whoever
/// holds it.
pub fn detach_link(link_id: u32) -> io::Result<()> {
    let fd = link_fd(link_id)?;
    let mut attr = [0u8; 16];
    attr[..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, attr.as_mut_ptr(), attr.len()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Which processes hold each BPF program and link open, read from /proc/PID/fdinfo
/// (`prog_id:` and `link_id:` lines). A TCX link or a program held by a live run is
/// that run's, whatever its ledger record says yet.
#[derive(Debug, Default)]
pub struct Holders {
    pub programs: std::collections::BTreeMap<u32, Vec<u32>>,
    pub links: std::collections::BTreeMap<u32, Vec<u32>>,
}

pub fn holders() -> Holders {
    let mut out = Holders::default();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let target = target.to_string_lossy();
            let key = if target == "anon_inode:bpf-prog" {
                "prog_id:"
            } else if target == "anon_inode:bpf_link" {
                "link_id:"
            } else {
                continue;
            };
            let info = entry.path().join("fdinfo").join(fd.file_name());
            let Ok(text) = std::fs::read_to_string(info) else { continue };
            let Some(id) = text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let map = if key == "prog_id:" { &mut out.programs } else { &mut out.links };
            let pids = map.entry(id).or_default();
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
    }
    out
}

/// Counters of `slot` in the counters map used by program `program_id`.
pub fn read_counters(program_id: u32, slot: u32) -> Option<RuleCounters> {
    let info = aya::programs::loaded_programs().flatten().find(|p| p.id() == program_id)?;
    for map_id in info.map_ids().ok()??.into_iter() {
        let map_info = MapInfo::from_id(map_id).ok()?;
        if map_info.name_as_str() == Some(names::COUNTERS) {
            let data = MapData::from_id(map_id).ok()?;
            let map = aya::maps::Map::PerCpuArray(data);
            let counters: PerCpuArray<_, RuleCounters> = PerCpuArray::try_from(map).ok()?;
            let mut total = RuleCounters::default();
            for c in counters.get(&slot, 0).ok()?.iter() {
                total.add(c);
            }
            return Some(total);
        }
    }
    None
}
