//! Finding and detaching chaos-ebpf attachments owned by other processes (for `status`
//! and `cleanup`). aya lists programs and links; detaching a link by id is two raw bpf(2)
//! calls it does not wrap.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use aya::programs::{links::LinkType, loaded_links, loaded_programs};
use chaos_ebpf_common::names;

const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_DETACH: libc::c_long = 34;

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
            (name == names::PROG_INGRESS || name == names::PROG_EGRESS).then_some((p.id(), name))
        })
        .collect()
}

/// TCX links that run chaos-ebpf programs.
pub fn our_links() -> Vec<OurLink> {
    let programs = our_programs();
    loaded_links()
        .flatten()
        .filter(|l| matches!(l.link_type(), Ok(LinkType::Tcx)))
        .filter_map(|l| {
            let (_, name) = programs.iter().find(|(id, _)| *id == l.program_id())?;
            Some(OurLink { link_id: l.id(), program_id: l.program_id(), program: name.clone() })
        })
        .collect()
}

/// Detaches a link by id (the program stops running on that hook at once), whoever
/// holds it.
pub fn detach_link(link_id: u32) -> io::Result<()> {
    let mut attr = [0u8; 16];
    attr[..4].copy_from_slice(&link_id.to_ne_bytes());
    // SAFETY: bpf(2) with an attr buffer of the size we pass.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_GET_FD_BY_ID, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut attr = [0u8; 16];
    attr[..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, attr.as_mut_ptr(), attr.len()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
