//! IPv6 subnets as Neutron has them: mode validation, defaults (`::1` gateway, pools),
//! EUI-64 addresses, dual-stack router interfaces and gateways, and no IPv6 floating IPs.

use std::net::IpAddr;

use super::*;
use crate::model::{Ipv6Mode, eui64_address};

async fn subnet_error(t: &T, body: Value) -> (u16, String, String) {
    let (st, v) = t
        .req("POST", "/v2.0/subnets", "ta", json!({ "subnet": body }))
        .await;
    let msg = v["NeutronError"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (st, err_type(&v).to_string(), msg)
}

/// A network of `pa` with subnets 10.0.0.0/24 and fd00:1::/64 (SLAAC, advertised by the
/// router): its id and the two subnets as created.
async fn dual_stack(t: &T) -> (String, Value, Value) {
    let n = t.network("ta", json!({})).await;
    let v4 = json!({"subnet": {"network_id": n, "ip_version": 4, "cidr": "10.0.0.0/24"}});
    let v6 = json!({"subnet": {"network_id": n, "ip_version": 6, "cidr": "fd00:1::/64",
        "ipv6_ra_mode": "slaac", "ipv6_address_mode": "slaac"}});
    let v4 = t.create("ta", "subnets", v4).await;
    let v6 = t.create("ta", "subnets", v6).await;
    (n, v4, v6)
}

#[tokio::test]
async fn ipv6_modes_are_validated_as_neutron_does() {
    let t = T::new();
    let n = t.network("ta", json!({})).await;
    let cases = [
        (
            json!({"ip_version": 4, "cidr": "10.0.0.0/24", "ipv6_ra_mode": "slaac"}),
            "only valid for IPv6",
        ),
        (
            json!({"ip_version": 6, "cidr": "fd00:1::/64", "ipv6_ra_mode": "slaac",
                "ipv6_address_mode": "dhcpv6-stateful"}),
            "must be the same value",
        ),
        (
            json!({"ip_version": 6, "cidr": "fd00:1::/80", "ipv6_address_mode": "slaac"}),
            "prefix to be /64",
        ),
        (
            json!({"ip_version": 6, "cidr": "fd00:1::/64", "ipv6_ra_mode": "slaac",
                "enable_dhcp": false}),
            "enable_dhcp is set to False",
        ),
        (
            json!({"ip_version": 6, "cidr": "fd00:1::/64", "ipv6_ra_mode": "bogus"}),
            "is not in",
        ),
        (
            json!({"ip_version": 6, "cidr": "10.0.0.0/24"}),
            "does not match the ip_version",
        ),
        (
            json!({"ip_version": 4, "cidr": "fd00:1::/64"}),
            "does not match the ip_version",
        ),
        (
            json!({"ip_version": 6, "cidr": "::ffff:0:0/96"}),
            "not a usable IPv6 subnet",
        ),
    ];
    for (mut body, want) in cases {
        body["network_id"] = json!(n);
        let (st, ty, msg) = subnet_error(&t, body.clone()).await;
        assert_eq!(st, 400, "{body}: {msg}");
        assert!(
            ty == "InvalidInput" || ty == "HTTPBadRequest",
            "{body}: {ty}"
        );
        assert!(msg.contains(want), "{body}: {msg}");
    }
    let (_, v) = t.req("GET", "/v2.0/subnets", "ta", Value::Null).await;
    assert_eq!(
        v["subnets"].as_array().unwrap().len(),
        0,
        "nothing was stored"
    );
    // The stateful mode is accepted on any prefix length (addresses come from the pools).
    let s = t
        .create(
            "ta",
            "subnets",
            json!({"subnet": {"network_id": n, "ip_version": 6,
            "cidr": "fd00:2::/80", "ipv6_ra_mode": "dhcpv6-stateful",
            "ipv6_address_mode": "dhcpv6-stateful"}}),
        )
        .await;
    assert_eq!(s["subnet"]["ipv6_ra_mode"], "dhcpv6-stateful");
    // Modes keep DHCP on.
    let sid = id(&s, "subnet");
    t.refused(
        "PUT",
        &format!("/v2.0/subnets/{sid}"),
        "ta",
        json!({"subnet": {"enable_dhcp": false}}),
        (400, "InvalidInput"),
    )
    .await;
}

#[tokio::test]
async fn ipv6_subnets_default_and_allocate_as_neutron_does() {
    let t = T::new();
    let (n, _, slaac) = dual_stack(&t).await;
    let s = &slaac["subnet"];
    assert_eq!(s["ip_version"], 6);
    assert_eq!(s["gateway_ip"], "fd00:1::1");
    assert_eq!(
        s["allocation_pools"],
        json!([{"start": "fd00:1::2", "end": "fd00:1::ffff:ffff:ffff:ffff"}])
    );
    assert_eq!(s["ipv6_address_mode"], "slaac");
    let slaac_id = id(&slaac, "subnet");
    let (_, v) = t
        .req("GET", "/v2.0/subnets?ip_version=6", "ta", Value::Null)
        .await;
    assert_eq!(v["subnets"].as_array().unwrap().len(), 1, "{v}");

    // A port takes one IPv4 address and its EUI-64 address on the SLAAC subnet.
    let p = t
        .create(
            "ta",
            "ports",
            json!({"port": {"network_id": n, "mac_address": "fa:16:3e:12:34:56"}}),
        )
        .await;
    let ips = p["port"]["fixed_ips"].as_array().unwrap().clone();
    let addrs: Vec<&str> = ips
        .iter()
        .map(|f| f["ip_address"].as_str().unwrap())
        .collect();
    assert!(addrs.contains(&"10.0.0.2"), "{addrs:?}");
    assert!(addrs.contains(&"fd00:1::f816:3eff:fe12:3456"), "{addrs:?}");
    let prefix = "fd00:1::/64".parse().unwrap();
    assert_eq!(
        eui64_address(&prefix, &[0xfa, 0x16, 0x3e, 0x12, 0x34, 0x56]).to_string(),
        "fd00:1::f816:3eff:fe12:3456"
    );
    // An address cannot be picked on an auto-address subnet.
    t.refused(
        "POST",
        "/v2.0/ports",
        "ta",
        json!({"port": {"network_id": n,
            "fixed_ips": [{"subnet_id": slaac_id, "ip_address": "fd00:1::99"}]}}),
        (400, "InvalidInput"),
    )
    .await;

    // A stateful subnet hands out pool addresses.
    let n2 = t.network("ta", json!({})).await;
    t.create(
        "ta",
        "subnets",
        json!({"subnet": {"network_id": n2, "ip_version": 6,
        "cidr": "fd00:3::/64", "ipv6_address_mode": "dhcpv6-stateful"}}),
    )
    .await;
    let p = t
        .create("ta", "ports", json!({"port": {"network_id": n2}}))
        .await;
    assert_eq!(p["port"]["fixed_ips"][0]["ip_address"], "fd00:3::2");
}

#[tokio::test]
async fn dual_stack_routers_get_v6_interfaces_gateways_and_no_v6_floating_ips() {
    let t = T::new();
    let ext = t.external_network().await;
    let ext6 = t
        .create(
            "adm",
            "subnets",
            json!({"subnet": {"network_id": ext, "ip_version": 6,
            "cidr": "2001:db8:1::/64", "gateway_ip": "2001:db8:1::1"}}),
        )
        .await;
    let (n, v4, v6) = dual_stack(&t).await;
    let (v4, v6) = (id(&v4, "subnet"), id(&v6, "subnet"));
    let r = t
        .create(
            "ta",
            "routers",
            json!({"router": {"external_gateway_info": {"network_id": ext}}}),
        )
        .await;
    let rid = id(&r, "router");
    let gw_ips = r["router"]["external_gateway_info"]["external_fixed_ips"]
        .as_array()
        .unwrap();
    assert_eq!(gw_ips.len(), 2, "{r}");
    assert_eq!(gw_ips[1]["subnet_id"], ext6["subnet"]["id"]);
    assert_eq!(gw_ips[1]["ip_address"], "2001:db8:1::2");
    t.router_interface(&rid, "add", &v4, 200).await;
    let info = t.router_interface(&rid, "add", &v6, 200).await;
    let (_, p) = t
        .req(
            "GET",
            &format!("/v2.0/ports/{}", info["port_id"].as_str().unwrap()),
            "ta",
            Value::Null,
        )
        .await;
    assert_eq!(
        p["port"]["fixed_ips"][0]["ip_address"], "fd00:1::1",
        "the gateway address"
    );

    let spec = t.rec.applied.lock().unwrap().last().unwrap().clone();
    let gw = spec.gateway.as_ref().unwrap();
    assert!(
        gw.next_hops
            .contains(&"2001:db8:1::1".parse::<IpAddr>().unwrap())
    );
    assert!(gw.has_ipv6_next_hop());
    let v6_port = spec.interfaces.iter().find(|p| p.has_ipv6()).unwrap();
    assert_eq!(v6_port.addresses, vec!["fd00:1::1/64".parse().unwrap()]);
    assert_eq!(v6_port.ra_prefixes.len(), 1);
    assert_eq!(v6_port.ra_prefixes[0].mode, Ipv6Mode::Slaac);
    assert_eq!(
        spec.internal_cidrs(),
        vec!["10.0.0.0/24".parse().unwrap()],
        "SNAT stays IPv4"
    );

    // No NAT66: IPv6 floating IPs and port forwardings are 400 BadRequest.
    let vm = t
        .create("ta", "ports", json!({"port": {"network_id": n}}))
        .await;
    let vm_id = id(&vm, "port");
    t.refused(
        "POST",
        "/v2.0/floatingips",
        "adm",
        json!({"floatingip": {"floating_network_id": ext,
            "floating_ip_address": "2001:db8:1::50"}}),
        (400, "BadRequest"),
    )
    .await;
    t.refused(
        "POST",
        "/v2.0/floatingips",
        "ta",
        json!({"floatingip": {"floating_network_id": ext,
            "subnet_id": ext6["subnet"]["id"]}}),
        (400, "BadRequest"),
    )
    .await;
    let v6_addr = vm["port"]["fixed_ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["ip_address"].as_str().unwrap())
        .find(|a| a.contains(':'))
        .unwrap()
        .to_string();
    t.refused(
        "POST",
        "/v2.0/floatingips",
        "ta",
        json!({"floatingip": {"floating_network_id": ext,
            "port_id": vm_id, "fixed_ip_address": v6_addr}}),
        (400, "BadRequest"),
    )
    .await;
    let fip = t
        .create(
            "ta",
            "floatingips",
            json!({"floatingip": {"floating_network_id": ext}}),
        )
        .await;
    assert!(
        fip["floatingip"]["floating_ip_address"]
            .as_str()
            .unwrap()
            .starts_with("192.0.2.")
    );
    t.refused(
        "POST",
        &format!(
            "/v2.0/floatingips/{}/port_forwardings",
            id(&fip, "floatingip")
        ),
        "ta",
        json!({"port_forwarding": {"protocol": "tcp", "external_port": 2222, "internal_port": 22,
                "internal_port_id": vm_id, "internal_ip_address": v6_addr}}),
        (400, "BadRequest"),
    )
    .await;
    // A v6-only external network has no floating IPs at all.
    let ext_v6 = id(
        &t.create(
            "adm",
            "networks",
            json!({"network": {"router:external": true}}),
        )
        .await,
        "network",
    );
    t.create(
        "adm",
        "subnets",
        json!({"subnet": {"network_id": ext_v6, "ip_version": 6,
        "cidr": "2001:db8:2::/64"}}),
    )
    .await;
    t.refused(
        "POST",
        "/v2.0/floatingips",
        "ta",
        json!({"floatingip": {"floating_network_id": ext_v6}}),
        (400, "BadRequest"),
    )
    .await;
}
