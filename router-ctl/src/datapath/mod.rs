//! Userspace side of the eBPF datapath: the embedded object, loading, pinning, attaching.

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at compile time (empty when the
/// binary was built without it).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/router-nat.o"));

/// Returns the embedded object, or an error explaining how to build it.
pub fn object() -> anyhow::Result<&'static [u8]> {
    if EBPF_OBJECT.is_empty() {
        anyhow::bail!(
            "this router-ctl binary was built without its eBPF object; run `cargo xtask build-ebpf` and rebuild"
        );
    }
    Ok(EBPF_OBJECT)
}
