//! Types shared by the chaos-ebpf TC programs (kernel side) and their loader (user side).
//!
//! Every map value here has an explicit `#[repr(C)]` layout with no implicit padding (the
//! size asserts at the bottom fail the build if one appears), no `bool` and no `Option`, so
//! the bytes user space writes are exactly the bytes the kernel program reads.
//!
//! The decision hash ([`decision`], [`flow_hash`]) lives here too, so user space can predict
//! every per-packet decision the kernel makes: `plan` uses it to preview, the tests use it
//! to check the kernel bit for bit.
#![cfg_attr(not(test), no_std)]

pub mod hash;
#[cfg(feature = "std")]
extern crate std;
#[cfg(feature = "std")]
pub mod text;

pub use hash::{decision, flow_hash, probability_threshold, siphash24};

/// Rule slots per loaded program instance. A rule is one fault on one target. A packet
/// never scans them: it finds its rules by lookup ([`DispatchKey`]), so the cost per
/// packet does not grow with the number of rules in use.
pub const MAX_RULES: u32 = 1024;
/// Rules that can act on the same packets (one [`RuleList`]): faults stacked on the
/// same target, interface, direction and peers.
pub const DISPATCH_WIDTH: usize = 8;
/// Protected port ranges per instance (SSH, the tool's own control traffic, ...).
pub const MAX_PROTECTED: u32 = 8;
/// Default capacity of the address trie (peer prefixes of all rules, each once per
/// role); the loader sets another at load time (LPM tries allocate per entry, so a large
/// capacity costs nothing until used).
pub const MAX_PEERS: u32 = 1 << 16;
/// The largest address trie a loader may ask for.
pub const MAX_PEERS_LIMIT: u32 = 1 << 22;
/// Dispatch entries per instance (one per interface, direction and address class pair
/// that some rule acts on); allocated per entry.
pub const MAX_DISPATCH: u32 = 1 << 16;
/// Address classes below this have the rule lists for every interface in
/// CHAOS_DIRECT, an array indexed by [`direct_index`], instead of in CHAOS_DISPATCH: an
/// array lookup is inlined by the verifier, a hash lookup is a call (about 15 ns a
/// packet on this project's machine kind).
pub const DIRECT_CLASSES: u32 = 256;
/// Entries of CHAOS_DIRECT: two directions, two sides (source, destination), the classes.
pub const MAX_DIRECT: u32 = 2 * 2 * DIRECT_CLASSES;

/// Where CHAOS_DIRECT holds the rule list for every interface in `direction` (one of
/// [`direction`]) with these address classes: when at most one of them is non-zero and
/// it is below [`DIRECT_CLASSES`]. None: the list is in CHAOS_DISPATCH.
pub const fn direct_index(direction: u32, src_class: u32, dst_class: u32) -> Option<u32> {
    let base = if direction == direction::EGRESS { 0 } else { 2 * DIRECT_CLASSES };
    if dst_class == 0 && src_class < DIRECT_CLASSES {
        Some(base + src_class)
    } else if src_class == 0 && dst_class < DIRECT_CLASSES {
        Some(base + DIRECT_CLASSES + dst_class)
    } else {
        None
    }
}

/// Flows tracked for per-flow packet indices and burst state (LRU); the loader sizes the
/// table at load time, and to [`MIN_FLOWS`] when no rule needs per-flow state.
pub const MAX_FLOWS: u32 = 65536;
/// The flow table of an instance whose rules keep no per-flow state.
pub const MIN_FLOWS: u32 = 64;
/// The largest flow table an instance may ask for (the agent's --flow-table).
pub const MAX_FLOWS_LIMIT: u32 = 1 << 22;
/// Fragmented datagrams remembered between their first and later fragments (LRU).
pub const MAX_FRAGMENTS: u32 = 4096;
/// Devices per instance with a segmenter pair (CHAOS_SEGMENTERS entries).
pub const MAX_SEGMENTERS: u32 = 256;

/// Names of the maps and programs in the object, used by the loader and by `cleanup`.
pub mod names {
    pub const RULES: &str = "CHAOS_RULES";
    pub const LEASES: &str = "CHAOS_LEASES";
    pub const COUNTERS: &str = "CHAOS_COUNTERS";
    pub const PEERS: &str = "CHAOS_PEERS";
    pub const DISPATCH: &str = "CHAOS_DISPATCH";
    pub const DIRECT: &str = "CHAOS_DIRECT";
    pub const PROTECTED: &str = "CHAOS_PROTECTED";
    pub const CONFIG: &str = "CHAOS_CONFIG";
    pub const FLOWS: &str = "CHAOS_FLOWS";
    pub const RATE_NEXT: &str = "CHAOS_RATE_NEXT";
    pub const FRAGMENTS: &str = "CHAOS_FRAGMENTS";
    pub const SEGMENTERS: &str = "CHAOS_SEGMENTERS";
    pub const TLS_ALPN: &str = "CHAOS_TLS_ALPN";
    /// Program names as the kernel records them (at most 15 bytes).
    pub const PROG_INGRESS: &str = "chaos_ingress";
    pub const PROG_EGRESS: &str = "chaos_egress";
    /// Judge the segments of GSO buffers on the inner end of a segmenter pair: those
    /// from an egress hook, those from an ingress hook (one program for both would be
    /// more than the verifier walks).
    pub const PROG_JUDGE_EGRESS: &str = "chaos_judge_out";
    pub const PROG_JUDGE_INGRESS: &str = "chaos_judge_in";
    /// Every program of the object, for finding an instance's programs from outside.
    pub const PROGRAMS: [&str; 4] = [PROG_INGRESS, PROG_EGRESS, PROG_JUDGE_EGRESS, PROG_JUDGE_INGRESS];
}

/// What a matched packet gets. Stored in [`Rule::action`].
pub mod action {
    /// The slot is empty.
    pub const NONE: u32 = 0;
    /// Drop with the rule's probability (and burst model, if [`super::flags::BURST`]).
    pub const LOSS: u32 = 1;
    /// Drop every matched packet (partition both/one way, blackhole).
    pub const DROP: u32 = 2;
    /// Drop only TCP segments that open a connection (SYN without ACK), so established
    /// connections keep working and new ones fail.
    pub const DROP_NEW_TCP: u32 = 3;
    /// Set an earliest departure time `delay ± jitter` from now (egress; sch_fq holds
    /// the packet until then).
    pub const DELAY: u32 = 4;
    /// Pace the rule's packets to `rate_bytes_per_sec` by spacing departure times.
    pub const RATE: u32 = 5;
    /// Refuse TLS ClientHellos that offer one of the rule's ALPN protocols or TLS
    /// versions ([`Rule::tls_alpn`], [`Rule::tls_versions`]), as [`Rule::tls_mode`] says.
    pub const TLS_REFUSE: u32 = 6;
}

/// TLS refusal: how a refused ClientHello's connection ends, the versions a rule names,
/// and how ALPN protocol names are compared.
pub mod tls {
    /// Drop the ClientHello and every later packet the client sends on that connection
    /// (remembered in CHAOS_FLOWS): the client times out.
    pub const MODE_DROP: u32 = 0;
    /// Answer the ClientHello with a TCP RST built from it: the client fails at once.
    pub const MODE_RESET: u32 = 1;
    /// Bits of [`super::Rule::tls_versions`] and of what a ClientHello offers.
    pub const V1_0: u32 = 1 << 0;
    pub const V1_1: u32 = 1 << 1;
    pub const V1_2: u32 = 1 << 2;
    pub const V1_3: u32 = 1 << 3;
    /// ALPN names up to this long can be refused (longer offered names match nothing).
    pub const ALPN_NAME_MAX: usize = 16;
    /// ALPN names a rule may refuse.
    pub const MAX_RULE_ALPN: usize = 4;
    /// [`super::FlowKey::slot`] of a connection a TLS_REFUSE rule refused (one entry per
    /// connection and direction, whichever rule refused it): its later packets drop.
    pub const REFUSED_FLOW_SLOT: u32 = u32::MAX;
    /// [`super::FlowState::bad`] of such an entry; its `next_index` is the rule's slot.
    pub const REFUSED: u32 = 0x7e5e;
    /// TLS_REFUSE rules per instance: each has a bit ([`super::Rule::tls_bit`]) in the
    /// masks of CHAOS_TLS_ALPN.
    pub const MAX_RULES: u32 = 32;
    /// Entries of CHAOS_TLS_ALPN (ALPN digest -> mask of the TLS_REFUSE rules' bits).
    pub const MAX_ALPN_ENTRIES: u32 = MAX_RULES * MAX_RULE_ALPN as u32;
    /// The version bit of a wire version (0x0301..0x0304), 0 for others (GREASE, SSL 3).
    pub fn version_bit(wire: u16) -> u32 {
        match wire {
            0x0301 => V1_0,
            0x0302 => V1_1,
            0x0303 => V1_2,
            0x0304 => V1_3,
            _ => 0,
        }
    }
    /// The digest a rule stores for an ALPN name and the kernel computes for each name a
    /// ClientHello offers: SipHash-2-4 keyed by the length, over the name zero-padded to
    /// 16 bytes (two little-endian words). Never 0 (0 marks an unused entry).
    pub fn alpn_digest(len: u64, words: [u64; 2]) -> u64 {
        let digest = crate::siphash24(len, 0x616c_706e, &words); // "alpn"
        if digest == 0 {
            1
        } else {
            digest
        }
    }
    /// [`alpn_digest`] of a name given as bytes (user space); None if longer than
    /// [`ALPN_NAME_MAX`] or empty.
    pub fn alpn_digest_of(name: &[u8]) -> Option<u64> {
        if name.is_empty() || name.len() > ALPN_NAME_MAX {
            return None;
        }
        let mut padded = [0u8; ALPN_NAME_MAX];
        padded[..name.len()].copy_from_slice(name);
        let mut w0 = [0u8; 8];
        let mut w1 = [0u8; 8];
        w0.copy_from_slice(&padded[..8]);
        w1.copy_from_slice(&padded[8..]);
        Some(alpn_digest(name.len() as u64, [u64::from_le_bytes(w0), u64::from_le_bytes(w1)]))
    }
}

/// The longest delay a rule may ask for (ns); the sch_fq chaos-ebpf installs holds
/// packets a little longer than this (its horizon).
pub const MAX_DELAY_NS: u64 = 10_000_000_000;

/// A rate-limited packet that would wait longer than this is dropped, as a full queue
/// of a real bottleneck would drop it (and fq would drop it beyond its horizon).
pub const RATE_MAX_WAIT_NS: u64 = 1_000_000_000;

/// Bits of [`Rule::flags`].
pub mod flags {
    /// Count what the rule would do, act on nothing (shadow mode).
    pub const SHADOW: u32 = 1 << 0;
    /// The rule has peers: it is listed only under the address classes of its peer
    /// prefixes (user space reads this flag; the kernel finds rules by lookup).
    pub const PEERS: u32 = 1 << 1;
    /// Gilbert-Elliott burst loss: per-flow good/bad state.
    pub const BURST: u32 = 1 << 2;
    /// Delay jitter is normal-ish (Irwin-Hall of four uniforms, sd = jitter) rather than
    /// uniform in [-jitter, +jitter].
    pub const JITTER_NORMAL: u32 = 1 << 3;
    /// The rule faults what the target *receives* by acting on the egress of the far end
    /// of its veth (EDT works on egress only): there the target's peers are the packets'
    /// sources, not their destinations.
    pub const PEER_IS_SOURCE: u32 = 1 << 4;
}

/// Bits of [`Rule::directions`].
pub mod direction {
    pub const EGRESS: u32 = 1 << 0;
    pub const INGRESS: u32 = 1 << 1;
    pub const BOTH: u32 = EGRESS | INGRESS;
}

/// Values of [`Rule::proto`]; `ICMP` matches ICMP over IPv4 and ICMPv6.
pub mod proto {
    pub const ANY: u32 = 0;
    pub const ICMP: u32 = 1;
    pub const TCP: u32 = 6;
    pub const UDP: u32 = 17;
    pub const ICMPV6: u32 = 58;
}

/// One fault on one target. Written by user space into `CHAOS_RULES[slot]`; the kernel
/// program only reads it. Whether it is in force is decided by `CHAOS_LEASES[slot]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// The experiment seed: SipHash key half k0 for every decision of this rule.
    pub seed: u64,
    /// Match only packets sent from this cgroup v2 (id = inode of its directory) or a
    /// cgroup below it, on egress; 0 matches any cgroup.
    pub cgroup_id: u64,
    /// Drop when the decision hash is below this (good state, or no burst model).
    /// See [`probability_threshold`].
    pub loss_threshold: u64,
    /// Burst model: probability threshold of a good -> bad transition per packet.
    pub burst_enter: u64,
    /// Burst model: probability threshold of a bad -> good transition per packet.
    pub burst_exit: u64,
    /// Burst model: loss threshold while in the bad state.
    pub burst_loss: u64,
    /// DELAY: the base delay in ns.
    pub delay_ns: u64,
    /// DELAY: the jitter in ns (half-width of the uniform range, or the sd of the normal).
    pub jitter_ns: u64,
    /// RATE: bytes per second.
    pub rate_bytes_per_sec: u64,
    /// The rule's id as the user sees it; also SipHash key half k1, so two rules with
    /// the same seed still decide independently.
    pub rule_id: u32,
    /// Match only this interface index (in the instance's network namespace); 0 = any.
    /// Like `directions` and the peers, user space turns it into CHAOS_DISPATCH keys.
    pub ifindex: u32,
    /// One of [`action`].
    pub action: u32,
    /// Bits of [`flags`].
    pub flags: u32,
    /// Bits of [`direction`].
    pub directions: u32,
    /// One of [`proto`].
    pub proto: u32,
    /// Port range (inclusive) that either the source or the destination port must fall
    /// in; 0..=65535 matches all (and packets without ports).
    pub port_lo: u16,
    pub port_hi: u16,
    /// Depth of `cgroup_id` below the cgroup2 root (root = 0): the kernel compares the
    /// sender's ancestor at this level, so processes in child cgroups match too.
    pub cgroup_level: u32,
    /// TLS_REFUSE: digests ([`tls::alpn_digest`]) of the ALPN names to refuse; 0 = unused.
    pub tls_alpn: [u64; tls::MAX_RULE_ALPN],
    /// TLS_REFUSE: bits of [`tls`] (V1_0..V1_3): refuse a ClientHello offering any of them.
    pub tls_versions: u32,
    /// TLS_REFUSE: [`tls::MODE_DROP`] or [`tls::MODE_RESET`].
    pub tls_mode: u32,
    /// TLS_REFUSE: this rule's bit (0..32) in the masks of CHAOS_TLS_ALPN; user space
    /// assigns it.
    pub tls_bit: u32,
    pub _pad: u32,
}

/// Per-rule counters, one copy per CPU (`CHAOS_COUNTERS[slot]`); user space sums them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RuleCounters {
    /// Packets the lookup found the rule for (its interface, direction and peers) while
    /// its lease was valid. Packets without addresses to look up (ARP, truncated or
    /// unparsable headers) count on the rules without peers only.
    pub seen: u64,
    /// Of those, packets that matched the target and peer.
    pub matched: u64,
    /// Matched packets the fault dropped (in shadow mode: would have dropped).
    pub dropped: u64,
    /// Matched packets the fault let through.
    pub passed: u64,
    /// Packets the program could not parse (passed, never dropped: fail open).
    pub errors: u64,
    /// Packets seen after the lease ran out (the loader hung or stopped renewing).
    pub expired: u64,
    /// Packets on the protected list (e.g. SSH) that the rule left alone.
    pub protected: u64,
    /// Matched packets given a later departure time (delay, rate).
    pub delayed: u64,
    /// IP packets the parser could not classify, passed untouched: headers beyond the
    /// copied head (long IPv6 extension chains), more than two VLAN tags, more IPv6
    /// extension headers than walked, later fragments whose first fragment was not seen;
    /// for TLS_REFUSE rules also ClientHellos the bounded parse could not finish (split
    /// across segments or records, more extensions or names than walked).
    pub unparsed: u64,
}

impl RuleCounters {
    pub fn add(&mut self, other: &RuleCounters) {
        self.seen += other.seen;
        self.matched += other.matched;
        self.dropped += other.dropped;
        self.passed += other.passed;
        self.errors += other.errors;
        self.expired += other.expired;
        self.protected += other.protected;
        self.delayed += other.delayed;
        self.unparsed += other.unparsed;
    }
}

/// A port range on the protected list (`CHAOS_PROTECTED[i]`); matches when the source
/// or destination port is in range. `proto == 0` marks an unused entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtectedPorts {
    pub proto: u32,
    pub port_lo: u16,
    pub port_hi: u16,
}

/// Bits of [`Config::lookups`]: which lookups find a packet's rules.
pub mod lookups {
    /// Some rule restricts the address in this role ([`super::role`]): look it up in
    /// CHAOS_PEERS. Bit `role - 1`.
    pub const fn by_role(role: u32) -> u32 {
        1 << (role - 1)
    }
    /// Some dispatch entry names an interface: look that up before the entry for all.
    pub const BY_IFINDEX: u32 = 1 << 4;
}

/// Instance-wide settings (`CHAOS_CONFIG[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Rules in use; 0: the program returns at once.
    pub nr_rules: u32,
    /// Entries in use in `CHAOS_PROTECTED`.
    pub nr_protected: u32,
    /// This instance's identity on the copies of delayed packets it re-sends (see
    /// [`resend`]); never 0. Its low 5 bits are the instance's bit in the "judged by"
    /// mask, unique among live runs (the loader picks it from the ledger).
    pub cookie: u32,
    /// Bits of [`lookups`].
    pub lookups: u32,
}

/// A delayed packet of a local socket is re-sent as a copy without the socket (so TCP
/// small queues do not hold the sender back while the copy waits in sch_fq), and the
/// segments of a GSO buffer come back from the segmenter pair (see [`segment`]): both
/// run through the device's hook again, and `skb->cb` tells each chaos-ebpf program
/// whether it already judged the packet:
/// - `cb[MARK]` is [`resend::JUDGED`] (egress) or [`resend::JUDGED_INGRESS`] once any
///   instance judged it on that hook (garbage otherwise: upper layers and the far end of
///   a veth leave cb behind; the first instance resets the other words),
/// - `cb[RESENDER]` the cookie of the instance that re-sent it (0 for an original),
/// - `cb[DEPART_LO]`/`cb[DEPART_HI]` the departure time (a redirect may clear tstamp),
/// - `cb[JUDGED_BY]` one bit per instance that judged it (bit = cookie & 31).
pub mod resend {
    pub const JUDGED: u32 = 0xc4a0_5e5d;
    pub const JUDGED_INGRESS: u32 = 0xc4a0_5e5e;
    pub const MARK: usize = 0;
    pub const RESENDER: usize = 1;
    pub const DEPART_LO: usize = 2;
    pub const DEPART_HI: usize = 3;
    pub const JUDGED_BY: usize = 4;
}

/// A GSO buffer (UDP_SEGMENT, which QUIC stacks use, carries up to 64 datagrams; the
/// stack splits it only after the egress hook, and `gso_max_segs` does not stop it) is
/// decided per segment by a detour: the first instance on the hook redirects it to the
/// outer end of a veth pair in the device's namespace whose `gso_max_segs` is 1, so the
/// kernel segments it there in software; each segment arrives on the inner end, where
/// that instance's judge program (`chaos_judge_out` for buffers from an egress hook,
/// `chaos_judge_in` from an ingress hook) decides it as the hook it came from would
/// have and sends it back there, marked as judged ([`resend`]). On the way, `skb->cb`
/// holds:
/// - `cb[MARK]`: [`segment::EGRESS`] or [`segment::INGRESS`], the hook it came from,
/// - `cb[RESENDER]`: the cookie of the instance that sent it there,
/// - `cb[FROM_IFINDEX]`: the device it came from,
/// - `cb[JUDGED_BY]`: as in [`resend`], kept for the instances before it on the hook.
pub mod segment {
    pub const EGRESS: u32 = 0xc4a0_5e6e;
    pub const INGRESS: u32 = 0xc4a0_5e6f;
    pub const FROM_IFINDEX: usize = 3;
}

/// Address families in [`PeerKeyData::family`].
pub mod family {
    pub const IPV4: u8 = 4;
    pub const IPV6: u8 = 6;
}

/// Which address of a packet, on which hook, a prefix in CHAOS_PEERS classifies. Each
/// (hook, address) has its own classes, so the peers of rules on one hook never split
/// the classes of the other, and a rule that restricts only destinations is listed
/// under one source class (0) only.
pub mod role {
    pub const EGRESS_SOURCE: u32 = 1;
    pub const EGRESS_DESTINATION: u32 = 2;
    pub const INGRESS_SOURCE: u32 = 3;
    pub const INGRESS_DESTINATION: u32 = 4;
    /// The roles of a packet's (source, destination) on a hook (`direction::*`).
    pub const fn of(dir: u32) -> (u32, u32) {
        if dir == super::direction::EGRESS {
            (EGRESS_SOURCE, EGRESS_DESTINATION)
        } else {
            (INGRESS_SOURCE, INGRESS_DESTINATION)
        }
    }
}

/// Data part of an LPM trie key of CHAOS_PEERS, the trie that maps a packet's source and
/// destination address to an address class: the role ([`role`]: hook and address, an
/// exact 32-bit prefix), the address family (an exact 32-bit prefix, so an IPv6 prefix such as `::/0`
/// never matches an IPv4 packet), then the address, IPv4 as IPv4-mapped IPv6
/// (`::ffff:a.b.c.d`). The trie prefix length is therefore `64 + 96 + v4_len` for IPv4
/// and `64 + v6_len` for IPv6. The family takes a whole word so the address stays
/// 4-byte aligned: the kernel program copies it with word stores, not byte by byte.
/// The value is the address class: a number user space gives each distinct set of
/// peer sets an address belongs to (0: none).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKeyData {
    /// Big-endian [`role`], so it forms the first 32 bits of the prefix.
    pub role_be: [u8; 4],
    /// One of [`family`], as a big-endian u32.
    pub family_be: [u8; 4],
    pub addr: [u8; 16],
}

impl AddrKeyData {
    pub const ROLE_BITS: u32 = 32;
    pub const FAMILY_BITS: u32 = 32;
    /// Prefix bits before the address: every entry and lookup covers all of them.
    pub const HEADER_BITS: u32 = Self::ROLE_BITS + Self::FAMILY_BITS;

    pub fn new(role: u32, family: u8, addr: [u8; 16]) -> Self {
        Self { role_be: role.to_be_bytes(), family_be: (family as u32).to_be_bytes(), addr }
    }
}

/// An address prefix as the trie stores it: the family, the address as IPv6 (IPv4
/// mapped) with the bits beyond `len` zero, and `len` counted in those 128 bits (an IPv4
/// /24 is 120).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub family: u8,
    pub len: u8,
    pub addr: [u8; 16],
}

impl Prefix {
    /// The prefix of `addr` (IPv4 mapped for [`family::IPV4`]) with its first `len` of
    /// 128 bits; the bits beyond are cleared.
    pub fn new(family: u8, addr: [u8; 16], len: u8) -> Self {
        let len = if len > 128 { 128 } else { len };
        let mut out = Prefix { family, len, addr };
        let mut i = 0;
        while i < 16 {
            let first_bit = (i * 8) as u32;
            if first_bit >= len as u32 {
                out.addr[i] = 0;
            } else if first_bit + 8 > len as u32 {
                out.addr[i] &= 0xffu8 << (8 - (len as u32 - first_bit));
            }
            i += 1;
        }
        out
    }

    /// This prefix cut to its first `len` bits.
    pub fn truncated(&self, len: u8) -> Self {
        Self::new(self.family, self.addr, len)
    }
}

/// Key of CHAOS_DISPATCH: where the packet is (interface, direction) and the address
/// classes of its source and destination. `ifindex` 0 is the entry for every interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DispatchKey {
    pub ifindex: u32,
    /// `direction::EGRESS` or `direction::INGRESS`.
    pub direction: u32,
    pub src_class: u32,
    pub dst_class: u32,
}

/// Value of CHAOS_DISPATCH: the rule slots that act on such packets, in slot order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleList {
    pub slots: [u32; DISPATCH_WIDTH],
    pub count: u32,
    /// Changes whenever user space rewrites this entry: a later fragment replays its
    /// first fragment's record (bits by list position) only under the same version.
    pub version: u32,
}

/// Key of the per-flow state: one rule, one direction, one 5-tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub slot: u32,
    /// `direction::EGRESS` or `direction::INGRESS`.
    pub direction: u8,
    /// IP protocol number (6, 17, 1, 58, ...).
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
    /// Source and destination address, IPv4 as IPv4-mapped IPv6.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

impl FlowKey {
    /// The key as 64-bit words for hashing: the small fields packed into two words,
    /// each address as two little-endian words, so kernel and user space hash the same
    /// bytes the same way and no field can alias another.
    pub fn words(&self) -> [u64; 6] {
        [
            (self.slot as u64)
                | ((self.direction as u64) << 32)
                | ((self.proto as u64) << 40)
                | ((self.sport as u64) << 48),
            self.dport as u64,
            u64_from(&self.saddr, 0),
            u64_from(&self.saddr, 8),
            u64_from(&self.daddr, 0),
            u64_from(&self.daddr, 8),
        ]
    }
}

fn u64_from(bytes: &[u8; 16], at: usize) -> u64 {
    let mut word = [0u8; 8];
    let mut i = 0;
    while i < 8 {
        word[i] = bytes[at + i];
        i += 1;
    }
    u64::from_le_bytes(word)
}

/// Per-flow state (LRU hash value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// [`flow_hash`] of the key, computed once when the flow is first seen.
    pub flow_hash: u64,
    /// Index of the next packet of this flow (0 for the first packet after the rule
    /// started).
    pub next_index: u64,
    /// Burst model state: 0 good, 1 bad.
    pub bad: u32,
    pub _pad: u32,
}

/// Key of the fragment table: one fragmented datagram as IP identifies it (RFC 791 and
/// RFC 8200: source, destination, protocol and identification), on one interface and
/// direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentKey {
    pub ifindex: u32,
    /// IPv4: the 16-bit identification; IPv6: the 32-bit fragment header identification.
    pub id: u32,
    /// `direction::EGRESS` or `direction::INGRESS`.
    pub direction: u8,
    pub proto: u8,
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// What the first fragment of a datagram got, replayed on its later fragments (which
/// carry no ports): bit `i` of each mask for the rule at position `i` of its
/// [`RuleList`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentRecord {
    /// Nonzero: the first fragment was on the protected list.
    pub protected: u32,
    /// Rules the first fragment matched.
    pub matched: u32,
    /// Rules that dropped it (or would have, in shadow mode).
    pub dropped: u32,
    /// [`RuleList::version`] of the list the bits refer to.
    pub version: u32,
    /// The latest departure time a delay rule gave it (CLOCK_MONOTONIC ns, 0: none).
    pub delay_until: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, and have no padding (asserted below), so
    // any byte pattern of their size is a valid value.
    unsafe impl aya::Pod for super::Rule {}
    unsafe impl aya::Pod for super::RuleCounters {}
    unsafe impl aya::Pod for super::ProtectedPorts {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::AddrKeyData {}
    unsafe impl aya::Pod for super::DispatchKey {}
    unsafe impl aya::Pod for super::RuleList {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::FragmentKey {}
    unsafe impl aya::Pod for super::FragmentRecord {}
}

// No implicit padding anywhere: a size that is not the sum of the fields fails the build.
const _: () = assert!(core::mem::size_of::<Rule>() == 9 * 8 + 6 * 4 + 2 * 2 + 4 + 4 * 8 + 4 * 4);
const _: () = assert!(core::mem::size_of::<RuleCounters>() == 9 * 8);
const _: () = assert!(core::mem::size_of::<ProtectedPorts>() == 8);
const _: () = assert!(core::mem::size_of::<Config>() == 16);
const _: () = assert!(core::mem::size_of::<AddrKeyData>() == 4 + 4 + 16);
const _: () = assert!(core::mem::size_of::<DispatchKey>() == 4 * 4);
const _: () = assert!(core::mem::size_of::<RuleList>() == DISPATCH_WIDTH * 4 + 4 + 4);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 4 + 1 + 1 + 2 + 2 + 2 + 32);
const _: () = assert!(core::mem::size_of::<FlowState>() == 8 + 8 + 4 + 4);
const _: () = assert!(core::mem::size_of::<FragmentKey>() == 4 + 4 + 1 + 1 + 2 + 32);
const _: () = assert!(core::mem::size_of::<FragmentRecord>() == 4 * 4 + 8);

#[cfg(test)]
mod direct_tests {
    use super::*;

    /// Every (direction, side, class) that fits has its own index below MAX_DIRECT;
    /// lists with two non-zero classes, or a class too large, stay in the hash.
    #[test]
    fn direct_indexes_are_distinct_and_bounded() {
        let mut seen = std::collections::BTreeSet::new();
        for dir in [direction::EGRESS, direction::INGRESS] {
            for class in 0..DIRECT_CLASSES {
                for (src, dst) in [(class, 0), (0, class)] {
                    let index = direct_index(dir, src, dst).unwrap();
                    assert!(index < MAX_DIRECT);
                    // (0, 0) is the same list whichever side names it.
                    if class != 0 || src == 0 {
                        seen.insert((index, dir, src, dst));
                    }
                }
            }
        }
        let indexes: std::collections::BTreeSet<u32> = seen.iter().map(|s| s.0).collect();
        assert_eq!(indexes.len(), seen.len(), "two lists share an index");
        assert_eq!(direct_index(direction::EGRESS, 1, 2), None);
        assert_eq!(direct_index(direction::INGRESS, 0, DIRECT_CLASSES), None);
        assert_eq!(direct_index(direction::EGRESS, DIRECT_CLASSES, 0), None);
    }
}
