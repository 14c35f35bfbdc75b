//! The rtnetlink qdisc requests aya does not offer:
//! - deleting the clsact qdisc the legacy (pre-TCX) attach path had to add, so a clean
//!   exit leaves no qdisc behind (field notes: peers leave tc state after they exit);
//! - reading the root qdisc of a device, installing sch_fq as root (delay and rate need
//!   it to enforce departure times) and deleting it again, which brings back the
//!   device's default qdisc.
//!
//! All requests act in the calling thread's network namespace.

use std::io;

const NETLINK_ROUTE: i32 = 0;
const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const RTM_GETQDISC: u16 = 38;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const NLA_F_NESTED: u16 = 1 << 15;
/// TC_H_CLSACT == TC_H_INGRESS: parent ffff:fff1, handle ffff:0000.
const TC_H_CLSACT: u32 = 0xffff_fff1;
const CLSACT_HANDLE: u32 = 0xffff_0000;
const TC_H_ROOT: u32 = 0xffff_ffff;
/// Filter parents of the clsact hooks: TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS/EGRESS).
const TC_H_CLSACT_INGRESS: u32 = 0xffff_fff2;
const TC_H_CLSACT_EGRESS: u32 = 0xffff_fff3;
const RTM_NEWTFILTER: u16 = 44;
const RTM_GETTFILTER: u16 = 46;

// sch_fq options (include/uapi/linux/pkt_sched.h).
const TCA_FQ_PLIMIT: u16 = 1;
const TCA_FQ_FLOW_PLIMIT: u16 = 2;
const TCA_FQ_HORIZON: u16 = 14;
const TCA_FQ_HORIZON_DROP: u16 = 15;

fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut out = Vec::with_capacity((len + 3) & !3);
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize((len + 3) & !3, 0);
    out
}

fn message(kind: u16, flags: u16, ifindex: u32, handle: u32, parent: u32, attrs: &[u8]) -> Vec<u8> {
    let total = 16 + 20 + attrs.len();
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&handle.to_ne_bytes());
    msg.extend_from_slice(&parent.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(attrs);
    msg
}

struct Socket(i32);

impl Socket {
    fn open() -> io::Result<Socket> {
        // SAFETY: plain socket call.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_ROUTE) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket(fd))
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: a buffer that outlives the call.
        if unsafe { libc::send(self.0, msg.as_ptr().cast(), msg.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        // SAFETY: as above.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    /// Sends a request with NLM_F_ACK and returns the kernel's errno (0 = success).
    fn request(&self, msg: &[u8]) -> io::Result<i32> {
        self.send(msg)?;
        let reply = self.recv()?;
        if reply.len() < 20 || u16::from_ne_bytes([reply[4], reply[5]]) != NLMSG_ERROR {
            return Err(io::Error::other("unexpected netlink reply"));
        }
        Ok(-i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]))
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: our fd.
        unsafe { libc::close(self.0) };
    }
}

/// Deletes the clsact qdisc of `ifindex`. `Ok(false)` when there was none.
pub fn delete_clsact(ifindex: u32) -> io::Result<bool> {
    let msg = message(
        RTM_DELQDISC,
        NLM_F_REQUEST | NLM_F_ACK,
        ifindex,
        CLSACT_HANDLE,
        TC_H_CLSACT,
        &attr(TCA_KIND, b"clsact\0"),
    );
    match Socket::open()?.request(&msg)? {
        0 => Ok(true),
        libc::ENOENT | libc::EINVAL => Ok(false),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// The root qdisc of a device: its kind and handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootQdisc {
    pub kind: String,
    pub handle: u32,
}

/// Sends a dump request and returns the bodies (after the netlink header) of the
/// replies of type `want`.
fn dump(request: &[u8], want: u16) -> io::Result<Vec<Vec<u8>>> {
    let socket = Socket::open()?;
    socket.send(request)?;
    let mut bodies = Vec::new();
    // A dump is a series of datagrams ending with NLMSG_DONE; bounded by the number of
    // objects in the namespace.
    for _ in 0..10_000 {
        let buf = socket.recv()?;
        let mut at = 0;
        while at + 16 <= buf.len() {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            if len < 16 || at + len > buf.len() {
                return Err(io::Error::other("malformed netlink dump"));
            }
            match kind {
                NLMSG_DONE => return Ok(bodies),
                NLMSG_ERROR => {
                    let errno = -i32::from_ne_bytes(buf[at + 16..at + 20].try_into().unwrap());
                    return Err(io::Error::from_raw_os_error(errno));
                }
                k if k == want && len >= 36 => bodies.push(buf[at + 16..at + len].to_vec()),
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
    Err(io::Error::other("netlink dump did not end"))
}

/// (ifindex, handle, parent) of a tcmsg body.
fn tcmsg_ids(body: &[u8]) -> (u32, u32, u32) {
    (
        i32::from_ne_bytes(body[4..8].try_into().unwrap()) as u32,
        u32::from_ne_bytes(body[8..12].try_into().unwrap()),
        u32::from_ne_bytes(body[12..16].try_into().unwrap()),
    )
}

/// Reads the root qdisc of `ifindex` (None: the device has none listed, as for some
/// virtual devices).
pub fn root_qdisc(ifindex: u32) -> io::Result<Option<RootQdisc>> {
    let bodies = dump(&message(RTM_GETQDISC, NLM_F_REQUEST | NLM_F_DUMP, ifindex, 0, 0, &[]), RTM_NEWQDISC)?;
    for body in bodies {
        let (index, handle, parent) = tcmsg_ids(&body);
        if index != ifindex || parent != TC_H_ROOT {
            continue;
        }
        let mut a = 20;
        while a + 4 <= body.len() {
            let alen = u16::from_ne_bytes([body[a], body[a + 1]]) as usize;
            let atype = u16::from_ne_bytes([body[a + 2], body[a + 3]]);
            if alen < 4 || a + alen > body.len() {
                break;
            }
            if atype == TCA_KIND {
                let name = body[a + 4..a + alen].split(|b| *b == 0).next().unwrap_or_default();
                return Ok(Some(RootQdisc { kind: String::from_utf8_lossy(name).into_owned(), handle }));
            }
            a += (alen + 3) & !3;
        }
    }
    Ok(None)
}

/// Whether any filter (ours or anyone's) is attached to the clsact qdisc of `ifindex`.
pub fn clsact_has_filters(ifindex: u32) -> io::Result<bool> {
    for hook in [TC_H_CLSACT_INGRESS, TC_H_CLSACT_EGRESS] {
        match dump(&message(RTM_GETTFILTER, NLM_F_REQUEST | NLM_F_DUMP, ifindex, 0, hook, &[]), RTM_NEWTFILTER) {
            Ok(bodies) if bodies.iter().any(|b| tcmsg_ids(b).0 == ifindex) => return Ok(true),
            Ok(_) => {}
            // No clsact qdisc (any more): no filters.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// sch_fq settings for held packets. Defaults (100 packets per flow, 10 s horizon that
/// caps rather than drops) would silently cut a delayed flow to flow_limit/delay
/// packets per second, so: 10,000 packets per flow, 100,000 in all, and a horizon just
/// past the longest delay a rule may ask for, beyond which fq drops (and counts).
pub struct FqSettings {
    pub limit: u32,
    pub flow_limit: u32,
    pub horizon_us: u32,
}

/// Installs sch_fq as the root qdisc of `ifindex`, replacing what is there.
pub fn replace_root_with_fq(ifindex: u32, settings: &FqSettings) -> io::Result<()> {
    let mut options = attr(TCA_FQ_PLIMIT, &settings.limit.to_ne_bytes());
    options.extend(attr(TCA_FQ_FLOW_PLIMIT, &settings.flow_limit.to_ne_bytes()));
    options.extend(attr(TCA_FQ_HORIZON, &settings.horizon_us.to_ne_bytes()));
    options.extend(attr(TCA_FQ_HORIZON_DROP, &[1]));
    let mut attrs = attr(TCA_KIND, b"fq\0");
    attrs.extend(attr(TCA_OPTIONS | NLA_F_NESTED, &options));
    let msg =
        message(RTM_NEWQDISC, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, ifindex, 0, TC_H_ROOT, &attrs);
    match Socket::open()?.request(&msg)? {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Deletes the root qdisc of `ifindex`; the kernel puts the device's default back.
pub fn delete_root_qdisc(ifindex: u32) -> io::Result<bool> {
    let msg = message(RTM_DELQDISC, NLM_F_REQUEST | NLM_F_ACK, ifindex, 0, TC_H_ROOT, &[]);
    match Socket::open()?.request(&msg)? {
        0 => Ok(true),
        libc::ENOENT | libc::EINVAL => Ok(false),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWNSID: u16 = 88;
const RTM_GETNSID: u16 = 90;
const IFLA_LINK: u16 = 5;
const IFLA_LINK_NETNSID: u16 = 37;
const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;

fn attrs(body: &[u8], from: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut a = from;
    while a + 4 <= body.len() {
        let alen = u16::from_ne_bytes([body[a], body[a + 1]]) as usize;
        let atype = u16::from_ne_bytes([body[a + 2], body[a + 3]]) & 0x3fff;
        if alen < 4 || a + alen > body.len() {
            break;
        }
        out.push((atype, &body[a + 4..a + alen]));
        a += (alen + 3) & !3;
    }
    out
}

fn request_reply(msg: &[u8], want: u16) -> io::Result<Vec<u8>> {
    let socket = Socket::open()?;
    socket.send(msg)?;
    let reply = socket.recv()?;
    if reply.len() < 16 {
        return Err(io::Error::other("short netlink reply"));
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind == NLMSG_ERROR {
        let errno = -i32::from_ne_bytes(reply[16..20].try_into().unwrap());
        return Err(io::Error::from_raw_os_error(errno));
    }
    if kind != want {
        return Err(io::Error::other("unexpected netlink reply"));
    }
    Ok(reply[16..].to_vec())
}

fn header(kind: u16, total: usize) -> Vec<u8> {
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg
}

/// The other end of a link such as a veth: its ifindex and, when it lives in another
/// namespace, that namespace's id as seen from the calling thread's namespace.
pub fn link_peer(ifindex: u32) -> io::Result<Option<(u32, Option<i32>)>> {
    let mut msg = header(RTM_GETLINK, 16 + 16);
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    let body = request_reply(&msg, RTM_NEWLINK)?;
    let mut peer = None;
    let mut nsid = None;
    for (kind, value) in attrs(&body, 16) {
        match kind {
            IFLA_LINK if value.len() >= 4 => peer = Some(u32::from_ne_bytes(value[..4].try_into().unwrap())),
            IFLA_LINK_NETNSID if value.len() >= 4 => nsid = Some(i32::from_ne_bytes(value[..4].try_into().unwrap())),
            _ => {}
        }
    }
    // A device without a far end reports itself (or 0) as its link; a veth whose far
    // end is in another namespace may well have the same index there.
    Ok(peer.filter(|p| *p != 0 && (nsid.is_some() || *p != ifindex)).map(|p| (p, nsid)))
}

/// The id the calling thread's namespace gives the namespace open at `fd` (negative
/// when it has none).
pub fn nsid_of(fd: i32) -> io::Result<i32> {
    let mut msg = header(RTM_GETNSID, 16 + 4 + 8);
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    msg.extend(attr(NETNSA_FD, &(fd as u32).to_ne_bytes()));
    let body = request_reply(&msg, RTM_NEWNSID)?;
    for (kind, value) in attrs(&body, 4) {
        if kind == NETNSA_NSID && value.len() >= 4 {
            return Ok(i32::from_ne_bytes(value[..4].try_into().unwrap()));
        }
    }
    Err(io::Error::other("RTM_GETNSID reply without an id"))
}
