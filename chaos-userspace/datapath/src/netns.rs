//! Network namespaces: open by name or path, enter on the current thread and come back,
//! list interfaces. Attaching TC programs and resolving interface names happen in the
//! namespace of the calling thread, so the loader enters the target's namespace, does
//! its work and returns (all on the main thread).

use std::{
    ffi::CStr,
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::Serialize;

/// Where `ip netns add NAME` puts namespaces.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// A namespace's identity: device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

#[derive(Debug)]
pub struct Netns {
    /// A path that names the namespace (for messages and for `status`).
    pub path: PathBuf,
    pub id: NetnsId,
    file: File,
}

impl Netns {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        Ok(Self { path: path.to_owned(), id: NetnsId { dev: meta.dev(), ino: meta.ino() }, file })
    }

    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// The namespace of the calling thread.
    pub fn current() -> std::io::Result<Self> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// Enters this namespace on the calling thread until the guard drops.
    pub fn enter(&self) -> Result<NetnsGuard> {
        let previous = Netns::current().context("opening the current network namespace")?;
        if previous.id == self.id {
            return Ok(NetnsGuard { previous: None });
        }
        setns(&self.file).with_context(|| format!("entering network namespace {}", self.path.display()))?;
        Ok(NetnsGuard { previous: Some(previous) })
    }
}

fn setns(file: &File) -> std::io::Result<()> {
    // SAFETY: a valid fd to an nsfs file; CLONE_NEWNET checks its type.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Returns the thread to the namespace it was in.
pub struct NetnsGuard {
    previous: Option<Netns>,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Some(previous) = &self.previous {
            // Failing to return would leave the thread in the wrong namespace for every
            // later operation; there is no safe way to go on.
            if let Err(e) = setns(&previous.file) {
                eprintln!("chaos-ebpf: cannot return to network namespace {}: {e}", previous.path.display());
                std::process::abort();
            }
        }
    }
}

/// Path of a named namespace (`ip netns`), or the value itself if it is a path.
pub fn path_for(name: &str) -> PathBuf {
    if name.contains('/') {
        PathBuf::from(name)
    } else {
        Path::new(NETNS_RUN_DIR).join(name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    /// ARPHRD_* hardware type (1 Ethernet, 772 loopback, ...).
    pub hw_type: u16,
    pub up: bool,
}

pub const ARPHRD_ETHER: u16 = 1;

/// Interfaces of the calling thread's network namespace.
pub fn interfaces() -> Result<Vec<Interface>> {
    // SAFETY: if_nameindex returns a heap array terminated by a zero entry, freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(std::io::Error::last_os_error()).context("listing network interfaces");
    }
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        // SAFETY: within the array, up to and including the terminator.
        let entry = unsafe { &*list.add(i) };
        if entry.if_index == 0 {
            break;
        }
        // SAFETY: if_name is a NUL-terminated string owned by the array.
        let name = unsafe { CStr::from_ptr(entry.if_name) }.to_string_lossy().into_owned();
        out.push((name, entry.if_index));
        i += 1;
    }
    // SAFETY: the pointer came from if_nameindex.
    unsafe { libc::if_freenameindex(list) };
    out.into_iter()
        .map(|(name, index)| {
            let (hw_type, up) = link_kind(&name)?;
            Ok(Interface { name, index, hw_type, up })
        })
        .collect()
}

/// Hardware type and up flag of an interface, by ioctl on a socket of the current netns.
fn link_kind(name: &str) -> Result<(u16, bool)> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq with a bounded name copy.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("opening a socket for interface queries");
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
            *dst = src as libc::c_char;
        }
        let hw =
            if libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) == 0 { req.ifr_ifru.ifru_hwaddr.sa_family } else { 0 };
        let up =
            libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0 && (req.ifr_ifru.ifru_flags as i32 & libc::IFF_UP) != 0;
        libc::close(fd);
        Ok((hw, up))
    }
}

/// Every network namespace we can reach: the named ones (`ip netns`), ours, and those of
/// running processes; each once.
pub fn all_namespaces() -> Vec<Netns> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(NETNS_RUN_DIR) {
        candidates.extend(entries.flatten().map(|e| e.path()));
    }
    candidates.push(PathBuf::from("/proc/self/ns/net"));
    if let Ok(entries) = std::fs::read_dir("/proc") {
        candidates.extend(
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
                .map(|e| e.path().join("ns/net")),
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    candidates.into_iter().filter_map(|p| Netns::open(&p).ok()).filter(|ns| seen.insert(ns.id)).collect()
}
