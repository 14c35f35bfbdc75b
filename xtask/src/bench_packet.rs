//! Per-packet cost of the classifier as the kernel measures it (BPF_PROG_TEST_RUN on a
//! 64-byte UDP frame, the mean of `REPEAT` runs per sample, `SAMPLES` samples per case),
//! on programs this benchmark loads itself, against the smallest classifier there is
//! (`r0 = TC_ACT_UNSPEC; exit`) measured in the same run. The rules are written into
//! the instance's maps as a run would write them; nothing is attached and no packet
//! leaves.
//!
//! Cases: no rule in force; a partition rule and a loss rule that match the frame, with
//! 0, 9, 99 and 999 more rules in force that do not (each with its own peer); and 1, 8
//! and 32 experiments of 32 peers each, the frame matching the first.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{Context, Result};
use chaos_datapath::{bpfsys, instance::Instance, netns::Netns, AttachMode};
use chaos_ebpf_common::{action, direction, family, flags, names, probability_threshold, Prefix, Rule};

const REPEAT: u32 = 200_000;
const SAMPLES: usize = 7;
const LEASE: Duration = Duration::from_secs(600);

/// One case: its name, rules in force, and ns per packet over the samples.
pub struct Case {
    pub name: String,
    pub rules: usize,
    pub samples: Vec<f64>,
}

/// 192.0.2.1:4000 -> 198.51.100.1:5000, UDP, 64 bytes on the wire (without FCS).
fn frame() -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&46u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[192, 0, 2, 1]);
    ip[16..20].copy_from_slice(&[198, 51, 100, 1]);
    let sum = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    f[34..36].copy_from_slice(&4000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5000u16.to_be_bytes());
    f[38..40].copy_from_slice(&26u16.to_be_bytes());
    f
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn host(addr: Ipv4Addr) -> Prefix {
    Prefix::new(family::IPV4, addr.to_ipv6_mapped().octets(), 128)
}

/// The n-th address no frame is sent to (10.0.0.0/8).
fn other(n: u32) -> Prefix {
    host(Ipv4Addr::from(0x0a00_0000 + n))
}

fn rule(kind: u32, rule_id: u32) -> Rule {
    Rule {
        seed: 7,
        rule_id,
        action: kind,
        directions: direction::BOTH,
        flags: flags::PEERS,
        port_hi: u16::MAX,
        loss_threshold: probability_threshold(0.5),
        ..Rule::default()
    }
}

fn samples(run: impl Fn() -> Result<u32>) -> Result<Vec<f64>> {
    run()?; // warm-up: flow entries, caches
    (0..SAMPLES).map(|_| run().map(f64::from)).collect()
}

fn load() -> Result<Instance> {
    Instance::load(Netns::current()?, AttachMode::Tcx, &[], 31).context("loading the chaos-ebpf programs")
}

/// A matching rule of `kind` plus `others` rules that match nothing.
fn matching_case(kind: u32, name: &str, others: u32, frame: &[u8]) -> Result<Case> {
    let mut instance = load()?;
    instance.install(0, &rule(kind, 1), &[host(Ipv4Addr::new(198, 51, 100, 1))], LEASE)?;
    for i in 0..others {
        instance.install(i + 1, &rule(action::DROP, i + 2), &[other(i)], LEASE)?;
    }
    let samples = samples(|| Ok(instance.test_run(names::PROG_EGRESS, frame, REPEAT)?.1))?;
    Ok(Case { name: format!("{name}, {} rules in force", others + 1), rules: others as usize + 1, samples })
}

/// `experiments` partitions of 32 peers each; the frame's destination is a peer of the
/// first.
fn experiments_case(experiments: u32, frame: &[u8]) -> Result<Case> {
    let mut instance = load()?;
    for e in 0..experiments {
        let mut peers: Vec<Prefix> = (0..31).map(|i| other(e * 32 + i)).collect();
        if e == 0 {
            peers.push(host(Ipv4Addr::new(198, 51, 100, 1)));
        } else {
            peers.push(other(e * 32 + 31));
        }
        instance.install(e, &rule(action::DROP, e + 1), &peers, LEASE)?;
    }
    let samples = samples(|| Ok(instance.test_run(names::PROG_EGRESS, frame, REPEAT)?.1))?;
    Ok(Case { name: format!("partition, {experiments} experiments of 32 peers"), rules: experiments as usize, samples })
}

pub fn run() -> Result<(Case, Vec<Case>)> {
    let frame = frame();
    let floor: OwnedFd = bpfsys::load_empty_classifier().context("loading the empty classifier")?;
    let floor = Case {
        name: "empty program (floor)".into(),
        rules: 0,
        samples: samples(|| Ok(bpfsys::test_run(floor.as_raw_fd(), &frame, REPEAT)?.1))?,
    };
    let mut cases = Vec::new();
    {
        let instance = load()?;
        let samples = samples(|| Ok(instance.test_run(names::PROG_EGRESS, &frame, REPEAT)?.1))?;
        cases.push(Case { name: "chaos-ebpf, no rule in force".into(), rules: 0, samples });
    }
    for others in [0, 9, 99, 999] {
        cases.push(matching_case(action::DROP, "partition", others, &frame)?);
    }
    for others in [0, 9, 99, 999] {
        cases.push(matching_case(action::LOSS, "loss p=0.5", others, &frame)?);
    }
    for experiments in [1, 8, 32] {
        cases.push(experiments_case(experiments, &frame)?);
    }
    Ok((floor, cases))
}
