//! The fast path's userspace side: `fast_fwd` on the ingress of a router's `qr-`/`qg-`
//! devices inside its namespace, and their `FAST_IFS` entries.
//!
//! Every call here runs on a thread that entered the router namespace (the realiser's
//! `with_netlink(router_ns, …)`): device names, ifindexes and MACs resolve there, and the tc
//! filter is installed there. `FAST_IFS` is keyed by the ifindex in the router namespace,
//! which another router's device may share; an entry names its device by MAC, and the daemon
//! never overwrites an entry of another device (that device stays on the slow path).

use anyhow::{Context as _, Result, anyhow};
use aya::programs::{SchedClassifier, TcAttachType};
use router_common::{FAST_IF_GATEWAY, FAST_IF_USED, FastIf, MAX_FAST_IFS, programs};

use super::{Datapath, TcSocket, filter, unlist};

/// Reads `dev`'s MAC address in the calling thread's namespace (SIOCGIFHWADDR).
fn device_mac(dev: &str) -> Result<[u8; 6]> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for SIOCGIFHWADDR");
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = dev.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return Err(anyhow!("device name {dev:?} is too long"));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: valid descriptor and a valid, NUL-terminated ifreq the kernel fills in.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIOCGIFHWADDR,
            &mut req,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("reading the MAC address of {dev}"));
    }
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}

/// Lowest ifindex `spare_ifindex` hands out: above the devices a host usually numbers itself.
const SPARE_IFINDEX_BASE: u32 = 4096;

impl Datapath {
    /// An ifindex above `after` and above every one handed out before that no `FAST_IFS`
    /// entry holds, for a new router device (and its tap): the kernel numbers devices per
    /// namespace, so left to itself every router's first `qr-` would be ifindex 2 and only
    /// one router could have the fast path. The caller tries it and asks again past it when
    /// a namespace already uses it.
    ///
    /// A cursor, like the kernel's own cyclic allocation: constant time and memory however
    /// many ports come and go. It starts above the highest pinned entry (a restarted daemon
    /// skips the numbers its routers hold instead of retrying each) and wraps to
    /// `SPARE_IFINDEX_BASE` at `MAX_FAST_IFS`, the size of the table (indexed by ifindex).
    pub fn spare_ifindex(&self, after: u32) -> u32 {
        let mut inner = self.lock();
        let mut k = after.saturating_add(1).max(inner.fast_next);
        for _ in 0..MAX_FAST_IFS {
            if k >= MAX_FAST_IFS {
                k = SPARE_IFINDEX_BASE;
            }
            if inner.fast.get(&k).is_none() {
                break;
            }
            k += 1;
        }
        inner.fast_next = k + 1;
        k
    }

    /// Where `spare_ifindex` starts after opening: above the pinned entries.
    pub(super) fn first_spare(fast: &super::mirror::FastIfs) -> u32 {
        fast.iter()
            .map(|(k, _)| k.saturating_add(1))
            .max()
            .unwrap_or(0)
            .max(SPARE_IFINDEX_BASE)
    }

    /// Puts `dev` (a router's `qr-`/`qg-` in the calling thread's namespace, which must be the
    /// router's) on the fast path of router `dp_id`: writes its `FAST_IFS` entry and attaches
    /// `fast_fwd` as the cls_bpf filter of its ingress (same slot as every filter, see
    /// `filter`); idempotent. Returns false, changing nothing, when an entry of another device
    /// (another MAC) holds its ifindex: the device then stays on the router's own path.
    pub fn attach_fast(&self, dev: &str, dp_id: u32, gateway: bool) -> Result<bool> {
        let ifindex = super::ifindex_of(dev)?;
        let mac = device_mac(dev)?;
        let mut inner = self.lock();
        let previous = inner.fast.get(&ifindex);
        if let Some(e) = previous
            && e.mac != mac
        {
            tracing::warn!(
                "{dev} (ifindex {ifindex}) stays on the slow path: the fast-path entry of that ifindex belongs to another device (router number {}, MAC {:02x?})",
                e.router_id,
                e.mac
            );
            return Ok(false);
        }
        if !inner.fast.fits(ifindex) {
            tracing::warn!(
                "{dev} (ifindex {ifindex}) stays on the slow path: the fast-path table has slots for ifindexes below {MAX_FAST_IFS}"
            );
            return Ok(false);
        }
        let entry = FastIf {
            router_id: dp_id,
            flags: FAST_IF_USED | if gateway { FAST_IF_GATEWAY } else { 0 },
            mac,
            _pad: [0; 2],
        };
        if previous != Some(entry) {
            inner.fast.insert(ifindex, entry)?;
        }
        let res = (|| {
            let mut tc = TcSocket::open().context("opening a netlink socket for tc")?;
            // Normally there already (an `ingress` qdisc on the router's shared block, see
            // `filter::ensure_ingress`); a device without one gets it now.
            let bound = tc
                .add_qdisc_on_blocks(ifindex, filter::ROUTER_BLOCK, None)
                .map_err(|e| anyhow!("adding the ingress qdisc to {dev}: {e}"))?;
            let prog: &mut SchedClassifier = inner
                .ebpf
                .program_mut(programs::FAST_FWD)
                .ok_or_else(|| anyhow!("program {} missing", programs::FAST_FWD))?
                .try_into()?;
            filter::attach_bound(
                &mut tc,
                prog,
                programs::FAST_FWD,
                dev,
                TcAttachType::Ingress,
                filter::ROUTER_BLOCK,
                bound,
            )?;
            if bound {
                self.unlist_with(&mut tc);
            }
            Ok::<_, anyhow::Error>(())
        })();
        match res {
            Ok(_) => Ok(true),
            Err(e) => {
                if previous.is_none() {
                    let _ = inner.fast.remove(&ifindex);
                }
                Err(e.context(format!(
                    "attaching {} to {dev} (ingress)",
                    programs::FAST_FWD
                )))
            }
        }
    }

    /// Takes `dev` (calling thread's namespace) off the fast path: removes its ingress qdisc
    /// (the filter, or the binding to the router's shared block, whose filter stays for the
    /// router's other devices) and the device's `FAST_IFS` entry (only one with its MAC). A
    /// missing device or qdisc is success.
    pub fn detach_fast(&self, dev: &str) -> Result<()> {
        let Ok(ifindex) = nix::net::if_::if_nametoindex(dev) else {
            return Ok(());
        };
        let mac = device_mac(dev).ok();
        let mut inner = self.lock();
        TcSocket::open()
            .and_then(|mut tc| tc.remove_ingress_qdisc(ifindex))
            .map_err(|e| anyhow!("removing the ingress qdisc of {dev}: {e}"))?;
        if let Some(mac) = mac
            && inner.fast.get(&ifindex).is_some_and(|e| e.mac == mac)
        {
            inner.fast.remove(&ifindex)?;
        }
        Ok(())
    }

    /// Drops the calling thread's namespace (a router's, right after one of its devices bound
    /// `filter::ROUTER_BLOCK`) from the kernel's host-wide list of bound blocks (`unlist`). A
    /// failure costs only speed: logged, and tried again at the next bind.
    pub fn unlist_router_block(&self) {
        match TcSocket::open() {
            Ok(mut tc) => self.unlist_with(&mut tc),
            Err(e) => tracing::debug!("unlisting the router block: {e}"),
        }
    }

    fn unlist_with(&self, tc: &mut TcSocket) {
        if let Err(e) = unlist::unlist_router_block(tc) {
            tracing::debug!("unlisting the router block: {e}");
        }
    }

    /// Removes the `FAST_IFS` entry of a device that is gone (ifindex and MAC as it had in
    /// its router namespace); an entry of another device is left alone.
    pub fn forget_fast(&self, ifindex: u32, mac: [u8; 6]) -> Result<()> {
        let mut inner = self.lock();
        if inner.fast.get(&ifindex).is_some_and(|e| e.mac == mac) {
            inner.fast.remove(&ifindex)?;
        }
        Ok(())
    }

    /// Whether `FAST_IFS` holds the entry `attach_fast` writes for this device of router
    /// `dp_id` (from the userspace copy: no syscall).
    pub fn fast_entry_ok(&self, ifindex: u32, mac: [u8; 6], dp_id: u32, gateway: bool) -> bool {
        self.lock().fast.get(&ifindex).is_some_and(|e| {
            e.mac == mac && e.router_id == dp_id && (e.flags & FAST_IF_GATEWAY != 0) == gateway
        })
    }

    /// Removes every `FAST_IFS` entry (`fast_path = false`): `fast_fwd` then forwards nothing,
    /// even where a filter is still attached.
    pub fn clear_fast(&self) -> Result<()> {
        let mut inner = self.lock();
        let keys: Vec<u32> = inner.fast.iter().map(|(k, _)| k).collect();
        for k in &keys {
            inner.fast.remove(k)?;
        }
        Ok(())
    }

    /// Whether device `ifindex` of the namespace of `h` (a router namespace) runs `fast_fwd`
    /// in this datapath's slot of its ingress.
    pub async fn fast_in_place(h: &rtnetlink::Handle, ifindex: u32) -> Result<bool> {
        filter::in_place(h, ifindex, TcAttachType::Ingress, programs::FAST_FWD).await
    }
}

/// Removes router `dp_id`'s entries (the router is going).
pub(super) fn remove_router(inner: &mut super::Inner, dp_id: u32) -> Result<()> {
    inner.fast.remove_where(|_, e| e.router_id == dp_id)
}
