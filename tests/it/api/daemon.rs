//! The daemon around the API: the reconcile loop repairs a router namespace deleted from
//! outside, also while API calls keep it putting its passes off, a clean stop (SIGTERM) leaves routers in the kernel and a restart keeps them, and
//! `--purge` (run by the harness on drop) removes them.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{Netns, daemon::Daemon};

#[track_caller]
fn expect(got: (u16, Value), want: u16) -> Value {
    assert_eq!(got.0, want, "body: {}", got.1);
    got.1
}

fn netns_exists(name: &str) -> bool {
    // A mounted namespace file, not just a leftover mount point.
    std::fs::File::open(Path::new("/run/netns").join(name))
        .ok()
        .and_then(|f| nix::sys::statfs::fstatfs(&f).ok())
        .is_some_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Polls `cond` (bounded: 60 s) and panics with `what` when it never holds.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn router_with_interface(d: &Daemon) -> String {
    let v = expect(
        d.post("/v2.0/networks", &json!({"network": {"name": "n"}})),
        201,
    );
    let net = v["network"]["id"].as_str().expect("id").to_string();
    let v = expect(
        d.post(
            "/v2.0/subnets",
            &json!({"subnet": {"network_id": net, "ip_version": 4, "cidr": "10.77.0.0/24"}}),
        ),
        201,
    );
    let sub = v["subnet"]["id"].as_str().expect("id").to_string();
    let v = expect(
        d.post("/v2.0/routers", &json!({"router": {"name": "r"}})),
        201,
    );
    let r = v["router"]["id"].as_str().expect("id").to_string();
    expect(
        d.put(
            &format!("/v2.0/routers/{r}/add_router_interface"),
            &json!({"subnet_id": sub}),
        ),
        200,
    );
    r
}

/// A daemon reconciling every second (in `host`) with a router whose namespace was then
/// deleted from outside; returns the daemon, the router and the namespace's name.
fn router_deleted_from_outside(host: &Netns) -> (Daemon, String, String) {
    let d = Daemon::start_configured(host, "reconcile_interval = 1\n");
    let r = router_with_interface(&d);
    let ns = format!("qrouter-{r}");
    assert!(netns_exists(&ns), "the API call realised {ns}");
    tests::ip(&["netns", "del", &ns]);
    assert!(!netns_exists(&ns));
    (d, r, ns)
}

#[test]
fn reconcile_loop_repairs_a_router_namespace_deleted_from_outside() {
    let host = Netns::new("apid");
    let (_d, _, ns) = router_deleted_from_outside(&host);
    eventually(&format!("repair of {ns}"), || netns_exists(&ns));
    // Repaired with its interface inside.
    eventually("qr- device back in the router namespace", || {
        let out = std::process::Command::new("ip")
            .args(["-n", &ns, "-o", "link", "show"])
            .output()
            .expect("ip");
        String::from_utf8_lossy(&out.stdout).contains("qr-")
    });
}

#[test]
fn a_busy_api_puts_passes_off_but_drift_is_still_repaired() {
    let host = Netns::new("apib");
    let (d, r, ns) = router_deleted_from_outside(&host);
    // A commit every 200 ms (renaming the router): every tick sees the API busy, so the pass
    // is put off, but never more than five ticks in a row.
    let start = Instant::now();
    let mut repaired = None;
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(20) {
        i += 1;
        let body = json!({"router": {"name": format!("busy-{i}")}});
        expect(d.put(&format!("/v2.0/routers/{r}"), &body), 200);
        if netns_exists(&ns) {
            repaired = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let repaired = repaired.unwrap_or_else(|| {
        panic!(
            "{ns} not repaired within 20 s of API calls ({i} commits)\n{}",
            d.log()
        )
    });
    // Put off (a pass at the first tick would have repaired it within about a second), and
    // within (1 + 5) ticks of 1 s, with some slack for the pass itself.
    assert!(
        repaired > Duration::from_secs(3),
        "repaired after {repaired:?}: the pass was not put off"
    );
    assert!(
        repaired < Duration::from_secs(9),
        "repaired only after {repaired:?}"
    );
}

#[test]
fn clean_stop_keeps_routers_restart_resumes_and_purge_removes() {
    let host = Netns::new("apid");
    let mut d = Daemon::start(&host);
    let r = router_with_interface(&d);
    let ns = format!("qrouter-{r}");
    assert!(netns_exists(&ns));
    let before = expect(d.get(&format!("/v2.0/routers/{r}")), 200);
    assert!(d.stop().success(), "{}", d.log());
    assert!(
        d.log().contains("router-ctl daemon: listening on"),
        "ready line printed"
    );
    assert!(netns_exists(&ns), "a clean stop must not tear routers down");
    d.restart();
    assert_eq!(expect(d.get(&format!("/v2.0/routers/{r}")), 200), before);
    assert!(netns_exists(&ns));
    drop(d);
    assert!(
        !netns_exists(&ns),
        "--purge on drop removes the router namespace"
    );
}
