//! chaos-datapath: every kernel object of a network fault, and nothing of the scenario
//! language. It loads the eBPF object built from chaos-ebpf/ into each network namespace
//! a run touches, attaches it (TCX or netlink), changes and restores device settings
//! (one segment per buffer, GRO, sch_fq, segmenter pairs), writes encoded rules into the
//! maps, records everything it creates in the ledger under /run/chaos-ebpf before it
//! creates it, and sweeps what a crashed run left.
//!
//! It takes encoded rules (chaos_ebpf_common::Rule, peer trie entries) and target
//! selectors ([`resolve::Target`]); the model and the engine above it translate what the
//! user asked for into those.

pub mod attach;
pub mod bpfsys;
pub mod devices;
pub mod dispatch;
pub mod error;
pub mod instance;
pub mod ledger;
pub mod netlink;
pub mod netns;
pub mod resolve;
pub mod sweep;

pub use attach::AttachMode;
pub use error::Error;
