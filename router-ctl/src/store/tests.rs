//! Store unit tests: migrations, IPAM, uniqueness, specs (host, temp database, no root).

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

use super::*;
use crate::model::{FixedIp, FloatingIp, Network, Port, PortForwarding, Router, Subnet};

pub(super) fn net(id: &str, external: bool) -> Network {
    Network {
        id: id.into(),
        name: id.into(),
        description: String::new(),
        project_id: "p".into(),
        admin_state_up: true,
        external,
        physical_network: None,
        shared: false,
        status: "ACTIVE".into(),
        mtu: 1500,
    }
}

pub(super) fn subnet(id: &str, net: &str, cidr: &str, pools: &[(&str, &str)]) -> Subnet {
    let cidr: IpNet = cidr.parse().unwrap();
    Subnet {
        id: id.into(),
        network_id: net.into(),
        name: String::new(),
        description: String::new(),
        project_id: "p".into(),
        gateway_ip: host_range_first(&cidr),
        cidr,
        allocation_pools: pools
            .iter()
            .map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap()))
            .collect(),
        enable_dhcp: true,
        dns_nameservers: vec![],
        ipv6_ra_mode: None,
        ipv6_address_mode: None,
    }
}

fn host_range_first(c: &IpNet) -> Option<IpAddr> {
    crate::model::host_range(c).map(|r| r.0)
}

pub(super) fn port(id: &str, net: &str, mac: [u8; 6], ips: &[(&str, IpAddr)]) -> Port {
    Port {
        id: id.into(),
        network_id: net.into(),
        name: String::new(),
        description: String::new(),
        project_id: "p".into(),
        mac,
        admin_state_up: true,
        device_owner: String::new(),
        device_id: String::new(),
        status: "DOWN".into(),
        fixed_ips: ips
            .iter()
            .map(|(s, ip)| FixedIp {
                subnet_id: (*s).into(),
                ip: *ip,
            })
            .collect(),
    }
}

/// An enabled router with SNAT on, behind `gw_port_id` if given.
pub(super) fn router(id: &str, dp_id: u32, gw_port_id: Option<&str>) -> Router {
    Router {
        id: id.into(),
        name: String::new(),
        description: String::new(),
        project_id: "p".into(),
        admin_state_up: true,
        status: "ACTIVE".into(),
        dp_id,
        gw_port_id: gw_port_id.map(str::to_string),
        enable_snat: true,
    }
}

fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("router.db")).unwrap();
    (dir, store)
}

#[test]
fn migrations_are_versioned_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("router.db");
    let s = Store::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap() as usize, MIGRATIONS.len());
    drop(s);
    let s = Store::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap() as usize, MIGRATIONS.len());
    s.conn().pragma_update(None, "user_version", 999).unwrap();
    drop(s);
    let err = Store::open(&path).err().unwrap();
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn allocation_skips_gateway_and_used_addresses_and_fills_gaps() {
    let (_d, mut store) = temp_store();
    let tx = store.transaction().unwrap();
    insert(&tx, &net("n1", false)).unwrap();
    // Pool includes the gateway .1 on purpose: it must still never be handed out.
    let s = subnet("s1", "n1", "10.0.0.0/29", &[("10.0.0.1", "10.0.0.6")]);
    insert(&tx, &s).unwrap();
    let mut got = vec![];
    for i in 0..5 {
        let ip = allocate_ip(&tx, &s, None, false).unwrap();
        insert(
            &tx,
            &port(
                &format!("p{i}"),
                "n1",
                [0xfa, 0x16, 0x3e, 0, 0, i],
                &[("s1", ip)],
            ),
        )
        .unwrap();
        got.push(ip.to_string());
    }
    assert_eq!(
        got,
        ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    );
    let err = allocate_ip(&tx, &s, None, false).unwrap_err();
    assert_eq!(
        (err.status, err.kind.as_str()),
        (409, "IpAddressGenerationFailure")
    );
    // Freeing one in the middle makes exactly that one the next.
    delete_port(&tx, "p2").unwrap();
    assert_eq!(
        allocate_ip(&tx, &s, None, false).unwrap().to_string(),
        "10.0.0.4"
    );
}

/// The pool's mark (`ipam::MIGRATION`): where its free addresses begin.
fn mark(conn: &rusqlite::Connection, subnet: &str) -> Option<IpAddr> {
    conn.query_row(
        "SELECT next_ip FROM allocation_pools WHERE subnet_id=?1",
        [subnet],
        |r| r.get::<_, Option<[u8; 16]>>(0),
    )
    .unwrap()
    .map(addr_of)
}

/// Takes the first free address of `s` for a new port `id`.
fn take(conn: &rusqlite::Connection, s: &Subnet, id: &str, n: u8) -> IpAddr {
    let ip = allocate_ip(conn, s, None, false).unwrap();
    let p = port(
        id,
        &s.network_id,
        [0xfa, 0x16, 0x3e, 1, 0, n],
        &[(&s.id, ip)],
    );
    insert(conn, &p).unwrap();
    ip
}

#[test]
fn the_first_free_address_is_read_from_the_pools_mark_which_every_free_lowers() {
    let (_d, mut store) = temp_store();
    let tx = store.transaction().unwrap();
    insert(&tx, &net("n1", true)).unwrap();
    let s = subnet(
        "s1",
        "n1",
        "198.51.100.0/24",
        &[("198.51.100.1", "198.51.100.9")],
    );
    insert(&tx, &s).unwrap();
    assert_eq!(mark(&tx, "s1"), None, "a new pool starts unmarked");
    for i in 0..6 {
        take(&tx, &s, &format!("p{i}"), i);
    }
    // .2–.7 taken (.1 is the gateway): the mark stands on the last one handed out, so the
    // next call reads one row instead of six.
    let at = |last: u8| Some(IpAddr::from([198, 51, 100, last]));
    assert_eq!(mark(&tx, "s1"), at(7));
    // Freed below the mark (a port deleted): the mark comes down to it, and it is next.
    delete_port(&tx, "p2").unwrap();
    assert_eq!(mark(&tx, "s1"), at(4));
    assert_eq!(take(&tx, &s, "q1", 10), at(4).unwrap());
    assert_eq!(take(&tx, &s, "q2", 11), at(8).unwrap());
    // Fixed IPs replaced on a port (delete and insert): the old address is freed.
    let mut p0 = get::<Port>(&tx, "p0").unwrap().unwrap();
    p0.fixed_ips[0].ip = at(9).unwrap();
    update(&tx, &p0).unwrap();
    assert_eq!(mark(&tx, "s1"), at(2));
    assert_eq!(take(&tx, &s, "q3", 12), at(2).unwrap());
    // Exhausted: the error, and the mark on the pool's last address.
    assert_eq!(
        allocate_ip(&tx, &s, None, false).unwrap_err().kind,
        "IpAddressGenerationFailure"
    );
    assert_eq!(mark(&tx, "s1"), at(9));
    // The gateway moves off .1, which is in the pool and now free: the mark is dropped (the
    // column alone, so the trigger is what drops it, not a rewrite of the pools).
    tx.execute(
        "UPDATE subnets SET gateway_ip=?1 WHERE id='s1'",
        [addr_val(at(254).unwrap())],
    )
    .unwrap();
    assert_eq!(mark(&tx, "s1"), None);
    let moved = get::<Subnet>(&tx, "s1").unwrap().unwrap();
    assert_eq!(take(&tx, &moved, "q4", 13), at(1).unwrap());
    tx.commit().unwrap();
    // A request that rolls back leaves the mark as it was.
    let before = mark(store.conn(), "s1");
    assert_eq!(before, at(1));
    let tx = store.transaction().unwrap();
    delete_port(&tx, "p5").unwrap();
    assert_eq!(take(&tx, &moved, "q5", 14), at(7).unwrap());
    assert_eq!(mark(&tx, "s1"), at(7));
    drop(tx);
    assert_eq!(mark(store.conn(), "s1"), before);
}

#[test]
fn pools_are_filled_in_their_order_each_from_its_own_mark() {
    let (_d, mut store) = temp_store();
    let tx = store.transaction().unwrap();
    insert(&tx, &net("n1", false)).unwrap();
    let s = subnet(
        "s1",
        "n1",
        "10.0.0.0/24",
        &[("10.0.0.100", "10.0.0.101"), ("10.0.0.2", "10.0.0.3")],
    );
    insert(&tx, &s).unwrap();
    let got: Vec<String> = (0..4)
        .map(|i| take(&tx, &s, &format!("p{i}"), i).to_string())
        .collect();
    assert_eq!(got, ["10.0.0.100", "10.0.0.101", "10.0.0.2", "10.0.0.3"]);
    delete_port(&tx, "p1").unwrap();
    assert_eq!(take(&tx, &s, "q", 9).to_string(), "10.0.0.101");
    // Pools rewritten (a subnet update): new rows, no marks, same answer.
    update(&tx, &s).unwrap();
    assert_eq!(mark(&tx, "s1"), None);
    assert_eq!(
        allocate_ip(&tx, &s, None, false).unwrap_err().kind,
        "IpAddressGenerationFailure"
    );
}

#[test]
fn requested_addresses_are_checked() {
    let (_d, mut store) = temp_store();
    let tx = store.transaction().unwrap();
    insert(&tx, &net("n1", false)).unwrap();
    let s = subnet("s1", "n1", "10.0.0.0/24", &[("10.0.0.2", "10.0.0.254")]);
    insert(&tx, &s).unwrap();
    let gw: IpAddr = "10.0.0.1".parse().unwrap();
    assert_eq!(
        allocate_ip(&tx, &s, Some(gw), false).unwrap_err().status,
        409
    );
    assert_eq!(allocate_ip(&tx, &s, Some(gw), true).unwrap(), gw);
    for bad in ["10.0.1.5", "10.0.0.0", "10.0.0.255"] {
        let e = allocate_ip(&tx, &s, Some(bad.parse().unwrap()), false).unwrap_err();
        assert_eq!(e.status, 400, "{bad}");
    }
    let ip: IpAddr = "10.0.0.77".parse().unwrap();
    insert(
        &tx,
        &port("p1", "n1", [0xfa, 0x16, 0x3e, 0, 0, 1], &[("s1", ip)]),
    )
    .unwrap();
    let e = allocate_ip(&tx, &s, Some(ip), false).unwrap_err();
    assert_eq!((e.status, e.kind.as_str()), (409, "IpAddressInUse"));
}

#[test]
fn schema_refuses_a_duplicate_address_or_mac() {
    let (_d, mut store) = temp_store();
    let tx = store.transaction().unwrap();
    insert(&tx, &net("n1", false)).unwrap();
    let s = subnet("s1", "n1", "10.0.0.0/24", &[("10.0.0.2", "10.0.0.254")]);
    insert(&tx, &s).unwrap();
    let ip: IpAddr = "10.0.0.9".parse().unwrap();
    insert(
        &tx,
        &port("p1", "n1", [0xfa, 0x16, 0x3e, 0, 0, 1], &[("s1", ip)]),
    )
    .unwrap();
    let e = insert(
        &tx,
        &port("p2", "n1", [0xfa, 0x16, 0x3e, 0, 0, 2], &[("s1", ip)]),
    )
    .unwrap_err();
    assert_eq!(e.status, 409);
    let e = insert(&tx, &port("p3", "n1", [0xfa, 0x16, 0x3e, 0, 0, 1], &[])).unwrap_err();
    assert_eq!(e.status, 409);
}

#[test]
fn dp_ids_are_small_unique_and_fill_holes() {
    let (_d, mut store) = temp_store();
    let tx = store.transaction().unwrap();
    for i in 0..3 {
        let dp = free_dp_id(&tx).unwrap();
        assert_eq!(dp, i + 1);
        insert(&tx, &router(&format!("r{i}"), dp, None)).unwrap();
    }
    delete_router(&tx, "r1").unwrap();
    assert_eq!(free_dp_id(&tx).unwrap(), 2);
    delete_router(&tx, "r0").unwrap();
    assert_eq!(free_dp_id(&tx).unwrap(), 1);
}

#[test]
fn router_spec_collects_interfaces_and_gateway() {
    let (_d, mut store) = temp_store();
    let tx = store.transaction().unwrap();
    insert(&tx, &net("ext", true)).unwrap();
    insert(&tx, &net("int", false)).unwrap();
    let se = subnet("se", "ext", "192.0.2.0/24", &[("192.0.2.10", "192.0.2.20")]);
    let si = subnet("si", "int", "10.1.0.0/24", &[("10.1.0.2", "10.1.0.254")]);
    insert(&tx, &se).unwrap();
    insert(&tx, &si).unwrap();
    let gw_ip = allocate_ip(&tx, &se, None, false).unwrap();
    insert(
        &tx,
        &port("gw", "ext", [0xfa, 0x16, 0x3e, 0, 0, 1], &[("se", gw_ip)]),
    )
    .unwrap();
    insert(
        &tx,
        &port(
            "if",
            "int",
            [0xfa, 0x16, 0x3e, 0, 0, 2],
            &[("si", "10.1.0.1".parse().unwrap())],
        ),
    )
    .unwrap();
    insert(
        &tx,
        &Router {
            enable_snat: false,
            ..router("r", 1, Some("gw"))
        },
    )
    .unwrap();
    add_interface(&tx, "r", "if").unwrap();
    let spec = router_spec(&tx, "r").unwrap().unwrap();
    assert_eq!(spec.dp_id, 1);
    assert_eq!(spec.interfaces.len(), 1);
    assert_eq!(spec.interfaces[0].addresses[0].to_string(), "10.1.0.1/24");
    assert_eq!(
        spec.internal_cidrs(),
        vec!["10.1.0.0/24".parse::<Ipv4Net>().unwrap()]
    );
    let gw = spec.gateway.unwrap();
    assert_eq!(gw.port.addresses[0].to_string(), "192.0.2.10/24");
    assert_eq!(
        gw.next_hops,
        vec!["192.0.2.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(!gw.enable_snat);
    assert_eq!(routers_on_network(&tx, "int").unwrap().len(), 1);
    // A second router without gateway, one with a gateway only.
    insert(
        &tx,
        &Router {
            admin_state_up: false,
            ..router("r2", 2, None)
        },
    )
    .unwrap();
    tx.commit().unwrap();
    let d = store.desired_state().unwrap();
    assert_eq!(d.networks.len(), 2);
    // The bulk pass gives exactly the per-router specs.
    let one_by_one: Vec<_> = ["r", "r2"]
        .iter()
        .map(|id| router_spec(store.conn(), id).unwrap().unwrap())
        .collect();
    assert_eq!(d.routers, one_by_one);
}

#[test]
fn a_gateway_port_carries_every_fixed_ip_and_each_subnets_next_hop() {
    let (_d, mut store) = temp_store();
    let tx = store.transaction().unwrap();
    insert(&tx, &net("ext", true)).unwrap();
    let s1 = subnet("s1", "ext", "192.0.2.0/24", &[("192.0.2.10", "192.0.2.20")]);
    let mut s2 = subnet("s2", "ext", "198.51.100.0/25", &[]);
    s2.gateway_ip = None;
    insert(&tx, &s1).unwrap();
    insert(&tx, &s2).unwrap();
    let ips: Vec<(&str, IpAddr)> = vec![
        ("s1", "192.0.2.10".parse().unwrap()),
        ("s2", "198.51.100.7".parse().unwrap()),
        ("s1", "192.0.2.11".parse().unwrap()),
    ];
    insert(&tx, &port("gw", "ext", [0xfa, 0x16, 0x3e, 0, 0, 9], &ips)).unwrap();
    for (id, dp, gw) in [("r", 1, Some("gw")), ("other", 2, None)] {
        insert(&tx, &router(id, dp, gw)).unwrap();
    }
    let specs = router_specs(&tx, Scope::Router("r")).unwrap();
    assert_eq!(specs.len(), 1, "the scope is one router");
    let gw = specs[0].gateway.as_ref().unwrap();
    let addrs: Vec<String> = gw.port.addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(addrs, ["192.0.2.10/24", "198.51.100.7/25", "192.0.2.11/24"]);
    // One next hop per subnet that has a gateway, once.
    assert_eq!(gw.next_hops, ["192.0.2.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(gw.snat_ip(), Some("192.0.2.10".parse().unwrap()));
    assert_eq!(router_specs(&tx, Scope::All).unwrap().len(), 2);
    assert!(router_specs(&tx, Scope::Router("none")).unwrap().is_empty());
}

#[test]
fn router_ports_carry_their_networks_mtu() {
    let (_d, mut store) = temp_store();
    let tx = store.transaction().unwrap();
    let mut ext = net("ext", true);
    ext.mtu = 1400;
    insert(&tx, &ext).unwrap();
    insert(&tx, &net("int", false)).unwrap();
    insert(&tx, &subnet("se", "ext", "192.0.2.0/24", &[])).unwrap();
    insert(&tx, &subnet("si", "int", "10.1.0.0/24", &[])).unwrap();
    let gw = port(
        "gw",
        "ext",
        [0xfa, 0x16, 0x3e, 0, 0, 1],
        &[("se", "192.0.2.9".parse().unwrap())],
    );
    let itf = port(
        "if",
        "int",
        [0xfa, 0x16, 0x3e, 0, 0, 2],
        &[("si", "10.1.0.1".parse().unwrap())],
    );
    insert(&tx, &gw).unwrap();
    insert(&tx, &itf).unwrap();
    insert(
        &tx,
        &Router {
            id: "r".into(),
            name: String::new(),
            description: String::new(),
            project_id: "p".into(),
            admin_state_up: true,
            status: "ACTIVE".into(),
            dp_id: 1,
            gw_port_id: Some("gw".into()),
            enable_snat: true,
        },
    )
    .unwrap();
    add_interface(&tx, "r", "if").unwrap();
    let spec = router_spec(&tx, "r").unwrap().unwrap();
    assert_eq!(spec.interfaces[0].mtu, 1500, "the default");
    assert_eq!(spec.gateway.as_ref().unwrap().port.mtu, 1400);
    // A network's MTU change is a change of its routers' specs.
    let mut int = get::<Network>(&tx, "int").unwrap().unwrap();
    int.mtu = 9000;
    update(&tx, &int).unwrap();
    let spec = router_spec(&tx, "r").unwrap().unwrap();
    assert_eq!(spec.interfaces[0].mtu, 9000);
    assert_eq!(router_specs(&tx, Scope::All).unwrap(), vec![spec]);
}

/// The revision number of resource `id` (which must have standard attributes).
fn revision(c: &Connection, id: &str) -> i64 {
    standard_attrs(c, id).unwrap().unwrap().revision_number
}

#[test]
fn standard_attrs_follow_rows_and_settle_once_per_transaction() {
    let mut s = Store::open_in_memory().unwrap();
    let tx = s.transaction().unwrap();
    insert(&tx, &net("n", false)).unwrap();
    let mut n = net("n", false);
    n.name = "renamed".into();
    update(&tx, &n).unwrap();
    settle_revisions(&tx).unwrap();
    tx.commit().unwrap();
    let a = standard_attrs(s.conn(), "n").unwrap().unwrap();
    assert_eq!(a.revision_number, 0, "created in the transaction");
    assert!(
        a.created_at.ends_with('Z') && a.created_at.len() == 20,
        "{a:?}"
    );

    let tx = s.transaction().unwrap();
    update(&tx, &n).unwrap();
    update(&tx, &n).unwrap();
    insert(&tx, &subnet("s", "n", "10.0.0.0/24", &[])).unwrap();
    add_tag(&tx, "n", "t").unwrap();
    settle_revisions(&tx).unwrap();
    tx.commit().unwrap();
    let a = standard_attrs(s.conn(), "n").unwrap().unwrap();
    assert_eq!(a.revision_number, 1, "one request, one revision");
    assert_eq!(a.tags, ["t"]);
    assert_eq!(revision(s.conn(), "s"), 0);

    // Rolled back: no revision.
    {
        let tx = s.transaction().unwrap();
        update(&tx, &n).unwrap();
        settle_revisions(&tx).unwrap();
    }
    assert_eq!(revision(s.conn(), "n"), 1);

    let tx = s.transaction().unwrap();
    delete_network(&tx, "n").unwrap();
    tx.commit().unwrap();
    assert!(standard_attrs(s.conn(), "n").unwrap().is_none());
    assert!(
        tags(s.conn(), "n").unwrap().is_empty(),
        "tags go with their resource"
    );
}

/// A database of schema `version` (the first `version` migrations run), as an older daemon
/// left it.
fn database_at(version: usize) -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    conn.pragma_update(None, "foreign_keys", true).unwrap();
    for (i, sql) in MIGRATIONS.iter().enumerate().take(version) {
        conn.execute_batch(sql).unwrap();
        conn.pragma_update(None, "user_version", (i + 1) as i64)
            .unwrap();
    }
    conn
}

#[test]
fn the_standard_attrs_migration_fills_existing_rows() {
    let mut conn = database_at(3);
    conn.execute(
        "INSERT INTO networks (id, name, project_id, admin_state_up, external, shared, status) \
         VALUES ('old', 'old', 'p', 1, 0, 0, 'ACTIVE')",
        [],
    )
    .unwrap();
    migrate(&mut conn).unwrap();
    let n = get::<Network>(&conn, "old").unwrap().unwrap();
    assert_eq!(n.mtu, 1500);
    let a = standard_attrs(&conn, "old").unwrap().unwrap();
    assert_eq!(a.revision_number, 0);
    assert!(a.tags.is_empty());
}

/// A later migration that rebuilds one of these tables (create, copy, drop, rename) drops its
/// triggers with it: it must create them again, or revisions silently stop counting.
#[test]
fn every_standard_attrs_trigger_survives_the_migrations() {
    let s = Store::open_in_memory().unwrap();
    let have: Vec<String> = s
        .conn()
        .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut want = Vec::new();
    for t in ["networks", "subnets", "ports", "routers", "floatingips"] {
        for op in ["insert", "update", "delete"] {
            want.push(format!("{t}_attrs_{op}"));
        }
    }
    for (t, col) in [
        ("subnets", "network_id"),
        ("fixed_ips", "port_id"),
        ("router_interfaces", "router_id"),
        ("port_forwardings", "floatingip_id"),
        ("port_forwardings", "internal_port_id"),
        ("tags", "resource_id"),
        ("router_routes", "router_id"),
    ] {
        for op in ["insert", "update", "delete"] {
            want.push(format!("{t}_revises_{col}_{op}"));
        }
    }
    for w in &want {
        assert!(have.contains(w), "trigger {w} missing: {have:?}");
    }
}

/// A database of schema v5 (IPv4 integers in every address column) upgrades in place: the
/// addresses read back the same, no revision moves, IPAM carries on after the last address,
/// and IPv6 subnets and addresses can be stored afterwards.
#[test]
fn the_ipv6_migration_upgrades_a_v5_database_in_place() {
    let mut conn = database_at(5);
    // 10.0.0.1 = 167772161, 10.0.0.2..10.0.0.254, 203.0.113.5 = 3405803781, 10.0.0.7 = 167772167.
    conn.execute_batch(
        "INSERT INTO networks (id, name, project_id, admin_state_up, external, shared, status)
           VALUES ('n', 'n', 'p', 1, 0, 0, 'ACTIVE'), ('e', 'e', 'p', 1, 1, 0, 'ACTIVE');
         INSERT INTO subnets (id, network_id, name, project_id, cidr, gateway_ip, enable_dhcp)
           VALUES ('s', 'n', 's', 'p', '10.0.0.0/24', 167772161, 1),
                  ('se', 'e', 'se', 'p', '203.0.113.0/24', NULL, 0);
         INSERT INTO allocation_pools VALUES ('s', 0, 167772162, 167772414);
         INSERT INTO ports (id, network_id, name, project_id, mac, admin_state_up, device_owner, device_id, status)
           VALUES ('vm', 'n', '', 'p', 'fa:16:3e:00:00:01', 1, '', '', 'DOWN'),
                  ('fp', 'e', '', 'p', 'fa:16:3e:00:00:02', 1, 'network:floatingip', '', 'DOWN');
         INSERT INTO fixed_ips VALUES ('vm', 's', 167772162), ('fp', 'se', 3405803781);
         INSERT INTO floatingips VALUES ('f', 'p', '', 'e', 'fp', 3405803781, 'vm', 167772162, NULL);
         INSERT INTO port_forwardings VALUES ('pf', 'f', 'tcp', 22, 'vm', 167772167, 22, '');",
    )
    .unwrap();
    let before = standard_attrs(&conn, "vm").unwrap().unwrap();
    migrate(&mut conn).unwrap();
    let s = get::<Subnet>(&conn, "s").unwrap().unwrap();
    assert_eq!(s.gateway_ip, Some("10.0.0.1".parse().unwrap()));
    assert_eq!(
        s.allocation_pools,
        vec![("10.0.0.2".parse().unwrap(), "10.0.0.254".parse().unwrap())]
    );
    assert_eq!(s.ipv6_ra_mode, None);
    let vm = get::<Port>(&conn, "vm").unwrap().unwrap();
    assert_eq!(vm.fixed_ips[0].ip, "10.0.0.2".parse::<IpAddr>().unwrap());
    let f = &list::<FloatingIp>(&conn).unwrap()[0];
    assert_eq!(f.floating_ip, "203.0.113.5".parse::<IpAddr>().unwrap());
    assert_eq!(f.fixed_ip, Some("10.0.0.2".parse().unwrap()));
    let pf = &floatingips::fip_port_forwardings(&conn, "f").unwrap()[0];
    assert_eq!(pf.internal_ip, "10.0.0.7".parse::<IpAddr>().unwrap());
    let after = standard_attrs(&conn, "vm").unwrap().unwrap();
    assert_eq!(after.revision_number, before.revision_number);
    let dirty: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM standard_attrs WHERE dirty != 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(dirty, 0);
    // IPAM sees the migrated allocation and the gateway.
    assert_eq!(
        allocate_ip(&conn, &s, None, false).unwrap(),
        "10.0.0.3".parse::<IpAddr>().unwrap()
    );
    // IPv6 now fits.
    let v6 = Subnet {
        ipv6_ra_mode: Some(crate::model::Ipv6Mode::Slaac),
        ipv6_address_mode: Some(crate::model::Ipv6Mode::Slaac),
        ..subnet("s6", "n", "fd00:1::/64", &[("fd00:1::2", "fd00:1::ffff")])
    };
    insert(&conn, &v6).unwrap();
    let back = get::<Subnet>(&conn, "s6").unwrap().unwrap();
    assert_eq!(back, v6);
    assert_eq!(
        allocate_ip(&conn, &back, None, false).unwrap(),
        "fd00:1::2".parse::<IpAddr>().unwrap()
    );
    let eui = auto_address(&conn, &back, &[0xfa, 0x16, 0x3e, 0, 0, 1]).unwrap();
    assert_eq!(eui, "fd00:1::f816:3eff:fe00:1".parse::<IpAddr>().unwrap());
    conn.execute(
        "INSERT INTO fixed_ips VALUES ('vm', 's6', ?1)",
        [addr_val(eui)],
    )
    .unwrap();
    assert_eq!(
        auto_address(&conn, &back, &[0xfa, 0x16, 0x3e, 0, 0, 1])
            .unwrap_err()
            .status,
        409
    );
}

#[test]
fn a_record_round_trips_every_column_and_updates_only_what_it_names() {
    let (_dir, s) = temp_store();
    let c = s.conn();
    let mut n = net("n1", true);
    n.physical_network = Some("physnet1".into());
    n.mtu = 9000;
    insert(c, &n).unwrap();
    assert_eq!(get::<Network>(c, "n1").unwrap().as_ref(), Some(&n));
    let mut changed = n.clone();
    changed.name = "renamed".into();
    changed.physical_network = None; // not a mutable column: stays
    update(c, &changed).unwrap();
    let got = get::<Network>(c, "n1").unwrap().unwrap();
    assert_eq!(got.name, "renamed");
    assert_eq!(got.physical_network.as_deref(), Some("physnet1"));
}

#[test]
fn every_records_key_and_mutable_columns_are_its_columns() {
    use record::Record;
    fn check<T: Record>() {
        for c in T::KEY.iter().chain(T::MUTABLE) {
            assert!(T::COLUMNS.contains(c), "{} has no column {c}", T::TABLE);
        }
        for k in T::KEY {
            assert!(!T::MUTABLE.contains(k), "{}: key {k} is mutable", T::TABLE);
        }
    }
    check::<Network>();
    check::<Subnet>();
    check::<Port>();
    check::<Router>();
    check::<FloatingIp>();
    check::<PortForwarding>();
}

#[test]
fn checkpoints_run_off_the_committing_connection_and_the_log_stays_bounded() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("router.db");
    let pages = 256;
    let mut store = Store::open_checkpointing_at(&path, pages).unwrap();
    store
        .conn()
        .execute_batch("CREATE TABLE scratch (id INTEGER PRIMARY KEY, body BLOB)")
        .unwrap();
    // Commits back to back, three or four pages each.
    let commits = 8 * pages as usize;
    let mut largest_log = 0;
    let wal = dir.path().join("router.db-wal");
    for i in 0..commits {
        let tx = store.transaction().unwrap();
        tx.execute(
            "INSERT INTO scratch (id, body) VALUES (?1, zeroblob(6000))",
            [i as i64],
        )
        .unwrap();
        tx.commit().unwrap();
        largest_log = largest_log.max(std::fs::metadata(&wal).unwrap().len());
    }
    let counts = store.checkpoints().unwrap();
    let background = counts.background.load(Ordering::Relaxed);
    let tail = counts.tail.load(Ordering::Relaxed);
    let backstop = counts.backstop.load(Ordering::Relaxed);
    let seen = format!(
        "log up to {largest_log} B; checkpoints: {background} on the thread, {tail} tails by the writer, {backstop} backstops"
    );
    // The thread copied the bulk, commits only ever finished a short tail, and the log
    // started over again and again: without that it would hold every frame written (≈ 25 ×
    // the threshold here), and past 16 × the backstop would copy it all inline.
    assert!(background >= 1 && tail >= 1, "{seen}");
    assert_eq!(backstop, 0, "{seen}");
    let frame = 4096 + 24;
    assert!(largest_log <= u64::from(4 * pages) * frame + 32, "{seen}");
    drop(store);
    // Everything committed is there for the next open.
    let store = Store::open(&path).unwrap();
    let rows: i64 = store
        .conn()
        .query_row("SELECT count(*) FROM scratch", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, commits as i64);
}

#[test]
fn cached_statements_are_not_compiled_again_on_each_use() {
    use rusqlite::StatementStatus;
    let (_d, mut store) = temp_store();
    // A parameter the planner looks at outside the index it picks (the rowid order): the kind
    // SQLite would mark to compile again whenever its binding is cleared.
    let sql = "SELECT destination FROM router_routes WHERE router_id = ?1 ORDER BY rowid";
    let run = |c: &Connection, id: &str| {
        let mut st = c.prepare_cached(sql).unwrap();
        st.query_map([id], |_| Ok(())).unwrap().count()
    };
    for (i, id) in ["a", "b", "0", "1"].into_iter().enumerate() {
        let tx = store.transaction().unwrap();
        insert(&tx, &net(&format!("n{i}"), false)).unwrap();
        settle_revisions(&tx).unwrap();
        run(&tx, id);
        tx.commit().unwrap();
        run(store.conn(), id);
    }
    let st = store.conn().prepare_cached(sql).unwrap();
    assert_eq!(st.get_status(StatementStatus::RePrepare), 0);
    let reader = store.reader().unwrap().unwrap();
    run(&reader, "a");
    run(&reader, "b");
    let st = reader.prepare_cached(sql).unwrap();
    assert_eq!(st.get_status(StatementStatus::RePrepare), 0);
}
