//! Gratuitous ARP on the gateway taps.
//!
//! Every gateway on an external network hears every announcement made there: a new gateway or
//! floating IP announces its address three times (as Neutron's L3 agent does), and the bridge
//! floods each frame to every other gateway tap, through its veth into the router namespace,
//! where the kernel looks the address up and, in nearly every router, throws the frame away.
//! With a thousand gateways on one network that is three thousand deliveries per new gateway,
//! the largest cost of making routers in the bench: 1000 routers took 18.6 s with them and
//! 13.9 s with this filter (docs/BENCH.md, "Tenth round").
//!
//! What the kernel does with an announcement (`arp_process`, `arp_accept = 0`, the default the
//! daemon keeps): it updates the router's neighbour entry for the address if one exists and
//! otherwise does nothing. A router gets a neighbour entry only through ARP it sends itself: a
//! request for the address (it has something to send there), or a reply to the address (it
//! answered a request, which creates an entry for the asker). So `snat_out`, which sees every
//! frame the router sends to the external network, notes the target address of each ARP frame
//! in `ARP_PEERS`, and `snat_in` drops (and counts) an announcement for an address the router
//! has no note of, before it crosses the veth. The ones that matter (the upstream gateway
//! moving, a floating IP moving to another router while this one talks to it) still arrive.
//!
//! The notes are an LRU shared by all routers and refreshed by every ARP a router sends (a
//! neighbour entry in use is confirmed by ARP every few tens of seconds); an entry pushed out
//! of a full table costs at most an announcement missed, which the kernel's own neighbour
//! probing repairs within seconds of the next use.
//!
//! Beside each router's note goes one for any router (`ArpPeerKey::any_router`). Dropping a
//! copy here still leaves the bridge's work of making it, once per gateway tap, inside the
//! sender's `sendto`; so the daemon's own announcements (`router_ctl::net::arp`) are flooded
//! only when that note says some router here needs them, and otherwise sent on the network's
//! other ports alone.

use aya_ebpf::programs::TcContext;
use router_common::{ArpPeerKey, RouterConfig};

use crate::{
    maps::ARP_PEERS,
    parse::{ETH_HLEN, load},
};

/// EtherType ARP, wire order.
pub const ETH_P_ARP_WIRE: u16 = 0x0806u16.to_be();
const ARPHRD_ETHER_WIRE: u16 = 1u16.to_be();
const ETH_P_IP_WIRE: u16 = 0x0800u16.to_be();
const ARPOP_REQUEST_WIRE: u16 = 1u16.to_be();
const ARPOP_REPLY_WIRE: u16 = 2u16.to_be();

/// An Ethernet/IPv4 ARP packet (RFC 826), 28 bytes after the Ethernet header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ArpIpv4 {
    htype: u16,
    ptype: u16,
    hlen: u8,
    plen: u8,
    op: u16,
    sha: [u8; 6],
    sip: [u8; 4],
    tha: [u8; 6],
    tip: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<ArpIpv4>() == 28);

impl ArpIpv4 {
    /// Sender address, wire order.
    #[inline(always)]
    fn sender(&self) -> u32 {
        u32::from_ne_bytes(self.sip)
    }

    /// Target address, wire order.
    #[inline(always)]
    fn target(&self) -> u32 {
        u32::from_ne_bytes(self.tip)
    }

    /// A request or a reply (the only operations `arp_process` acts on).
    #[inline(always)]
    fn is_request_or_reply(&self) -> bool {
        self.op == ARPOP_REQUEST_WIRE || self.op == ARPOP_REPLY_WIRE
    }
}

/// The Ethernet/IPv4 ARP packet of a frame whose EtherType is ARP, if it is one (the caller
/// has read the EtherType for its own dispatch: IPv4 packets pay no second look).
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Option<ArpIpv4> {
    let a: ArpIpv4 = load(ctx, ETH_HLEN).ok()?;
    (a.htype == ARPHRD_ETHER_WIRE && a.ptype == ETH_P_IP_WIRE && a.hlen == 6 && a.plen == 4)
        .then_some(a)
}

/// `snat_out`: router `router_id` sent `arp`; note its target as a possible neighbour.
#[inline(always)]
pub fn note_sent(router_id: u32, arp: &ArpIpv4) {
    if !arp.is_request_or_reply() {
        return;
    }
    let key = ArpPeerKey {
        router_id,
        addr: arp.target(),
    };
    // Insert or refresh; a full LRU makes room itself, so this cannot fail for want of it.
    let _ = ARP_PEERS.insert(key, 0, 0);
    // And the note any router's ARP for the address refreshes, for the daemon's announcer.
    let _ = ARP_PEERS.insert(ArpPeerKey::any_router(key.addr), 0, 0);
}

/// `snat_in`: whether `arp`, arriving for the router of `cfg`, is a broadcast announcement
/// (sender address = target address) of an address the router sent no ARP for. Announcements
/// of the router's own gateway address are never dropped (another host claiming it is a
/// conflict the router's kernel should see).
#[inline(always)]
pub fn ignored_announcement(ctx: &TcContext, cfg: &RouterConfig, arp: &ArpIpv4) -> bool {
    let addr = arp.sender();
    if !arp.is_request_or_reply() || addr != arp.target() || addr == cfg.gateway_ip {
        return false;
    }
    if !matches!(load::<[u8; 6]>(ctx, 0), Ok(d) if d == [0xff; 6]) {
        return false;
    }
    let key = ArpPeerKey {
        router_id: cfg.router_id,
        addr,
    };
    // SAFETY: the value is only tested for presence, never read through the reference.
    unsafe { ARP_PEERS.get(key) }.is_none()
}
