//! neutron-server 29 for the stack. Since 2025.2 there is no `neutron-server` command: the API
//! is a WSGI application served here by gunicorn, RPC handling runs in `neutron-rpc-server` and
//! periodic tasks (router failover from dead L3 agents among them) in
//! `neutron-periodic-workers`. Configuration: ML2 with the openvswitch mechanism driver, flat,
//! VLAN and VXLAN type drivers, the router service plugin, no Keystone, and a short
//! `agent_down_time` so that the failover tests finish in seconds; no quotas (the bench makes
//! hundreds of routers).

use std::{fs, path::Path, time::Duration};

use anyhow::{Context as _, Result};

use super::{mariadb, proc::Proc, rabbitmq};
use crate::netns::{netns_cmd, try_sh};

/// The API port on the stack's loopback.
pub const API_PORT: u16 = 9696;
/// Seconds without a report after which neutron-server declares an agent dead (and, with
/// `allow_automatic_l3agent_failover`, moves its routers).
pub const AGENT_DOWN_TIME: u64 = 20;

fn neutron_conf(dir: &Path) -> String {
    format!(
        "[DEFAULT]
core_plugin = ml2
service_plugins = router
auth_strategy = noauth
bind_host = 127.0.0.1
bind_port = {API_PORT}
transport_url = {transport}
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
api_workers = 1
rpc_workers = 1
rpc_state_report_workers = 1
state_path = {state}
allow_automatic_l3agent_failover = true
agent_down_time = {AGENT_DOWN_TIME}
router_auto_schedule = true
use_stderr = true
api_paste_config = {paste}

[database]
connection = {db}

[oslo_concurrency]
lock_path = {lock}

[quotas]
quota_network = -1
quota_subnet = -1
quota_port = -1
quota_router = -1
quota_floatingip = -1
",
        transport = rabbitmq::TRANSPORT_URL,
        db = mariadb::DB_URL,
        state = dir.join("state").display(),
        lock = dir.join("lock").display(),
        paste = dir.join("api-paste.ini").display(),
    )
}

const ML2_CONF: &str = "[ml2]
type_drivers = flat,vlan,vxlan
project_network_types = vxlan
mechanism_drivers = openvswitch
extension_drivers = port_security

[ml2_type_flat]
flat_networks = public,tenant

[ml2_type_vlan]
network_vlan_ranges = tenant:100:199

[ml2_type_vxlan]
vni_ranges = 1:1000
";

/// The WSGI entry gunicorn imports: oslo.config must read our files, and gunicorn's own
/// arguments must not reach it.
fn wsgi_module(dir: &Path) -> String {
    format!(
        "import os, sys
os.environ['OS_NEUTRON_CONFIG_DIR'] = {dir:?}
os.environ['OS_NEUTRON_CONFIG_FILES'] = 'neutron.conf;ml2_conf.ini'
sys.argv = sys.argv[:1]
from neutron.wsgi.api import application  # noqa: E402,F401
",
        dir = dir.display().to_string()
    )
}

/// Writes the configuration under `dir`, migrates the database and starts the API, the RPC
/// server and the periodic workers in namespace `ns`.
pub fn start(ns: &str, dir: &Path, venv: &Path) -> Result<Vec<Proc>> {
    fs::create_dir_all(dir.join("state"))?;
    fs::create_dir_all(dir.join("lock"))?;
    fs::write(dir.join("neutron.conf"), neutron_conf(dir))?;
    fs::write(dir.join("ml2_conf.ini"), ML2_CONF)?;
    fs::write(dir.join("neutron_api_wsgi.py"), wsgi_module(dir))?;
    // The paste pipeline neutron ships as data in the venv (etc/neutron).
    let paste = venv.join("etc/neutron/api-paste.ini");
    fs::copy(&paste, dir.join("api-paste.ini"))
        .with_context(|| format!("copying {}", paste.display()))?;
    let config_args = |cmd: &mut std::process::Command| {
        cmd.arg("--config-file")
            .arg(dir.join("neutron.conf"))
            .arg("--config-file")
            .arg(dir.join("ml2_conf.ini"));
    };
    let bin = |name: &str| venv.join("bin").join(name);
    let mut migrate = netns_cmd(ns, bin("neutron-db-manage"));
    config_args(&mut migrate);
    try_sh(migrate.args(["upgrade", "heads"])).context("neutron-db-manage upgrade heads")?;

    let mut api = netns_cmd(ns, bin("gunicorn"));
    api.args([
        "--workers",
        "1",
        "--timeout",
        "300",
        "--graceful-timeout",
        "5",
    ])
    .arg("--bind")
    .arg(format!("127.0.0.1:{API_PORT}"))
    .arg("--pythonpath")
    .arg(dir)
    .arg("neutron_api_wsgi:application");
    let mut rpc = netns_cmd(ns, bin("neutron-rpc-server"));
    config_args(&mut rpc);
    let mut periodic = netns_cmd(ns, bin("neutron-periodic-workers"));
    config_args(&mut periodic);
    let grace = Duration::from_secs(10);
    Ok(vec![
        Proc::spawn(
            "neutron-rpc-server",
            rpc,
            &dir.join("rpc-server.log"),
            grace,
        )?,
        Proc::spawn(
            "neutron-periodic-workers",
            periodic,
            &dir.join("periodic.log"),
            grace,
        )?,
        Proc::spawn("neutron API (gunicorn)", api, &dir.join("api.log"), grace)?,
    ])
}
