//! What a matched packet gets: the per-rule verdict. Probabilistic choices come from the
//! keyed hash of (seed, flow, per-flow packet index); see chaos_ebpf_common::hash for why
//! it is uniform.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    maps::{Array, LruHashMap},
};
use chaos_ebpf_common::{
    FlowKey, FlowState, RATE_MAX_WAIT_NS, Rule, action, decision, flags, flow_hash,
    hash::{DOMAIN_BURST, DOMAIN_JITTER, DOMAIN_LOSS, hits, jitter_offset},
};

use crate::{
    parse::{Packet, TCP_FLAG_ACK, TCP_FLAG_SYN},
    tls::{self, Tls},
};

/// The flow table was full and the new entry could not be stored.
pub struct NoFlowState;

pub enum Verdict {
    Pass,
    Drop,
    /// Pass, leaving no earlier than this CLOCK_MONOTONIC time (skb->tstamp, enforced by
    /// sch_fq on the egress device).
    DepartAt(u64),
    /// Pass, and count `unparsed`: a ClientHello the bounded parse could not finish.
    PassUnparsed,
}

/// Everything a verdict may depend on besides the rule.
pub struct Context<'a> {
    /// The rule's slot (its counters, rate state and flow keys).
    pub slot: u32,
    /// The rule's position in the packet's rule list (its bit in per-packet masks).
    pub position: u32,
    pub packet: &'a Packet,
    pub dir: u32,
    pub len: u64,
    pub key: &'a mut FlowKey,
    pub flows: &'a LruHashMap<FlowKey, FlowState>,
    pub rate_next: &'a Array<u64>,
    pub tls: &'a mut Tls,
}

#[inline(always)]
pub fn decide(rule: &Rule, c: Context<'_>) -> Result<Verdict, NoFlowState> {
    let drop_if = |yes: bool| if yes { Verdict::Drop } else { Verdict::Pass };
    match rule.action {
        action::DROP => Ok(Verdict::Drop),
        action::DROP_NEW_TCP => Ok(drop_if(
            c.packet.proto == 6 && c.packet.tcp_flags & TCP_FLAG_SYN != 0 && c.packet.tcp_flags & TCP_FLAG_ACK == 0,
        )),
        action::LOSS => loss(rule, c).map(drop_if),
        action::DELAY => delay(rule, c),
        action::RATE => Ok(rate(rule, c.slot, c.len, c.rate_next)),
        action::TLS_REFUSE => Ok(tls_refuse(rule, c)),
        _ => Ok(Verdict::Pass),
    }
}

/// The flow's hash and this packet's index in it (the entry is created on first sight).
#[inline(always)]
fn next_in_flow(rule: &Rule, c: &mut Context<'_>) -> Result<(u64, u64, *mut FlowState), NoFlowState> {
    let key = &mut *c.key;
    key.slot = c.slot;
    key.direction = c.dir as u8;
    key.proto = c.packet.proto;
    key.sport = c.packet.sport;
    key.dport = c.packet.dport;
    key._pad = 0;
    key.saddr = c.packet.saddr;
    key.daddr = c.packet.daddr;
    let key = &*key;
    let state = match c.flows.get_ptr_mut(key) {
        Some(state) => state,
        None => {
            let fresh =
                FlowState { flow_hash: flow_hash(rule.seed, rule.rule_id, key), next_index: 0, bad: 0, _pad: 0 };
            // Another CPU may have inserted the flow meanwhile (NOEXIST fails then); the
            // lookup below finds whichever entry won.
            let _ = c.flows.insert(key, &fresh, BPF_NOEXIST as u64);
            c.flows.get_ptr_mut(key).ok_or(NoFlowState)?
        }
    };
    // SAFETY: `state` points into the map value, valid for this program run; the index
    // is bumped atomically because packets of one flow can run on several CPUs.
    let (hash, index) = unsafe { ((*state).flow_hash, fetch_add(&raw mut (*state).next_index, 1)) };
    Ok((hash, index, state))
}

/// Marks what this TLS_REFUSE rule wants done with the packet; `main::refuse_tls` acts
/// on the marks once, after the rule loop (see tls::Tls). The rule counts the packet as
/// passed here; a refusal there moves it to dropped.
#[inline(always)]
fn tls_refuse(rule: &Rule, c: Context<'_>) -> Verdict {
    if c.packet.proto != 6 {
        return Verdict::Pass;
    }
    let t = c.tls;
    let bit = 1u32 << c.position;
    tls::mark(&mut t.wanted, bit);
    match t.state {
        tls::state::PARSED => {}
        tls::state::UNPARSED => return Verdict::PassUnparsed,
        _ => return Verdict::Pass,
    }
    if rule.tls_versions & t.versions != 0 || tls::get(&t.alpn_rules) & (1u32 << (rule.tls_bit & 31)) != 0 {
        if tls::get(&t.refusing) == 0 {
            tls::set(&mut t.first_refusing, c.position);
        }
        tls::mark(&mut t.refusing, bit);
    }
    Verdict::Pass
}

#[inline(always)]
fn loss(rule: &Rule, mut c: Context<'_>) -> Result<bool, NoFlowState> {
    let (hash, index, state) = next_in_flow(rule, &mut c)?;
    let mut threshold = rule.loss_threshold;
    if rule.flags & flags::BURST != 0 {
        // Gilbert-Elliott: first the state transition for this packet, then the loss draw
        // with the new state's loss probability. The state write races only with other
        // packets of the same flow on other CPUs, which then also share its outcome.
        let draw = decision(rule.seed, rule.rule_id, hash, index, DOMAIN_BURST);
        // SAFETY: as in next_in_flow.
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

#[inline(always)]
fn delay(rule: &Rule, mut c: Context<'_>) -> Result<Verdict, NoFlowState> {
    let mut total = rule.delay_ns as i64;
    if rule.jitter_ns != 0 {
        let (hash, index, _) = next_in_flow(rule, &mut c)?;
        let draw = decision(rule.seed, rule.rule_id, hash, index, DOMAIN_JITTER);
        total += jitter_offset(draw, rule.jitter_ns, rule.flags & flags::JITTER_NORMAL != 0);
    }
    Ok(if total > 0 { Verdict::DepartAt(now() + total as u64) } else { Verdict::Pass })
}

/// EDT pacing: each packet departs `len / rate` after the previous one of this rule. The
/// shared next-departure time is updated without a lock: two CPUs racing may give two
/// packets the same slot, a small overshoot, never a stall.
#[inline(always)]
pub fn rate(rule: &Rule, slot: u32, len: u64, rate_next: &Array<u64>) -> Verdict {
    let Some(next) = rate_next.get_ptr_mut(slot) else { return Verdict::Pass };
    if rule.rate_bytes_per_sec == 0 {
        return Verdict::Pass;
    }
    let now = now();
    let spacing = len * 1_000_000_000 / rule.rate_bytes_per_sec;
    // SAFETY: a valid slot of the array map.
    let previous = unsafe { *next };
    let depart = if previous > now { previous } else { now };
    if depart - now > RATE_MAX_WAIT_NS {
        return Verdict::Drop;
    }
    // SAFETY: as above.
    unsafe { *next = depart + spacing };
    Verdict::DepartAt(depart)
}

/// CLOCK_MONOTONIC ns, the clock sch_fq reads skb->tstamp in: read only by the rules
/// that set a departure time.
#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
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
