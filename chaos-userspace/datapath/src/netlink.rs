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

/// A qdisc of a device, with its options as the kernel dumps them (for the kinds
/// chaos-ebpf touches, the dump format is the configuration format, so the raw options
/// can be sent back to restore the qdisc exactly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    pub handle: u32,
    pub parent: u32,
    pub kind: String,
    pub options: Vec<u8>,
}

/// Every qdisc of `ifindex` (root, per-queue children under mq, clsact).
pub fn qdiscs(ifindex: u32) -> io::Result<Vec<Qdisc>> {
    let bodies = dump(&message(RTM_GETQDISC, NLM_F_REQUEST | NLM_F_DUMP, ifindex, 0, 0, &[]), RTM_NEWQDISC)?;
    let mut out = Vec::new();
    for body in bodies {
        let (index, handle, parent) = tcmsg_ids(&body);
        if index != ifindex {
            continue;
        }
        let mut kind = String::new();
        let mut options = Vec::new();
        for (atype, value) in attrs(&body, 20) {
            match atype {
                TCA_KIND => {
                    let name = value.split(|b| *b == 0).next().unwrap_or_default();
                    kind = String::from_utf8_lossy(name).into_owned();
                }
                TCA_OPTIONS => options = value.to_vec(),
                _ => {}
            }
        }
        out.push(Qdisc { handle, parent, kind, options });
    }
    Ok(out)
}

/// Creates or replaces the qdisc at `parent` of `ifindex` with `kind` and raw options.
pub fn replace_qdisc(ifindex: u32, parent: u32, handle: u32, kind: &str, options: &[u8]) -> io::Result<()> {
    let mut name = kind.as_bytes().to_vec();
    name.push(0);
    let mut attrs = attr(TCA_KIND, &name);
    if !options.is_empty() {
        attrs.extend(attr(TCA_OPTIONS | NLA_F_NESTED, options));
    }
    let msg = message(
        RTM_NEWQDISC,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        ifindex,
        handle,
        parent,
        &attrs,
    );
    match Socket::open()?.request(&msg)? {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Deletes the qdisc at `parent` of `ifindex`. `Ok(false)` when there was none.
pub fn delete_qdisc(ifindex: u32, parent: u32, handle: u32) -> io::Result<bool> {
    let msg = message(RTM_DELQDISC, NLM_F_REQUEST | NLM_F_ACK, ifindex, handle, parent, &[]);
    match Socket::open()?.request(&msg)? {
        0 => Ok(true),
        libc::ENOENT | libc::EINVAL => Ok(false),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// The sch_fq options chaos-ebpf checks on a qdisc it did not create.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FqLimits {
    pub limit: Option<u32>,
    pub flow_limit: Option<u32>,
    pub horizon_us: Option<u32>,
    pub horizon_drop: Option<u8>,
}

pub fn fq_limits(options: &[u8]) -> FqLimits {
    let mut limits = FqLimits::default();
    for (atype, value) in attrs(options, 0) {
        let word = value.get(..4).map(|v| u32::from_ne_bytes(v.try_into().unwrap()));
        match atype {
            TCA_FQ_PLIMIT => limits.limit = word,
            TCA_FQ_FLOW_PLIMIT => limits.flow_limit = word,
            TCA_FQ_HORIZON => limits.horizon_us = word,
            TCA_FQ_HORIZON_DROP => limits.horizon_drop = value.first().copied(),
            _ => {}
        }
    }
    limits
}

/// The raw sch_fq options chaos-ebpf installs.
pub fn fq_options(settings: &FqSettings) -> Vec<u8> {
    let mut options = attr(TCA_FQ_PLIMIT, &settings.limit.to_ne_bytes());
    options.extend(attr(TCA_FQ_FLOW_PLIMIT, &settings.flow_limit.to_ne_bytes()));
    options.extend(attr(TCA_FQ_HORIZON, &settings.horizon_us.to_ne_bytes()));
    options.extend(attr(TCA_FQ_HORIZON_DROP, &[1]));
    options
}

/// A TC filter on a clsact hook: enough to tell whose it is and to delete it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub priority: u16,
    pub handle: u32,
    /// The BPF program it runs (cls_bpf filters only).
    pub program_id: Option<u32>,
    pub program_name: Option<String>,
}

const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_ID: u16 = 11;

/// Filters on the ingress or egress hook of the clsact qdisc of `ifindex` (empty when
/// there is no clsact qdisc).
pub fn clsact_filters(ifindex: u32, ingress: bool) -> io::Result<Vec<Filter>> {
    let hook = if ingress { TC_H_CLSACT_INGRESS } else { TC_H_CLSACT_EGRESS };
    let bodies = match dump(&message(RTM_GETTFILTER, NLM_F_REQUEST | NLM_F_DUMP, ifindex, 0, hook, &[]), RTM_NEWTFILTER)
    {
        Ok(bodies) => bodies,
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for body in bodies {
        let (index, handle, _) = tcmsg_ids(&body);
        // tcm_info holds the priority in its upper 16 bits; a chain's head entry has
        // handle 0 and no program.
        let info = u32::from_ne_bytes(body[16..20].try_into().unwrap());
        if index != ifindex || handle == 0 {
            continue;
        }
        let mut filter = Filter { priority: (info >> 16) as u16, handle, program_id: None, program_name: None };
        for (atype, value) in attrs(&body, 20) {
            if atype == TCA_OPTIONS {
                for (otype, ovalue) in attrs(value, 0) {
                    match otype {
                        TCA_BPF_ID if ovalue.len() >= 4 => {
                            filter.program_id = Some(u32::from_ne_bytes(ovalue[..4].try_into().unwrap()))
                        }
                        TCA_BPF_NAME => {
                            let name = ovalue.split(|b| *b == 0).next().unwrap_or_default();
                            filter.program_name = Some(String::from_utf8_lossy(name).into_owned());
                        }
                        _ => {}
                    }
                }
            }
        }
        out.push(filter);
    }
    Ok(out)
}

/// Whether any filter (ours or anyone's) is attached to the clsact qdisc of `ifindex`.
pub fn clsact_has_filters(ifindex: u32) -> io::Result<bool> {
    Ok(!clsact_filters(ifindex, true)?.is_empty() || !clsact_filters(ifindex, false)?.is_empty())
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

const IFLA_GSO_MAX_SEGS: u16 = 40;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const RTM_SETLINK: u16 = 19;

/// What chaos-ebpf reads of a device: its kind (veth, macvlan, ...; None for physical
/// devices), its GSO segment limit, and its far end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkInfo {
    pub kind: Option<String>,
    pub gso_max_segs: Option<u32>,
    /// IFLA_LINK: the far end of a veth, but the parent of a macvlan, ipvlan or vlan.
    pub link: Option<(u32, Option<i32>)>,
}

pub fn link_info(ifindex: u32) -> io::Result<LinkInfo> {
    let mut msg = header(RTM_GETLINK, 16 + 16);
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    let body = request_reply(&msg, RTM_NEWLINK)?;
    let mut info = LinkInfo::default();
    let mut peer = None;
    let mut nsid = None;
    for (kind, value) in attrs(&body, 16) {
        match kind {
            IFLA_LINK if value.len() >= 4 => peer = Some(u32::from_ne_bytes(value[..4].try_into().unwrap())),
            IFLA_LINK_NETNSID if value.len() >= 4 => nsid = Some(i32::from_ne_bytes(value[..4].try_into().unwrap())),
            IFLA_GSO_MAX_SEGS if value.len() >= 4 => {
                info.gso_max_segs = Some(u32::from_ne_bytes(value[..4].try_into().unwrap()))
            }
            IFLA_LINKINFO => {
                for (ikind, ivalue) in attrs(value, 0) {
                    if ikind == IFLA_INFO_KIND {
                        let name = ivalue.split(|b| *b == 0).next().unwrap_or_default();
                        info.kind = Some(String::from_utf8_lossy(name).into_owned());
                    }
                }
            }
            _ => {}
        }
    }
    // A device without a far end reports itself (or 0) as its link; a veth whose far
    // end is in another namespace may well have the same index there.
    info.link = peer.filter(|p| *p != 0 && (nsid.is_some() || *p != ifindex)).map(|p| (p, nsid));
    Ok(info)
}

/// Sets the most segments one GSO packet may carry on `ifindex` (1: the stack hands the
/// device, and the TC hooks before it, one wire packet per skb).
pub fn set_gso_max_segs(ifindex: u32, segs: u32) -> io::Result<()> {
    let mut msg = header(RTM_SETLINK, 16 + 16 + 8);
    // NLM_F_ACK, so the kernel's verdict comes back.
    msg[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend(attr(IFLA_GSO_MAX_SEGS, &segs.to_ne_bytes()));
    match Socket::open()?.request(&msg)? {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
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

const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;

/// The interface the calling thread's namespace routes `dst` through (`ip route get`);
/// None when it has no route there.
pub fn route_oif(dst: std::net::IpAddr) -> io::Result<Option<u32>> {
    let (family, bytes, bits) = match dst {
        std::net::IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec(), 32u8),
        std::net::IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec(), 128u8),
    };
    let dst_attr = attr(RTA_DST, &bytes);
    let mut msg = header(RTM_GETROUTE, 16 + 12 + dst_attr.len());
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    msg.extend_from_slice(&[family, bits, 0, 0, 0, 0, 0, 0]);
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend(dst_attr);
    match request_reply(&msg, RTM_NEWROUTE) {
        Ok(body) => Ok(attrs(&body, 12)
            .into_iter()
            .find(|(kind, value)| *kind == RTA_OIF && value.len() >= 4)
            .map(|(_, value)| u32::from_ne_bytes(value[..4].try_into().unwrap()))),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH)) => Ok(None),
        Err(e) => Err(e),
    }
}

const RTM_DELLINK: u16 = 17;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const NLM_F_EXCL: u16 = 0x200;

/// struct ifinfomsg for `ifindex`, up (IFF_UP set and changed) or with flags untouched.
fn ifinfomsg(ifindex: u32, up: bool) -> Vec<u8> {
    let mut out = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
    out.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    let flags = if up { libc::IFF_UP as u32 } else { 0 };
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out
}

fn acked(msg: &[u8]) -> io::Result<()> {
    match Socket::open()?.request(msg)? {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Creates a veth pair in the calling thread's namespace with `mtu`, the `outer` end up
/// and with the GSO segment limit `outer_gso_max_segs` (bring the inner end up with
/// [`set_up`]: the kernel registers it first, and a veth without its far end yet
/// refuses to come up). Fails with EEXIST when a device of either name exists.
pub fn add_veth_pair(outer: &str, inner: &str, mtu: u32, outer_gso_max_segs: u32) -> io::Result<()> {
    let name = |n: &str| attr(IFLA_IFNAME, &[n.as_bytes(), &[0]].concat());
    let mut peer = ifinfomsg(0, false);
    peer.extend(name(inner));
    peer.extend(attr(IFLA_MTU, &mtu.to_ne_bytes()));
    let info =
        [attr(IFLA_INFO_KIND, b"veth\0"), attr(IFLA_INFO_DATA | NLA_F_NESTED, &attr(VETH_INFO_PEER, &peer))].concat();
    let mut body = ifinfomsg(0, true);
    body.extend(name(outer));
    body.extend(attr(IFLA_MTU, &mtu.to_ne_bytes()));
    body.extend(attr(IFLA_GSO_MAX_SEGS, &outer_gso_max_segs.to_ne_bytes()));
    body.extend(attr(IFLA_LINKINFO | NLA_F_NESTED, &info));
    let mut msg = header(RTM_NEWLINK, 16 + body.len());
    msg[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL).to_ne_bytes());
    msg.extend(body);
    acked(&msg)
}

/// Brings the device `ifindex` of the calling thread's namespace up.
pub fn set_up(ifindex: u32) -> io::Result<()> {
    let body = ifinfomsg(ifindex, true);
    let mut msg = header(RTM_NEWLINK, 16 + body.len());
    msg[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend(body);
    acked(&msg)
}

/// Deletes the device `ifindex` of the calling thread's namespace (a veth takes its
/// far end with it).
pub fn delete_link(ifindex: u32) -> io::Result<()> {
    let body = ifinfomsg(ifindex, false);
    let mut msg = header(RTM_DELLINK, 16 + body.len());
    msg[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend(body);
    acked(&msg)
}
