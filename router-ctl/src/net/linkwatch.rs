//! Which links of a namespace changed since the last look: a netlink socket subscribed to the
//! namespace's link notifications (`RTNLGRP_LINK`), drained on each `take`, that yields the
//! names and ifindexes of the links the kernel announced as new, changed or gone.
//!
//! Why: a reconcile pass needs the daemon namespace's links, and a dump of them costs more than
//! O(links) in the kernel. Each veth tap's message carries its peer's namespace id
//! (`IFLA_LINK_NETNSID`), found by walking the namespace's table of peer ids one by one
//! (`peernet2id_alloc`), which holds one entry per router: a dump of 12 000 taps took 1 s at
//! 6000 routers, every pass. With a watch, a pass dumps once and afterwards looks up only what
//! changed. It only says *which* links changed, never their state: the caller looks them up,
//! so the order of notifications and look-ups cannot leave a stale state behind.
//!
//! The socket is subscribed before the caller's first dump, so a change made during that dump is
//! reported by the next `take`; and the kernel queues a notification as part of the change, so
//! every change made before `take` was called is in the socket when it drains it. Nothing
//! reads between two `take`s: the socket's queue holds what happens meanwhile (a large receive
//! buffer); when it overflowed (`ENOBUFS`), `take` reports `overflowed` and the caller dumps
//! everything again.

use std::{collections::HashSet, sync::Mutex};

use anyhow::{Context as _, Result};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// `RTMGRP_LINK`: the multicast group of link notifications, as a bind mask.
const RTMGRP_LINK: u32 = 1;

/// Receive buffer asked for (bytes): a burst of router changes between two passes (a few kilobytes a
/// notification, several per router) fits; a burst that does not costs one full dump.
const RCVBUF: usize = 32 << 20;

/// The links changed since the last `take`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// Names the notifications carried (a renamed link's new name).
    pub names: HashSet<String>,
    /// Ifindexes the notifications carried (a renamed link's old name is found by its index).
    pub indexes: HashSet<u32>,
    /// Some notifications were lost: only a full dump tells what the links are.
    pub overflowed: bool,
}

impl Changed {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.indexes.is_empty() && !self.overflowed
    }

    /// Adds what one link message says changed.
    fn note(&mut self, msg: &LinkMessage) {
        self.indexes.insert(msg.header.index);
        for attr in &msg.attributes {
            if let LinkAttribute::IfName(n) = attr {
                self.names.insert(n.clone());
            }
        }
    }
}

/// A watch on the links of the namespace it was opened in.
pub struct LinkWatch {
    sock: Mutex<Socket>,
}

impl LinkWatch {
    /// Subscribes to the link notifications of the calling thread's namespace (run it inside
    /// the namespace: the socket keeps the namespace it was made in).
    pub fn open() -> Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE).context("opening a netlink socket")?;
        sock.bind(&SocketAddr::new(0, RTMGRP_LINK))
            .context("subscribing to link notifications")?;
        // Forced (root), else within the system's limit.
        if rustix::net::sockopt::set_socket_recv_buffer_size_force(&sock, RCVBUF).is_err() {
            let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&sock, RCVBUF);
        }
        Ok(Self {
            sock: Mutex::new(sock),
        })
    }

    /// What changed since the last call: drains the socket.
    pub fn take(&self) -> Changed {
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        let mut c = Changed::default();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // MSG_TRUNC: the datagram's real length, so a truncated one is known.
            match sock.recv(&mut &mut buf[..], libc::MSG_DONTWAIT | libc::MSG_TRUNC) {
                Ok(n) if n > buf.len() => c.overflowed = true,
                Ok(n) => note_all(&buf[..n], &mut c),
                // Notifications were dropped; the socket goes on with the next ones.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => c.overflowed = true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return c,
                Err(e) => {
                    tracing::warn!("link watch: {e}");
                    c.overflowed = true;
                    return c;
                }
            }
        }
    }
}

/// Notes every link message of one datagram; one that cannot be read counts as an overflow
/// (whatever it said is unknown).
fn note_all(mut data: &[u8], c: &mut Changed) {
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < 16 || len > data.len() {
            c.overflowed = true;
            return;
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[..len]) {
            Ok(m) => match m.payload {
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l),
                ) => c.note(&l),
                NetlinkPayload::Overrun(_) => c.overflowed = true,
                _ => {}
            },
            Err(_) => c.overflowed = true,
        }
        // Messages are 4-byte aligned.
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::{
        RouteNetlinkMessage,
        link::{LinkAttribute, LinkMessage},
    };

    use super::{Changed, note_all};

    fn link_msg(index: u32, name: &str, new: bool) -> Vec<u8> {
        let mut l = LinkMessage::default();
        l.header.index = index;
        l.attributes.push(LinkAttribute::IfName(name.into()));
        let inner = if new {
            RouteNetlinkMessage::NewLink(l)
        } else {
            RouteNetlinkMessage::DelLink(l)
        };
        let mut m = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(inner),
        );
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        buf
    }

    #[test]
    fn notifications_name_the_links_they_are_about() {
        let mut data = link_msg(7, "tapaaaaaaaaaaa", true);
        data.extend(link_msg(9, "brqbbbbbbbbbbb", false));
        let mut c = Changed::default();
        note_all(&data, &mut c);
        assert_eq!(c.indexes, [7, 9].into());
        assert_eq!(
            c.names,
            ["tapaaaaaaaaaaa".to_string(), "brqbbbbbbbbbbb".to_string()].into()
        );
        assert!(!c.overflowed);
        assert!(!c.is_empty());
    }

    #[test]
    fn a_truncated_message_counts_as_lost() {
        let data = link_msg(7, "tapaaaaaaaaaaa", true);
        let mut c = Changed::default();
        note_all(&data[..data.len() - 8], &mut c);
        assert!(c.overflowed);
    }
}
