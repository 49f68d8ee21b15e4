//! Neutron's standard attributes through the stock clients: tags set and filtered with the
//! `openstack` CLI (openstacksdk), `revision_number`, `mtu` and a legacy router as it reads
//! them, and `If-Match` through `python-neutronclient`'s `revision_number=` argument.

use serde_json::{Value, json};
use tests::openstack::Cloud;

fn names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v
        .as_array()
        .expect("a list")
        .iter()
        .map(|i| i["Name"].as_str().unwrap_or_default().to_string())
        .collect();
    n.sort();
    n
}

#[test]
fn openstack_cli_tags_filters_and_revisions() {
    let cloud = Cloud::start("apisa");
    let os = |args: &[&str]| cloud.os(args);

    let n = os(&[
        "network", "create", "--mtu", "1400", "--tag", "red", "--tag", "blue", "tagged", "-f",
        "json",
    ]);
    assert_eq!(n["mtu"], 1400, "{n}");
    os(&[
        "network", "create", "--tag", "red", "red-only", "-f", "json",
    ]);
    os(&["network", "create", "plain", "-f", "json"]);
    let n = os(&["network", "show", "tagged", "-f", "json"]);
    let mut tags: Vec<&str> = n["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("tags listed: {n}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    tags.sort();
    assert_eq!(tags, ["blue", "red"], "{n}");
    let rev = n["revision_number"].as_i64().expect("revision_number");
    assert!(rev >= 1, "tagging revised the network: {n}");
    assert!(
        n["created_at"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{n}"
    );

    let list = |extra: &[&str]| {
        let mut args = vec!["network", "list", "-f", "json"];
        args.extend_from_slice(extra);
        names(&os(&args))
    };
    assert_eq!(list(&["--tags", "red,blue"]), ["tagged"]);
    assert_eq!(list(&["--any-tags", "red"]), ["red-only", "tagged"]);
    assert_eq!(list(&["--not-tags", "red"]), ["plain"]);
    assert_eq!(list(&["--not-any-tags", "blue"]), ["plain", "red-only"]);

    os(&["network", "set", "--name", "renamed", "tagged"]);
    let n = os(&["network", "show", "renamed", "-f", "json"]);
    assert_eq!(n["revision_number"], rev + 1, "{n}");
    os(&["network", "unset", "--tag", "red", "renamed"]);
    let n = os(&["network", "show", "renamed", "-f", "json"]);
    assert_eq!(n["tags"], json!(["blue"]), "{n}");
    assert_eq!(n["revision_number"], rev + 2, "{n}");

    let r = os(&["router", "create", "--tag", "edge", "r1", "-f", "json"]);
    assert_eq!(r["status"], "ACTIVE", "{r}");
    let r = os(&["router", "show", "r1", "-f", "json"]);
    assert_eq!(r["ha"], false, "{r}");
    assert_eq!(r["distributed"], false, "{r}");
    assert_eq!(r["tags"], json!(["edge"]), "{r}");
    assert_eq!(
        names(&os(&["router", "list", "--tags", "edge", "-f", "json"])),
        ["r1"]
    );

    // The same calls as automation makes them through python-neutronclient: If-Match on a
    // stale revision is a 412, on the current one it passes.
    let script = format!(
        r#"
import sys
from neutronclient.v2_0 import client
from neutronclient.common import exceptions
c = client.Client(endpoint_url=sys.argv[1], token=sys.argv[2])
net = c.list_networks(name="renamed")["networks"][0]
rev = net["revision_number"]
try:
    c.update_network(net["id"], {{"network": {{"name": "stale"}}}}, revision_number=rev - 1)
    sys.exit("a stale revision was accepted")
except exceptions.NeutronClientException as e:
    assert e.status_code == 412, e
    assert "Constrained to" in str(e), e
n = c.update_network(net["id"], {{"network": {{"name": "fresh"}}}}, revision_number=rev)["network"]
assert n["revision_number"] == rev + 1, n
try:
    c.list_networks(bogus="1")
    sys.exit("an unknown filter was accepted")
except exceptions.BadRequest as e:
    assert "invalid attribute for filtering" in str(e), e
print("{done}")
"#,
        done = "if-match checks passed"
    );
    let out = cloud.python(&["-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("if-match checks passed"),
        "{stdout}\n{}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        cloud.d.log()
    );
    let n = os(&["network", "show", "fresh", "-f", "json"]);
    assert_eq!(n["revision_number"], rev + 3, "{n}");
}
