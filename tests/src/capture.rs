//! Packet sockets for watching frames on the wire, as tcpdump opens them: the privileged tests
//! capture ARP announcements with one, the bench counts the broadcast flood with another.

use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::mpsc,
    time::{Duration, Instant},
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

/// Captures ARP announcements of `ip` (sender and target IP both `ip`) on `dev` in the current
/// thread's namespace, each with when it arrived, until `want` arrived or `limit` passed.
/// Signals `ready` once listening.
pub fn announcements(
    dev: &str,
    ip: Ipv4Addr,
    want: usize,
    limit: Duration,
    ready: mpsc::Sender<()>,
) -> Vec<(Vec<u8>, Instant)> {
    // Every frame, not ETH_P_ARP: a frame a device sends itself (the realiser's announcements
    // on a bridge or a port) reaches only the ETH_P_ALL sockets on it.
    const ETH_P_ALL: u16 = 0x0003;
    let cname = std::ffi::CString::new(dev).expect("name");
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert!(ifindex != 0, "no device {dev}");
    let sock =
        packet_socket(ETH_P_ALL, ifindex, Duration::from_millis(200)).expect("AF_PACKET socket");
    ready.send(()).expect("signal ready");
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < want && start.elapsed() < limit {
        // SAFETY: buffer valid for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 42 {
            continue;
        }
        let f = &buf[..n as usize];
        if f[12..14] == [0x08, 0x06] && f[28..32] == ip.octets() && f[38..42] == ip.octets() {
            got.push((f.to_vec(), Instant::now()));
        }
    }
    got
}
