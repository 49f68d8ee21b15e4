//! The networks the agent tests and `cargo xtask demo --neutron` make through the `openstack`
//! CLI, as `openstack network create` / `subnet create` arguments: an external network flat on
//! physnet `public` with the upstream router's subnet, tenant networks flat on physnet `tenant`
//! or VXLAN. One place, so that the tests exercise the very networks the demo shows.

/// The external network's subnet: the upstream router ("the internet") and the addresses
/// neutron hands out to router gateways and floating IPs.
pub const EXTERNAL_CIDR: &str = "203.0.113.0/24";

/// How a network is carried.
#[derive(Clone, Copy, Debug)]
pub enum Provider {
    /// Flat on the physical network named (the nodes bridge `public` and `tenant`).
    Flat(&'static str),
    /// A VXLAN segment.
    Vxlan(u32),
}

/// `openstack network create` arguments: network `name` carried by `provider`, external (a
/// router gateway's network) or not.
pub fn network_args(name: &str, provider: Provider, external: bool) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    if external {
        args.push("--external".into());
    }
    match provider {
        Provider::Flat(physnet) => args.extend([
            "--provider-network-type".into(),
            "flat".into(),
            "--provider-physical-network".into(),
            physnet.into(),
        ]),
        Provider::Vxlan(vni) => args.extend([
            "--provider-network-type".into(),
            "vxlan".into(),
            "--provider-segment".into(),
            vni.to_string(),
        ]),
    }
    args.push(name.into());
    args
}

/// `openstack subnet create` arguments: subnet `name` of `network` on `cidr` without DHCP (the
/// VMs are addressed statically), with `gateway` and an allocation `pool` (first, last) when
/// given, else neutron's defaults.
pub fn subnet_args(
    name: &str,
    network: &str,
    cidr: &str,
    gateway: Option<&str>,
    pool: Option<(&str, &str)>,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--network".into(),
        network.into(),
        "--subnet-range".into(),
        cidr.into(),
    ];
    if let Some(gw) = gateway {
        args.extend(["--gateway".into(), gw.into()]);
    }
    if let Some((first, last)) = pool {
        args.extend([
            "--allocation-pool".into(),
            format!("start={first},end={last}"),
        ]);
    }
    args.extend(["--no-dhcp".into(), name.into()]);
    args
}

/// The external network `name`: flat on physnet `public`.
pub fn external_network_args(name: &str) -> Vec<String> {
    network_args(name, Provider::Flat("public"), true)
}

/// The external network's subnet `name` on [`EXTERNAL_CIDR`], behind the upstream router at
/// `upstream`, gateways and floating IPs from `pool`.
pub fn external_subnet_args(
    name: &str,
    network: &str,
    upstream: &str,
    pool: (&str, &str),
) -> Vec<String> {
    subnet_args(name, network, EXTERNAL_CIDR, Some(upstream), Some(pool))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_read_as_the_cli_wants_them() {
        assert_eq!(
            external_network_args("pub").join(" "),
            "--external --provider-network-type flat --provider-physical-network public pub"
        );
        assert_eq!(
            network_args("t", Provider::Vxlan(77), false).join(" "),
            "--provider-network-type vxlan --provider-segment 77 t"
        );
        assert_eq!(
            external_subnet_args("s", "n", "203.0.113.1", ("203.0.113.20", "203.0.113.40"))
                .join(" "),
            "--network n --subnet-range 203.0.113.0/24 --gateway 203.0.113.1 \
             --allocation-pool start=203.0.113.20,end=203.0.113.40 --no-dhcp s"
        );
        assert_eq!(
            subnet_args("s", "n", "10.0.0.0/24", None, None).join(" "),
            "--network n --subnet-range 10.0.0.0/24 --no-dhcp s"
        );
    }
}
