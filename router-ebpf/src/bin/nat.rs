//! Gateway NAT programs, attached as tc filters to the bridge-side peer (`tap…`) of a router's
//! `qg-` device in the daemon's namespace: `snat_out` on its ingress (packets leaving the
//! router), `snat_in` on its egress (packets entering the router); and `internal_in` on the
//! egress of each `qr-` device's tap of routers with floating IPs (hairpin); and `fast_fwd` on
//! the ingress of the router's `qr-`/`qg-` devices inside its namespace (the fast path). The
//! logic lives in the library.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{macros::classifier, programs::TcContext};

    /// SNAT of packets leaving the router.
    #[classifier]
    pub fn snat_out(ctx: TcContext) -> i32 {
        match router_ebpf::nat::snat_out(&ctx) {
            Ok(action) | Err(action) => action,
        }
    }

    /// Reverse translation of packets entering the router.
    #[classifier]
    pub fn snat_in(ctx: TcContext) -> i32 {
        match router_ebpf::nat::snat_in(&ctx) {
            Ok(action) | Err(action) => action,
        }
    }

    /// Packets entering the router from a tenant network: hairpin.
    #[classifier]
    pub fn internal_in(ctx: TcContext) -> i32 {
        match router_ebpf::internal::internal_in(&ctx) {
            Ok(action) | Err(action) => action,
        }
    }

    /// Packets arriving on a router's own device inside its namespace: the fast path.
    #[classifier]
    pub fn fast_fwd(ctx: TcContext) -> i32 {
        router_ebpf::fast::fast_fwd(&ctx)
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
