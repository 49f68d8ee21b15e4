"""Drives a router-ctl daemon with the real python-neutronclient (v2_0 Client with endpoint_url
and token, no Keystone), the way the seed's `router-gateway-set` does, and asserts on what it
reads back. Usage: neutronclient_check.py URL TOKEN. Exits non-zero on any failure."""
import sys

from neutronclient.common import exceptions as exc
from neutronclient.v2_0 import client


def main(url, token):
    c = client.Client(endpoint_url=url, token=token)

    aliases = {e["alias"] for e in c.list_extensions()["extensions"]}
    assert {"router", "ext-gw-mode", "external-net"} <= aliases, aliases
    assert c.show_extension("router")["extension"]["alias"] == "router"

    ext = c.create_network({"network": {"name": "public", "router:external": True}})["network"]
    assert ext["router:external"] is True, ext
    ext_sub = c.create_subnet({"subnet": {
        "network_id": ext["id"], "ip_version": 4, "cidr": "192.0.2.0/24",
        "allocation_pools": [{"start": "192.0.2.100", "end": "192.0.2.110"}]}})["subnet"]
    assert ext_sub["gateway_ip"] == "192.0.2.1", ext_sub

    router = c.create_router({"router": {"name": "nc-router"}})["router"]
    assert router["external_gateway_info"] is None, router
    net = c.create_network({"network": {"name": "nc-private"}})["network"]
    sub = c.create_subnet({"subnet": {"network_id": net["id"], "ip_version": 4,
                                      "cidr": "10.11.0.0/24", "name": "nc-sub"}})["subnet"]

    info = c.add_interface_router(router["id"], {"subnet_id": sub["id"]})
    assert info["subnet_id"] == sub["id"] and info["port_id"] and info["id"] == router["id"], info
    port = c.show_port(info["port_id"])["port"]
    assert port["fixed_ips"][0]["ip_address"] == "10.11.0.1", port
    assert port["device_owner"] == "network:router_interface", port

    # The seed's call: PUT /v2.0/routers/{id}.json {"router": {"external_gateway_info":
    # {"network_id": ..., "enable_snat": false}}}
    c.add_gateway_router(router["id"], {"network_id": ext["id"], "enable_snat": False})
    r = c.show_router(router["id"])["router"]
    gw = r["external_gateway_info"]
    assert gw["network_id"] == ext["id"], r
    assert gw["enable_snat"] is False, r
    assert gw["external_fixed_ips"] == [{"subnet_id": ext_sub["id"], "ip_address": "192.0.2.100"}], r

    assert [x["id"] for x in c.list_routers(name="nc-router")["routers"]] == [router["id"]]
    externals = c.list_networks(**{"router:external": True})["networks"]
    assert [n["id"] for n in externals] == [ext["id"]], externals
    names = c.list_networks(fields=["id", "name"])["networks"]
    assert all(set(n) == {"id", "name"} for n in names), names

    # Errors come back as neutronclient's exceptions with the right codes.
    try:
        c.delete_router(router["id"])
        raise AssertionError("deleting a router with interfaces must fail")
    except exc.NeutronClientException as e:
        assert e.status_code == 409, e
    try:
        c.show_network("00000000-0000-0000-0000-000000000000")
        raise AssertionError("unknown network must be 404")
    except exc.NotFound:
        pass
    try:
        c.add_gateway_router(router["id"], {"network_id": net["id"]})
        raise AssertionError("a gateway on an internal network must fail")
    except exc.BadRequest:
        pass

    # Clear (neutronclient sends {}), detach, delete.
    c.remove_gateway_router(router["id"])
    assert c.show_router(router["id"])["router"]["external_gateway_info"] is None
    c.remove_interface_router(router["id"], {"subnet_id": sub["id"]})
    c.delete_router(router["id"])
    c.delete_subnet(sub["id"])
    c.delete_network(net["id"])
    c.delete_network(ext["id"])
    assert c.list_routers()["routers"] == []
    assert c.list_networks()["networks"] == []
    print("neutronclient: all checks passed")


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2])
    except Exception as e:  # report any failure as a non-zero exit with the reason
        import traceback
        traceback.print_exc()
        print(f"neutronclient check FAILED: {e!r}", file=sys.stderr)
        sys.exit(1)
