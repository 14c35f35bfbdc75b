//! The TC attributes netlink-packet-route does not type for chaos-ebpf, as raw netlink
//! attributes on top of its `TcMessage`:
//! - sch_fq's options (the crate has no sch_fq type);
//! - a qdisc's options kept as the kernel's bytes: chaos-ebpf records the options of a
//!   qdisc it replaces (fq_codel, pfifo_fast, ... under an mq) and sends them back
//!   unchanged to restore it, while the crate would re-encode the kinds it knows and
//!   nest the ones it does not one level too deep;
//! - the clsact handles (TcHandle has the parent and the hook minors, not the handle).
//!
//! cls_bpf's program id and name are typed by the crate (`TcFilterBpfOption`).

use netlink_packet_core::{parse_u32, parse_u8, DefaultNla, Emitable, NlasIterator, NLA_F_NESTED};
use netlink_packet_route::tc::{TcAttribute, TcHandle};

use super::{FqLimits, FqSettings};

/// TCA_OPTIONS (include/uapi/linux/rtnetlink.h, enum TCA_*).
const TCA_OPTIONS: u16 = 2;
/// sizeof(struct tcmsg): family, 3 pad bytes, ifindex, handle, parent, info.
const TCMSG_LEN: usize = 20;

// sch_fq options (include/uapi/linux/pkt_sched.h, enum TCA_FQ_*).
const TCA_FQ_PLIMIT: u16 = 1;
const TCA_FQ_FLOW_PLIMIT: u16 = 2;
const TCA_FQ_HORIZON: u16 = 14;
const TCA_FQ_HORIZON_DROP: u16 = 15;

/// The clsact qdisc's handle: TC_H_MAKE(TC_H_CLSACT, 0) = ffff:0000 (its parent is
/// TC_H_CLSACT = TC_H_INGRESS = ffff:fff1, the crate's `TcHandle::CLSACT`).
pub(super) const CLSACT_HANDLE: TcHandle = TcHandle { major: 0xffff, minor: 0 };

/// The filter parent of a clsact hook: TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS) =
/// ffff:fff2, or TC_H_MIN_EGRESS = ffff:fff3.
pub(super) fn clsact_hook(ingress: bool) -> TcHandle {
    TcHandle { major: 0xffff, minor: if ingress { TcHandle::MIN_INGRESS } else { TcHandle::MIN_EGRESS } }
}

/// TCA_OPTIONS carrying `options` as they are, flagged NLA_F_NESTED (for the kinds
/// chaos-ebpf installs or restores, the kernel reads them as a nest or as one struct).
pub(super) fn options_attribute(options: &[u8]) -> TcAttribute {
    TcAttribute::Other(DefaultNla::new(TCA_OPTIONS | NLA_F_NESTED, options.to_vec()))
}

/// The value of TCA_OPTIONS in the payload (struct tcmsg and attributes) of a qdisc
/// message, as the kernel sent it; empty when there is none.
pub(super) fn options_of(payload: &[u8]) -> Vec<u8> {
    let Some(attributes) = payload.get(TCMSG_LEN..) else { return Vec::new() };
    NlasIterator::new(attributes)
        .map_while(Result::ok)
        .find(|nla| nla.kind() == TCA_OPTIONS)
        .map(|nla| nla.value().to_vec())
        .unwrap_or_default()
}

/// The sch_fq options chaos-ebpf checks, read from raw options (unknown ones skipped).
pub fn fq_limits(options: &[u8]) -> FqLimits {
    let mut limits = FqLimits::default();
    for nla in NlasIterator::new(options).map_while(Result::ok) {
        let value = nla.value();
        match nla.kind() {
            TCA_FQ_PLIMIT => limits.limit = parse_u32(value).ok(),
            TCA_FQ_FLOW_PLIMIT => limits.flow_limit = parse_u32(value).ok(),
            TCA_FQ_HORIZON => limits.horizon_us = parse_u32(value).ok(),
            TCA_FQ_HORIZON_DROP => limits.horizon_drop = parse_u8(value).ok(),
            _ => {}
        }
    }
    limits
}

/// The raw sch_fq options chaos-ebpf installs (horizon_drop on: past the horizon fq
/// drops and counts rather than capping the delay).
pub fn fq_options(settings: &FqSettings) -> Vec<u8> {
    let nlas = [
        DefaultNla::new(TCA_FQ_PLIMIT, settings.limit.to_ne_bytes().to_vec()),
        DefaultNla::new(TCA_FQ_FLOW_PLIMIT, settings.flow_limit.to_ne_bytes().to_vec()),
        DefaultNla::new(TCA_FQ_HORIZON, settings.horizon_us.to_ne_bytes().to_vec()),
        DefaultNla::new(TCA_FQ_HORIZON_DROP, vec![1]),
    ];
    let mut options = vec![0; nlas.as_slice().buffer_len()];
    nlas.as_slice().emit(&mut options);
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fq_options_are_the_kernels_attribute_layout() {
        let options = fq_options(&FqSettings { limit: 100_000, flow_limit: 10_000, horizon_us: 7_000_000 });
        let mut want = Vec::new();
        for (kind, value) in [
            (TCA_FQ_PLIMIT, 100_000u32.to_ne_bytes().to_vec()),
            (TCA_FQ_FLOW_PLIMIT, 10_000u32.to_ne_bytes().to_vec()),
            (TCA_FQ_HORIZON, 7_000_000u32.to_ne_bytes().to_vec()),
            (TCA_FQ_HORIZON_DROP, vec![1, 0, 0, 0]),
        ] {
            // struct nlattr: nla_len (header + unpadded value), nla_type; value padded to 4.
            let len: u16 = if kind == TCA_FQ_HORIZON_DROP { 5 } else { 8 };
            want.extend_from_slice(&len.to_ne_bytes());
            want.extend_from_slice(&kind.to_ne_bytes());
            want.extend_from_slice(&value);
        }
        assert_eq!(options, want);
        let limits = fq_limits(&options);
        assert_eq!(
            limits,
            FqLimits {
                limit: Some(100_000),
                flow_limit: Some(10_000),
                horizon_us: Some(7_000_000),
                horizon_drop: Some(1)
            }
        );
    }

    #[test]
    fn fq_limits_skip_unknown_and_stop_at_a_cut_attribute() {
        let mut options = Vec::new();
        // TCA_FQ_QUANTUM (3), not read.
        options.extend_from_slice(&8u16.to_ne_bytes());
        options.extend_from_slice(&3u16.to_ne_bytes());
        options.extend_from_slice(&3028u32.to_ne_bytes());
        options.extend_from_slice(&8u16.to_ne_bytes());
        options.extend_from_slice(&TCA_FQ_FLOW_PLIMIT.to_ne_bytes());
        options.extend_from_slice(&50u32.to_ne_bytes());
        // A PLIMIT whose length runs past the buffer.
        options.extend_from_slice(&12u16.to_ne_bytes());
        options.extend_from_slice(&TCA_FQ_PLIMIT.to_ne_bytes());
        options.extend_from_slice(&9u32.to_ne_bytes());
        assert_eq!(fq_limits(&options), FqLimits { flow_limit: Some(50), ..FqLimits::default() });
        assert_eq!(fq_limits(&[]), FqLimits::default());
    }

    #[test]
    fn options_round_trip_unchanged() {
        // A pfifo_fast-like TCA_OPTIONS: one struct, not a nest, 20 bytes.
        let raw: Vec<u8> = (1..=20).collect();
        let attribute = options_attribute(&raw);
        let mut payload = vec![0u8; TCMSG_LEN];
        let kind = TcAttribute::Kind("pfifo_fast".into());
        let mut attributes = vec![0u8; [kind.clone(), attribute.clone()].as_slice().buffer_len()];
        [kind, attribute].as_slice().emit(&mut attributes);
        payload.extend_from_slice(&attributes);
        assert_eq!(options_of(&payload), raw);
        // The NLA_F_NESTED bit is on the wire, and read past.
        let at = TCMSG_LEN + 4 + "pfifo_fast\0".len().next_multiple_of(4);
        assert_eq!(u16::from_ne_bytes([payload[at + 2], payload[at + 3]]), TCA_OPTIONS | NLA_F_NESTED);
        assert_eq!(options_of(&payload[..TCMSG_LEN]), Vec::<u8>::new());
        assert_eq!(options_of(&[]), Vec::<u8>::new());
    }

    #[test]
    fn the_crates_own_options_of_an_untyped_kind_do_not_round_trip() {
        // Why options are read raw: the crate keeps an untyped kind's TCA_OPTIONS as one
        // attribute inside its options, so sending them back nests them once more.
        use netlink_packet_core::{Nla, Parseable};
        use netlink_packet_route::tc::TcMessage;
        let raw: Vec<u8> = (1..=20).collect();
        let attributes = [TcAttribute::Kind("pfifo_fast".into()), options_attribute(&raw)];
        let mut payload = vec![0u8; TCMSG_LEN + attributes.as_slice().buffer_len()];
        attributes.as_slice().emit(&mut payload[TCMSG_LEN..]);
        let parsed = TcMessage::parse(payload.as_slice()).expect("a valid tcmsg");
        let Some(TcAttribute::Options(options)) =
            parsed.attributes.iter().find(|a| matches!(a, TcAttribute::Options(_)))
        else {
            panic!("no options in {parsed:?}")
        };
        let reencoded = TcAttribute::Options(options.clone());
        assert_eq!(reencoded.value_len(), 4 + raw.len(), "one attribute header more than the kernel sent");
        assert_eq!(options_of(&payload), raw);
    }

    #[test]
    fn clsact_handles_are_the_kernels() {
        assert_eq!(u32::from(TcHandle::CLSACT), 0xffff_fff1);
        assert_eq!(u32::from(CLSACT_HANDLE), 0xffff_0000);
        assert_eq!(u32::from(clsact_hook(true)), 0xffff_fff2);
        assert_eq!(u32::from(clsact_hook(false)), 0xffff_fff3);
    }
}
