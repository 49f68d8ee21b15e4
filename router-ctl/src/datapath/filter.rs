//! Attaching the programs as netlink tc filters (`cls_bpf` in direct-action mode under a
//! `clsact` qdisc, or an `ingress` one where only that hook is used), one per hook, in a fixed
//! slot.
//!
//! Why not TCX links (the default of aya on kernels ≥ 6.6): attaching or detaching a TCX
//! program waits for a full RCU grace period (`tcx_entry_sync` → `synchronize_rcu()`) while
//! holding RTNL, 5–15 ms on a busy 2-core machine and serialised across the whole host — four
//! per router made half of the time to create one. Installing a `cls_bpf` filter swaps the
//! qdisc's filter list with at most an *expedited* grace period (`mini_qdisc_pair_swap`), and
//! replacing a filter's program frees the old one after a grace period in the background.
//! See docs/ARCHITECTURE.md ("Attaching the programs").
//!
//! The slot: priority `PRIORITY`, handle `HANDLE`, protocol all, on the ingress or egress
//! hook of the device. A daemon owns the devices it attaches to, so the slot is free unless an
//! earlier run of this daemon filled it; "exactly one program per hook" is checkable with
//! `tc filter show dev <tap> ingress|egress`. A filter holds its program, so it keeps working
//! when the daemon exits (no pin needed) and goes away with its device.

use std::io::ErrorKind;

use anyhow::{Result, anyhow};
use aya::programs::{
    ProgramError, SchedClassifier, TcAttachType,
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
};

/// tc priority of every filter this datapath installs (`tc filter show` prints it as `pref`).
pub const PRIORITY: u16 = 1;

/// tc handle of every filter this datapath installs (`handle 0x1`).
pub const HANDLE: TcHandle = TcHandle::new(0, 1);

/// The errno inside an aya tc error, if any.
fn errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::TcError(TcError::NetlinkError(n)) | ProgramError::NetlinkError(n) => {
            n.raw_os_error()
        }
        ProgramError::TcError(TcError::IoError(io)) => io.raw_os_error(),
        _ => None,
    }
}

/// Adds the `clsact` qdisc to `dev` unless it has one.
pub fn ensure_clsact(dev: &str) -> Result<()> {
    match tc::qdisc_add_clsact(dev) {
        Ok(()) => Ok(()),
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(anyhow!("adding the clsact qdisc to {dev}: {e:#}")),
    }
}

/// Adds an `ingress` qdisc to device `ifindex` of `h`'s namespace unless it has one (or a
/// `clsact`, which an earlier version put there: both hold filters at the ingress hook).
///
/// For devices that only need the ingress hook (the fast path's `qr-`/`qg-`): a veth has no
/// `ndo_setup_tc`, so binding a qdisc's filter block goes through
/// `flow_indr_dev_setup_offload`, which walks a list of every such block on the host for a
/// duplicate. A `clsact` has two blocks (ingress and egress), an `ingress` qdisc one: per
/// router four list entries and binds instead of six, and at 10 000 routers the router's
/// second inside pass, where those binds happen, was 13.8 ms of its cost.
pub async fn ensure_ingress(h: &rtnetlink::Handle, ifindex: u32) -> Result<()> {
    match h.qdisc().add(ifindex as i32).ingress().execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::EEXIST => Ok(()),
        Err(e) => Err(anyhow!(
            "adding the ingress qdisc to ifindex {ifindex}: {e}"
        )),
    }
}

/// Puts `prog` in the slot of `dev`'s `attach_type` hook: creates the filter, or, if the slot
/// holds one (an earlier run of the daemon, or a resync), switches that filter to `prog` in
/// place — no moment without a program. Returns whether a filter was created.
///
/// The filter outlives `prog`'s handle: aya detaches the links a program still holds when it
/// is dropped, so the link is taken out and forgotten (a netlink link is plain data: ifindex,
/// hook, priority, handle; forgetting it leaks no file descriptor).
pub fn attach(prog: &mut SchedClassifier, dev: &str, attach_type: TcAttachType) -> Result<bool> {
    let opts = || {
        TcAttachOptions::Netlink(NlOptions {
            priority: PRIORITY,
            handle: HANDLE,
            ..Default::default()
        })
    };
    let (id, created) = match prog.attach_with_options(dev, attach_type, opts()) {
        Ok(id) => (id, true),
        Err(e) if errno(&e) == Some(libc::EEXIST) => {
            // Netlink without NLM_F_CREATE|NLM_F_EXCL: cls_bpf replaces the program.
            let link = SchedClassifierLink::attached(dev, attach_type, PRIORITY, HANDLE, None)
                .map_err(|e| anyhow!("{dev}: {e}"))?;
            let id = prog
                .attach_to_link(link)
                .map_err(|e| anyhow!("replacing the filter's program: {e:#}"))?;
            (id, false)
        }
        Err(e) => return Err(anyhow!("{e:#}")),
    };
    let link = prog.take_link(id)?;
    std::mem::forget(link);
    Ok(created)
}

/// Removes the filters running the program `name` from `dev`'s `attach_type` hook; none is
/// success.
pub fn detach(dev: &str, attach_type: TcAttachType, name: &str) -> Result<()> {
    match tc::qdisc_detach_program(dev, attach_type, name) {
        Ok(()) => Ok(()),
        Err(TcError::IoError(e)) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(TcError::NetlinkError(e))
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(anyhow!("detaching {name} from {dev}: {e:#}")),
    }
}

/// Whether the `attach_type` hook of device `ifindex` holds this datapath's filter: a `bpf`
/// filter in our slot running the program `name`. Asked over `h`, a netlink handle in the
/// daemon's namespace; a device without a clsact qdisc has none.
pub async fn in_place(
    h: &rtnetlink::Handle,
    ifindex: u32,
    attach_type: TcAttachType,
    name: &str,
) -> Result<bool> {
    use futures::TryStreamExt as _;
    use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcOption};

    let req = h.traffic_filter(ifindex as i32).get();
    let req = match attach_type {
        TcAttachType::Egress => req.egress(),
        _ => req.ingress(),
    };
    let msgs: Vec<_> = match req.execute().try_collect().await {
        Ok(m) => m,
        // No clsact qdisc (EINVAL) or no device (ENODEV): no filter.
        Err(rtnetlink::Error::NetlinkError(e))
            if matches!(e.raw_code().abs(), libc::EINVAL | libc::ENODEV) =>
        {
            return Ok(false);
        }
        Err(e) => return Err(anyhow!("listing the filters of ifindex {ifindex}: {e}")),
    };
    Ok(msgs.iter().any(|m| {
        u32::from(m.header.handle) == u32::from(HANDLE)
            && (m.header.info >> 16) as u16 == PRIORITY
            && m.attributes
                .iter()
                .any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"))
            && m.attributes.iter().any(|a| match a {
                TcAttribute::Options(opts) => opts.iter().any(
                    |o| matches!(o, TcOption::Bpf(TcFilterBpfOption::ProgName(n)) if n == name),
                ),
                _ => false,
            })
    }))
}
