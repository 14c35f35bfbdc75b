//! The keyed hash behind every probabilistic decision.
//!
//! A decision is `SipHash-2-4(key = (seed, rule_id), message = (flow_hash, index, domain))`
//! compared against a threshold: the packet is dropped when the 64-bit output is below
//! `p * 2^64` (computed in f64, so exact to a relative 2^-52).
//!
//! Why the output is uniform: SipHash-2-4 is a pseudorandom function (Aumasson and
//! Bernstein, 2012). For a fixed key, its outputs on distinct messages are
//! computationally indistinguishable from independent uniform 64-bit values. Each packet
//! of a flow has a distinct message (its per-flow index differs), and distinct flows
//! differ in `flow_hash`, itself a SipHash of the 5-tuple with the same key. So the drop
//! decisions are independent Bernoulli(p') trials with |p' - p| < 2^-52, and the unit tests check the empirical rate and the independence of
//! consecutive decisions. Unlike `bpf_get_prandom_u32`, the seed is the whole story:
//! the same seed and the same packets give the same decisions on every run.
//!
//! The function is written for the BPF verifier: fixed-size inputs, no heap, no
//! unbounded loops, no division.

/// Message word that tags a loss decision.
pub const DOMAIN_LOSS: u64 = 0x6c6f_7373; // "loss"
/// Message word that tags a burst-model state transition.
pub const DOMAIN_BURST: u64 = 0x6275_7273; // "burs"
/// Message word that tags a delay jitter draw.
pub const DOMAIN_JITTER: u64 = 0x6a69_7474; // "jitt"
/// Message word that tags the flow hash.
pub const DOMAIN_FLOW: u64 = 0x666c_6f77; // "flow"

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-2-4 of a message made of `N` little-endian 64-bit words (8*N bytes), keyed
/// by (k0, k1). Equal to the reference SipHash-2-4 of those bytes (tested against the
/// paper's test vector).
#[inline(always)]
pub fn siphash24<const N: usize>(k0: u64, k1: u64, message: &[u64; N]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut i = 0;
    while i < N {
        let m = message[i];
        v[3] ^= m;
        sip_round(&mut v);
        sip_round(&mut v);
        v[0] ^= m;
        i += 1;
    }
    // Final block: no tail bytes (the message is whole words), the length in the top byte.
    let last = ((N as u64 * 8) & 0xff) << 56;
    v[3] ^= last;
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^= last;
    v[2] ^= 0xff;
    sip_round(&mut v);
    sip_round(&mut v);
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// Hash identifying a flow under one rule and seed.
#[inline(always)]
pub fn flow_hash(seed: u64, rule_id: u32, key: &crate::FlowKey) -> u64 {
    let w = key.words();
    siphash24(seed, rule_id as u64, &[w[0], w[1], w[2], w[3], w[4], w[5], DOMAIN_FLOW])
}

/// The decision value for packet `index` of a flow; `domain` separates the loss draw
/// from the burst-state draw of the same packet.
#[inline(always)]
pub fn decision(seed: u64, rule_id: u32, flow_hash: u64, index: u64, domain: u64) -> u64 {
    siphash24(seed, rule_id as u64, &[flow_hash, index, domain])
}

/// The jitter offset in ns, in [-jitter, +jitter] (uniform) or normal-ish with sd =
/// jitter (Irwin-Hall: the sum of four 16-bit uniforms from the draw, centred and scaled
/// by sqrt(3), since each uniform has variance 1/12). No floating point: it runs in BPF.
#[inline(always)]
pub fn jitter_offset(draw: u64, jitter_ns: u64, normal: bool) -> i64 {
    if jitter_ns == 0 {
        return 0;
    }
    if normal {
        let sum = (draw & 0xffff) + ((draw >> 16) & 0xffff) + ((draw >> 32) & 0xffff) + (draw >> 48);
        // sum - 2 * 65535.5 has sd 65536 * sqrt(4/12); times sqrt(3) (1774/1024) gives sd
        // 65536; times jitter / 65536 gives sd = jitter.
        // Arithmetic shifts, not signed division: BPF before cpu v4 has none.
        let centred = (2 * sum as i64 - 4 * 65535) >> 1;
        (((centred * 1774) >> 10) * (jitter_ns as i64)) >> 16
    } else {
        (draw % (2 * jitter_ns + 1)) as i64 - jitter_ns as i64
    }
}

/// Whether a decision value falls under a threshold. `u64::MAX` means always.
#[inline(always)]
pub fn hits(value: u64, threshold: u64) -> bool {
    threshold == u64::MAX || value < threshold
}

/// `p * 2^64` (in f64 precision) for p in [0, 1]; 1.0 maps to `u64::MAX` (always).
pub fn probability_threshold(p: f64) -> u64 {
    if p >= 1.0 {
        u64::MAX
    } else if p <= 0.0 {
        0
    } else {
        // 2^64 as f64 is exact; `as` saturates, and p < 1 keeps the product below 2^64.
        (p * 18_446_744_073_709_551_616.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checked against the standard library's SipHash-2-4 (`core::hash::SipHasher`, the
    /// reference algorithm over a byte stream) and the empty-message vector of the
    /// reference implementation (vectors.h, entry 0).
    #[test]
    #[expect(deprecated, reason = "SipHasher is deprecated for HashMap use, not as a reference")]
    fn matches_reference_siphash() {
        use core::hash::{Hasher, SipHasher};
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        let empty: [u64; 0] = [];
        assert_eq!(siphash24(k0, k1, &empty).to_le_bytes(), [0x31, 0x0e, 0x0e, 0xdd, 0x47, 0xdb, 0x6f, 0x72]);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..1000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let msg = [x, x.rotate_left(7), !x];
            let mut reference = SipHasher::new_with_keys(k0 ^ x, k1);
            for w in msg {
                reference.write(&w.to_le_bytes());
            }
            assert_eq!(siphash24(k0 ^ x, k1, &msg), reference.finish());
        }
    }

    #[test]
    fn loss_rate_is_within_four_sigma() {
        for &p in &[0.01, 0.1, 0.3, 0.5, 0.9] {
            let thr = probability_threshold(p);
            let n = 200_000u64;
            let drops = (0..n).filter(|&i| hits(decision(7, 1, 0xdead_beef, i, DOMAIN_LOSS), thr)).count() as f64;
            let sigma = (n as f64 * p * (1.0 - p)).sqrt();
            let dev = (drops - n as f64 * p).abs();
            assert!(dev < 4.0 * sigma, "p={p}: {drops} drops, deviation {dev:.1} > 4 sigma {sigma:.1}");
        }
    }

    #[test]
    fn consecutive_decisions_are_independent() {
        // P(drop at i and drop at i+1) must be p^2 for independent draws.
        let p = 0.3;
        let thr = probability_threshold(p);
        let n = 200_000u64;
        let d: std::vec::Vec<bool> = (0..=n).map(|i| hits(decision(11, 2, 42, i, DOMAIN_LOSS), thr)).collect();
        let pairs = d.windows(2).filter(|w| w[0] && w[1]).count() as f64;
        let q = p * p;
        let sigma = (n as f64 * q * (1.0 - q)).sqrt();
        assert!((pairs - n as f64 * q).abs() < 4.0 * sigma, "pairs {pairs}");
    }

    #[test]
    fn seeds_rules_and_domains_separate() {
        let a = decision(1, 1, 5, 9, DOMAIN_LOSS);
        assert_eq!(a, decision(1, 1, 5, 9, DOMAIN_LOSS));
        assert_ne!(a, decision(2, 1, 5, 9, DOMAIN_LOSS));
        assert_ne!(a, decision(1, 2, 5, 9, DOMAIN_LOSS));
        assert_ne!(a, decision(1, 1, 5, 9, DOMAIN_BURST));
        assert_ne!(a, decision(1, 1, 5, 10, DOMAIN_LOSS));
    }

    #[test]
    fn jitter_has_the_asked_spread() {
        let n = 200_000u64;
        for normal in [false, true] {
            let jitter = 10_000_000u64; // 10 ms
            let xs: std::vec::Vec<f64> =
                (0..n).map(|i| jitter_offset(decision(3, 1, 9, i, DOMAIN_JITTER), jitter, normal) as f64).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
            // Uniform on [-j, j] has sd j/sqrt(3); the normal-ish one sd j.
            let want = if normal { jitter as f64 } else { jitter as f64 / 3f64.sqrt() };
            assert!(mean.abs() < 0.01 * jitter as f64, "normal={normal} mean {mean}");
            assert!((sd / want - 1.0).abs() < 0.01, "normal={normal} sd {sd} want {want}");
            let max = xs.iter().cloned().fold(f64::MIN, f64::max);
            let bound = if normal { 2.0 * 3f64.sqrt() * jitter as f64 } else { jitter as f64 };
            assert!(max <= bound * 1.001, "normal={normal} max {max}");
        }
    }

    #[test]
    fn thresholds_cover_the_ends() {
        assert_eq!(probability_threshold(0.0), 0);
        assert!(!hits(0, 0));
        assert_eq!(probability_threshold(1.0), u64::MAX);
        assert!(hits(u64::MAX, u64::MAX));
        assert_eq!(probability_threshold(0.5), 1 << 63);
    }
}
