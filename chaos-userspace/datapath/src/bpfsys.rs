//! Finding and detaching chaos-ebpf attachments owned by other processes (for `status`
//! and `cleanup`), and the batched map writes of the peer trie. aya lists programs and
//! links; detaching a link by id, and writing or deleting many entries in one call
//! (BPF_MAP_UPDATE_BATCH, BPF_MAP_DELETE_BATCH), are raw bpf(2) calls it does not wrap.

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

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// The test-run part of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Runs a loaded sched_cls program on `frame` `repeat` times in the kernel: (verdict,
/// mean ns per run).
pub fn test_run(prog_fd: i32, frame: &[u8], repeat: u32) -> io::Result<(u32, u32)> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_PROG_TEST_RUN; the buffers it
    // points to outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((attr.retval, attr.duration))
}

/// The prog-load part of `union bpf_attr`, up to the fields a minimal program needs.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// Loads the smallest sched_cls program there is (`r0 = TC_ACT_UNSPEC; exit`): the
/// floor a classifier's cost per packet is measured against. Closed with the fd.
pub fn load_empty_classifier() -> io::Result<OwnedFd> {
    // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm -1; BPF_JMP | BPF_EXIT.
    let insns: [u64; 2] = [0xffff_ffff_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"bench_floor");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..ProgLoadAttr::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_PROG_LOAD; the instructions and
    // the license outlive the call; the fd returned is ours.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr as *const ProgLoadAttr, std::mem::size_of::<ProgLoadAttr>())
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel's ENOTSUPP (not in libc: an internal errno that reaches user space when a
/// map type has no batch operation).
const ENOTSUPP: i32 = 524;

/// The batch part of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Why a batch stopped: after `done` entries, with `error`.
#[derive(Debug)]
pub struct BatchError {
    pub done: usize,
    pub error: io::Error,
}

impl BatchError {
    /// The kernel has no batch operation for this map type (EINVAL on kernels that
    /// check the command first, ENOTSUPP or EOPNOTSUPP otherwise): write entry by entry.
    pub fn unsupported(&self) -> bool {
        self.done == 0 && matches!(self.error.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP))
    }
}

fn map_batch(
    command: libc::c_long,
    map_fd: i32,
    keys: &[u8],
    values: Option<&[u8]>,
    count: usize,
) -> Result<(), BatchError> {
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.map_or(0, |v| v.as_ptr() as u64),
        count: count as u32,
        map_fd: map_fd as u32,
        ..BatchAttr::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix for the batch commands; `keys` and
    // `values` hold `count` entries of the map's key and value sizes (checked by the
    // callers) and outlive the call; the kernel writes only `attr.count` back.
    let rc =
        unsafe { libc::syscall(libc::SYS_bpf, command, &mut attr as *mut BatchAttr, std::mem::size_of::<BatchAttr>()) };
    if rc < 0 {
        return Err(BatchError { done: attr.count as usize, error: io::Error::last_os_error() });
    }
    Ok(())
}

/// BPF_MAP_UPDATE_BATCH: writes `count` entries (`keys` and `values` packed, each of the
/// map's key and value size) in one syscall; the kernel writes them one after the other,
/// each as `bpf_map_update_elem` would. On an error, `done` entries were written.
pub fn map_update_batch(map_fd: i32, keys: &[u8], values: &[u8], count: usize) -> Result<(), BatchError> {
    debug_assert!(count > 0 && keys.len().is_multiple_of(count) && values.len().is_multiple_of(count));
    map_batch(BPF_MAP_UPDATE_BATCH, map_fd, keys, Some(values), count)
}

/// BPF_MAP_DELETE_BATCH: deletes `count` keys; the kernel stops at the first key that is
/// not there (ENOENT, with `done` the ones deleted before it).
pub fn map_delete_batch(map_fd: i32, keys: &[u8], count: usize) -> Result<(), BatchError> {
    debug_assert!(count > 0 && keys.len().is_multiple_of(count));
    map_batch(BPF_MAP_DELETE_BATCH, map_fd, keys, None, count)
}
