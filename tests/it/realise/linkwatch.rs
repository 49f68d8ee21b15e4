//! `net::linkwatch`: the table a namespace's link notifications keep says what a dump of the
//! namespace says, through every kind of change the realiser makes or meets in the daemon's
//! namespace (bridges, veth taps with their peer in another namespace, enslaving, MTU, up and
//! down, rename, a port leaving its bridge, deletion, a device moved away), without dumping
//! again, and a snapshot or look-up taken right after a change already has it.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use router_ctl::net::{LinkState, NetnsHandle, link, linkwatch::LinkTable, with_netlink};
use tests::{Netns, veth};

fn dump(h: &NetnsHandle) -> HashMap<String, LinkState> {
    with_netlink(h, |h| async move { link::dump_links(&h).await })
        .expect("dump")
        .into_iter()
        .map(|l| (l.name.clone(), l))
        .collect()
}

/// Waits (bounded) until the table says what a dump says; returns the table.
fn agrees(table: &LinkTable, h: &NetnsHandle, step: &str) -> HashMap<String, LinkState> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (seen, now) = (table.snapshot().expect("snapshot"), dump(h));
        if seen == now {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{step}: the table disagrees with a dump\ntable: {seen:#?}\ndump: {now:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_table_kept_from_notifications_is_what_a_dump_says() {
    let a = Netns::new("lwa");
    let b = Netns::new("lwb");
    let h = a.handle();
    let table = LinkTable::start(&h).expect("start");
    let first = agrees(&table, &h, "start");
    assert!(first.contains_key("lo"), "{first:?}");

    a.ip(&["link", "add", "brqtest", "type", "bridge"]);
    // At once, no waiting: a snapshot applies what is queued before it copies the table (a
    // reconcile pass looks at the bridges it has just made).
    let t = table.snapshot().expect("snapshot");
    assert!(t.contains_key("brqtest"), "{t:?}");
    a.ip(&["link", "set", "brqtest", "up"]);
    // A tap whose peer is in another namespace, as every router's.
    veth(&a, "taptest", &b, "qrtest");
    agrees(&table, &h, "bridge and tap made");

    a.ip(&[
        "link", "set", "taptest", "master", "brqtest", "mtu", "1400", "up",
    ]);
    let t = agrees(&table, &h, "tap enslaved");
    assert_eq!(t["taptest"].controller, Some(t["brqtest"].index));
    assert_eq!(t["taptest"].mtu, Some(1400));
    assert!(t["taptest"].up);
    // A look-up by name (the API's path) says what the kernel says of those names, at once,
    // and leaves out a name that is no device.
    a.ip(&["link", "set", "taptest", "mtu", "1380"]);
    let names: Vec<String> = ["taptest", "brqtest", "nosuchdev"].map(String::from).into();
    let seen = table.lookup(&names).expect("lookup");
    let asked: HashMap<String, LinkState> = with_netlink(&h, |h| {
        let names = &names;
        async move {
            let mut out = HashMap::new();
            for n in names {
                if let Some(l) = link::get_link(&h, n).await? {
                    out.insert(n.clone(), l);
                }
            }
            Ok(out)
        }
    })
    .expect("get");
    assert_eq!(seen, asked);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen["taptest"].mtu, Some(1380));

    // Leaving the bridge sends the bridge's own RTM_DELLINK for the port: the tap stays.
    a.ip(&["link", "set", "taptest", "nomaster"]);
    let t = agrees(&table, &h, "tap released");
    assert_eq!(t["taptest"].controller, None);

    a.ip(&["link", "set", "brqtest", "down"]);
    a.ip(&["link", "set", "brqtest", "name", "brdtest"]);
    let t = agrees(&table, &h, "bridge renamed");
    assert!(!t.contains_key("brqtest") && !t["brdtest"].up, "{t:?}");

    // A pair made here whose one end moves away (how a router's inside end leaves).
    a.veth_pair("mvtest", "mvpeer");
    agrees(&table, &h, "pair made");
    a.ip(&["link", "set", "mvtest", "netns", &b.name]);
    let t = agrees(&table, &h, "one end moved away");
    assert!(
        !t.contains_key("mvtest") && t.contains_key("mvpeer"),
        "{t:?}"
    );

    a.ip(&["link", "del", "taptest"]);
    a.ip(&["link", "del", "brdtest"]);
    let t = agrees(&table, &h, "deleted");
    assert!(
        !t.contains_key("taptest") && !t.contains_key("brdtest"),
        "{t:?}"
    );

    // All of it from the notifications: one dump, no drop.
    let c = table.counts();
    assert_eq!((c.dumps, c.drops), (1, 0), "{c:?}");
    assert!(c.applied >= 10, "{c:?}");
}

#[test]
fn after_the_kernel_drops_notifications_the_table_is_dumped_again() {
    let a = Netns::new("lwd");
    let h = a.handle();
    // The smallest buffer the kernel allows holds a few notifications.
    let table = LinkTable::start_with_buffer(&h, 1).expect("start");
    agrees(&table, &h, "start");
    let batch: String = (0..64)
        .map(|i| {
            format!(
                "link add lwd{i} group 7 type veth peer name lwp{i} group 7\nlink set lwd{i} up\n"
            )
        })
        .collect();
    let file = std::env::temp_dir().join(format!("{}.batch", a.name));
    std::fs::write(&file, batch).expect("batch file");
    let made = a.try_ip(&["-batch", file.to_str().expect("path")]);
    let _ = std::fs::remove_file(&file);
    made.expect("ip -batch");
    let t = agrees(&table, &h, "after the burst");
    assert!(
        t.contains_key("lwd0") && t.contains_key("lwp63") && t["lwd63"].up,
        "{t:?}"
    );
    // One request that changes all 128 devices: the kernel sends their notifications back to
    // back under one RTNL hold, faster than the thread can read them. (The burst above, one
    // request per change, may or may not overflow: the thread can keep up with it.)
    a.ip(&["link", "set", "group", "7", "up"]);
    a.ip(&["link", "set", "group", "7", "down"]);
    let t = agrees(&table, &h, "after the group change");
    assert!(
        t.iter()
            .filter(|(n, _)| n.starts_with("lw"))
            .all(|(_, l)| !l.up),
        "{t:?}"
    );
    // Notifications were lost (else this test shows nothing), and each loss was followed by
    // exactly one dump. Late notifications (a veth's carrier) can still overflow the buffer
    // after the table first agreed: read the counts across a snapshot that found the table
    // whole, with no loss in between.
    let deadline = Instant::now() + Duration::from_secs(10);
    let c = loop {
        let before = table.counts();
        agrees(&table, &h, "settled");
        let after = table.counts();
        if after.drops == before.drops || Instant::now() > deadline {
            break after;
        }
    };
    assert!(c.drops >= 1, "no notification was dropped: {c:?}");
    assert_eq!(c.dumps, c.drops + 1, "{c:?}");
}
