//! Batched reads and deletes of a BPF hash map (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_DELETE_BATCH`,
//! kernel ≥ 5.6), which aya 0.14 does not wrap. Reading the SESSIONS table entry by entry costs
//! two syscalls per entry (next key, lookup): a GC pass over a full table (262 144 entries)
//! took most of a second of CPU every `gc_interval`. One batch call returns or deletes
//! thousands of entries, which matters when the GC drops a crowded table's never-replied
//! sessions (up to half the table at once).

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::MapData;

/// `enum bpf_cmd` value of `BPF_MAP_LOOKUP_BATCH`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries asked for per call; a bucket holding more makes the kernel answer ENOSPC, and the
/// call is repeated with a larger buffer.
const CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The map's fd as the `bpf_attr` field wants it.
fn map_fd(map: &MapData) -> io::Result<u32> {
    let fd = map.fd().as_fd().as_raw_fd();
    u32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))
}

/// `bpf(cmd, attr)` for the batch commands.
///
/// # Safety
/// The buffers `attr` points at must hold `attr.count` keys (and values, for a lookup) of the
/// map's sizes, and the token pointers, when set, a u32 each.
unsafe fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix for the batch commands; the caller vouches
    // for the buffers it points at.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Every entry of the (non per-CPU) hash map `map`, whose key and value types must be `K`
/// and `V` exactly (same sizes as the map's; the caller's typed handle checked them).
/// Entries inserted or removed meanwhile may or may not be seen, as with a key walk.
pub fn read_all<K: Copy + Default, V: Copy + Default>(map: &MapData) -> io::Result<Vec<(K, V)>> {
    let map_fd = map_fd(map)?;
    let mut out = Vec::new();
    let mut chunk = CHUNK;
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk];
    // The hash map's batch token is a bucket index (u32).
    let mut token: u32 = 0;
    let mut next: u32 = 0;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::from_ref(&token) as u64
            },
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd,
            ..Default::default()
        };
        // SAFETY: the key and value buffers hold `count` elements of the map's key and value
        // sizes, the token buffers are u32 as the hash map's batch format is.
        let err = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) }.err();
        match err.as_ref().and_then(io::Error::raw_os_error) {
            Some(libc::ENOSPC) => {
                // One bucket holds more entries than the buffer: retry it with a bigger one.
                chunk *= 2;
                keys.resize(chunk, K::default());
                values.resize(chunk, V::default());
                continue;
            }
            None | Some(libc::ENOENT) => {
                let n = (attr.count as usize).min(chunk);
                out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
            }
            Some(_) => return Err(err.unwrap_or_else(io::Error::last_os_error)),
        }
        if err.is_some() {
            // ENOENT: no bucket after the last one read.
            return Ok(out);
        }
        if !first && next == token {
            // No progress (not expected from the kernel): stop rather than spin.
            return Ok(out);
        }
        token = next;
        first = false;
    }
}

/// `enum bpf_cmd` value of `BPF_MAP_DELETE_BATCH`.
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Deletes `keys` from the hash map `map` (whose key type must be `K` exactly) in batches of
/// `CHUNK`, one syscall each instead of one per key; keys already gone are skipped. Returns how
/// many were deleted.
pub fn delete_all<K: Copy>(map: &MapData, keys: &[K]) -> io::Result<usize> {
    let map_fd = map_fd(map)?;
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let n = rest.len().min(CHUNK);
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: n as u32,
            map_fd,
            ..Default::default()
        };
        // SAFETY: `keys` points at `n` keys of the map's key size; the kernel only reads them.
        let r = unsafe { bpf(BPF_MAP_DELETE_BATCH, &mut attr) };
        // The kernel stops at the first key it could not delete; `count` says how many before
        // it went.
        let done = (attr.count as usize).min(n);
        deleted += done;
        if let Err(err) = r {
            if err.raw_os_error() != Some(libc::ENOENT) {
                return Err(err);
            }
            // That key was gone already (the datapath or a flush removed it): skip it.
            rest = &rest[(done + 1).min(rest.len())..];
        } else {
            rest = &rest[n..];
        }
    }
    Ok(deleted)
}
