//! chaos-ebpf TC classifiers: one program per hook (ingress, egress), one shared
//! classification path. The entry points only call `classify` and return its verdict;
//! anything that cannot be parsed passes and is counted (fail open).
//!
//! A packet finds its rules by lookup, never by scanning rule slots: its source and
//! destination address give an address class each (CHAOS_PEERS, an LPM trie), and
//! (interface, direction, source class, destination class) gives the list of rules that
//! act on it (CHAOS_DISPATCH). User space compiles the rules into both maps, so the work
//! per packet is the same with 1 rule in force or 1,000.
//!
//! Verdicts: TC_ACT_UNSPEC (-1) is TCX_NEXT, so the next program on the hook (another
//! chaos-ebpf instance, for example) still runs: faults from several instances stack.
//! On a legacy clsact hook it means "no opinion", which passes the packet.
#![no_std]
#![no_main]
// Inline BPF assembly for the atomic fetch-add (fault.rs); RUSTC_BOOTSTRAP allows it on
// the stable rustc-web, as aya-ebpf itself needs.
#![feature(asm_experimental_arch)]

mod fault;
mod parse;
mod tls;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_SHOT},
    helpers::{
        bpf_clone_redirect, bpf_get_socket_cookie, bpf_ktime_get_coarse_ns, bpf_redirect, bpf_skb_ancestor_cgroup_id,
    },
    macros::{classifier, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::TcContext,
};
use chaos_ebpf_common::{
    AddrKeyData, Config, DISPATCH_WIDTH, DispatchKey, FlowKey, FlowState, FragmentKey, FragmentRecord, MAX_DIRECT,
    MAX_DISPATCH, MAX_FLOWS, MAX_FRAGMENTS, MAX_PEERS, MAX_PROTECTED, MAX_RULES, MAX_SEGMENTERS, ProtectedPorts, Rule,
    RuleCounters, RuleList, action, direct_index, direction, flags, lookups, proto, resend, role, segment,
    tls as tls_consts,
};

use crate::{
    fault::Verdict,
    parse::{Class, Packet, fragment},
};

const TC_ACT_UNSPEC: i32 = -1;
/// bpf_redirect flag: to the device's ingress instead of its egress.
const BPF_F_INGRESS: u64 = 1;

#[map(name = "CHAOS_RULES")]
static RULES: Array<Rule> = Array::with_max_entries(MAX_RULES, 0);

/// Lease expiry per slot, CLOCK_MONOTONIC ns (bpf_ktime_get_ns). A rule acts only while
/// `now < lease`; the loader renews it, so a hung loader's faults end on their own.
#[map(name = "CHAOS_LEASES")]
static LEASES: Array<u64> = Array::with_max_entries(MAX_RULES, 0);

#[map(name = "CHAOS_COUNTERS")]
static COUNTERS: PerCpuArray<RuleCounters> = PerCpuArray::with_max_entries(MAX_RULES, 0);

/// (role, address prefix) -> address class; the loader sets its capacity.
#[map(name = "CHAOS_PEERS")]
static PEERS: LpmTrie<AddrKeyData, u32> = LpmTrie::with_max_entries(MAX_PEERS, BPF_F_NO_PREALLOC);

/// (interface, direction, source class, destination class) -> the rules acting there.
#[map(name = "CHAOS_DISPATCH")]
static DISPATCH: HashMap<DispatchKey, RuleList> = HashMap::with_max_entries(MAX_DISPATCH, BPF_F_NO_PREALLOC);

/// The lists of CHAOS_DISPATCH for every interface whose address classes fit
/// `direct_index`; an entry with `count` 0 is no list.
#[map(name = "CHAOS_DIRECT")]
static DIRECT: Array<RuleList> = Array::with_max_entries(MAX_DIRECT, 0);

#[map(name = "CHAOS_PROTECTED")]
static PROTECTED: Array<ProtectedPorts> = Array::with_max_entries(MAX_PROTECTED, 0);

#[map(name = "CHAOS_CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Per-slot next free departure time of a rate rule (CLOCK_MONOTONIC ns).
#[map(name = "CHAOS_RATE_NEXT")]
static RATE_NEXT: Array<u64> = Array::with_max_entries(MAX_RULES, 0);

#[map(name = "CHAOS_FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// What the first fragment of each fragmented datagram got, replayed on its later
/// fragments: they carry no ports, so port rules and the protected list could not match
/// them on their own, and an independent loss decision per fragment would lose a
/// datagram of n fragments with 1-(1-p)^n instead of p.
#[map(name = "CHAOS_FRAGMENTS")]
static FRAGMENTS: LruHashMap<FragmentKey, FragmentRecord> = LruHashMap::with_max_entries(MAX_FRAGMENTS, 0);

/// ALPN digest -> mask of the `tls_bit`s of the TLS_REFUSE rules that name it (user
/// space keeps it from the rules' `tls_alpn`).
#[map(name = "CHAOS_TLS_ALPN")]
static TLS_ALPN: HashMap<u64, u32> = HashMap::with_max_entries(tls_consts::MAX_ALPN_ENTRIES, 0);

/// Device ifindex -> ifindex of the outer end of its segmenter pair (see
/// chaos_ebpf_common::segment). Looked up for GSO buffers only.
#[map(name = "CHAOS_SEGMENTERS")]
static SEGMENTERS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_SEGMENTERS, 0);

/// Per-CPU working memory for one packet (a TC program runs to completion on one CPU
/// without preemption by another TC run there), kept off the 512-byte BPF stack.
#[repr(C)]
pub struct Scratch {
    pub head: parse::Head,
    pub packet: Packet,
    pub flow: FlowKey,
    pub addr: Key<AddrKeyData>,
    pub fragment_key: FragmentKey,
    pub fragment_record: FragmentRecord,
    /// What a ClientHello in the packet offers (TLS_REFUSE rules).
    pub tls: tls::Tls,
}

#[map(name = "CHAOS_SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[classifier]
pub fn chaos_ingress(ctx: TcContext) -> i32 {
    classify(&ctx, direction::INGRESS)
}

#[classifier]
pub fn chaos_egress(ctx: TcContext) -> i32 {
    classify(&ctx, direction::EGRESS)
}

/// On the ingress of the inner end of a segmenter pair: judges the segments of buffers
/// this instance sent there from an egress hook, and passes everything else on.
#[classifier]
pub fn chaos_judge_out(ctx: TcContext) -> i32 {
    judge_segment(&ctx, direction::EGRESS)
}

/// The same for buffers from an ingress hook.
#[classifier]
pub fn chaos_judge_in(ctx: TcContext) -> i32 {
    judge_segment(&ctx, direction::INGRESS)
}

/// Counters a packet that no rule may act on bumps (besides `seen`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Untouched {
    /// Not IP, or neighbour discovery: only `seen`.
    Exempt,
    Unparsed,
    Error,
    Protected,
}

#[inline(always)]
fn classify(ctx: &TcContext, dir: u32) -> i32 {
    let Some(config) = CONFIG.get(0) else {
        return TC_ACT_UNSPEC;
    };
    if config.nr_rules == 0 {
        return TC_ACT_UNSPEC;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: this CPU's scratch entry, used by this program run only.
    let scratch = unsafe { &mut *scratch };
    if already_judged(ctx, config.cookie, dir) {
        return TC_ACT_UNSPEC;
    }
    let class = parse::parse(ctx, &mut scratch.head, &mut scratch.packet);
    // SAFETY: helper calls without pointer arguments, or with the program's own skb.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // Counters are per wire packet: a GSO buffer that cannot take the detour through a
    // segmenter counts its segments (see docs/datapath.md).
    // SAFETY: the program's own skb.
    let gso_segs = unsafe { (*ctx.skb.skb).gso_segs } as u64;
    let segs = if gso_segs > 1 { gso_segs } else { 1 };
    let slots = Slots { dir, ifindex, lease_clock: now, segs, cookie: config.cookie };

    let untouched = match class {
        Class::Exempt => Untouched::Exempt,
        Class::Unparsed => Untouched::Unparsed,
        Class::Truncated => Untouched::Error,
        Class::Ip => {
            let Some(list) = rules_of(config, &slots, scratch, true) else {
                return TC_ACT_UNSPEC;
            };
            // Fragments: the first one records what it got, later ones replay that record.
            let fragment_kind = scratch.packet.fragment;
            if fragment_kind != fragment::NONE {
                fill_fragment_key(&mut scratch.fragment_key, &scratch.packet, ifindex, dir);
            }
            let untouched = if fragment_kind == fragment::LATER {
                // SAFETY: a lookup with a key in map memory of this program run.
                match unsafe { FRAGMENTS.get(&scratch.fragment_key) } {
                    // Its first fragment was not seen (or was evicted), or its rules
                    // changed since: nothing to match on.
                    None => Untouched::Unparsed,
                    Some(record) if record.version != list.version => Untouched::Unparsed,
                    Some(record) if record.protected != 0 => Untouched::Protected,
                    Some(record) => return replay_fragment(ctx, &slots, list, record),
                }
            } else if is_protected(&scratch.packet, config.nr_protected) {
                if fragment_kind == fragment::FIRST {
                    scratch.fragment_record =
                        FragmentRecord { protected: 1, matched: 0, dropped: 0, version: list.version, delay_until: 0 };
                    save_fragment_record(scratch);
                }
                Untouched::Protected
            } else {
                if segs > 1 {
                    // SAFETY: a lookup with a key on the stack.
                    if let Some(&outer) = unsafe { SEGMENTERS.get(&ifindex) } {
                        return to_segmenter(ctx, &slots, outer);
                    }
                }
                return act(ctx, &slots, list, scratch, true);
            };
            count_untouched(&slots, list, untouched);
            return TC_ACT_UNSPEC;
        }
    };
    // No addresses to look up: the rules that act on every address count it.
    if let Some(list) = rules_of(config, &slots, scratch, false) {
        count_untouched(&slots, list, untouched);
    }
    TC_ACT_UNSPEC
}

/// What selects the rules of one packet.
struct Slots {
    dir: u32,
    ifindex: u32,
    /// CLOCK_MONOTONIC_COARSE ns, for the leases only: it lags CLOCK_MONOTONIC by at most
    /// a tick (a lease of seconds ends up to 4 ms late) and costs a fraction of a precise
    /// read, which only delay and rate rules make (fault.rs).
    lease_clock: u64,
    /// Wire packets in this buffer (1 unless it is a GSO buffer).
    segs: u64,
    /// This instance's cookie (Config::cookie), for re-sent copies.
    cookie: u32,
}

/// The rules that act on this packet: its address classes (when `by_address` and some
/// rule restricts that address), then the dispatch entry of its interface, else the one
/// for every interface (in CHAOS_DIRECT when its classes fit there). None: no rule acts
/// here.
#[inline(always)]
fn rules_of(config: &Config, slots: &Slots, scratch: &mut Scratch, by_address: bool) -> Option<&'static RuleList> {
    let mut key = DispatchKey { ifindex: slots.ifindex, direction: slots.dir, src_class: 0, dst_class: 0 };
    if by_address {
        let p = &scratch.packet;
        let (src_role, dst_role) = role::of(slots.dir);
        if config.lookups & lookups::by_role(src_role) != 0 {
            key.src_class = address_class(&mut scratch.addr, src_role, p.family, &p.saddr);
        }
        if config.lookups & lookups::by_role(dst_role) != 0 {
            key.dst_class = address_class(&mut scratch.addr, dst_role, p.family, &p.daddr);
        }
    }
    if config.lookups & lookups::BY_IFINDEX != 0 {
        // SAFETY: a lookup with a key on the stack; the value lives for this program run.
        if let Some(list) = unsafe { DISPATCH.get(&key) } {
            return Some(list);
        }
    }
    if let Some(index) = direct_index(slots.dir, key.src_class, key.dst_class) {
        return DIRECT.get(index).filter(|list| list.count != 0);
    }
    key.ifindex = 0;
    // SAFETY: as above.
    unsafe { DISPATCH.get(&key) }
}

#[inline(always)]
fn address_class(key: &mut Key<AddrKeyData>, role: u32, family: u8, addr: &[u8; 16]) -> u32 {
    key.prefix_len = AddrKeyData::HEADER_BITS + 128;
    key.data = AddrKeyData::new(role, family, *addr);
    PEERS.get(&*key).copied().unwrap_or(0)
}

/// The rule in `slot` and its counters if its lease is valid; counts `expired` or
/// `seen`.
#[inline(always)]
fn rule_for(slots: &Slots, slot: u32) -> Option<(&'static Rule, &'static mut RuleCounters)> {
    let rule = RULES.get(slot)?;
    if rule.action == action::NONE {
        return None;
    }
    let counters = COUNTERS.get_ptr_mut(slot)?;
    // SAFETY: per-CPU slot of this program run; nothing else writes it concurrently.
    let counters = unsafe { &mut *counters };
    let lease = LEASES.get(slot).copied().unwrap_or(0);
    if slots.lease_clock >= lease {
        counters.expired += slots.segs;
        return None;
    }
    counters.seen += slots.segs;
    Some((rule, counters))
}

#[inline(always)]
fn count_untouched(slots: &Slots, list: &RuleList, untouched: Untouched) {
    for i in 0..DISPATCH_WIDTH {
        if i >= list.count as usize {
            break;
        }
        let Some((_, counters)) = rule_for(slots, list.slots[i]) else { continue };
        match untouched {
            Untouched::Exempt => {}
            Untouched::Unparsed => counters.unparsed += slots.segs,
            Untouched::Error => counters.errors += slots.segs,
            Untouched::Protected => counters.protected += slots.segs,
        }
    }
}

#[inline(always)]
fn fill_fragment_key(key: &mut FragmentKey, p: &Packet, ifindex: u32, dir: u32) {
    key.ifindex = ifindex;
    key.id = p.fragment_id;
    key.direction = dir as u8;
    key.proto = p.proto;
    key._pad = 0;
    key.saddr = p.saddr;
    key.daddr = p.daddr;
}

/// A later fragment gets what its first fragment got: the same rules match, the same
/// rules drop it, the same delay; a rate rule paces it by its own length.
#[inline(always)]
fn replay_fragment(ctx: &TcContext, slots: &Slots, list: &RuleList, record: &FragmentRecord) -> i32 {
    for i in 0..DISPATCH_WIDTH {
        if i >= list.count as usize {
            break;
        }
        let slot = list.slots[i];
        let Some((rule, counters)) = rule_for(slots, slot) else { continue };
        let bit = 1u32 << i;
        if record.matched & bit == 0 {
            continue;
        }
        counters.matched += 1;
        let shadow = rule.flags & flags::SHADOW != 0;
        if record.dropped & bit != 0 {
            counters.dropped += 1;
            if !shadow {
                return drop_verdict(slots.dir);
            }
        } else if rule.action == action::RATE {
            match fault::rate(rule, slot, ctx.len() as u64, &RATE_NEXT) {
                Verdict::Drop => {
                    counters.dropped += 1;
                    if !shadow {
                        return drop_verdict(slots.dir);
                    }
                }
                Verdict::DepartAt(time) => {
                    counters.passed += 1;
                    counters.delayed += 1;
                    if !shadow {
                        depart_at(ctx, time);
                    }
                }
                _ => counters.passed += 1,
            }
        } else if rule.action == action::DELAY && record.delay_until != 0 {
            counters.passed += 1;
            counters.delayed += 1;
            if !shadow {
                depart_at(ctx, record.delay_until);
            }
        } else {
            counters.passed += 1;
        }
    }
    TC_ACT_UNSPEC
}

/// An IP packet that is neither protected nor a later fragment: match and act. What a
/// first fragment gets is recorded for its later fragments.
#[inline(always)]
fn act(ctx: &TcContext, slots: &Slots, list: &RuleList, scratch: &mut Scratch, parse_tls: bool) -> i32 {
    // Written for every packet, saved for first fragments only: no per-slot branch on
    // whether this is one. Field by field (see parse::clear).
    let record = &mut scratch.fragment_record;
    parse::clear(&mut record.protected);
    parse::clear(&mut record.matched);
    parse::clear(&mut record.dropped);
    parse::clear(&mut record.delay_until);
    record.version = list.version;
    let dir = slots.dir;
    // Once per packet, not per rule: the loop below only compares what it found.
    tls::begin(&mut scratch.tls);
    if parse_tls {
        tls::parse_client_hello(ctx, &scratch.packet, &mut scratch.tls);
        tls::alpn_rules(&mut scratch.tls, &TLS_ALPN);
    } else {
        parse::clear(&mut scratch.tls.state);
    }
    // Whether a (non-shadow) delay rule holds this packet.
    let mut held_for_delay = false;
    for i in 0..DISPATCH_WIDTH {
        if i >= list.count as usize {
            break;
        }
        let slot = list.slots[i];
        let Some((rule, counters)) = rule_for(slots, slot) else { continue };
        if !matches(ctx, rule, dir, &scratch.packet) {
            continue;
        }
        counters.matched += slots.segs;
        let bit = 1u32 << i;
        scratch.fragment_record.matched |= bit;
        let context = fault::Context {
            slot,
            position: i as u32,
            packet: &scratch.packet,
            dir,
            len: ctx.len() as u64,
            key: &mut scratch.flow,
            flows: &FLOWS,
            rate_next: &RATE_NEXT,
            tls: &mut scratch.tls,
        };
        match fault::decide(rule, context) {
            Ok(Verdict::Drop) => {
                counters.dropped += slots.segs;
                scratch.fragment_record.dropped |= bit;
                if rule.flags & flags::SHADOW == 0 {
                    if scratch.packet.fragment == fragment::FIRST {
                        save_fragment_record(scratch);
                    }
                    return drop_verdict(dir);
                }
            }
            Ok(Verdict::DepartAt(time)) => {
                counters.passed += slots.segs;
                counters.delayed += slots.segs;
                if rule.action == action::DELAY && scratch.fragment_record.delay_until < time {
                    scratch.fragment_record.delay_until = time;
                }
                if rule.flags & flags::SHADOW == 0 {
                    depart_at(ctx, time);
                    if rule.action == action::DELAY {
                        held_for_delay = true;
                    }
                }
            }
            Ok(Verdict::Pass) => counters.passed += slots.segs,
            Ok(Verdict::PassUnparsed) => {
                counters.passed += slots.segs;
                counters.unparsed += slots.segs;
            }
            Err(_) => counters.errors += slots.segs,
        }
    }
    if tls::get(&scratch.tls.wanted) != 0 {
        if let Some(verdict) = refuse_tls(ctx, slots, list, scratch) {
            return verdict;
        }
    }
    if scratch.packet.fragment == fragment::FIRST {
        save_fragment_record(scratch);
    }
    if dir == direction::EGRESS && held_for_delay {
        return resend_without_socket(ctx, slots.ifindex, slots.cookie);
    }
    TC_ACT_UNSPEC
}

/// After the rule loop, for a TCP packet that TLS_REFUSE rules matched (tls::Tls says
/// which): a packet of a connection such a rule refused drops; a ClientHello that one
/// refuses is remembered with that rule's slot, and dropped or answered with resets as
/// the rule says. The rule counted it as passed in the loop; here it moves to dropped.
/// None: the packet goes on.
#[inline(always)]
fn refuse_tls(ctx: &TcContext, slots: &Slots, list: &RuleList, scratch: &mut Scratch) -> Option<i32> {
    let wanted = tls::get(&scratch.tls.wanted);
    let key = &mut scratch.flow;
    let p = &scratch.packet;
    key.slot = tls_consts::REFUSED_FLOW_SLOT;
    key.direction = slots.dir as u8;
    key.proto = p.proto;
    key.sport = p.sport;
    key.dport = p.dport;
    key._pad = 0;
    key.saddr = p.saddr;
    key.daddr = p.daddr;
    let mut answer = false;
    let slot = match FLOWS.get_ptr(&scratch.flow) {
        // SAFETY: a map value, valid for this program run.
        Some(state) if unsafe { (*state).bad } == tls_consts::REFUSED => (unsafe { (*state).next_index }) as u32,
        _ => {
            if tls::get(&scratch.tls.refusing) == 0 {
                return None;
            }
            let position = tls::get(&scratch.tls.first_refusing) as usize;
            if position >= DISPATCH_WIDTH {
                return None;
            }
            let slot = list.slots[position];
            let refused = FlowState { flow_hash: 0, next_index: slot as u64, bad: tls_consts::REFUSED, _pad: 0 };
            // A full table only costs the memory of this refusal: a resent ClientHello
            // is refused again.
            let _ = FLOWS.insert(&scratch.flow, &refused, 0);
            answer = true;
            slot
        }
    };
    // The rule that refused the connection must still match its packets.
    if !wanted_here(list, wanted, slot) {
        return None;
    }
    let slot = slot & (MAX_RULES - 1);
    let rule = RULES.get(slot)?;
    // SAFETY: per-CPU slot of this program run; nothing else writes it concurrently.
    let counters = unsafe { &mut *COUNTERS.get_ptr_mut(slot)? };
    counters.passed -= slots.segs;
    counters.dropped += slots.segs;
    if rule.flags & flags::SHADOW != 0 {
        return None;
    }
    if answer && rule.tls_mode == tls_consts::MODE_RESET {
        return Some(match tls::reset(ctx, &scratch.packet, &mut scratch.tls, slots.dir, slots.ifindex) {
            // The client's reset is on its way; the packet itself is now the server's
            // reset and goes on.
            Some(verdict) => verdict,
            None => {
                // Not a packet a reset can be built from (IPv4 options, IPv6 extension
                // headers) or a helper failed: the connection is remembered, so it
                // still ends, by timeout.
                counters.errors += slots.segs;
                drop_verdict(slots.dir)
            }
        });
    }
    Some(drop_verdict(slots.dir))
}

/// Whether the rule in `slot` is at a position of `list` that `wanted` marks.
#[inline(always)]
fn wanted_here(list: &RuleList, wanted: u32, slot: u32) -> bool {
    for i in 0..DISPATCH_WIDTH {
        if i >= list.count as usize {
            break;
        }
        if list.slots[i] == slot && wanted & (1u32 << i) != 0 {
            return true;
        }
    }
    false
}

/// Whether `rule` matches the parsed packet beyond what found it (interface,
/// direction, peers): the sender's cgroup, protocol, ports.
#[inline(always)]
fn matches(ctx: &TcContext, rule: &Rule, dir: u32, p: &Packet) -> bool {
    matches_cgroup(ctx, rule, dir) && matches_ports(rule, p)
}

#[inline(always)]
fn matches_cgroup(ctx: &TcContext, rule: &Rule, dir: u32) -> bool {
    if rule.cgroup_id == 0 {
        return true;
    }
    // The socket's cgroup is known on egress only (checked by the loader too).
    if dir != direction::EGRESS {
        return false;
    }
    // SAFETY: the program's own skb. The ancestor at the rule's level is the target
    // cgroup itself when the sender is in its subtree (0 when the sender sits higher up
    // or the packet has no socket).
    let id = unsafe { bpf_skb_ancestor_cgroup_id(ctx.skb.skb, rule.cgroup_level as i32) };
    id == rule.cgroup_id
}

/// A GSO buffer goes to the segmenter pair of its device, to be judged segment by
/// segment (chaos_ebpf_common::segment). Nothing is matched or counted here: the
/// segments are, as if they had come one by one (a loop over the rules here as well
/// would exceed what the verifier walks).
#[inline(always)]
fn to_segmenter(ctx: &TcContext, slots: &Slots, outer: u32) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the program's own skb; cb[0..5] is the TC programs' scratch area.
    unsafe {
        (*skb).cb[resend::MARK] = if slots.dir == direction::EGRESS { segment::EGRESS } else { segment::INGRESS };
        (*skb).cb[resend::RESENDER] = slots.cookie;
        (*skb).cb[segment::FROM_IFINDEX] = slots.ifindex;
        // SAFETY: a helper without pointer arguments; flags 0 = the egress of `outer`,
        // where the kernel segments the buffer.
        bpf_redirect(outer, 0) as i32
    }
}

/// One segment of a buffer this instance sent to its segmenter: matched and decided as
/// on the hook it came from (the segment still carries its sender's socket, so cgroup
/// rules match), then dropped here, or sent back there marked as judged with the
/// departure time the rules gave it.
#[inline(always)]
fn judge_segment(ctx: &TcContext, dir: u32) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the program's own skb; TC programs may read and write cb[0..5].
    let (mark, sender, from) =
        unsafe { ((*skb).cb[resend::MARK], (*skb).cb[resend::RESENDER], (*skb).cb[segment::FROM_IFINDEX]) };
    let (expected, judged) = if dir == direction::EGRESS {
        (segment::EGRESS, resend::JUDGED)
    } else {
        (segment::INGRESS, resend::JUDGED_INGRESS)
    };
    if mark != expected {
        return TC_ACT_UNSPEC;
    }
    let Some(config) = CONFIG.get(0) else {
        return TC_ACT_UNSPEC;
    };
    if sender != config.cookie {
        return TC_ACT_UNSPEC;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: this CPU's scratch entry, used by this program run only.
    let scratch = unsafe { &mut *scratch };
    // SAFETY: the program's own skb, as above. Judged by this instance from here on
    // (its JUDGED_BY bit and those before it were set on the way in). tstamp holds the
    // departure time the rules give (on this ingress it holds at most a receive time).
    unsafe {
        (*skb).cb[resend::MARK] = judged;
        (*skb).cb[resend::RESENDER] = config.cookie;
        (*skb).tstamp = 0;
    }
    if parse::parse(ctx, &mut scratch.head, &mut scratch.packet) == Class::Ip
        && !is_protected(&scratch.packet, config.nr_protected)
    {
        // SAFETY: a helper without arguments.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        let slots = Slots { dir, ifindex: from, lease_clock: now, segs: 1, cookie: config.cookie };
        if let Some(list) = rules_of(config, &slots, scratch, true) {
            // No ClientHello parse for GSO segments: a ClientHello that needs more than
            // one segment is past what the parse reads anyway (see tls.rs), and the
            // judges stay as small for the verifier as they were.
            let verdict = act(ctx, &slots, list, scratch, false);
            if verdict != TC_ACT_UNSPEC {
                // Dropped, or re-sent without its socket (resend_without_socket).
                return verdict;
            }
        }
    }
    // SAFETY: the program's own skb, as above.
    unsafe {
        let depart = (*skb).tstamp;
        (*skb).cb[resend::DEPART_LO] = depart as u32;
        (*skb).cb[resend::DEPART_HI] = (depart >> 32) as u32;
    }
    let flags = if dir == direction::INGRESS { BPF_F_INGRESS } else { 0 };
    // SAFETY: a helper without pointer arguments.
    unsafe { bpf_redirect(from, flags) as i32 }
}

/// A packet of a local socket that a delay rule holds would keep its socket's send
/// budget until it leaves: TCP small queues then let ~2 segments per connection wait in
/// sch_fq, capping TCP at ~2 segments per delay (netem orphans the packet). So the
/// packet is re-sent as a copy without the socket (bpf_clone_redirect to this device's
/// egress) and the original dropped silently: the sender's budget is freed at once and
/// the copy waits its delay. Without a socket (forwarded traffic) nothing is held, and
/// nothing is re-sent. See chaos_ebpf_common::resend for the marks the copy carries.
#[inline(always)]
fn resend_without_socket(ctx: &TcContext, ifindex: u32, cookie: u32) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the program's own skb.
    if unsafe { bpf_get_socket_cookie(skb as *mut _) } == 0 {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: the program's own skb; cb is the scratch area of TC programs, copied into
    // the clone. The departure time is the latest any rule so far gave it.
    unsafe {
        let depart = (*skb).tstamp;
        (*skb).cb[resend::RESENDER] = cookie;
        (*skb).cb[resend::DEPART_LO] = depart as u32;
        (*skb).cb[resend::DEPART_HI] = (depart >> 32) as u32;
    }
    // SAFETY: the program's own skb; flags 0 = the egress of `ifindex`.
    let sent = unsafe { bpf_clone_redirect(skb, ifindex, 0) };
    // SAFETY: as above.
    unsafe { (*skb).cb[resend::RESENDER] = 0 };
    if sent == 0 {
        drop_verdict(direction::EGRESS)
    } else {
        // The copy could not be sent: the original goes, held with its socket.
        TC_ACT_UNSPEC
    }
}

/// Marks a packet as judged by this instance on this hook, or says it already was: a
/// copy re-sent (or a segment sent back) by an instance that ran after this one in the
/// chain (this one judged the original), or this instance's own copy or segment (its
/// departure time is set again). Programs after the re-sender never saw the original
/// and judge the copy.
#[inline(always)]
fn already_judged(ctx: &TcContext, cookie: u32, dir: u32) -> bool {
    let skb = ctx.skb.skb;
    let bit = 1u32 << (cookie & 31);
    let judged = if dir == direction::EGRESS { resend::JUDGED } else { resend::JUDGED_INGRESS };
    // SAFETY: the program's own skb; TC programs may read and write cb[0..5].
    unsafe {
        if (*skb).cb[resend::MARK] != judged {
            (*skb).cb[resend::MARK] = judged;
            (*skb).cb[resend::RESENDER] = 0;
            (*skb).cb[resend::JUDGED_BY] = 0;
        }
        let resender = (*skb).cb[resend::RESENDER];
        if resender != 0 {
            if resender == cookie {
                let depart = ((*skb).cb[resend::DEPART_HI] as u64) << 32 | (*skb).cb[resend::DEPART_LO] as u64;
                depart_at(ctx, depart);
                return true;
            }
            if (*skb).cb[resend::JUDGED_BY] & bit != 0 {
                return true;
            }
        }
        (*skb).cb[resend::JUDGED_BY] |= bit;
    }
    false
}

#[inline(always)]
fn save_fragment_record(scratch: &Scratch) {
    // A full table evicts the oldest datagram; its later fragments then pass as unparsed.
    let _ = FRAGMENTS.insert(&scratch.fragment_key, &scratch.fragment_record, 0);
}

/// Stacked delay and rate rules: the latest departure wins. Written directly: sch_fq on
/// this device reads skb->tstamp as CLOCK_MONOTONIC (the TC egress hook runs before the
/// root qdisc enqueues).
#[inline(always)]
fn depart_at(ctx: &TcContext, time: u64) {
    // SAFETY: the program's own skb; tstamp is writable in sched_cls.
    unsafe {
        let skb = ctx.skb.skb;
        if (*skb).tstamp < time {
            (*skb).tstamp = time;
        }
    }
}

/// How to drop. On ingress TC_ACT_SHOT: the packet vanishes as on a lossy link. On
/// egress TC_ACT_SHOT would surface to the sender as NET_XMIT_DROP (ENOBUFS for UDP and
/// ping, which then resends; TCP treats it as local congestion and retries at once), so
/// a lost packet would not look lost. A redirect to ifindex 0, which never exists, is
/// freed in skb_do_redirect while the sender is told NET_XMIT_SUCCESS: silent, like
/// netem's loss and like a real network. (TC_ACT_STOLEN would also be silent, but TCX
/// treats it as TCX_NEXT.)
#[inline(always)]
fn drop_verdict(dir: u32) -> i32 {
    if dir == direction::EGRESS {
        // SAFETY: a helper without pointer arguments.
        unsafe { bpf_redirect(0, 0) as i32 }
    } else {
        TC_ACT_SHOT as i32
    }
}

#[inline(always)]
fn in_ports(p: &Packet, lo: u16, hi: u16) -> bool {
    p.has_ports != 0 && ((p.sport >= lo && p.sport <= hi) || (p.dport >= lo && p.dport <= hi))
}

#[inline(always)]
fn is_protected(p: &Packet, nr_protected: u32) -> bool {
    for i in 0..MAX_PROTECTED {
        if i >= nr_protected {
            break;
        }
        let Some(entry) = PROTECTED.get(i) else { break };
        if entry.proto == p.proto as u32 && in_ports(p, entry.port_lo, entry.port_hi) {
            return true;
        }
    }
    false
}

/// Protocol and ports.
#[inline(always)]
fn matches_ports(rule: &Rule, p: &Packet) -> bool {
    let proto_ok = match rule.proto {
        proto::ANY => true,
        proto::ICMP => p.proto as u32 == proto::ICMP || p.proto as u32 == proto::ICMPV6,
        other => p.proto as u32 == other,
    };
    proto_ok && ((rule.port_lo == 0 && rule.port_hi == u16::MAX) || in_ports(p, rule.port_lo, rule.port_hi))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
