//! BPF TestRun on a private datapath (see [`crate::open_datapath`]): the real object's programs
//! run on packets the test builds; loopback (ifindex 1) stands for every device, since the
//! kernel runs skb test programs there.

use std::sync::Arc;

use router_ctl::{config::NatConfig, datapath::Datapath};

use crate::{Bpffs, open_datapath, testrun_router};

/// TC verdicts as the programs return them.
pub const OK: u32 = 0;
pub const SHOT: u32 = 2;
pub const REDIRECT: u32 = 7;

/// The router's gateway address and a server on the internet, as most TestRun tests use them.
pub const GW: [u8; 4] = [192, 0, 2, 10];
pub const SRV: [u8; 4] = [203, 0, 113, 9];

/// A datapath pinned in `bpffs` with default NAT settings and router `dp_id` on loopback,
/// SNATing `cidr` to `gw`.
pub fn snat_datapath(bpffs: &Bpffs, dp_id: u32, gw: [u8; 4], cidr: &str) -> Arc<Datapath> {
    open_datapath(
        bpffs,
        &NatConfig::default(),
        &testrun_router(dp_id, gw, &[cidr]),
    )
}

/// Runs `prog` of `dp` once on `input`; returns its verdict and the frame it left.
pub fn run(dp: &Datapath, prog: &str, input: &[u8]) -> (u32, Vec<u8>) {
    dp.test_run(prog, input)
        .unwrap_or_else(|e| panic!("test run of {prog}: {e:#}"))
}

/// A frame as hex bytes, so a mismatch shows where it differs.
pub fn hex(f: &[u8]) -> String {
    f.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
