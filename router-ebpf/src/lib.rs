//! The gateway NAT datapath, split by concern the way Cilium's `bpf/lib` is: packet parsing,
//! maps and counters, checksum rewriting, sessions (connection tracking and port allocation),
//! IPv4 fragments, ICMP errors, the two NAT directions that tie them together, and the fast
//! path inside router namespaces (`fast`).
//!
//! Everything reads and writes the packet through `bpf_skb_load_bytes`/`bpf_skb_store_bytes`
//! and the TC checksum helpers: the verifier needs no pointer bounds proofs, non-linear skbs
//! work, and CHECKSUM_PARTIAL/COMPLETE packets stay consistent.
#![no_std]
// `atomic_xadd`: the BPF target has no atomic types (no compare-and-swap in its spec), but
// LLVM lowers an atomic add to the BPF atomic add instruction. Host builds (clippy, check on
// stable) use `AtomicU64` instead.
#![cfg_attr(
    target_arch = "bpf",
    expect(internal_features, reason = "core::intrinsics::atomic_xadd, see above")
)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]

pub mod arp;
pub mod csum;
pub mod fast;
pub mod fip;
pub mod frag;
pub mod icmp;
pub mod internal;
pub mod maps;
pub mod nat;
pub mod parse;
pub mod session;
