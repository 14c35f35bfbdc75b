//! The rtnetlink requests aya does not offer:
//! - deleting the clsact qdisc the legacy (pre-TCX) attach path had to add, so a clean
//!   exit leaves no qdisc behind (field notes: peers leave tc state after they exit),
//!   and listing the filters on its hooks;
//! - reading the qdiscs of a device, installing sch_fq (delay and rate need it to
//!   enforce departure times) and deleting it again, which brings back the device's
//!   default qdisc, or restoring the qdisc it replaced;
//! - reading and setting what chaos-ebpf needs of a device (kind, GSO segment limit, far
//!   end), creating and deleting the segmenter veth pair, namespace ids and routes.
//!
//! Messages are netlink-packet-route's types over netlink-sys's blocking socket; the
//! TC attributes the crate does not type are raw attributes in [`tc_raw`]. Every call
//! opens its own socket, and a netlink socket belongs to the namespace it was created
//! in: all requests act in the calling thread's network namespace.

mod tc_raw;

use std::{io, net::IpAddr};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, Parseable, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{self, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage},
    nsid::{NsidAttribute, NsidMessage},
    route::{RouteAttribute, RouteMessage},
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub use tc_raw::{fq_limits, fq_options};

/// The sequence number of every request (one request per socket).
const SEQUENCE: u32 = 1;
/// Datagrams read for one request at most: a dump sends one per batch of objects (up to
/// 32 KiB each), so this bounds the loop far above any namespace's qdiscs or filters.
const MAX_DATAGRAMS: usize = 10_000;
/// Larger than any datagram the kernel sends (it caps dump batches at 32 KiB).
const RECEIVE_BUFFER: usize = 64 * 1024;

/// What a request expects back before the kernel's closing message.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// NLM_F_ACK: nothing but the NLMSG_ERROR carrying the verdict (0 = done).
    Ack,
    /// A get: one reply (or an NLMSG_ERROR refusal).
    One,
    /// NLM_F_DUMP: replies up to NLMSG_DONE, possibly over many datagrams.
    Dump,
}

/// A reply, with its payload as the kernel sent it for what is read raw.
struct Reply {
    message: RouteNetlinkMessage,
    payload: Vec<u8>,
}

/// Sends `message` on a new rtnetlink socket of the calling thread's namespace and reads
/// the kernel's replies. A refusal comes back as the kernel's errno
/// (`io::Error::raw_os_error`: ENOENT, ENODEV, EEXIST, ...).
fn exchange(message: RouteNetlinkMessage, flags: u16, expect: Expect) -> io::Result<Vec<Reply>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    // Port 0: only the kernel's messages reach this socket.
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST
        | flags
        | match expect {
            Expect::Ack => NLM_F_ACK,
            Expect::One => 0,
            Expect::Dump => NLM_F_DUMP,
        };
    header.sequence_number = SEQUENCE;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::from(message));
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0)?;

    let mut replies = Vec::new();
    let mut datagram = Vec::with_capacity(RECEIVE_BUFFER);
    for _ in 0..MAX_DATAGRAMS {
        datagram.clear();
        // MSG_TRUNC: the datagram's full length comes back even when it was cut.
        let len = socket.recv(&mut datagram, libc::MSG_TRUNC)?;
        if len > datagram.len() {
            return Err(malformed(format!("a {len}-byte reply does not fit the {RECEIVE_BUFFER}-byte buffer")));
        }
        if take_datagram(&datagram, expect, &mut replies)? {
            return Ok(replies);
        }
    }
    Err(malformed(format!("no end after {MAX_DATAGRAMS} datagrams")))
}

/// Adds the replies in one datagram to `replies`; true once the kernel's last message
/// for the request is in (NLMSG_DONE, the acknowledgement, or a get's reply). A refusal
/// is the kernel's errno.
fn take_datagram(datagram: &[u8], expect: Expect, replies: &mut Vec<Reply>) -> io::Result<bool> {
    let mut at = 0;
    while at < datagram.len() {
        let rest = &datagram[at..];
        let buffer = NetlinkBuffer::new_checked(&rest).map_err(|e| malformed(e.to_string()))?;
        let reply = NetlinkMessage::<RouteNetlinkMessage>::parse(&buffer).map_err(|e| malformed(e.to_string()))?;
        // NLMSG_ALIGN: messages in a datagram start on 4-byte boundaries.
        at += (reply.header.length as usize).next_multiple_of(4);
        if reply.header.sequence_number != SEQUENCE {
            continue;
        }
        match reply.payload {
            NetlinkPayload::Error(error) => {
                return match error.code {
                    Some(_) => Err(error.to_io()),
                    None if expect == Expect::Ack => Ok(true),
                    None => Err(malformed("an acknowledgement where a reply was due".into())),
                }
            }
            NetlinkPayload::Done(done) => {
                return match done.code {
                    // A dump that failed midway ends with the errno in NLMSG_DONE.
                    code if code < 0 => Err(io::Error::from_raw_os_error(-code)),
                    _ => Ok(true),
                };
            }
            NetlinkPayload::InnerMessage(message) => {
                replies.push(Reply { message, payload: buffer.payload().to_vec() });
                if expect == Expect::One {
                    return Ok(true);
                }
            }
            _ => {}
        }
    }
    Ok(false)
}

fn malformed(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("unexpected rtnetlink reply: {what}"))
}

fn acked(message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
    exchange(message, flags, Expect::Ack).map(drop)
}

fn get(message: RouteNetlinkMessage) -> io::Result<RouteNetlinkMessage> {
    exchange(message, 0, Expect::One)?.pop().map(|reply| reply.message).ok_or_else(|| malformed("no reply".into()))
}

fn dump(message: RouteNetlinkMessage) -> io::Result<Vec<Reply>> {
    exchange(message, 0, Expect::Dump)
}

/// A struct tcmsg for `ifindex` with raw handle and parent.
fn tc_message(ifindex: u32, handle: TcHandle, parent: TcHandle) -> TcMessage {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.handle = handle;
    message.header.parent = parent;
    message
}

/// `Ok(false)` for the errors of deleting a qdisc that is not there.
fn deleted(result: io::Result<()>) -> io::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes the clsact qdisc of `ifindex`. `Ok(false)` when there was none.
pub fn delete_clsact(ifindex: u32) -> io::Result<bool> {
    let mut message = tc_message(ifindex, tc_raw::CLSACT_HANDLE, TcHandle::CLSACT);
    message.attributes.push(TcAttribute::Kind("clsact".into()));
    deleted(acked(RouteNetlinkMessage::DelQueueDiscipline(message), 0))
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

fn kind_of(attributes: &[TcAttribute]) -> String {
    attributes
        .iter()
        .find_map(|a| match a {
            TcAttribute::Kind(kind) => Some(kind.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Every qdisc of `ifindex` (root, per-queue children under mq, clsact).
pub fn qdiscs(ifindex: u32) -> io::Result<Vec<Qdisc>> {
    let replies = dump(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::with_index(ifindex as i32)))?;
    Ok(replies
        .into_iter()
        .filter_map(|reply| match reply.message {
            // The kernel dumps the qdiscs of every device.
            RouteNetlinkMessage::NewQueueDiscipline(q) if q.header.index as u32 == ifindex => Some(Qdisc {
                handle: q.header.handle.into(),
                parent: q.header.parent.into(),
                kind: kind_of(&q.attributes),
                options: tc_raw::options_of(&reply.payload),
            }),
            _ => None,
        })
        .collect())
}

/// The addresses of `ifindex` as `ADDRESS/PREFIX` (`ip -brief address`), IPv4 first.
pub fn addresses(ifindex: u32) -> io::Result<Vec<String>> {
    let replies = dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
    let mut out: Vec<(bool, String)> = replies
        .into_iter()
        .filter_map(|reply| match reply.message {
            // The kernel dumps the addresses of every device.
            RouteNetlinkMessage::NewAddress(a) if a.header.index == ifindex => {
                let len = a.header.prefix_len;
                a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Address(ip) => Some((ip.is_ipv6(), format!("{ip}/{len}"))),
                    _ => None,
                })
            }
            _ => None,
        })
        .collect();
    out.sort();
    Ok(out.into_iter().map(|(_, a)| a).collect())
}

/// Creates or replaces the qdisc at `parent` of `ifindex` with `kind` and raw options.
pub fn replace_qdisc(ifindex: u32, parent: u32, handle: u32, kind: &str, options: &[u8]) -> io::Result<()> {
    let mut message = tc_message(ifindex, handle.into(), parent.into());
    message.attributes.push(TcAttribute::Kind(kind.into()));
    if !options.is_empty() {
        message.attributes.push(tc_raw::options_attribute(options));
    }
    acked(RouteNetlinkMessage::NewQueueDiscipline(message), NLM_F_CREATE | NLM_F_REPLACE)
}

/// Deletes the qdisc at `parent` of `ifindex`. `Ok(false)` when there was none.
pub fn delete_qdisc(ifindex: u32, parent: u32, handle: u32) -> io::Result<bool> {
    deleted(acked(RouteNetlinkMessage::DelQueueDiscipline(tc_message(ifindex, handle.into(), parent.into())), 0))
}

/// The sch_fq options chaos-ebpf checks on a qdisc it did not create.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FqLimits {
    pub limit: Option<u32>,
    pub flow_limit: Option<u32>,
    pub horizon_us: Option<u32>,
    pub horizon_drop: Option<u8>,
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

/// Filters on the ingress or egress hook of the clsact qdisc of `ifindex` (empty when
/// there is no clsact qdisc).
pub fn clsact_filters(ifindex: u32, ingress: bool) -> io::Result<Vec<Filter>> {
    let request = tc_message(ifindex, TcHandle::UNSPEC, tc_raw::clsact_hook(ingress));
    let replies = match dump(RouteNetlinkMessage::GetTrafficFilter(request)) {
        Ok(replies) => replies,
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for reply in replies {
        let RouteNetlinkMessage::NewTrafficFilter(f) = reply.message else { continue };
        let handle = u32::from(f.header.handle);
        // A chain's head entry has handle 0 and no program.
        if f.header.index as u32 != ifindex || handle == 0 {
            continue;
        }
        // tcm_info holds the priority in its upper 16 bits (the protocol below).
        let mut filter =
            Filter { priority: (f.header.info >> 16) as u16, handle, program_id: None, program_name: None };
        for attribute in &f.attributes {
            let TcAttribute::Options(options) = attribute else { continue };
            for option in options {
                match option {
                    TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => filter.program_id = Some(*id),
                    TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => filter.program_name = Some(name.clone()),
                    _ => {}
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

/// What chaos-ebpf reads of a device: its kind (veth, macvlan, ...; None for physical
/// devices), its GSO segment limit, and its far end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkInfo {
    pub kind: Option<String>,
    pub gso_max_segs: Option<u32>,
    /// IFLA_LINK: the far end of a veth, but the parent of a macvlan, ipvlan or vlan.
    pub link: Option<(u32, Option<i32>)>,
    /// The device's transmit drops (IFLA_STATS64).
    pub tx_dropped: Option<u64>,
}

/// A struct ifinfomsg for `ifindex` (0: a new device), up (IFF_UP set and changed) or
/// with its flags untouched.
fn link_message(ifindex: u32, up: bool) -> LinkMessage {
    let mut message = LinkMessage::default();
    message.header.index = ifindex;
    if up {
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
    }
    message
}

pub fn link_info(ifindex: u32) -> io::Result<LinkInfo> {
    let RouteNetlinkMessage::NewLink(reply) = get(RouteNetlinkMessage::GetLink(link_message(ifindex, false)))? else {
        return Err(malformed("RTM_GETLINK answered with another message".into()));
    };
    let mut info = LinkInfo::default();
    let mut peer = None;
    let mut nsid = None;
    for attribute in reply.attributes {
        match attribute {
            LinkAttribute::Link(index) => peer = Some(index),
            LinkAttribute::LinkNetNsId(id) => nsid = Some(id),
            LinkAttribute::GsoMaxSegs(segs) => info.gso_max_segs = Some(segs),
            LinkAttribute::Stats64(stats) => info.tx_dropped = Some(stats.tx_dropped),
            LinkAttribute::LinkInfo(infos) => {
                for item in infos {
                    if let link::LinkInfo::Kind(kind) = item {
                        info.kind = Some(kind.to_string());
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
    let mut message = link_message(ifindex, false);
    message.attributes.push(LinkAttribute::GsoMaxSegs(segs));
    acked(RouteNetlinkMessage::SetLink(message), 0)
}

/// The id the calling thread's namespace gives the namespace open at `fd` (negative
/// when it has none).
pub fn nsid_of(fd: i32) -> io::Result<i32> {
    let mut request = NsidMessage::default();
    request.attributes.push(NsidAttribute::Fd(fd as u32));
    let RouteNetlinkMessage::NewNsId(reply) = get(RouteNetlinkMessage::GetNsId(request))? else {
        return Err(malformed("RTM_GETNSID answered with another message".into()));
    };
    reply
        .attributes
        .iter()
        .find_map(|a| match a {
            NsidAttribute::Id(id) => Some(*id),
            _ => None,
        })
        .ok_or_else(|| malformed("RTM_GETNSID reply without an id".into()))
}

/// The interface the calling thread's namespace routes `dst` through (`ip route get`);
/// None when it has no route there.
pub fn route_oif(dst: IpAddr) -> io::Result<Option<u32>> {
    let mut request = RouteMessage::default();
    (request.header.address_family, request.header.destination_prefix_length) = match dst {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    request.attributes.push(RouteAttribute::Destination(dst.into()));
    match get(RouteNetlinkMessage::GetRoute(request)) {
        Ok(RouteNetlinkMessage::NewRoute(reply)) => Ok(reply.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(oif) => Some(*oif),
            _ => None,
        })),
        Ok(_) => Err(malformed("RTM_GETROUTE answered with another message".into())),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENETUNREACH | libc::EHOSTUNREACH)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates a veth pair in the calling thread's namespace with `mtu`, the `outer` end up
/// and with the GSO segment limit `outer_gso_max_segs` (bring the inner end up with
/// [`set_up`]: the kernel registers it first, and a veth without its far end yet
/// refuses to come up). Fails with EEXIST when a device of either name exists.
pub fn add_veth_pair(outer: &str, inner: &str, mtu: u32, outer_gso_max_segs: u32) -> io::Result<()> {
    let mut peer = link_message(0, false);
    peer.attributes.extend([LinkAttribute::IfName(inner.into()), LinkAttribute::Mtu(mtu)]);
    let mut message = link_message(0, true);
    message.attributes.extend([
        LinkAttribute::IfName(outer.into()),
        LinkAttribute::Mtu(mtu),
        LinkAttribute::GsoMaxSegs(outer_gso_max_segs),
        LinkAttribute::LinkInfo(vec![
            link::LinkInfo::Kind(InfoKind::Veth),
            link::LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]),
    ]);
    acked(RouteNetlinkMessage::NewLink(message), NLM_F_CREATE | NLM_F_EXCL)
}

/// Brings the device `ifindex` of the calling thread's namespace up.
pub fn set_up(ifindex: u32) -> io::Result<()> {
    acked(RouteNetlinkMessage::NewLink(link_message(ifindex, true)), 0)
}

/// Deletes the device `ifindex` of the calling thread's namespace (a veth takes its
/// far end with it).
pub fn delete_link(ifindex: u32) -> io::Result<()> {
    acked(RouteNetlinkMessage::DelLink(link_message(ifindex, false)), 0)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroI32;

    use netlink_packet_core::{DoneMessage, ErrorMessage};

    use super::*;

    /// One datagram of kernel messages answering our request (its sequence number).
    fn datagram(payloads: Vec<NetlinkPayload<RouteNetlinkMessage>>) -> Vec<u8> {
        let mut out = Vec::new();
        for payload in payloads {
            let mut header = NetlinkHeader::default();
            header.sequence_number = SEQUENCE;
            let mut message = NetlinkMessage::new(header, payload);
            message.finalize();
            let start = out.len();
            out.resize(start + message.buffer_len(), 0);
            message.serialize(&mut out[start..]);
            out.resize(out.len().next_multiple_of(4), 0);
        }
        out
    }

    fn qdisc(ifindex: u32, kind: &str, options: &[u8]) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut message = tc_message(ifindex, TcHandle { major: 1, minor: 0 }, TcHandle::ROOT);
        message.attributes.push(TcAttribute::Kind(kind.into()));
        message.attributes.push(tc_raw::options_attribute(options));
        RouteNetlinkMessage::NewQueueDiscipline(message).into()
    }

    fn refusal(errno: i32) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut error = ErrorMessage::default();
        error.code = NonZeroI32::new(-errno);
        NetlinkPayload::Error(error)
    }

    fn done(code: i32) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut done = DoneMessage::default();
        done.code = code;
        NetlinkPayload::Done(done)
    }

    #[test]
    fn a_dump_reads_every_datagram_up_to_done() {
        let mut replies = Vec::new();
        let first = datagram(vec![qdisc(3, "mq", &[]), qdisc(4, "pfifo_fast", &[7; 20])]);
        assert!(!take_datagram(&first, Expect::Dump, &mut replies).unwrap(), "no NLMSG_DONE yet");
        let last = datagram(vec![qdisc(5, "fq_codel", &[]), done(0)]);
        assert!(take_datagram(&last, Expect::Dump, &mut replies).unwrap());
        let indexes: Vec<i32> = replies
            .iter()
            .map(|r| match &r.message {
                RouteNetlinkMessage::NewQueueDiscipline(q) => q.header.index,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(indexes, [3, 4, 5]);
        assert_eq!(tc_raw::options_of(&replies[1].payload), [7; 20]);
    }

    #[test]
    fn the_kernels_refusal_keeps_its_errno() {
        for (errno, expect) in [(libc::ENOENT, Expect::Ack), (libc::EEXIST, Expect::Ack), (libc::ENODEV, Expect::One)] {
            let e = take_datagram(&datagram(vec![refusal(errno)]), expect, &mut Vec::new()).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(errno), "{e}");
        }
        // A dump that failed midway.
        let e = take_datagram(&datagram(vec![qdisc(3, "mq", &[]), done(-libc::EINTR)]), Expect::Dump, &mut Vec::new())
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINTR));
    }

    #[test]
    fn an_acknowledgement_ends_only_an_acked_request() {
        let ack = datagram(vec![NetlinkPayload::Error(ErrorMessage::default())]);
        assert!(take_datagram(&ack, Expect::Ack, &mut Vec::new()).unwrap());
        let e = take_datagram(&ack, Expect::One, &mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_cut_message_is_an_error_not_a_panic() {
        let whole = datagram(vec![qdisc(3, "pfifo_fast", &[7; 20]), done(0)]);
        // Cut inside the header, inside the qdisc message, inside NLMSG_DONE.
        for len in [1, 15, 16, 40, whole.len() - 1] {
            let e = take_datagram(&whole[..len], Expect::Dump, &mut Vec::new()).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{len} bytes: {e}");
        }
    }
}
