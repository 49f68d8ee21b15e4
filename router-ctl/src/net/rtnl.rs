//! Blocking rtnetlink requests over a socket of the calling thread's namespace, for the few
//! messages the async `rtnetlink` handle has no builder for, made from code that runs on a
//! plain thread inside a namespace (the datapath's attach calls, namespace set-up).

use std::io;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// A netlink socket in the namespace it was opened in.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    /// Opens a socket in the calling thread's namespace.
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { sock, seq: 0 })
    }

    /// Sends one request and reads its answer: the messages of a dump (`NLM_F_DUMP` in
    /// `flags`), or nothing for an acknowledged change; a refusal as the kernel's errno.
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut req = NetlinkMessage::from(msg);
        // A dump ends with NLMSG_DONE; a change is acknowledged.
        req.header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = vec![0u8; req.buffer_len()];
        req.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        let mut out = Vec::new();
        let mut rbuf = vec![0u8; 1 << 16];
        // Bounded: the dumps asked for here are a few datagrams; a change is one.
        for _ in 0..4096 {
            let n = self.sock.recv(&mut &mut rbuf[..], 0)?;
            let mut data = &rbuf[..n];
            while data.len() >= 16 {
                let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
                if len < 16 || len > data.len() {
                    return Err(io::Error::other("a truncated netlink message"));
                }
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[..len])
                    .map_err(io::Error::other)?;
                data = &data[len.next_multiple_of(4).min(data.len())..];
                if m.header.sequence_number != self.seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(c) => Err(io::Error::from_raw_os_error(-c.get())),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
        Err(io::Error::other("no end to a netlink answer"))
    }
}
