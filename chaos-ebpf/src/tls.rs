//! TLS_REFUSE rules: a bounded parse of a TLS ClientHello (the ALPN protocols and TLS
//! versions it offers), and the TCP reset that answers a refused one.
//!
//! Limits of the parse (a ClientHello beyond them passes and counts `unparsed`): only the
//! first TLS record of a TCP segment, and only when the whole record is in that segment
//! (a ClientHello split across segments or records passes); at most
//! [`MAX_EXTENSIONS`] extensions, [`MAX_OFFERED_ALPN`] ALPN names and 8 supported
//! versions. Every read goes through `bpf_skb_load_bytes` at an offset checked against
//! the record's own lengths, so a malformed ClientHello can only end the parse early.

use aya_ebpf::{
    helpers::{bpf_clone_redirect, bpf_csum_diff, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_store_bytes},
    maps::HashMap,
    programs::TcContext,
};
use chaos_ebpf_common::{
    direction, family,
    tls::{ALPN_NAME_MAX, alpn_digest, version_bit},
};

use crate::parse::{Packet, clear};

/// Extensions walked per ClientHello (browsers send about 16-20, openssl about 10-13).
pub const MAX_EXTENSIONS: u32 = 32;
/// ALPN names read from the ALPN extension.
pub const MAX_OFFERED_ALPN: usize = 8;
const EXT_ALPN: u32 = 16;
const EXT_SUPPORTED_VERSIONS: u32 = 43;

/// Values of [`Tls::state`].
pub mod state {
    /// Not a ClientHello (or not TCP): TLS rules pass it (and look up its flow).
    pub const NONE: u32 = 0;
    /// A ClientHello parsed to its end: `versions` and `alpn` say what it offers.
    pub const PARSED: u32 = 1;
    /// A ClientHello the bounded parse could not finish: passes, counts `unparsed`.
    pub const UNPARSED: u32 = 2;
}

/// What the ClientHello in this packet offers (per-CPU scratch, like the packet).
#[repr(C)]
pub struct Tls {
    pub state: u32,
    /// Bits of chaos_ebpf_common::tls::V1_*.
    pub versions: u32,
    pub nr_alpn: u32,
    pub _pad: u32,
    /// alpn_digest of each offered name (up to ALPN_NAME_MAX bytes; longer names skipped).
    pub alpn: [u64; MAX_OFFERED_ALPN],
    /// Bytes read from the packet (words: bpf_csum_diff sums 32-bit words).
    pub buf: [u32; 16],
    /// The pseudo header of the reset's TCP checksum (IPv6: 40 bytes).
    pub pseudo: [u32; 10],
    /// The reset's TCP header (20 bytes), the IPv4 header (20 bytes), the MACs.
    pub tcp: [u32; 5],
    pub ip: [u32; 5],
    pub macs: [u32; 3],
    pub _pad2: u32,
    /// The IP header as sent (IPv4: the first 20 bytes).
    pub ip6: [u32; 16],
    /// The walk's cursor and what it found, kept in this map memory and read back with
    /// volatile loads: the verifier does not track map contents, so each read is an
    /// unknown scalar and the states of the extension loop's paths (ALPN, versions,
    /// other) merge instead of multiplying per extension.
    pub at: u32,
    pub extensions_end: u32,
    pub alpn_at: u32,
    pub alpn_len: u32,
    pub versions_at: u32,
    pub versions_len: u32,
    /// What the rule loop found for TLS_REFUSE rules, as masks of positions in the
    /// packet's rule list, kept in map memory for the same reason: the loop's unrolled
    /// positions only set bits here, and `main::refuse_tls` acts once after the loop (a
    /// refusal per position, flow lookup and reset, would be that many copies of that
    /// code for the verifier).
    /// - `wanted`: TLS_REFUSE rules that matched this TCP packet;
    /// - `refusing`: those of them that refuse its ClientHello; `first_refusing` the
    ///   lowest such position;
    /// - `alpn_rules`: TLS_REFUSE rules (by their `tls_bit`) whose ALPN list names a
    ///   protocol the ClientHello offers (looked up once per packet in CHAOS_TLS_ALPN,
    ///   see [`alpn_rules`]).
    pub wanted: u32,
    pub refusing: u32,
    pub first_refusing: u32,
    pub alpn_rules: u32,
}

#[inline(always)]
pub fn get(field: &u32) -> u32 {
    // SAFETY: a valid reference.
    unsafe { core::ptr::read_volatile(field) }
}

#[inline(always)]
pub fn set(field: &mut u32, value: u32) {
    // SAFETY: a valid, exclusive reference.
    unsafe { core::ptr::write_volatile(field, value) }
}

#[inline(always)]
fn bytes_of<const N: usize>(words: &mut [u32; N]) -> *mut u8 {
    words.as_mut_ptr().cast()
}

/// Loads `len` (1..=64, checked by the caller's constant) bytes at `offset` into `buf`.
#[inline(always)]
fn load(ctx: &TcContext, offset: u32, buf: &mut [u32; 16], len: u32) -> bool {
    // SAFETY: buf holds 64 bytes and len is a constant <= 64 at every call site.
    unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, offset, bytes_of(buf).cast(), len) == 0 }
}

#[inline(always)]
fn byte(buf: &[u32; 16], i: usize) -> u32 {
    // SAFETY: i < 64 at every call site (constants).
    unsafe { *(buf.as_ptr() as *const u8).add(i) as u32 }
}

#[inline(always)]
fn be16(buf: &[u32; 16], i: usize) -> u32 {
    byte(buf, i) << 8 | byte(buf, i + 1)
}

/// Fills `t` from the packet's TCP payload.
#[inline(always)]
pub fn parse_client_hello(ctx: &TcContext, p: &Packet, t: &mut Tls) {
    clear(&mut t.state);
    clear(&mut t.versions);
    clear(&mut t.nr_alpn);
    // Record header (5 bytes), handshake header (4) and legacy_version (2) at least.
    if p.proto != 6 || p.payload_len < 11 {
        return;
    }
    let start = p.payload_off as u32;
    let end = start + p.payload_len as u32;
    // Content type 22 (handshake), record version 3.x, handshake type 1 (ClientHello).
    if !load(ctx, start, &mut t.buf, 11) || byte(&t.buf, 0) != 22 || byte(&t.buf, 1) != 3 || byte(&t.buf, 5) != 1 {
        return;
    }
    t.state = state::UNPARSED;
    let record_end = start + 5 + be16(&t.buf, 3);
    let hello_end = start + 9 + (byte(&t.buf, 6) << 16 | be16(&t.buf, 7));
    // The record (or the ClientHello within it) goes on in a later segment: not parsed.
    if record_end > end || hello_end > record_end {
        return;
    }
    let legacy_version = be16(&t.buf, 9);
    // legacy_version (2), random (32), then the session id.
    let mut at = start + 9 + 2 + 32;
    if !load(ctx, at, &mut t.buf, 1) {
        return;
    }
    at += 1 + byte(&t.buf, 0);
    if !load(ctx, at, &mut t.buf, 2) {
        return;
    }
    at += 2 + be16(&t.buf, 0); // cipher suites
    if !load(ctx, at, &mut t.buf, 1) {
        return;
    }
    at += 1 + byte(&t.buf, 0); // compression methods
    if at + 2 > hello_end {
        // No extensions: a TLS 1.0-1.2 ClientHello without ALPN.
        t.versions = version_bit(legacy_version as u16);
        t.state = state::PARSED;
        return;
    }
    if !load(ctx, at, &mut t.buf, 2) {
        return;
    }
    at += 2;
    let extensions_end = at + be16(&t.buf, 0);
    if extensions_end > hello_end {
        return;
    }
    set(&mut t.at, at);
    set(&mut t.extensions_end, extensions_end);
    set(&mut t.alpn_at, 0);
    set(&mut t.alpn_len, 0);
    set(&mut t.versions_at, 0);
    set(&mut t.versions_len, 0);
    // Walk the extensions, remembering where ALPN and supported_versions are; read them
    // after the walk, so the verifier walks their reads once, not once per extension.
    for _ in 0..MAX_EXTENSIONS {
        let at = get(&t.at);
        if at >= get(&t.extensions_end) {
            break;
        }
        if !load(ctx, at, &mut t.buf, 4) {
            return;
        }
        let kind = be16(&t.buf, 0);
        let len = be16(&t.buf, 2);
        if kind == EXT_ALPN {
            set(&mut t.alpn_at, at + 4);
            set(&mut t.alpn_len, len);
        } else if kind == EXT_SUPPORTED_VERSIONS {
            set(&mut t.versions_at, at + 4);
            set(&mut t.versions_len, len);
        }
        set(&mut t.at, at + 4 + len);
    }
    if get(&t.at) != get(&t.extensions_end) {
        // More extensions than walked, or one running past the end.
        return;
    }
    let versions_at = get(&t.versions_at);
    if versions_at != 0 {
        if !supported_versions(ctx, versions_at, get(&t.versions_len), t) {
            return;
        }
    } else {
        // Without supported_versions the ClientHello offers legacy_version (TLS <= 1.2).
        t.versions = version_bit(legacy_version as u16);
    }
    let alpn_at = get(&t.alpn_at);
    if alpn_at != 0 && !alpn(ctx, alpn_at, get(&t.alpn_len), t) {
        return;
    }
    t.state = state::PARSED;
}

/// supported_versions (RFC 8446 4.2.1): a 1-byte list length, then 2-byte versions.
#[inline(always)]
fn supported_versions(ctx: &TcContext, at: u32, len: u32, t: &mut Tls) -> bool {
    // At most 7 versions (browsers offer 2-4 and a GREASE value).
    if !(3..=15).contains(&len) {
        return false;
    }
    // 1..=16 in the register the helper gets, as in alpn().
    let mut size = len - 1;
    // SAFETY: pure register arithmetic.
    unsafe { core::arch::asm!("{0} &= 15", inout(reg) size) };
    // SAFETY: buf holds 64 bytes; size + 1 <= 16.
    if unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, at, bytes_of(&mut t.buf).cast(), size + 1) } != 0 {
        return false;
    }
    let list = byte(&t.buf, 0);
    if list + 1 != len {
        return false;
    }
    let mut versions = 0;
    for i in 0..8 {
        if 2 * i + 2 <= list as usize {
            versions |= version_bit(be16(&t.buf, 1 + 2 * i) as u16);
        }
    }
    t.versions = versions;
    true
}

/// ALPN (RFC 7301): a 2-byte list length, then names with a 1-byte length each.
#[inline(always)]
fn alpn(ctx: &TcContext, at: u32, len: u32, t: &mut Tls) -> bool {
    if len < 2 || !load(ctx, at, &mut t.buf, 2) {
        return false;
    }
    let end = at + 2 + be16(&t.buf, 0);
    if end != at + len {
        return false;
    }
    set(&mut t.extensions_end, end);
    set(&mut t.at, at + 2);
    for _ in 0..MAX_OFFERED_ALPN {
        let name = get(&t.at);
        let end = get(&t.extensions_end);
        if name >= end {
            return true;
        }
        if !load(ctx, name, &mut t.buf, 1) {
            return false;
        }
        let name_len = byte(&t.buf, 0);
        let first = name + 1;
        set(&mut t.at, first + name_len);
        if first + name_len > end || name_len == 0 {
            return false;
        }
        if name_len as usize > ALPN_NAME_MAX {
            // A longer name cannot be one a rule refuses.
            continue;
        }
        t.buf[0] = 0;
        t.buf[1] = 0;
        t.buf[2] = 0;
        t.buf[3] = 0;
        // 1..=16 in the register the helper gets (the 6.1 verifier loses bounds LLVM
        // derives from another copy), as parse.rs does for its head.
        let mut size = name_len - 1;
        // SAFETY: pure register arithmetic.
        unsafe { core::arch::asm!("{0} &= 15", inout(reg) size) };
        // SAFETY: buf holds 64 bytes; size + 1 <= 16.
        if unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, first, bytes_of(&mut t.buf).cast(), size + 1) } != 0 {
            return false;
        }
        let words = [t.buf[0] as u64 | (t.buf[1] as u64) << 32, t.buf[2] as u64 | (t.buf[3] as u64) << 32];
        let digest = alpn_digest(name_len as u64, words);
        let i = get(&t.nr_alpn) as usize;
        if i < MAX_OFFERED_ALPN {
            t.alpn[i] = digest;
            set(&mut t.nr_alpn, i as u32 + 1);
        }
    }
    get(&t.at) >= get(&t.extensions_end)
}

/// Clears the rule loop's TLS marks for a new packet.
#[inline(always)]
pub fn begin(t: &mut Tls) {
    set(&mut t.wanted, 0);
    set(&mut t.refusing, 0);
    set(&mut t.first_refusing, 0);
    set(&mut t.alpn_rules, 0);
}

/// Sets `bit` in a mask of `t`.
#[inline(always)]
pub fn mark(mask: &mut u32, bit: u32) {
    set(mask, get(mask) | bit);
}

/// The TLS_REFUSE rules that refuse a name the parsed ClientHello offers: one lookup per
/// offered name in `by_name` (ALPN digest -> mask of the rules' `tls_bit`s, kept by user
/// space), instead of comparing every rule's names with every offered name per rule.
#[inline(always)]
pub fn alpn_rules(t: &mut Tls, by_name: &HashMap<u64, u32>) {
    if t.state != state::PARSED {
        return;
    }
    for i in 0..MAX_OFFERED_ALPN {
        if i >= t.nr_alpn as usize {
            break;
        }
        // SAFETY: a map value read once, for this program run.
        if let Some(rules) = unsafe { by_name.get(&t.alpn[i]) } {
            mark(&mut t.alpn_rules, *rules);
        }
    }
}

#[inline(always)]
fn fold(sum: u64) -> u16 {
    let mut s = sum & 0xffff_ffff;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Answers the ClientHello in `ctx` with TCP resets to both ends: a copy turned into an
/// RST|ACK to its sender goes back to the client, so its connect fails at once with
/// "connection reset" (an RST it accepts: its sequence number is what the client expects
/// next, the ClientHello's acknowledgment number, RFC 9293 3.10.7.4); the packet itself,
/// turned into an RST with the ClientHello's own sequence number, goes on to the server,
/// so the server's half-open connection ends too (an iterative server such as
/// `openssl s_server` would otherwise wait on it). Returns the TC verdict, or None when
/// the packet is not one it can turn around (IPv4 options, IPv6 extension headers) or a
/// helper failed; the caller then drops the packet.
///
/// Why each step:
/// - the payload is cut off (bpf_skb_change_tail) and the TCP options dropped by
///   writing a 20-byte header over them: an RST carries no data;
/// - for the client: MACs, addresses and ports swapped, so the packet goes back to where
///   it came from; seq = the ClientHello's ack, ack = its seq + payload length (what
///   the client sent so far, ClientHello included); flags RST|ACK, window 0;
/// - for the server: addresses as sent, seq = the ClientHello's seq (the server's next
///   expected byte, since the ClientHello never reaches it);
/// - the IPv4 header checksum is recomputed over the new header; the TCP checksum is
///   written as the stack expects it: a packet from a local socket leaves with
///   CHECKSUM_PARTIAL (the field holds the pseudo-header sum and the device or the
///   receiving stack completes it), anything else needs the full checksum. Which one
///   it is shows in the field itself: it equals the folded pseudo-header sum only in
///   the partial case;
/// - the client's copy goes out with bpf_clone_redirect: on egress (the target is the
///   client) to the same device's ingress (BPF_F_INGRESS), so the client's own stack
///   receives it as if from the network; on ingress (the target is the server) out of
///   the same device's egress, back over the wire. The server's reset then continues on
///   the ClientHello's way (the verdict is "pass").
#[inline(always)]
pub fn reset(ctx: &TcContext, p: &Packet, t: &mut Tls, dir: u32, ifindex: u32) -> Option<i32> {
    let skb = ctx.skb.skb;
    let l3 = p.l3_off as u32;
    let l4 = p.l4_off as u32;
    let v4 = p.family == family::IPV4;
    if l4 - l3 != if v4 { 20 } else { 40 } {
        return None;
    }
    // The TCP header as sent: ports, seq, ack, and the checksum field.
    if !load(ctx, l4, &mut t.buf, 20) {
        return None;
    }
    let ports = t.buf[0];
    let seq = u32::from_be(t.buf[1]);
    let ack = u32::from_be(t.buf[2]);
    let sent_check = (t.buf[4] & 0xffff) as u16;
    let old_tcp_len = (p.payload_off as u32 - l4) + p.payload_len as u32;
    let partial = fold(pseudo_sum(p, t, false, old_tcp_len)) == sent_check;
    // The MACs and the IP header as sent.
    // SAFETY: MACs are the first 12 bytes of every Ethernet frame this program parses.
    if unsafe { bpf_skb_load_bytes(skb as *const _, 0, bytes_of(&mut t.macs).cast(), 12) } != 0 {
        return None;
    }
    if !load(ctx, l3, &mut t.ip6, 40) {
        return None;
    }
    // SAFETY: the program's own skb; from here on the packet is changed, so a failure
    // means dropping it (the caller does).
    if unsafe { bpf_skb_change_tail(skb, l4 + 20, 0) } != 0 {
        return None;
    }
    let to_client =
        Reply { swapped: true, ports: ports.rotate_left(16), seq: ack, ack: seq.wrapping_add(p.payload_len as u32) };
    if !write_reset(ctx, p, t, &to_client, partial) {
        return None;
    }
    let flags = if dir == direction::EGRESS { 1 } else { 0 };
    // SAFETY: the program's own skb.
    if unsafe { bpf_clone_redirect(skb, ifindex, flags) } != 0 {
        return None;
    }
    let to_server = Reply { swapped: false, ports, seq, ack };
    if !write_reset(ctx, p, t, &to_server, partial) {
        return None;
    }
    Some(-1) // TC_ACT_UNSPEC: the server's reset goes on
}

/// One reset's header fields: `ports` as the packet's first TCP word.
struct Reply {
    swapped: bool,
    ports: u32,
    seq: u32,
    ack: u32,
}

/// Writes the headers of one reset over the trimmed packet (see `reset`).
#[inline(always)]
fn write_reset(ctx: &TcContext, p: &Packet, t: &mut Tls, r: &Reply, partial: bool) -> bool {
    let skb = ctx.skb.skb;
    let l3 = p.l3_off as u32;
    let l4 = p.l4_off as u32;
    // MACs: dst = old src (bytes 6..12), src = old dst (bytes 0..6), as little-endian
    // words; or as sent.
    let (m0, m1, m2) = (t.macs[0], t.macs[1], t.macs[2]);
    t.buf[0] = if r.swapped { (m1 >> 16) | (m2 << 16) } else { m0 };
    t.buf[1] = if r.swapped { (m2 >> 16) | (m0 << 16) } else { m1 };
    t.buf[2] = if r.swapped { (m0 >> 16) | (m1 << 16) } else { m2 };
    // SAFETY: the program's own skb; 12 bytes of scratch memory.
    if unsafe { bpf_skb_store_bytes(skb, 0, bytes_of(&mut t.buf).cast(), 12, 0) } != 0 {
        return false;
    }
    if p.family == family::IPV4 {
        // Total length 40, addresses swapped or not, header checksum recomputed from 0.
        t.ip[0] = (t.ip6[0] & 0x0000_ffff) | ((40u32.to_be() >> 16) << 16);
        t.ip[1] = t.ip6[1];
        t.ip[2] = t.ip6[2] & 0x0000_ffff;
        t.ip[3] = if r.swapped { t.ip6[4] } else { t.ip6[3] };
        t.ip[4] = if r.swapped { t.ip6[3] } else { t.ip6[4] };
        // SAFETY: ip is 20 bytes of scratch memory.
        let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, t.ip.as_mut_ptr(), 20, 0) };
        t.ip[2] |= (!fold(sum as u64) as u32) << 16;
        // SAFETY: the program's own skb; 20 bytes of scratch memory.
        if unsafe { bpf_skb_store_bytes(skb, l3, bytes_of(&mut t.ip).cast(), 20, 0) } != 0 {
            return false;
        }
    } else {
        // Payload length 20; addresses swapped or not.
        t.buf[0] = t.ip6[0];
        t.buf[1] = (t.ip6[1] & 0xffff_0000) | (20u32.to_be() >> 16);
        for i in 0..4 {
            t.buf[2 + i] = if r.swapped { t.ip6[6 + i] } else { t.ip6[2 + i] };
            t.buf[6 + i] = if r.swapped { t.ip6[2 + i] } else { t.ip6[6 + i] };
        }
        // SAFETY: the program's own skb; 40 bytes of scratch memory.
        if unsafe { bpf_skb_store_bytes(skb, l3, bytes_of(&mut t.buf).cast(), 40, 0) } != 0 {
            return false;
        }
    }
    t.tcp[0] = r.ports;
    t.tcp[1] = r.seq.to_be();
    t.tcp[2] = r.ack.to_be();
    // Data offset 5 words, flags RST (0x04) | ACK (0x10), window 0; then checksum and
    // urgent pointer 0 (bytes in wire order, the word read little-endian).
    t.tcp[3] = u32::from_le_bytes([0x50, 0x14, 0, 0]);
    t.tcp[4] = 0;
    let pseudo = pseudo_sum(p, t, r.swapped, 20);
    let check = if partial {
        fold(pseudo)
    } else {
        // SAFETY: tcp is 20 bytes of scratch memory.
        let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, t.tcp.as_mut_ptr(), 20, pseudo as u32) };
        !fold(sum as u64)
    };
    t.tcp[4] = check as u32;
    // SAFETY: the program's own skb; 20 bytes of scratch memory.
    unsafe { bpf_skb_store_bytes(skb, l4, bytes_of(&mut t.tcp).cast(), 20, 0) == 0 }
}

/// The ones'-complement sum of the TCP pseudo header (RFC 9293 3.1, RFC 8200 8.1) with
/// the addresses as sent (`swapped` false) or as the reset carries them, and `tcp_len`.
/// The sum of the two addresses does not depend on their order, but they are written in
/// the reset's order anyway so the code says what it means.
#[inline(always)]
fn pseudo_sum(p: &Packet, t: &mut Tls, swapped: bool, tcp_len: u32) -> u64 {
    let (first, second) = if swapped { (&p.daddr, &p.saddr) } else { (&p.saddr, &p.daddr) };
    let word = |a: &[u8; 16], i: usize| u32::from_le_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    let size = if p.family == family::IPV4 {
        t.pseudo[0] = word(first, 12);
        t.pseudo[1] = word(second, 12);
        // zero, protocol 6, TCP length (big-endian), as bytes in wire order.
        t.pseudo[2] = u32::from_le_bytes([0, 6, (tcp_len >> 8) as u8, tcp_len as u8]);
        12
    } else {
        for i in 0..4 {
            t.pseudo[i] = word(first, 4 * i);
            t.pseudo[4 + i] = word(second, 4 * i);
        }
        t.pseudo[8] = tcp_len.to_be();
        t.pseudo[9] = 6u32.to_be();
        40
    };
    // SAFETY: pseudo is 40 bytes of scratch memory; size is 12 or 40.
    unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, t.pseudo.as_mut_ptr(), size, 0) as u64 }
}
