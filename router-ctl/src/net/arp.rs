//! Gratuitous ARP: announces a router port's address so neighbours (the upstream gateway, the
//! instances) update their caches at once, as Neutron's L3 agent does with `arping`.
//!
//! Frames are ARP requests with sender IP = target IP = the address (RFC 5227 announcement),
//! from the port MAC to broadcast, sent through an AF_PACKET socket opened inside the router
//! namespace by a background thread, so the caller never waits for the spacing.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use nix::sched::{CloneFlags, setns};

use super::ns::NetnsHandle;

const ETH_P_ARP: u16 = 0x0806;

/// How many announcements and how far apart (Neutron sends three, one second apart).
pub const COUNT: usize = 3;
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The 42-byte Ethernet frame of one announcement.
pub fn frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // target hardware address stays zero
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Sends one frame on `dev` of the calling thread's namespace.
fn send_on(dev: &str, frame: &[u8]) -> Result<()> {
    let cname = std::ffi::CString::new(dev).context("device name")?;
    // SAFETY: valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        bail!("no device {dev}");
    }
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
    }
    // SAFETY: fd is a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; zero is a valid starting value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ARP.to_be();
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: buffer and address are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("sending on {dev}"));
    }
    Ok(())
}

/// Announces `ip` from `mac` on `dev` inside namespace `ns`: `COUNT` frames `INTERVAL` apart,
/// from a background thread. Returns at once; failures (the device went away) end the thread
/// quietly with a log line.
pub fn announce(ns: NetnsHandle, dev: String, mac: [u8; 6], ip: Ipv4Addr) {
    let spawned = std::thread::Builder::new()
        .name("garp".into())
        .spawn(move || {
            if let Err(e) = setns(&ns.file, CloneFlags::CLONE_NEWNET) {
                tracing::warn!("gratuitous ARP for {ip} on {dev}: setns: {e}");
                return;
            }
            drop(ns);
            let f = frame(mac, ip);
            for i in 0..COUNT {
                if i > 0 {
                    std::thread::sleep(INTERVAL);
                }
                if let Err(e) = send_on(&dev, &f) {
                    tracing::debug!("gratuitous ARP for {ip} on {dev}: {e:#}");
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("gratuitous ARP for {ip}: cannot spawn a thread: {e}");
    }
}
