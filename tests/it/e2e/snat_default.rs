//! The SNAT default (Neutron's `_get_enable_snat`): a gateway update that does not name
//! `enable_snat` sets it to `[nat] enable_snat_by_default` (true), also when the router already
//! has its gateway on that network. Driven by the stock `python-neutronclient`
//! (`add_gateway_router`, as `router-gateway-set` does) against a live daemon, with real UDP
//! from a VM namespace to an "internet" namespace on the external bridge.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use tests::{
    Netns,
    daemon::Daemon,
    openstack::venv,
    topo::{self, INTERNET_IP as INTERNET, Internet, id, str_at, tenant_network},
};

/// Sets the gateway of `router` to `ext` through neutronclient; `snat` None leaves
/// `enable_snat` out of the body. Returns the `enable_snat` the router then shows.
const SET_GATEWAY: &str = r#"
import sys
from neutronclient.v2_0 import client
url, token, router, ext, snat = sys.argv[1:]
c = client.Client(endpoint_url=url, token=token)
info = {"network_id": ext}
if snat != "unset":
    info["enable_snat"] = snat == "true"
c.add_gateway_router(router, info)
print(c.show_router(router)["router"]["external_gateway_info"]["enable_snat"])
"#;

/// The source the internet saw for one datagram from `vm`, and whether its answer came back.
fn exchange(vm: &Netns, server: &UdpSocket) -> (Option<Ipv4Addr>, bool) {
    let to = server.local_addr().expect("server address");
    let client = vm.enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind"));
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    for _ in 0..3 {
        client.send_to(b"who", to).expect("send");
        let Ok((_, seen)) = server.recv_from(&mut buf) else {
            continue;
        };
        let _ = server.send_to(b"you", seen);
        let back = client.recv_from(&mut buf).is_ok();
        let SocketAddr::V4(seen) = seen else {
            panic!("IPv6 source {seen}");
        };
        return (Some(*seen.ip()), back);
    }
    (None, false)
}

#[test]
fn gateway_set_again_without_enable_snat_turns_snat_back_on() {
    let host = Netns::new("snd");
    let d = Daemon::start(&host);
    let venv = venv();
    let inet = Internet::new(&host, &d, "sni", 60);
    tenant_network(&d, "tenant", "10.44.0.0/24");
    let router = d.cli_json(&["router", "create", "r1"]);
    let router_id = id(&router);
    d.cli_ok(&["router", "interface", "add", "r1", "tenant-v4"]);
    let (vm, _, vm_ip) = topo::vm(&d, "tenant", "snv", &[]);
    let vm_ip: Ipv4Addr = vm_ip.parse().expect("VM address");
    let server = inet
        .ns
        .enter(|| UdpSocket::bind((INTERNET, 5353)).expect("bind"));
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");

    let set_gateway = |snat: &str| -> String {
        let out = host
            .cmd(venv.join("bin/python"))
            .args(["-c", SET_GATEWAY, &d.url(), &d.admin_token(), &router_id])
            .args([inet.network_id.as_str(), snat])
            .output()
            .expect("running python");
        assert!(
            out.status.success(),
            "neutronclient ({snat}) failed:\n{}\n{}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            d.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    assert_eq!(set_gateway("false"), "False");
    let gw_ip: Ipv4Addr = {
        let (_, r) = d.get(&format!("/v2.0/routers/{router_id}"));
        str_at(
            &r,
            "/router/external_gateway_info/external_fixed_ips/0/ip_address",
        )
        .parse()
        .expect("gateway IP")
    };
    // SNAT off: the VM's own address reaches the internet (which has no way back to it).
    let (seen, _) = exchange(&vm, &server);
    assert_eq!(seen, Some(vm_ip), "SNAT off\n{}", d.log());

    // The same gateway again, the flag not named: SNAT is back on (Neutron's default).
    assert_eq!(set_gateway("unset"), "True");
    let (seen, back) = exchange(&vm, &server);
    assert_eq!(seen, Some(gw_ip), "SNAT back on\n{}", d.log());
    assert!(back, "the answer reaches the VM");
}
