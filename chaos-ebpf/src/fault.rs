//! What a matched packet gets: the per-rule decision, from the keyed hash of
//! (seed, flow, per-flow packet index); see chaos_ebpf_common::hash for why it is uniform.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::LruHashMap};
use chaos_ebpf_common::{
    FlowKey, FlowState, Rule, action, decision, flags, flow_hash,
    hash::{DOMAIN_BURST, DOMAIN_LOSS, hits},
};

use crate::parse::{Packet, TCP_FLAG_ACK, TCP_FLAG_SYN};

/// The flow table was full and the new entry could not be stored.
pub struct NoFlowState;

/// `Ok(true)` when the packet should be dropped.
#[inline(always)]
pub fn decide(
    rule: &Rule,
    slot: u32,
    p: &Packet,
    dir: u32,
    key: &mut FlowKey,
    flows: &LruHashMap<FlowKey, FlowState>,
) -> Result<bool, NoFlowState> {
    match rule.action {
        action::DROP => Ok(true),
        action::DROP_NEW_TCP => Ok(p.proto == 6 && p.tcp_flags & TCP_FLAG_SYN != 0 && p.tcp_flags & TCP_FLAG_ACK == 0),
        action::LOSS => loss(rule, slot, p, dir, key, flows),
        _ => Ok(false),
    }
}

#[inline(always)]
fn loss(
    rule: &Rule,
    slot: u32,
    p: &Packet,
    dir: u32,
    key: &mut FlowKey,
    flows: &LruHashMap<FlowKey, FlowState>,
) -> Result<bool, NoFlowState> {
    key.slot = slot;
    key.direction = dir as u8;
    key.proto = p.proto;
    key.sport = p.sport;
    key.dport = p.dport;
    key._pad = 0;
    key.saddr = p.saddr;
    key.daddr = p.daddr;
    let key = &*key;
    let state = match flows.get_ptr_mut(key) {
        Some(state) => state,
        None => {
            let fresh =
                FlowState { flow_hash: flow_hash(rule.seed, rule.rule_id, key), next_index: 0, bad: 0, _pad: 0 };
            // Another CPU may have inserted the flow meanwhile (NOEXIST fails then); the
            // lookup below finds whichever entry won.
            let _ = flows.insert(key, &fresh, BPF_NOEXIST as u64);
            flows.get_ptr_mut(key).ok_or(NoFlowState)?
        }
    };
    // SAFETY: `state` points into the map value, valid for this program run; the index
    // is bumped atomically because packets of one flow can run on several CPUs.
    let (hash, index) = unsafe { ((*state).flow_hash, fetch_add(&raw mut (*state).next_index, 1)) };
    let mut threshold = rule.loss_threshold;
    if rule.flags & flags::BURST != 0 {
        // Gilbert-Elliott: first the state transition for this packet, then the loss draw
        // with the new state's loss probability. The state write races only with other
        // packets of the same flow on other CPUs, which then also share its outcome.
        let draw = decision(rule.seed, rule.rule_id, hash, index, DOMAIN_BURST);
        // SAFETY: as above.
        let bad = unsafe { &mut (*state).bad };
        if *bad != 0 {
            if hits(draw, rule.burst_exit) {
                *bad = 0;
            }
        } else if hits(draw, rule.burst_enter) {
            *bad = 1;
        }
        if *bad != 0 {
            threshold = rule.burst_loss;
        }
    }
    Ok(hits(decision(rule.seed, rule.rule_id, hash, index, DOMAIN_LOSS), threshold))
}

/// BPF_ATOMIC | BPF_FETCH add (needs -C target-cpu=v3, kernel >= 5.12). core's AtomicU64
/// has no read-modify-write operations on the bpf target, so say it in BPF assembly.
#[inline(always)]
unsafe fn fetch_add(ptr: *mut u64, value: u64) -> u64 {
    let mut value = value;
    // SAFETY: the caller passes a valid, aligned pointer into a map value.
    unsafe {
        core::arch::asm!(
            "{value} = atomic_fetch_add((u64 *)({ptr} + 0), {value})",
            ptr = in(reg) ptr,
            value = inout(reg) value,
        );
    }
    value
}
