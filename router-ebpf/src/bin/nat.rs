//! Gateway NAT programs, attached with TC to the bridge-side peer (`tap…`) of a router's `qg-`
//! device in the daemon's namespace.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{
        bindings::TC_ACT_OK,
        macros::{classifier, map},
        maps::PerCpuArray,
        programs::TcContext,
    };
    use router_common::global;

    #[map]
    static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(global::COUNT, 0);

    fn count(idx: u32) {
        if let Some(v) = GLOBAL_STATS.get_ptr_mut(idx) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *v += 1 };
        }
    }

    #[classifier]
    pub fn snat_out(_ctx: TcContext) -> i32 {
        count(global::PACKETS);
        TC_ACT_OK
    }

    #[classifier]
    pub fn snat_in(_ctx: TcContext) -> i32 {
        count(global::PACKETS);
        TC_ACT_OK
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    panic!("router-nat is an eBPF object: build it with `cargo xtask build-ebpf`");
}
