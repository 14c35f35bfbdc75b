//! chaos-ebpf TC classifiers: one program per hook (ingress, egress), one shared
//! classification path. The entry points only call `classify` and return its verdict;
//! anything that cannot be parsed passes and is counted (fail open).
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

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::{bpf_ktime_get_ns, bpf_redirect, bpf_skb_ancestor_cgroup_id},
    macros::{classifier, map},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::TcContext,
};
use chaos_ebpf_common::{
    Config, FlowKey, FlowState, MAX_FLOWS, MAX_PEERS, MAX_PROTECTED, MAX_RULES, PeerKeyData, ProtectedPorts, Rule,
    RuleCounters, direction, flags, proto,
};

use crate::{fault::Verdict, parse::Packet};

const TC_ACT_UNSPEC: i32 = -1;

#[map(name = "CHAOS_RULES")]
static RULES: Array<Rule> = Array::with_max_entries(MAX_RULES, 0);

/// Lease expiry per slot, CLOCK_MONOTONIC ns (bpf_ktime_get_ns). A rule acts only while
/// `now < lease`; the loader renews it, so a hung loader's faults end on their own.
#[map(name = "CHAOS_LEASES")]
static LEASES: Array<u64> = Array::with_max_entries(MAX_RULES, 0);

#[map(name = "CHAOS_COUNTERS")]
static COUNTERS: PerCpuArray<RuleCounters> = PerCpuArray::with_max_entries(MAX_RULES, 0);

#[map(name = "CHAOS_PEERS")]
static PEERS: LpmTrie<PeerKeyData, u32> = LpmTrie::with_max_entries(MAX_PEERS, 0);

#[map(name = "CHAOS_PROTECTED")]
static PROTECTED: Array<ProtectedPorts> = Array::with_max_entries(MAX_PROTECTED, 0);

#[map(name = "CHAOS_CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Per-slot next free departure time of a rate rule (CLOCK_MONOTONIC ns).
#[map(name = "CHAOS_RATE_NEXT")]
static RATE_NEXT: Array<u64> = Array::with_max_entries(MAX_RULES, 0);

#[map(name = "CHAOS_FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// Per-CPU working memory for one packet (a TC program runs to completion on one CPU
/// without preemption by another TC run there), kept off the 512-byte BPF stack.
#[repr(C)]
pub struct Scratch {
    pub head: parse::Head,
    pub packet: Packet,
    pub flow: FlowKey,
    pub peer: Key<PeerKeyData>,
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

#[inline(always)]
fn classify(ctx: &TcContext, dir: u32) -> i32 {
    let Some(config) = CONFIG.get(0) else {
        return TC_ACT_UNSPEC;
    };
    let nr_slots = config.nr_slots;
    if nr_slots == 0 {
        return TC_ACT_UNSPEC;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return TC_ACT_UNSPEC;
    };
    // SAFETY: this CPU's scratch entry, used by this program run only.
    let scratch = unsafe { &mut *scratch };
    let parsed = parse::parse(ctx, &mut scratch.head, &mut scratch.packet);
    let protected = matches!(parsed, Ok(true)) && is_protected(&scratch.packet, config.nr_protected);
    // SAFETY: helper calls without pointer arguments, or with the program's own skb.
    let now = unsafe { bpf_ktime_get_ns() };
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };

    for slot in 0..MAX_RULES {
        if slot >= nr_slots {
            break;
        }
        let Some(rule) = RULES.get(slot) else { break };
        if rule.action == chaos_ebpf_common::action::NONE
            || rule.directions & dir == 0
            || (rule.ifindex != 0 && rule.ifindex != ifindex)
        {
            continue;
        }
        let Some(counters) = COUNTERS.get_ptr_mut(slot) else {
            continue;
        };
        // SAFETY: per-CPU slot of this program run; nothing else writes it concurrently.
        let counters = unsafe { &mut *counters };
        let lease = LEASES.get(slot).copied().unwrap_or(0);
        if now >= lease {
            counters.expired += 1;
            continue;
        }
        counters.seen += 1;
        match parsed {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => {
                counters.errors += 1;
                continue;
            }
        }
        let p = &scratch.packet;
        if protected {
            counters.protected += 1;
            continue;
        }
        if rule.cgroup_id != 0 {
            // The socket's cgroup is known on egress only (checked by the loader too).
            if dir != direction::EGRESS {
                continue;
            }
            // SAFETY: the program's own skb. The ancestor at the rule's level is the
            // target cgroup itself when the sender is in its subtree (0 when the sender
            // sits higher up or the packet has no socket).
            let id = unsafe { bpf_skb_ancestor_cgroup_id(ctx.skb.skb, rule.cgroup_level as i32) };
            if id != rule.cgroup_id {
                continue;
            }
        }
        if !matches_peer(rule, slot, p, dir, &mut scratch.peer) {
            continue;
        }
        counters.matched += 1;
        let context = fault::Context {
            slot,
            packet: &scratch.packet,
            dir,
            now,
            len: ctx.len() as u64,
            key: &mut scratch.flow,
            flows: &FLOWS,
            rate_next: &RATE_NEXT,
        };
        match fault::decide(rule, context) {
            Ok(Verdict::Drop) => {
                counters.dropped += 1;
                if rule.flags & flags::SHADOW == 0 {
                    return drop_verdict(dir);
                }
            }
            Ok(Verdict::DepartAt(time)) => {
                counters.passed += 1;
                counters.delayed += 1;
                if rule.flags & flags::SHADOW == 0 {
                    // Stacked delay and rate rules: the latest departure wins. Written
                    // directly: sch_fq on this device reads skb->tstamp as CLOCK_MONOTONIC
                    // (the TC egress hook runs before the root qdisc enqueues).
                    // SAFETY: the program's own skb; tstamp is writable in sched_cls.
                    unsafe {
                        let skb = ctx.skb.skb;
                        if (*skb).tstamp < time {
                            (*skb).tstamp = time;
                        }
                    }
                }
            }
            Ok(Verdict::Pass) => counters.passed += 1,
            Err(_) => counters.errors += 1,
        }
    }
    TC_ACT_UNSPEC
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

#[inline(always)]
fn matches_peer(rule: &Rule, slot: u32, p: &Packet, dir: u32, key: &mut Key<PeerKeyData>) -> bool {
    let proto_ok = match rule.proto {
        proto::ANY => true,
        proto::ICMP => p.proto as u32 == proto::ICMP || p.proto as u32 == proto::ICMPV6,
        other => p.proto as u32 == other,
    };
    if !proto_ok {
        return false;
    }
    if !(rule.port_lo == 0 && rule.port_hi == u16::MAX) && !in_ports(p, rule.port_lo, rule.port_hi) {
        return false;
    }
    if rule.flags & flags::PEERS != 0 {
        // The peer is the far end: the destination on egress, the source on ingress (and
        // on the egress of the target's veth peer, for PEER_IS_SOURCE rules).
        key.prefix_len = PeerKeyData::SLOT_BITS + 128;
        let peer_is_destination = dir == direction::EGRESS && rule.flags & flags::PEER_IS_SOURCE == 0;
        key.data = PeerKeyData::new(slot, if peer_is_destination { p.daddr } else { p.saddr });
        if PEERS.get(&*key).is_none() {
            return false;
        }
    }
    true
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
