//! BPF TestRun on a private datapath (see [`crate::open_datapath`]): the real object's programs
//! run on packets the test builds; loopback (ifindex 1) stands for every device, since the
//! kernel runs skb test programs there.

use std::sync::Arc;

use router_common::{DIR_IN, SessionKey, ip_to_wire, port_to_wire, stats::Counter};
use router_ctl::{
    config::NatConfig,
    datapath::{Datapath, RouterNat, SessionInfo},
};

use crate::{
    Bpffs, open_datapath,
    packet::{self, Pkt},
    testrun_router,
};

/// TC verdicts as the programs return them.
pub const OK: u32 = 0;
pub const SHOT: u32 = 2;
pub const REDIRECT: u32 = 7;

/// The programs a TestRun step runs, by the hook they stand for: the gateway's egress and
/// ingress, and the internal ports' ingress (hairpin).
pub const OUT: &str = "snat_out";
pub const IN: &str = "snat_in";
pub const INTERNAL: &str = "internal_in";

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

/// One router's private datapath for a TestRun test, purged and unmounted on drop, with the
/// runs and checks the TestRun tests share.
pub struct Rig {
    pub dp: Arc<Datapath>,
    pub dp_id: u32,
    _bpffs: Bpffs,
}

impl Rig {
    /// `router` on a datapath with NAT settings `nat`.
    pub fn open(nat: &NatConfig, router: &RouterNat) -> Self {
        let bpffs = Bpffs::new();
        let dp = open_datapath(&bpffs, nat, router);
        Self {
            dp,
            dp_id: router.dp_id,
            _bpffs: bpffs,
        }
    }

    /// Router `dp_id` SNATing `cidr` to [`GW`], default NAT settings.
    pub fn snat(dp_id: u32, cidr: &str) -> Self {
        Self::open(&NatConfig::default(), &testrun_router(dp_id, GW, &[cidr]))
    }

    /// Runs `prog` once on `input`; returns its verdict and the frame it left.
    pub fn run(&self, prog: &str, input: &[u8]) -> (u32, Vec<u8>) {
        run(&self.dp, prog, input)
    }

    /// Runs `prog` expecting TC_ACT_OK; returns the frame it left.
    #[track_caller]
    pub fn pass(&self, prog: &str, input: &[u8]) -> Vec<u8> {
        let (rc, f) = self.run(prog, input);
        assert_eq!(rc, OK, "{prog} verdict");
        f
    }

    /// Runs the gateway's egress program (`snat_out`) expecting TC_ACT_OK; returns the frame.
    #[track_caller]
    pub fn out(&self, input: &[u8]) -> Vec<u8> {
        self.pass(OUT, input)
    }

    /// Runs the gateway's ingress program (`snat_in`) expecting TC_ACT_OK; returns the frame.
    #[track_caller]
    pub fn inn(&self, input: &[u8]) -> Vec<u8> {
        self.pass(IN, input)
    }

    /// Runs `prog` expecting TC_ACT_OK and exactly `want`, whose checksums are verified from
    /// scratch first (so a match proves the datapath's incremental updates).
    #[track_caller]
    pub fn expect(&self, prog: &str, input: &[u8], want: &[u8], what: &str) {
        let (rc, got) = self.run(prog, input);
        assert_eq!(rc, OK, "{what}: verdict of {prog}");
        assert_frame(&got, want, what);
    }

    /// [`Rig::expect`] for each `(prog, input, want, what)` in order: a flow's packets as a
    /// table, one step a row, each step seeing the sessions the earlier ones left.
    #[track_caller]
    pub fn expect_all(&self, cases: &[(&str, Pkt, Pkt, &str)]) {
        for (prog, input, want, what) in cases {
            self.expect(prog, &input.frame(), &want.frame(), what);
        }
    }

    /// Asserts `prog` drops `input` untouched and counts it under `reason`.
    #[track_caller]
    pub fn assert_dropped(&self, prog: &str, input: &[u8], reason: Counter) {
        let before = self.stat(reason.name());
        let (rc, f) = self.run(prog, input);
        assert_eq!(rc, SHOT, "expected a drop for {}", reason.name());
        assert_eq!(f, input, "a dropped packet is never rewritten");
        assert_eq!(
            self.stat(reason.name()),
            before + 1,
            "{} counted",
            reason.name()
        );
    }

    /// Counter `name` of this router.
    pub fn stat(&self, name: &str) -> u64 {
        self.dp.stats(self.dp_id).expect("stats")[name]
    }

    /// This router's sessions.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.dp.sessions(self.dp_id).expect("sessions")
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.dp.purge();
    }
}

/// The key under which router `dp_id`'s datapath keeps the reply direction of a translated
/// flow: `remote` answering the gateway's `local` end. Tests remove or plant sessions by it
/// to stand for the GC or a flood.
pub fn reply_key(
    dp_id: u32,
    proto: u8,
    remote: ([u8; 4], u16),
    local: ([u8; 4], u16),
) -> SessionKey {
    SessionKey {
        router_id: dp_id as u16,
        proto,
        dir: DIR_IN,
        src: ip_to_wire(remote.0),
        dst: ip_to_wire(local.0),
        sport: port_to_wire(remote.1),
        dport: port_to_wire(local.1),
    }
}

/// Asserts `got` is exactly `want`, whose checksums are verified from scratch first.
#[track_caller]
pub fn assert_frame(got: &[u8], want: &[u8], what: &str) {
    packet::assert_checksums(want);
    assert_eq!(hex(got), hex(want), "{what}");
}
