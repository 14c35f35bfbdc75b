//! Network namespaces: open by name or path, enter on the current thread and come back,
//! list interfaces. Attaching TC programs and resolving interface names happen in the
//! namespace of the calling thread, so the loader enters the target's namespace, does
//! its work and returns (all on the main thread).

use std::{
    fs::File,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
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

    /// Another handle to the same namespace (a run that needs `self` inside it).
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self { path: self.path.clone(), id: self.id, file: self.file.try_clone()? })
    }

    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// The namespace of the calling thread.
    pub fn current() -> std::io::Result<Self> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// Runs `f` inside this namespace: the calling thread enters it and is returned to
    /// its own namespace before `run` returns (also when `f` panics).
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> Result<R> {
        let previous = Netns::current().context("opening the current network namespace")?;
        if previous.id == self.id {
            return Ok(f());
        }
        setns(&self.file).with_context(|| format!("entering network namespace {}", self.path.display()))?;
        let _back = ReturnTo(previous);
        Ok(f())
    }
}

/// Returns the thread to its namespace when dropped.
struct ReturnTo(Netns);

impl Drop for ReturnTo {
    fn drop(&mut self) {
        // Failing to return would leave the thread in the wrong namespace for every
        // later operation; there is no safe way to go on.
        if let Err(e) = setns(&self.0.file) {
            eprintln!("chaos-ebpf: cannot return to network namespace {}: {e}", self.0.path.display());
            std::process::abort();
        }
    }
}

fn setns(file: &File) -> std::io::Result<()> {
    // CLONE_NEWNET: the kernel checks that the file is a network namespace.
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
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
    let list = nix::net::if_::if_nameindex().context("listing network interfaces")?;
    let socket = query_socket()?;
    list.iter()
        .map(|entry| {
            let name = entry.name().to_string_lossy().into_owned();
            let (hw_type, up) = link_kind(&socket, &name);
            Ok(Interface { name, index: entry.index(), hw_type, up })
        })
        .collect()
}

nix::ioctl_read_bad!(get_hardware_address, libc::SIOCGIFHWADDR, libc::ifreq);
nix::ioctl_read_bad!(get_flags, libc::SIOCGIFFLAGS, libc::ifreq);

/// A datagram socket of the calling thread's namespace, for interface ioctls.
pub fn query_socket() -> Result<OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .context("opening a socket for interface queries")
}

/// An ifreq naming `name` (cut to IFNAMSIZ - 1 bytes).
pub fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *dst = src as libc::c_char;
    }
    req
}

/// Hardware type and up flag of an interface (0 and down when the ioctl fails).
fn link_kind(socket: &OwnedFd, name: &str) -> (u16, bool) {
    let mut req = ifreq(name);
    // SAFETY: the kernel fills the ifreq we own; both fields read are plain data.
    let hw = match unsafe { get_hardware_address(socket.as_raw_fd(), &mut req) } {
        Ok(_) => unsafe { req.ifr_ifru.ifru_hwaddr.sa_family },
        Err(_) => 0,
    };
    let mut req = ifreq(name);
    // SAFETY: as above.
    let up = match unsafe { get_flags(socket.as_raw_fd(), &mut req) } {
        Ok(_) => (unsafe { req.ifr_ifru.ifru_flags }) as i32 & libc::IFF_UP != 0,
        Err(_) => false,
    };
    (hw, up)
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
