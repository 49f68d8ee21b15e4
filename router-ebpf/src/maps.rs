//! The maps of the datapath (layouts in `router_common`) and counter helpers.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
};
use router_common::{
    ArpPeerKey, CidrKey, DEFAULT_SESSIONS_PER_ROUTER, FragKey, FragValue, MAX_ARP_PEERS, MAX_CIDRS,
    MAX_FRAGMENTS, MAX_ROUTERS, MAX_SESSIONS, RouterConfig, RouterStats, SessionKey, SessionValue,
    nat::ALIAS_HINT_SLOTS,
    stats::{Counter, GLOBAL_SLOTS, GlobalCounter},
};

/// Per-router config keyed by the ifindex of the gateway tap.
#[map]
pub static ROUTER_CONFIG: HashMap<u32, RouterConfig> = HashMap::with_max_entries(MAX_ROUTERS, 0);

/// Internal CIDRs of every router, `(router_id_be, addr)` with prefix `32 + len`.
#[map]
pub static INTERNAL_CIDRS: LpmTrie<CidrKey, u32> = LpmTrie::with_max_entries(MAX_CIDRS, 0);

/// Sessions: one entry per session keyed by its reply tuple (`DIR_IN`), plus a forward alias
/// (`DIR_OUT`) for SNAT flows that could not keep their first-choice port.
///
/// A preallocated hash, not an LRU hash: a new flow takes an element off a per-CPU free list
/// (one cache line it writes anyway) where the LRU's common free list is refilled under a
/// global lock by walking and rotating its lists (several cold elements per new flow), and a
/// lookup writes no reference bit. When the table is full a new flow is dropped and counted
/// (`DROP_TABLE_FULL`) instead of evicting whichever session the LRU picks — possibly an idle
/// established connection; the daemon's GC keeps room by expiring sessions and, under
/// pressure, dropping never-replied ones early (`router_ctl::datapath::sessions`).
#[map]
pub static SESSIONS: HashMap<SessionKey, SessionValue> = HashMap::with_max_entries(MAX_SESSIONS, 0);

/// Per remote-endpoint slot (`router_common::nat::alias_hint_slot`): non-zero while some flow
/// towards an endpoint of the slot may have a forward alias. A new flow whose first-choice key
/// is free looks for an alias only when its slot is set, which saves a second cold bucket walk
/// per new flow (≈ 5 points of plain forwarding's new-flow rate in the bench). The datapath
/// adds to a slot before and after it writes an alias; the daemon's GC clears a slot (a
/// compare-and-swap through its mmap) when no alias hashes to it and the count did not move
/// while it looked. `u64` slots: an array's elements are 8-byte aligned anyway, and the
/// daemon's mapping sees them at that stride. 512 KiB.
#[map]
pub static ALIAS_HINTS: Array<u64> =
    Array::with_max_entries(ALIAS_HINT_SLOTS, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// Entries of `SESSIONS` (sessions and forward aliases) each router holds, indexed by router
/// number: the datapath adds one per entry it inserts and takes one per entry it removes
/// (atomically, on the new-flow path only); the daemon's GC corrects each router's count from
/// its walk of the table (its own deletes, flushes, a crash between a delete and its
/// correction) through a shared mapping. A new flow of a router whose count reached
/// [`MAX_SESSIONS_PER_ROUTER`] is dropped. 128 KiB.
#[map]
pub static ROUTER_SESSIONS: Array<u64> =
    Array::with_max_entries(MAX_ROUTERS, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// Entries one router may hold in `SESSIONS`; set by the daemon at load time
/// (`router_common::globals::MAX_SESSIONS_PER_ROUTER`, from `[nat] max_sessions_per_router`).
/// A read-only global: the verifier knows its value.
#[unsafe(no_mangle)]
static MAX_SESSIONS_PER_ROUTER: u64 = DEFAULT_SESSIONS_PER_ROUTER;

/// The per-router session cap (see [`MAX_SESSIONS_PER_ROUTER`]).
#[inline(always)]
pub fn session_quota() -> u64 {
    // SAFETY: a plain read of a global the loader wrote before the program was loaded; the
    // volatile read keeps the compiler from folding in the object's default.
    unsafe { core::ptr::read_volatile(&raw const MAX_SESSIONS_PER_ROUTER) }
}

/// Adds `n` (wrapping: `u64::MAX` takes one away) to the `u64` at `p` atomically: other
/// CPUs and the daemon work on the same word. The result is unused, so LLVM emits the BPF
/// atomic add (no fetch).
///
/// # Safety
/// `p` must point at a valid, aligned `u64` map slot (from a map lookup).
#[inline(always)]
pub unsafe fn atomic_add(p: *mut u64, n: u64) {
    // SAFETY: the caller vouches for `p`.
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, n,
        )
    };
    // SAFETY: as above.
    #[cfg(not(target_arch = "bpf"))]
    unsafe {
        core::sync::atomic::AtomicU64::from_ptr(p)
            .fetch_add(n, core::sync::atomic::Ordering::Relaxed)
    };
}

/// Translation of a datagram's later fragments.
#[map]
pub static FRAGMENTS: LruHashMap<FragKey, FragValue> =
    LruHashMap::with_max_entries(MAX_FRAGMENTS, 0);

/// The addresses each router sent ARP for on its external network (`router_ebpf::arp`): an
/// LRU, refreshed by every ARP the router sends, so an address it still talks to stays.
#[map]
pub static ARP_PEERS: LruHashMap<ArpPeerKey, u32> = LruHashMap::with_max_entries(MAX_ARP_PEERS, 0);

/// Per-router counters: one slot per router number (`RouterConfig::router_id` <
/// `MAX_ROUTERS`), so a lookup is an index the verifier inlines, not a hashed search. Every
/// slot exists; the daemon zeroes a router's slot when it removes the router.
#[map]
pub static ROUTER_STATS: PerCpuArray<RouterStats> = PerCpuArray::with_max_entries(MAX_ROUTERS, 0);

/// Counters not tied to a router, one entry per `GlobalCounter`.
#[map]
pub static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(GLOBAL_SLOTS, 0);

/// Adds one to a global counter.
#[inline(always)]
pub fn count_global(counter: GlobalCounter) {
    if let Some(v) = GLOBAL_STATS.get_ptr_mut(counter.key()) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *v += 1 };
    }
}

/// Counts a packet in `GLOBAL_STATS`, then looks its device's config up with `config`: a
/// device without one is counted as unconfigured.
#[inline(always)]
pub fn count_seen<T>(config: impl FnOnce() -> Option<T>) -> Option<T> {
    count_global(GlobalCounter::Packets);
    let cfg = config();
    if cfg.is_none() {
        count_global(GlobalCounter::Unconfigured);
    }
    cfg
}

/// This CPU's counters of `router_id` (`None` only for a number out of range).
#[inline(always)]
fn stats(router_id: u32) -> Option<&'static mut RouterStats> {
    let p = ROUTER_STATS.get_ptr_mut(router_id)?;
    // SAFETY: per-CPU value, no concurrent writer on this CPU.
    Some(unsafe { &mut *p })
}

/// Adds `n` to `counter` of `router_id`.
#[inline(always)]
pub fn count(router_id: u32, counter: Counter, n: u64) {
    if let Some(s) = stats(router_id)
        && let Some(c) = s.counters.get_mut(counter.slot())
    {
        *c += n;
    }
}

/// Adds one packet of `bytes` to the packet and byte counters `pkts`/`octets`, and one to
/// `SESSIONS_CREATED` when the packet `created` its session: one lookup for all three.
#[inline(always)]
pub fn count_packet(router_id: u32, pkts: Counter, octets: Counter, bytes: u64, created: bool) {
    if let Some(s) = stats(router_id) {
        if let Some(c) = s.counters.get_mut(pkts.slot()) {
            *c += 1;
        }
        if let Some(c) = s.counters.get_mut(octets.slot()) {
            *c += bytes;
        }
        if created {
            s.counters[Counter::SessionsCreated.slot()] += 1;
        }
    }
}

/// Whether `addr` (wire order) is inside one of the router's internal CIDRs.
#[inline(always)]
pub fn is_internal(router_id: u32, addr: u32) -> bool {
    let key = Key::new(
        64,
        CidrKey {
            router_id_be: router_id.to_be(),
            addr,
        },
    );
    INTERNAL_CIDRS.get(&key).is_some()
}

/// The config of the device the packet is on.
#[inline(always)]
pub fn router_config(ifindex: u32) -> Option<RouterConfig> {
    ROUTER_CONFIG.get_ptr(ifindex).map(|p| {
        // SAFETY: a valid map value pointer; the value is plain data copied out.
        unsafe { *p }
    })
}
