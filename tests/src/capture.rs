//! Packet sockets for watching frames on the wire, as tcpdump opens them: the privileged tests
//! capture ARP announcements with one, the bench counts the broadcast flood with another.

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
    time::Duration,
};

/// A raw `AF_PACKET` socket of the current namespace receiving `ethertype` (`ETH_P_ALL`:
/// every frame) on device `ifindex` (0: any device), whose reads give up after `timeout` so
/// that a capture loop can watch its own clock.
pub fn packet_socket(ethertype: u16, ifindex: u32, timeout: Duration) -> io::Result<OwnedFd> {
    let proto = ethertype.to_be();
    // SAFETY: socket(2) with constant arguments; checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    if ifindex != 0 {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: a valid address of the size given, on an open socket.
        let rc = unsafe {
            libc::bind(
                fd,
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a timeval of the right size for SO_RCVTIMEO on an open socket.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}
