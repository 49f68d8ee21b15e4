//! The datapath's counters: per-router ([`Counter`], in `ROUTER_STATS`) and global
//! ([`GlobalCounter`], in `GLOBAL_STATS`).
//!
//! Each counter is declared once, by `counters!`, with the name userspace reports it by; its
//! slot is its position in the declaration. The maps hold more slots than there are counters
//! ([`STAT_SLOTS`], [`GLOBAL_SLOTS`]), so a new counter is one line here plus its call site in
//! the datapath, with no new map layout. Append new counters at the end of their enum: a slot
//! never changes meaning within one [`crate::LAYOUT_VERSION`].

/// Declares a counter enum: each variant once, with the name userspace reports it by.
///
/// Variants are numbered from 0 in declaration order (the slot each counts in), and the enum
/// gets `ALL`, `NAMES` and `COUNT` in that order, plus `slot()` and `name()`. The enum only
/// indexes a map; no map value holds it. `repr(usize)`, the type of an index: the datapath
/// then compiles to the same instructions as with plain `usize` constants (with `repr(u32)`,
/// LLVM inlined differently and `internal_in` grew by 110 instructions).
macro_rules! counters {
    (
        $(#[$meta:meta])*
        pub enum $enum:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $name:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum $enum {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $enum {
            /// Every counter, in slot order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];
            /// The counters' names, in slot order.
            pub const NAMES: &'static [&'static str] = &[$($name),+];
            /// Number of counters in use.
            pub const COUNT: usize = Self::ALL.len();

            /// The slot this counter counts in.
            #[inline(always)]
            pub const fn slot(self) -> usize {
                self as usize
            }

            /// The name userspace reports this counter by.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }
        }
    };
}

counters! {
    /// Per-router counters: a slot of [`RouterStats`] each.
    pub enum Counter {
        /// Packets SNATed on the way out, and their bytes.
        OutPackets => "out_packets",
        OutBytes => "out_bytes",
        /// Packets reverse-translated on the way in, and their bytes.
        InPackets => "in_packets",
        InBytes => "in_bytes",
        /// New sessions created.
        SessionsCreated => "sessions_created",
        /// Dropped: no free NAT port for this destination.
        DropNoPort => "drop_no_port",
        /// Dropped: session table refused the insert.
        DropTableFull => "drop_table_full",
        /// Dropped: truncated or malformed header.
        DropMalformed => "drop_malformed",
        /// Dropped: outbound packet that may not create a session (e.g. TCP RST with none).
        DropInvalid => "drop_invalid",
        /// Dropped: non-first fragment with no known first fragment.
        DropFragment => "drop_fragment",
        /// Dropped: internal source, protocol the SNAT cannot translate.
        DropUnsupported => "drop_unsupported",
        /// Passed untouched: not subject to NAT (exempt, router-own, non-IP; IPv6 has its own).
        Passed => "passed",
        /// ICMP errors translated (either direction).
        IcmpErrors => "icmp_errors",
        /// Packets translated by a floating IP (either direction, gateway and hairpin).
        FipPackets => "fip_packets",
        /// Packets translated by a port forwarding (either direction).
        PfPackets => "pf_packets",
        /// Packets the fast path (`fast_fwd`) forwarded past the router namespace's IP stack
        /// (either direction, and east-west between the router's subnets).
        FastForwarded => "fast_forwarded",
        /// Dropped: a new flow of a router that holds its `[nat] max_sessions_per_router`
        /// entries of the session table (other routers are not affected).
        DropRouterQuota => "drop_router_quota",
        /// IPv6 packets through the gateway programs (either direction), and their bytes:
        /// routed, never translated (no NAT66, as in Neutron).
        Ipv6Packets => "ipv6_packets",
        Ipv6Bytes => "ipv6_bytes",
        /// Dropped: gratuitous ARP on the external network for an address the router sent no
        /// ARP for (it has no neighbour entry the announcement could update, so its kernel
        /// would ignore it; see `router_ebpf::arp`).
        AnnouncementsIgnored => "arp_announcements_ignored",
    }
}

counters! {
    /// Counters not tied to a router: a slot of `GLOBAL_STATS` each.
    pub enum GlobalCounter {
        /// Packets seen by any program.
        Packets => "packets",
        /// Packets on an interface with no router config (passed).
        Unconfigured => "unconfigured",
        /// Sessions created, all routers: the daemon's GC estimates the session table's
        /// occupancy from it between its walks (one read instead of a walk of every entry).
        SessionsCreated => "sessions_created",
        /// New flows refused a session for want of room, all routers (`drop_table_full` and
        /// `drop_router_quota`): the GC runs every second while it grows, since a full table
        /// or a router at its cap creates no sessions to tell it so.
        SessionsRefused => "sessions_refused",
    }
}

impl GlobalCounter {
    /// The counter's key in `GLOBAL_STATS`.
    #[inline(always)]
    pub const fn key(self) -> u32 {
        self as u32
    }
}

/// Slots of a [`RouterStats`]: room for counters not yet written, since a bigger block is a
/// new layout version.
pub const STAT_SLOTS: usize = 32;
const _: () = assert!(Counter::COUNT <= STAT_SLOTS);

/// Entries of `GLOBAL_STATS` (one `u64` per CPU each), with room to grow like [`STAT_SLOTS`].
pub const GLOBAL_SLOTS: u32 = 16;
const _: () = assert!(GlobalCounter::COUNT <= GLOBAL_SLOTS as usize);

/// Per-router counter block (`ROUTER_STATS`, one per-CPU slot per router number: 256 B ×
/// `MAX_ROUTERS` = 4 MiB per possible CPU); indexed by [`Counter::slot`]. The counters in use
/// fill the first two cache lines, so a packet touches no more of it than before the headroom.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouterStats {
    pub counters: [u64; STAT_SLOTS],
}
const _: () = assert!(core::mem::size_of::<RouterStats>() == 256);

impl Default for RouterStats {
    fn default() -> Self {
        Self {
            counters: [0; STAT_SLOTS],
        }
    }
}

impl RouterStats {
    /// The value of `counter`.
    pub fn get(&self, counter: Counter) -> u64 {
        self.counters[counter.slot()]
    }

    /// Adds `other` slot by slot (wrapping, as the datapath's counters do): userspace sums
    /// the per-CPU blocks of a router, or the blocks of several routers.
    pub fn add(&mut self, other: &Self) {
        for (sum, v) in self.counters.iter_mut().zip(other.counters.iter()) {
            *sum = sum.wrapping_add(*v);
        }
    }

    /// The counters in use with their names, in slot order.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Counter::ALL.iter().map(|c| (c.name(), self.get(*c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_declaration_and_names_are_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.slot(), i);
            assert_eq!(c.name(), Counter::NAMES[i]);
            assert!(
                !Counter::NAMES[..i].contains(&c.name()),
                "{} twice",
                c.name()
            );
        }
        for (i, c) in GlobalCounter::ALL.iter().enumerate() {
            assert_eq!(c.key() as usize, i);
            assert_eq!(c.name(), GlobalCounter::NAMES[i]);
        }
        assert_eq!(Counter::COUNT, Counter::NAMES.len());
    }

    #[test]
    fn slots_keep_their_meaning() {
        // Slots are part of the pinned layout: renumbering one needs a new LAYOUT_VERSION.
        assert_eq!(Counter::OutPackets.slot(), 0);
        assert_eq!(Counter::SessionsCreated.slot(), 4);
        assert_eq!(Counter::DropMalformed.slot(), 7);
        assert_eq!(Counter::FastForwarded.slot(), 15);
        assert_eq!(Counter::DropRouterQuota.slot(), 16);
        assert_eq!(Counter::Ipv6Packets.slot(), 17);
        assert_eq!(Counter::Ipv6Bytes.slot(), 18);
        assert_eq!(GlobalCounter::SessionsRefused.key(), 3);
        assert_eq!(GlobalCounter::SessionsCreated.key(), 2);
    }

    #[test]
    fn sums_and_names() {
        let mut a = RouterStats::default();
        a.counters[Counter::DropNoPort.slot()] = 2;
        let mut b = a;
        b.counters[Counter::Passed.slot()] = u64::MAX;
        a.counters[Counter::Passed.slot()] = 1;
        a.add(&b);
        assert_eq!(a.get(Counter::DropNoPort), 4);
        assert_eq!(a.get(Counter::Passed), 0, "wraps like the datapath");
        let named: [(&str, u64); 2] = [("drop_no_port", 4), ("passed", 0)];
        for (n, v) in named {
            assert_eq!(a.named().find(|(k, _)| *k == n), Some((n, v)));
        }
        assert_eq!(a.named().count(), Counter::COUNT);
    }
}
