//! The machine a run measured: facts the report prints first, so a run can be read against its
//! machine and its day.

use std::{collections::BTreeMap, path::Path};

use super::{ns, topo};

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// How long the machine has been up: on a VM that hands free memory back to its host (below),
/// a freshly booted guest and one that has made and freed routers all day take their memory
/// from different places, and the scale rows differ with it.
fn uptime() -> String {
    let secs = read_trim("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok());
    match secs {
        Some(s) => format!(
            "{} h {:02} min",
            (s / 3600.0) as u64,
            (s % 3600.0 / 60.0) as u64
        ),
        None => "?".into(),
    }
}

/// `VIRTIO_BALLOON_F_REPORTING`: the feature bit of a balloon that takes reported pages.
const VIRTIO_BALLOON_F_REPORTING: usize = 5;

/// Whether the guest reports free memory to its hypervisor (virtio-balloon free page
/// reporting), which then drops those pages and backs them again when the guest touches them.
/// A batch whose kernel memory grows pays that first touch for each new page taken from a
/// reported block (one instruction of `allocate_slab` had ten times as many samples late in a
/// 10 000 batch as early; docs/BENCH.md, "Twenty-sixth round").
fn free_page_reporting() -> String {
    let features: Vec<String> = std::fs::read_dir("/sys/bus/virtio/drivers/virtio_balloon")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("virtio"))
        .filter_map(|e| std::fs::read_to_string(e.path().join("features")).ok())
        .collect();
    let order = read_trim("/sys/module/page_reporting/parameters/page_reporting_order")
        .parse()
        .ok();
    reporting_fact(&features, order)
}

/// The fact from the balloon devices' feature strings (one `0`/`1` per bit, as sysfs shows
/// them) and the reporting order (blocks of 2^order 4 KiB pages).
fn reporting_fact(balloon_features: &[String], order: Option<u32>) -> String {
    let reporting = balloon_features
        .iter()
        .any(|f| f.as_bytes().get(VIRTIO_BALLOON_F_REPORTING) == Some(&b'1'));
    match (reporting, order) {
        (false, _) => "off (no balloon device that takes reports)".into(),
        (true, Some(order)) => {
            let kib = 4u64 << order;
            let size = if kib >= 1024 {
                format!("{} MiB", kib / 1024)
            } else {
                format!("{kib} KiB")
            };
            format!("on: free blocks of {size} (order {order}) go back to the hypervisor")
        }
        (true, None) => "on (order unknown)".into(),
    }
}

/// What the report's "Machine" section lists: the source, the hardware, the kernel, what
/// the day's machine state is (load, uptime, free page reporting, what a mount file costs),
/// and the tools' versions.
pub(super) fn facts(workspace: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let commit = std::process::Command::new("git")
        .current_dir(workspace)
        .args(["describe", "--always", "--dirty"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    m.insert(
        "source".into(),
        format!("commit {commit}; router-ctl daemon and eBPF object built in release mode"),
    );
    let cores = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    m.insert("cores".into(), cores);
    m.insert("kernel".into(), read_trim("/proc/sys/kernel/osrelease"));
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "?".into());
    m.insert("cpu".into(), model);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into());
    m.insert("memory".into(), mem);
    m.insert(
        "load average at start".into(),
        read_trim("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    m.insert("/run/netns".into(), ns::mount_file_cost(50));
    m.insert("uptime at start".into(), uptime());
    m.insert("free page reporting".into(), free_page_reporting());
    m.insert("iptables".into(), topo::iptables_version());
    let ver = |prog: &str, arg: &str| {
        std::process::Command::new(prog)
            .arg(arg)
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .unwrap_or_else(|_| "?".into())
    };
    m.insert("nft".into(), ver("nft", "--version"));
    m.insert("iperf3".into(), ver("iperf3", "--version"));
    m
}

#[cfg(test)]
mod tests {
    use super::reporting_fact;

    #[test]
    fn free_page_reporting_is_read_from_the_balloon_feature_bit_and_the_order() {
        // This VM's balloon: bits 1, 2, 5 and 7 (stats, deflate on OOM, reporting, ...).
        let reporting = "0110010100000000".to_string();
        assert_eq!(
            reporting_fact(std::slice::from_ref(&reporting), Some(11)),
            "on: free blocks of 8 MiB (order 11) go back to the hypervisor"
        );
        // An order an operator set below a megabyte is not shown as 0 MiB.
        assert_eq!(
            reporting_fact(std::slice::from_ref(&reporting), Some(5)),
            "on: free blocks of 128 KiB (order 5) go back to the hypervisor"
        );
        assert_eq!(reporting_fact(&[reporting], None), "on (order unknown)");
        // A balloon without the reporting bit, and no balloon at all.
        assert!(reporting_fact(&["0110000000000000".into()], Some(9)).starts_with("off"));
        assert!(reporting_fact(&[], Some(9)).starts_with("off"));
    }
}
