//! BPF_PROG_TEST_RUN of the gateway programs on ARP (`router_ebpf::arp`): a gratuitous ARP
//! from the external network reaches the router only for an address the router itself sent ARP
//! for (the only ones its kernel would act on); every other ARP passes both ways untouched.
//!
//! The kernel runs skb test programs with loopback (ifindex 1) as the device, so the router is
//! configured on ifindex 1 of a private datapath.
use router_common::stats::Counter;
use tests::{
    packet::arp_frame,
    testrun::{GW, IN, Rig},
};

const DP_ID: u32 = 12;
/// The upstream gateway of the external network and another router's gateway on it.
const HOP: [u8; 4] = [192, 0, 2, 1];
const OTHER: [u8; 4] = [192, 0, 2, 77];
const ROUTER_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
const OTHER_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 2];
const BROADCAST: [u8; 6] = [0xff; 6];
const REQUEST: u16 = 1;
const REPLY: u16 = 2;

fn rig() -> Rig {
    Rig::snat(DP_ID, "10.0.0.0/24")
}

/// The announcement of `ip` from `mac` as an ARP request (Linux's `arp_notify`, arping -U) or
/// a reply (arping -A), both broadcast.
fn announcements(mac: [u8; 6], ip: [u8; 4]) -> [Vec<u8>; 2] {
    [
        arp_frame(REQUEST, mac, ip, ip, BROADCAST),
        arp_frame(REPLY, mac, ip, ip, BROADCAST),
    ]
}

#[test]
fn announcements_of_addresses_the_router_never_asked_for_are_dropped_and_counted() {
    let fx = rig();
    for f in announcements(OTHER_MAC, OTHER) {
        fx.assert_dropped(IN, &f, Counter::AnnouncementsIgnored);
    }
    assert_eq!(fx.stat("arp_announcements_ignored"), 2);
}

/// Whether the datapath's note for any router (what the daemon's announcer asks) holds `ip`.
fn asked(fx: &Rig, ip: [u8; 4]) -> bool {
    fx.dp.asked_for(ip.into()).expect("ARP_PEERS look-up")
}

#[test]
fn announcements_pass_once_the_router_sent_arp_for_the_address() {
    let fx = rig();
    assert!(!asked(&fx, HOP) && !asked(&fx, OTHER));
    // The router asks for its next hop (a request leaving through the gateway)...
    let ask = arp_frame(REQUEST, ROUTER_MAC, GW, HOP, BROADCAST);
    assert_eq!(fx.out(&ask), ask, "the router's own ARP leaves untouched");
    // ...and answers another router that asked for it (a reply to that router's address).
    let answer = arp_frame(REPLY, ROUTER_MAC, GW, OTHER, OTHER_MAC);
    assert_eq!(fx.out(&answer), answer);
    // Both are noted for any router too: the announcer floods announcements of them.
    assert!(asked(&fx, HOP) && asked(&fx, OTHER));
    assert!(!asked(&fx, GW), "the router's own address was noted");
    // Both now hold a neighbour entry there: their announcements must reach it.
    for f in announcements(HOP_MAC, HOP)
        .into_iter()
        .chain(announcements(OTHER_MAC, OTHER))
    {
        assert_eq!(fx.inn(&f), f, "announcement of a neighbour dropped");
    }
    assert_eq!(fx.stat("arp_announcements_ignored"), 0);
}

#[test]
fn other_arp_passes_untouched() {
    let fx = rig();
    let frames = [
        // Someone asks for the router's gateway address, or answers the router.
        arp_frame(REQUEST, HOP_MAC, HOP, GW, BROADCAST),
        arp_frame(REPLY, HOP_MAC, HOP, GW, ROUTER_MAC),
        // An announcement sent to the router alone, not broadcast.
        arp_frame(REQUEST, OTHER_MAC, OTHER, OTHER, ROUTER_MAC),
        // Another host claiming the router's own gateway address: a conflict it must see.
        arp_frame(REQUEST, OTHER_MAC, GW, GW, BROADCAST),
        // Truncated: an ARP header without its addresses is not parsed, only passed.
        arp_frame(REQUEST, OTHER_MAC, OTHER, OTHER, BROADCAST)[..24].to_vec(),
    ];
    for f in &frames {
        assert_eq!(&fx.inn(f), f, "ARP into the router rewritten or dropped");
        assert_eq!(&fx.out(f), f, "ARP out of the router rewritten or dropped");
    }
    assert_eq!(fx.stat("arp_announcements_ignored"), 0);
    assert!(fx.stat("passed") >= 2 * frames.len() as u64);
}
