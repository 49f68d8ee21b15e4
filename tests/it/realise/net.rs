//! `net::link` address and route convergence with both address families, on a veth in a test
//! namespace: the functions the realiser converges router devices with take IPv6 as they take
//! IPv4.

use std::net::IpAddr;

use ipnet::IpNet;
use router_ctl::net::{link, with_netlink};
use tests::{Netns, ip_json, veth};

fn addrs(ns: &Netns, dev: &str) -> Vec<String> {
    let v = ip_json(&ns.name, &["addr", "show", "dev", dev]);
    let mut out: Vec<String> = v[0]["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["scope"] != "link")
                .map(|i| format!("{}/{}", i["local"].as_str().unwrap_or(""), i["prefixlen"]))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn ipv6_address_and_default_route_converge_like_ipv4() {
    let a = Netns::new("l6a");
    let b = Netns::new("l6b");
    veth(&a, "v6a", &b, "v6b");
    let idx = a.ifindex("v6a");
    let handle = a.handle();
    let converge = |want: Vec<IpNet>, gateways: Vec<IpAddr>| {
        with_netlink(&handle, |h| {
            let (want, gateways) = (want.clone(), gateways.clone());
            async move {
                let changes = link::converge_addresses(&h, idx, &want).await?;
                for g in gateways {
                    link::replace_default_route(&h, g, idx).await?;
                }
                let routes = link::main_routes(&h).await?;
                Ok((changes, routes))
            }
        })
        .expect("converge")
    };
    let v4: IpNet = "192.0.2.2/24".parse().expect("v4");
    let v6: IpNet = "2001:db8:1::2/64".parse().expect("v6");
    let gw6: IpAddr = "2001:db8:1::1".parse().expect("gw6");
    let gw4: IpAddr = "192.0.2.1".parse().expect("gw4");

    let (changes, routes) = converge(vec![v4, v6], vec![gw4, gw6]);
    assert_eq!(changes.added, vec![v4, v6]);
    assert_eq!(addrs(&a, "v6a"), vec!["192.0.2.2/24", "2001:db8:1::2/64"]);
    let defaults: Vec<_> = routes.iter().filter(|r| r.is_default()).collect();
    assert_eq!(defaults.len(), 2, "{defaults:?}");
    assert!(
        defaults
            .iter()
            .any(|r| r.gateway == Some(gw6) && r.oif == Some(idx) && r.dst.addr().is_ipv6())
    );
    assert!(defaults.iter().any(|r| r.gateway == Some(gw4)));
    let shown = ip_json(&a.name, &["-6", "route", "show", "default"]);
    assert_eq!(shown[0]["gateway"], "2001:db8:1::1", "{shown}");

    // Idempotent; then the IPv6 address changes and the IPv4 one goes, link-local untouched.
    let (changes, _) = converge(vec![v4, v6], vec![]);
    assert!(changes.is_empty(), "{changes:?}");
    let v6b: IpNet = "2001:db8:2::2/64".parse().expect("v6b");
    let (changes, routes) = converge(vec![v6b], vec![]);
    assert_eq!(changes.added, vec![v6b]);
    assert_eq!(changes.removed.len(), 2, "{changes:?}");
    assert_eq!(addrs(&a, "v6a"), vec!["2001:db8:2::2/64"]);
    assert!(
        routes.iter().all(|r| !r
            .dst
            .contains(&"2001:db8:1::5".parse::<IpAddr>().expect("ip"))
            || r.is_default()),
        "the old prefix route went with its address"
    );
    drop(b);
}

/// Sysctl handles are shared across threads and kept per namespace: a write lands in the
/// namespace of the calling thread, never in another one whose handle is cached, and a
/// namespace made after another was deleted (its inode is reused by the kernel) is written
/// through a fresh handle.
#[test]
fn sysctl_writes_land_in_the_calling_threads_namespace() {
    use router_ctl::net::{in_netns, sysctl};
    let read = |ns: &Netns| {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "cat",
                "/proc/sys/net/ipv4/ip_forward",
            ])
            .output()
            .expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let write = |ns: &Netns, v: &str| {
        let h = ns.handle();
        in_netns(&h, || sysctl::write("ipv4/ip_forward", v)).expect("sysctl write");
    };
    let a = Netns::new("sya");
    let b = Netns::new("syb");
    write(&a, "1");
    write(&b, "0");
    write(&b, "1");
    write(&a, "0");
    assert_eq!((read(&a).as_str(), read(&b).as_str()), ("0", "1"));
    // Gone namespaces, then new ones: some of them get a gone one's inode.
    drop(a);
    drop(b);
    for i in 0..4 {
        // A new namespace may inherit forwarding from the host's: flip whatever it starts with.
        let c = Netns::new(&format!("syc{i}"));
        let want = if read(&c) == "1" { "0" } else { "1" };
        write(&c, want);
        assert_eq!(read(&c), want, "written through a fresh handle");
    }
}

/// `link::delete_detached` on a worker in the device's namespace (as the realiser calls it, so
/// it asks the name table, not the kernel's link answers): it returns once the device is
/// unlisted, its peer in another namespace gone with it; a missing device is no error; the
/// name is free at once.
#[test]
fn a_detached_delete_from_inside_the_namespace_frees_the_name() {
    let a = Netns::new("dda");
    let b = Netns::new("ddb");
    let h = a.handle();
    assert!(
        !h.is_current().expect("is_current"),
        "the test thread is not in {}",
        a.name
    );
    let inside = with_netlink(&h, |_| async { h.is_current() }).expect("worker");
    assert!(inside, "a with_netlink worker is in its namespace");
    veth(&a, "ddtap", &b, "ddpeer");
    let hr = &h;
    let gone = with_netlink(&h, |nl| async move {
        let existed = link::delete_detached(hr, &nl, "ddtap").await?;
        Ok((existed, link::get_link(&nl, "ddtap").await?.is_none()))
    })
    .expect("delete inside");
    assert_eq!(gone, (true, true));
    let missing = with_netlink(&h, |nl| async move {
        link::delete_detached(hr, &nl, "ddtap").await
    })
    .expect("delete a missing device");
    assert!(!missing);
    // The peer went with it, and the name is free again.
    assert!(b.try_ip(&["link", "show", "ddpeer"]).is_err());
    veth(&a, "ddtap", &b, "ddpeer");
}
