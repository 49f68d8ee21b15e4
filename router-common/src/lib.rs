//! Map layouts shared by the eBPF datapath (`router-ebpf`) and the daemon (`router-ctl`).
//!
//! Conventions, fixed for every map:
//! - IPv4 addresses and L4 ports are stored exactly as their bytes appear on the wire,
//!   i.e. `u32::from_ne_bytes(octets)` / `u16::from_ne_bytes(bytes)` ("wire order"). The
//!   datapath copies them without swapping; userspace converts with [`ip_to_wire`] and friends.
//! - Everything else (router ids, port ranges, flags, timestamps) is host order.
//! - No `bool`, `Option` or enum in a map value: integers plus the named constants below.
//! - Every struct is `#[repr(C)]` with explicit padding and a size assertion; bump
//!   [`LAYOUT_VERSION`] whenever any of them changes, because pinned maps are reused by name.
//! - Counters (module [`stats`]) are enums that only index their maps; the maps keep spare
//!   slots, so adding a counter changes no layout.
#![no_std]

pub mod csum;
pub mod nat;
pub mod stats;

pub use stats::RouterStats;

/// IP protocol numbers the NAT understands.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Version of every map layout in this crate; part of the pin directory name so a daemon never
/// reuses a pinned map whose layout changed (aya does not check).
pub const LAYOUT_VERSION: u32 = 8;

/// Map names, shared so userspace can find them in the loaded object and in the pin directory.
pub mod maps {
    pub const ROUTER_CONFIG: &str = "ROUTER_CONFIG";
    pub const INTERNAL_CIDRS: &str = "INTERNAL_CIDRS";
    pub const SESSIONS: &str = "SESSIONS";
    pub const FRAGMENTS: &str = "FRAGMENTS";
    pub const ROUTER_STATS: &str = "ROUTER_STATS";
    pub const GLOBAL_STATS: &str = "GLOBAL_STATS";
    pub const INTERNAL_IFS: &str = "INTERNAL_IFS";
    pub const FLOATING_IPS: &str = "FLOATING_IPS";
    pub const PORT_FORWARDINGS: &str = "PORT_FORWARDINGS";
    pub const FAST_IFS: &str = "FAST_IFS";
    pub const ALIAS_HINTS: &str = "ALIAS_HINTS";
    pub const ROUTER_SESSIONS: &str = "ROUTER_SESSIONS";
    pub const ARP_PEERS: &str = "ARP_PEERS";
}

/// Globals of the object the daemon sets at load time (`EbpfLoader::set_global`): read-only
/// to the programs, so the verifier sees them as constants.
pub mod globals {
    /// `u64`: entries of `SESSIONS` (sessions and forward aliases) one router may hold; a new
    /// flow of a router at it is dropped (`drop_router_quota`). The object's own value (used
    /// when nobody sets it, e.g. by tools loading the bare object) is
    /// [`crate::DEFAULT_SESSIONS_PER_ROUTER`].
    pub const MAX_SESSIONS_PER_ROUTER: &str = "MAX_SESSIONS_PER_ROUTER";
}

/// Program names in the object (the Rust function names of the entry points).
pub mod programs {
    /// TC ingress of the bridge-side peer of `qg-`: packets leaving the router get SNAT.
    pub const SNAT_OUT: &str = "snat_out";
    /// TC egress of the bridge-side peer of `qg-`: packets entering the router are un-NATed.
    pub const SNAT_IN: &str = "snat_in";
    /// TC egress of the bridge-side peer of a `qr-`: packets entering the router from a tenant
    /// network (hairpin to floating IPs), on routers with floating IPs or port forwardings.
    pub const INTERNAL_IN: &str = "internal_in";
    /// Not in the object any more: earlier versions ran it on the ingress of the `qr-` taps to
    /// turn the metadata proxy's replies from port 9697 back into 80. The daemon removes the
    /// filters an earlier run left with this name.
    pub const INTERNAL_OUT: &str = "internal_out";
    /// TC ingress of a router's own `qr-`/`qg-` devices, *inside* the router namespace: the
    /// fast path. Forwards a packet the router would route with the router namespace's FIB
    /// and neighbours (`bpf_fib_lookup`) straight to the egress device's bridge-side peer
    /// (`bpf_redirect_peer`), past the namespace's IP stack; anything unusual takes the
    /// router's own path. Keyed in `FAST_IFS`.
    pub const FAST_FWD: &str = "fast_fwd";
}

/// Default capacity of the session table (`[nat] max_sessions`; the daemon sets the map's
/// `max_entries` at load time): one entry per session, and a second one for a SNAT flow that
/// could not keep its first-choice port (see [`SessionKey`]). The table is a preallocated hash,
/// not an LRU: nothing is evicted by a new flow; the daemon's GC expires sessions and, when the
/// table or a router's share of it is crowded, drops sessions that are not assured early (as
/// conntrack's early drop), so a flood of new flows cannot push out established connections.
pub const MAX_SESSIONS: u32 = 262_144;
/// Default entries one router may hold (`[nat] max_sessions_per_router`): a quarter of the
/// default table, so one router can never take the table, and it takes four at their cap to
/// fill it.
pub const DEFAULT_SESSIONS_PER_ROUTER: u64 = MAX_SESSIONS as u64 / 4;
/// Capacity of the fragment table.
pub const MAX_FRAGMENTS: u32 = 16_384;
/// Capacity of `ARP_PEERS`, an LRU: (router, address) pairs whose ARP a router's gateway sent
/// recently enough to have a neighbour entry for the address.
pub const MAX_ARP_PEERS: u32 = 65_536;
/// Routers one daemon can serve (config, stats).
pub const MAX_ROUTERS: u32 = 16_384;
/// Internal CIDRs over all routers.
pub const MAX_CIDRS: u32 = 65_536;

/// Size of `FAST_IFS`, an array indexed by ifindex: router-namespace devices (`qr-`/`qg-`)
/// with a smaller ifindex can run the fast path (the daemon numbers them itself, below this).
/// An array, not a hash: the fast path looks two entries up per packet, and an array lookup
/// is an inlined bounds check and offset where a hash lookup hashes and compares the key
/// (≈ 50 ns each in the bench's profile). 1 MiB.
pub const MAX_FAST_IFS: u32 = 65_536;

/// `FastIf::flags`: the device is the router's gateway port (`qg-`).
pub const FAST_IF_GATEWAY: u32 = 1;
/// `FastIf::flags`: the slot holds a device (an all-zero slot is empty).
pub const FAST_IF_USED: u32 = 0x8000_0000;

/// A router's own device (`qr-` or `qg-`) inside its namespace, as the fast path knows it:
/// the `FAST_IFS` slot of the device's ifindex **in the router namespace**.
///
/// Ifindexes are per namespace, so two routers' devices may share one: the program takes a
/// device as this entry's only if the frame's destination MAC (ingress) or the FIB's source
/// MAC (egress) is `mac`; any other device with that ifindex takes the router's own path. The
/// daemon never overwrites an entry of another device (it leaves that device on the slow path).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastIf {
    /// Router number (`RouterConfig::router_id`): counters, and both ends of a fast-pathed
    /// packet must belong to the same router.
    pub router_id: u32,
    /// `FAST_IF_*` bits; `FAST_IF_USED` in every entry the daemon writes.
    pub flags: u32,
    /// The device's MAC address.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FastIf>() == 16);

/// `RouterConfig::flags`: translate sources in the internal CIDRs to the gateway IP.
pub const ROUTER_F_SNAT: u32 = 1;
/// `RouterConfig::flags`: the router has floating IPs or port forwardings. Without it the
/// datapath skips their two map lookups per packet (they cost ~90 ns of a ~120 ns packet).
pub const ROUTER_F_FLOATING: u32 = 2;

/// Per-router NAT configuration, keyed by the ifindex (in the daemon's namespace) of the
/// bridge-side peer of the router's `qg-` device; one loaded object serves every router.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterConfig {
    /// Daemon-assigned router number (host order); scopes sessions, CIDRs and stats.
    pub router_id: u32,
    /// Gateway address on the external network (wire order).
    pub gateway_ip: u32,
    /// `ROUTER_F_*` bits.
    pub flags: u32,
    /// Inclusive SNAT source-port range (host order).
    pub port_min: u16,
    pub port_max: u16,
}
const _: () = assert!(core::mem::size_of::<RouterConfig>() == 16);

/// LPM key data for the internal CIDRs of a router: `prefix_len = 32 + cidr_len`.
/// `router_id` is big-endian so that it forms the leading 32 prefix bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CidrKey {
    /// Router number, big-endian (`router_id.to_be()`).
    pub router_id_be: u32,
    /// Network address (wire order).
    pub addr: u32,
}
const _: () = assert!(core::mem::size_of::<CidrKey>() == 8);

/// `SessionKey::dir`: key as seen leaving the router (internal source).
pub const DIR_OUT: u8 = 0;
/// `SessionKey::dir`: key as seen entering the router (destination = translated address).
pub const DIR_IN: u8 = 1;

/// Key of the session table. A session is **one** entry keyed by the tuple as its replies
/// arrive (`DIR_IN`: src = remote, dst = translated address, dport = NAT port); its value is
/// the internal end. The outbound direction finds it without an entry of its own: the NAT port
/// of a SNAT flow is first [`nat::first_port`] of its outbound tuple, so the datapath recomputes
/// it and looks the reply key up. Only a flow that could not get that port (another flow holds
/// it towards the same remote endpoint) also has a `DIR_OUT` entry, keyed by its outbound
/// tuple, whose value is the port it got ("forward alias"). Floating-IP and port-forwarding
/// sessions know their translation from their maps, so they never need one. For ICMP echo the
/// identifier is the port: outbound `sport = id, dport = 0`, inbound `sport = 0, dport = id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// The router's number (`RouterConfig::router_id`, at most `MAX_ROUTERS`), narrowed so
    /// the key is 16 bytes: the kernel rounds keys up to 8 bytes, so 20 would cost 24.
    pub router_id: u16,
    /// IP protocol number
    pub proto: u8,
    /// `DIR_OUT` or `DIR_IN`
    pub dir: u8,
    /// wire order
    pub src: u32,
    /// wire order
    pub dst: u32,
    /// wire order
    pub sport: u16,
    /// wire order
    pub dport: u16,
}
const _: () = assert!(core::mem::size_of::<SessionKey>() == 16);
const _: () = assert!(MAX_ROUTERS <= u16::MAX as u32);

/// Session kinds (`SessionValue::kind`).
pub const SESSION_SNAT: u8 = 0;
/// A flow translated 1:1 by a floating IP (the session only records it: the `FLOATING_IPS`
/// map decides the translation).
pub const SESSION_FIP: u8 = 1;
/// A flow translated by a floating IP port forwarding.
pub const SESSION_PF: u8 = 2;

/// TCP state bits of one direction, as the datapath derives them from a packet's flags. The low
/// nibble of `SessionValue::state` holds the outbound direction's, the high nibble (shifted by
/// [`ST_REPLY_SHIFT`]) the reply direction's.
pub const ST_SYN: u8 = 1;
pub const ST_FIN: u8 = 2;
pub const ST_RST: u8 = 4;
/// An ACK without SYN.
pub const ST_ACK: u8 = 8;
/// Shift of the reply direction's bits in `SessionValue::state`.
pub const ST_REPLY_SHIFT: u32 = 4;
/// In `SessionValue::state`: any reply arrived (UDP "replied", TCP "established" once the
/// opener acknowledged). It takes the reply nibble's SYN slot, which nothing needs.
pub const ST_SEEN: u8 = ST_SYN << ST_REPLY_SHIFT;
/// Mask of the outbound direction's bits in `SessionValue::state`.
pub const ST_OUT_MASK: u8 = 0x0f;

/// A session (`DIR_IN` key): the internal end (address, port) replies are translated back to,
/// the state of both directions and the time of the last packet either way. A forward alias
/// (`DIR_OUT` key): the translated address and port of its flow; `state` unused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionValue {
    /// wire order
    pub addr: u32,
    /// wire order
    pub port: u16,
    /// `ST_*` bits: outbound direction in the low nibble, reply direction (and `ST_SEEN`) in
    /// the high one
    pub state: u8,
    /// `SESSION_*`
    pub kind: u8,
    /// `bpf_ktime_get_coarse_ns` of the last packet either way (CLOCK_MONOTONIC); of an alias,
    /// of the last packet that used it.
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<SessionValue>() == 16);

/// Key of a fragment entry: non-first fragments carry no L4 header, so they follow the
/// translation chosen for the first fragment of the same datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragKey {
    pub router_id: u32,
    /// wire order, as seen by the datapath before translation
    pub src: u32,
    /// wire order
    pub dst: u32,
    /// IP identification (wire order)
    pub id: u16,
    pub proto: u8,
    pub dir: u8,
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 16);

/// The address a datagram's later fragments are rewritten to (source for `DIR_OUT`,
/// destination for `DIR_IN`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    /// wire order
    pub addr: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FragValue>() == 8);

/// Key of `ARP_PEERS`: a router and an address on its external network it sent ARP for (a
/// request asking for it, or a reply to it), so it may hold a neighbour entry for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArpPeerKey {
    /// A router's number, or `ARP_PEER_ANY_ROUTER`.
    pub router_id: u32,
    /// wire order
    pub addr: u32,
}
const _: () = assert!(core::mem::size_of::<ArpPeerKey>() == 8);

/// The `router_id` of the `ARP_PEERS` entry noted beside every router's own: "some router of
/// this datapath sent ARP for `addr`". Router numbers start at 1, so no router has it. The
/// daemon's announcer asks for it to decide whether its routers need an announcement at all
/// (`router_ctl::net::arp`).
pub const ARP_PEER_ANY_ROUTER: u32 = 0;

impl ArpPeerKey {
    /// The entry saying some router sent ARP for `addr` (wire order).
    pub const fn any_router(addr: u32) -> Self {
        Self {
            router_id: ARP_PEER_ANY_ROUTER,
            addr,
        }
    }
}

/// Metadata: the well-known address instances ask and the port they ask on; the daemon's proxy
/// listens on exactly that inside each router namespace (the address sits on its `lo`).
pub const METADATA_IP: [u8; 4] = [169, 254, 169, 254];
pub const METADATA_PORT: u16 = 80;

/// Key of `FLOATING_IPS`: `DIR_OUT` entries are keyed by the fixed IP (value: the floating
/// IP), `DIR_IN` entries by the floating IP (value: the fixed IP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FipKey {
    pub router_id: u32,
    /// wire order
    pub addr: u32,
    pub dir: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FipKey>() == 12);

/// Value of `FLOATING_IPS`: the address to translate to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FipValue {
    /// wire order
    pub addr: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FipValue>() == 8);

/// Key of `PORT_FORWARDINGS`: `DIR_IN` entries by (floating IP, external port), `DIR_OUT`
/// entries by (internal IP, internal port); both with the protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PfKey {
    pub router_id: u32,
    /// wire order
    pub addr: u32,
    /// wire order
    pub port: u16,
    pub proto: u8,
    pub dir: u8,
}
const _: () = assert!(core::mem::size_of::<PfKey>() == 12);

/// Value of `PORT_FORWARDINGS`: the address and port to translate to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PfValue {
    /// wire order
    pub addr: u32,
    /// wire order
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<PfValue>() == 8);

/// Capacity of the floating IP and port forwarding maps (two entries each).
pub const MAX_FIPS: u32 = 65_536;
/// Internal interfaces (router ports on tenant networks) one daemon can serve.
pub const MAX_INTERNAL_IFS: u32 = 65_536;

/// Wire-order conversion helpers for userspace and tests.
pub fn ip_to_wire(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}
pub fn ip_from_wire(v: u32) -> [u8; 4] {
    v.to_ne_bytes()
}
pub fn port_to_wire(port: u16) -> u16 {
    port.to_be()
}
pub fn port_from_wire(v: u16) -> u16 {
    u16::from_be(v)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C) plain integers with explicit padding.
    unsafe impl aya::Pod for RouterConfig {}
    unsafe impl aya::Pod for CidrKey {}
    unsafe impl aya::Pod for SessionKey {}
    unsafe impl aya::Pod for SessionValue {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragValue {}
    unsafe impl aya::Pod for RouterStats {}
    unsafe impl aya::Pod for FipKey {}
    unsafe impl aya::Pod for FipValue {}
    unsafe impl aya::Pod for PfKey {}
    unsafe impl aya::Pod for PfValue {}
    unsafe impl aya::Pod for FastIf {}
    unsafe impl aya::Pod for ArpPeerKey {}
}
