//! Header parsing: Ethernet (with up to two VLAN tags, 802.1Q and QinQ), IPv4, IPv6 (with
//! the common extension headers), the TCP/UDP ports, and which fragment of a datagram a
//! packet is.
//!
//! One `bpf_skb_load_bytes` copies the first `HEAD_LEN` bytes into per-CPU scratch
//! memory, and the fields are read from there with explicit bounds checks. A helper call
//! per field (`ctx.load`) cost about 340 ns per packet on the project's machine kind
//! (`cargo xtask bench`); direct packet access does not pass the verifier once LLVM
//! narrows `data_end` to a 32-bit register under `-C target-cpu=v3`. A packet shorter
//! than the headers it announces is an `Err`, never an out-of-bounds read.

use aya_ebpf::programs::TcContext;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_HLEN: usize = 14;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_ICMPV6: u8 = 58;

/// ICMPv6 neighbour discovery (router solicitation .. redirect, RFC 4861): never faulted,
/// like ARP, which is not IP at all. A partition cuts IP traffic; address resolution keeps
/// working in both families.
const ND_FIRST_TYPE: u8 = 133;
const ND_LAST_TYPE: u8 = 137;

pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_ACK: u8 = 0x10;

/// How many IPv6 extension headers we walk before giving up on finding the ports.
const MAX_IPV6_EXT: usize = 4;
/// VLAN tags in the frame data (a tag the driver holds in skb->vlan_tci is not there).
const MAX_VLAN_TAGS: usize = 2;

/// Values of [`Packet::fragment`].
pub mod fragment {
    /// A whole datagram.
    pub const NONE: u8 = 0;
    /// Offset 0, more fragments follow: carries the ports.
    pub const FIRST: u8 = 1;
    /// Offset > 0: no transport header, no ports.
    pub const LATER: u8 = 2;
}

/// How far parsing got.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// An IP packet; `Packet` is filled in.
    Ip,
    /// Not IP (ARP, LLDP, ...) or IPv6 neighbour discovery: no rule matches it.
    Exempt,
    /// IP, but a header lies beyond what is parsed (see RuleCounters::unparsed): passes.
    Unparsed,
    /// Shorter than the headers it announces: passes, counts an error.
    Truncated,
}

/// The fields rules match on. Addresses are IPv6 or IPv4-mapped IPv6. Lives in a
/// per-CPU scratch map, not on the stack: the BPF stack is 512 bytes for the whole
/// call chain.
#[repr(C)]
pub struct Packet {
    pub proto: u8,
    /// 0 for non-first fragments and transports without ports: no ports to match.
    pub has_ports: u8,
    pub tcp_flags: u8,
    /// One of [`fragment`].
    pub fragment: u8,
    pub sport: u16,
    pub dport: u16,
    /// chaos_ebpf_common::family::IPV4 or IPV6.
    pub family: u8,
    pub _pad: [u8; 3],
    /// IP identification of a fragment (16 bits for IPv4, 32 for IPv6).
    pub fragment_id: u32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// TCP only (0 otherwise): where the IP header, the TCP header and the TCP payload
    /// start, and the payload's length as the IP header gives it (the TLS parse and the
    /// reset a TLS_REFUSE rule builds use them).
    pub l3_off: u16,
    pub l4_off: u16,
    pub payload_off: u16,
    pub payload_len: u16,
}

const _: () = assert!(
    core::mem::offset_of!(Packet, saddr) % 4 == 0 && core::mem::offset_of!(Packet, daddr) % 4 == 0,
    "write_mapped_v4 stores 32-bit words"
);

/// A header field lies outside the copied head.
pub enum Missing {
    /// The packet ends before it: it is shorter than its headers announce.
    Truncated,
    /// The head is full (the packet is longer than HEAD_LEN): the field is further in.
    BeyondHead,
}

/// Bytes of each packet copied for parsing: Ethernet + VLAN + IPv6 + a few extension
/// headers + the TCP flags.
pub const HEAD_LEN: usize = 128;
const _: () = assert!(HEAD_LEN.is_power_of_two(), "bytes() masks offsets with HEAD_LEN - 1");

/// The copied head of the packet and how much of it is valid.
#[repr(C)]
pub struct Head {
    pub bytes: [u8; HEAD_LEN],
    pub len: u32,
    pub _pad: u32,
}

/// Reads `N` bytes at `offset` of the copied head.
#[inline(always)]
fn bytes<const N: usize>(head: &Head, offset: usize) -> Result<[u8; N], Missing> {
    if offset > HEAD_LEN - N || offset + N > head.len as usize {
        return Err(if head.len as usize == HEAD_LEN { Missing::BeyondHead } else { Missing::Truncated });
    }
    // Older verifiers (Linux 6.1) lose the bound above when LLVM computes the address
    // from another copy of `offset`; a mask the compiler cannot drop (it is in asm)
    // bounds the address by itself. It changes nothing: offset < HEAD_LEN already.
    let mut offset = offset;
    // SAFETY: pure register arithmetic.
    unsafe { core::arch::asm!("{0} &= {mask}", inout(reg) offset, mask = const HEAD_LEN - 1) };
    // SAFETY: offset + N <= HEAD_LEN (checked above); [u8; N] has alignment 1.
    Ok(unsafe { core::ptr::read_unaligned(head.bytes.as_ptr().add(offset) as *const [u8; N]) })
}

#[inline(always)]
fn load_be16(head: &Head, offset: usize) -> Result<u16, Missing> {
    bytes::<2>(head, offset).map(u16::from_be_bytes)
}

#[inline(always)]
fn load_u8(head: &Head, offset: usize) -> Result<u8, Missing> {
    bytes::<1>(head, offset).map(|b| b[0])
}

#[inline(always)]
fn load_be32(head: &Head, offset: usize) -> Result<u32, Missing> {
    bytes::<4>(head, offset).map(u32::from_be_bytes)
}

/// Zeroes a field with one store of its size. LLVM merges plain stores to adjacent fields
/// into a call to memset, which runs byte by byte in a BPF subprogram.
#[inline(always)]
pub fn clear<T: Default>(field: &mut T) {
    // SAFETY: a valid, aligned, exclusive reference.
    unsafe { core::ptr::write_volatile(field, T::default()) }
}

/// Writes `addr` as an IPv4-mapped IPv6 address (::ffff:a.b.c.d) with four 32-bit
/// stores: LLVM turns a whole-array write with ten zero bytes into a call to memset,
/// which runs byte by byte in a BPF subprogram (two per IPv4 packet).
#[inline(always)]
fn write_mapped_v4(dst: &mut [u8; 16], addr: [u8; 4]) {
    let words = dst.as_mut_ptr().cast::<u32>();
    // SAFETY: 16 writable bytes; Packet is repr(C) with 4-byte alignment and its address
    // fields start at offset 16, so each u32 store is aligned.
    unsafe {
        core::ptr::write_volatile(words, 0);
        core::ptr::write_volatile(words.add(1), 0);
        core::ptr::write_volatile(words.add(2), u32::from_ne_bytes([0, 0, 0xff, 0xff]));
        core::ptr::write_volatile(words.add(3), u32::from_ne_bytes(addr));
    }
}

/// The common case at fixed offsets: an untagged frame, IPv4 without options and not a
/// fragment, UDP or TCP, with the whole transport header copied. Every field is read at
/// a constant offset after one length check, which costs a fraction of the general
/// walk's bounded reads; it fills `packet` exactly as that walk would. None: not such a
/// packet, and nothing is written.
#[inline(always)]
fn parse_plain_ipv4(head: &Head, packet: &mut Packet) -> Option<Class> {
    const L3: usize = ETH_HLEN;
    const L4: usize = L3 + 20;
    let b = &head.bytes;
    let len = head.len as usize;
    let proto = b[L3 + 9];
    let transport_len = match proto {
        IPPROTO_UDP => 8,
        IPPROTO_TCP => 20,
        _ => return None,
    };
    if len < L4 + transport_len
        || u16::from_be_bytes([b[12], b[13]]) != ETH_P_IPV4
        || b[L3] != 0x45
        // Fragment offset or more-fragments set: the general walk keeps fragment state.
        || u16::from_be_bytes([b[L3 + 6], b[L3 + 7]]) & 0x3fff != 0
    {
        return None;
    }
    packet.family = chaos_ebpf_common::family::IPV4;
    packet.proto = proto;
    clear(&mut packet.fragment); // fragment::NONE
    clear(&mut packet.fragment_id);
    write_mapped_v4(&mut packet.saddr, [b[L3 + 12], b[L3 + 13], b[L3 + 14], b[L3 + 15]]);
    write_mapped_v4(&mut packet.daddr, [b[L3 + 16], b[L3 + 17], b[L3 + 18], b[L3 + 19]]);
    packet.sport = u16::from_be_bytes([b[L4], b[L4 + 1]]);
    packet.dport = u16::from_be_bytes([b[L4 + 2], b[L4 + 3]]);
    packet.has_ports = 1;
    clear(&mut packet.tcp_flags);
    clear(&mut packet.l3_off);
    clear(&mut packet.l4_off);
    clear(&mut packet.payload_off);
    clear(&mut packet.payload_len);
    if proto == IPPROTO_TCP {
        packet.tcp_flags = b[L4 + 13];
        let ip_end = u16::from_be_bytes([b[L3 + 2], b[L3 + 3]]) as usize;
        record_tcp_payload(packet, L3, L4, b[L4 + 12], ip_end);
    }
    Some(Class::Ip)
}

/// Where the IP header, the TCP header and the TCP payload start, and the payload's
/// length, from the TCP data offset byte and `ip_end` (bytes from the IP header's start
/// to the end of its payload); left 0 when the header is shorter than 20 bytes or no
/// payload follows it.
#[inline(always)]
fn record_tcp_payload(packet: &mut Packet, l3: usize, l4: usize, data_offset: u8, ip_end: usize) {
    let tcp_len = ((data_offset >> 4) as usize) * 4;
    let used = l4 - l3 + tcp_len;
    if tcp_len >= 20 && ip_end > used && ip_end < 0x10000 {
        packet.l3_off = l3 as u16;
        packet.l4_off = l4 as u16;
        packet.payload_off = (l4 + tcp_len) as u16;
        packet.payload_len = (ip_end - used) as u16;
    }
}

/// Fills `packet` and says how far it got.
#[inline(always)]
pub fn parse(ctx: &TcContext, head: &mut Head, packet: &mut Packet) -> Class {
    match parse_headers(ctx, head, packet) {
        Ok(class) => class,
        Err(Missing::Truncated) => Class::Truncated,
        Err(Missing::BeyondHead) => Class::Unparsed,
    }
}

#[inline(always)]
fn parse_headers(ctx: &TcContext, head: &mut Head, packet: &mut Packet) -> Result<Class, Missing> {
    let len = ctx.len() as usize;
    let len = if len > HEAD_LEN { HEAD_LEN } else { len };
    if len < ETH_HLEN {
        return Err(Missing::Truncated);
    }
    // The same masking as in bytes(): 1..=HEAD_LEN in the register the helper call
    // uses, so the 6.1 verifier sees the bound too.
    let mut len_minus_one = len - 1;
    // SAFETY: pure register arithmetic.
    unsafe { core::arch::asm!("{0} &= {mask}", inout(reg) len_minus_one, mask = const HEAD_LEN - 1) };
    let len = len_minus_one + 1;
    // SAFETY: `len` is within 1..=HEAD_LEN, the size of the destination.
    let loaded = unsafe {
        aya_ebpf::helpers::bpf_skb_load_bytes(ctx.skb.skb as *const _, 0, head.bytes.as_mut_ptr().cast(), len as u32)
    };
    if loaded != 0 {
        return Err(Missing::Truncated);
    }
    head.len = len as u32;
    let head = &*head;
    if let Some(class) = parse_plain_ipv4(head, packet) {
        return Ok(class);
    }
    let mut offset = ETH_HLEN;
    let mut ethertype = load_be16(head, 12)?;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = load_be16(head, offset + 2)?;
        offset += 4;
    }
    clear(&mut packet.has_ports);
    clear(&mut packet.tcp_flags);
    clear(&mut packet.sport);
    clear(&mut packet.dport);
    clear(&mut packet.fragment); // fragment::NONE
    clear(&mut packet.fragment_id);
    clear(&mut packet.l3_off);
    clear(&mut packet.l4_off);
    clear(&mut packet.payload_off);
    clear(&mut packet.payload_len);
    let l3 = offset;
    // Bytes from the IP header's start to the end of the IP payload (for the TCP payload
    // length): IPv4 total length, IPv6 40 + payload length.
    let ip_end: usize;
    let l4: usize;
    match ethertype {
        ETH_P_IPV4 => {
            let version_ihl = load_u8(head, offset)?;
            let header_len = ((version_ihl & 0x0f) as usize) * 4;
            if version_ihl >> 4 != 4 || header_len < 20 {
                return Err(Missing::Truncated);
            }
            packet.family = chaos_ebpf_common::family::IPV4;
            ip_end = load_be16(head, offset + 2)? as usize;
            packet.proto = load_u8(head, offset + 9)?;
            // Flags and fragment offset: MF is 0x2000, the offset the low 13 bits.
            let flags_offset = load_be16(head, offset + 6)?;
            if flags_offset & 0x1fff != 0 {
                packet.fragment = fragment::LATER;
            } else if flags_offset & 0x2000 != 0 {
                packet.fragment = fragment::FIRST;
            }
            if packet.fragment != fragment::NONE {
                packet.fragment_id = load_be16(head, offset + 4)? as u32;
            }
            write_mapped_v4(&mut packet.saddr, bytes::<4>(head, offset + 12)?);
            write_mapped_v4(&mut packet.daddr, bytes::<4>(head, offset + 16)?);
            l4 = offset + header_len;
        }
        ETH_P_IPV6 => {
            packet.family = chaos_ebpf_common::family::IPV6;
            ip_end = 40 + load_be16(head, offset + 4)? as usize;
            let mut next = load_u8(head, offset + 6)?;
            packet.saddr = bytes::<16>(head, offset + 8)?;
            packet.daddr = bytes::<16>(head, offset + 24)?;
            let mut at = offset + 40;
            for _ in 0..MAX_IPV6_EXT {
                match next {
                    IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                        let len = (load_u8(head, at + 1)? as usize + 1) * 8;
                        next = load_u8(head, at)?;
                        at += len;
                    }
                    IPPROTO_FRAGMENT => {
                        // Offset in the top 13 bits, M (more fragments) the lowest bit.
                        let offset_m = load_be16(head, at + 2)?;
                        if offset_m & 0xfff8 != 0 {
                            packet.fragment = fragment::LATER;
                        } else if offset_m & 1 != 0 {
                            packet.fragment = fragment::FIRST;
                        }
                        packet.fragment_id = load_be32(head, at + 4)?;
                        next = load_u8(head, at)?;
                        at += 8;
                        if packet.fragment == fragment::LATER {
                            // What follows is payload, not a header.
                            break;
                        }
                    }
                    _ => break,
                }
            }
            if packet.fragment != fragment::LATER
                && matches!(next, IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT)
            {
                // More extension headers than walked: the transport header is unknown.
                return Err(Missing::BeyondHead);
            }
            packet.proto = next;
            l4 = at;
        }
        ETH_P_8021Q | ETH_P_8021AD => return Err(Missing::BeyondHead),
        _ => return Ok(Class::Exempt),
    }
    if packet.fragment == fragment::LATER {
        return Ok(Class::Ip);
    }
    if packet.proto == IPPROTO_TCP || packet.proto == IPPROTO_UDP {
        packet.sport = load_be16(head, l4)?;
        packet.dport = load_be16(head, l4 + 2)?;
        packet.has_ports = 1;
        if packet.proto == IPPROTO_TCP {
            packet.tcp_flags = load_u8(head, l4 + 13)?;
            record_tcp_payload(packet, l3, l4, load_u8(head, l4 + 12)?, ip_end);
        }
    } else if packet.proto == IPPROTO_ICMPV6 {
        let icmp_type = load_u8(head, l4)?;
        if (ND_FIRST_TYPE..=ND_LAST_TYPE).contains(&icmp_type) {
            return Ok(Class::Exempt);
        }
    }
    Ok(Class::Ip)
}
