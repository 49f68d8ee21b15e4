//! Agent reports the harness sends on a test node's behalf (tests/neutron/report_state.py run
//! in the venv, inside the stack's namespace): with ML2/openvswitch, neutron-server binds a
//! port on a host only while an "Open vSwitch agent" reports alive there. A real network node
//! runs its own L2 agent; a test node has none, so the harness reports one for it, and says so
//! in the agent's configurations (`reported_by`).

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::{Stack, proc::Proc};

const SCRIPT: &str = include_str!("../../neutron/report_state.py");

/// Seconds between the harness's L2-agent reports (well under `AGENT_DOWN_TIME`).
pub const REPORT_INTERVAL: u64 = 4;

fn command(stack: &Stack, host: &str, kind: &str) -> Command {
    let mut c = stack.venv_cmd("python");
    c.arg("-c").arg(SCRIPT).args([
        "--url",
        stack.transport_url(),
        "--host",
        host,
        "--kind",
        kind,
    ]);
    c
}

/// An "Open vSwitch agent" reporting alive for `host` every [`REPORT_INTERVAL`] s until
/// dropped, its bridge_mappings naming `physnets` and, with `tunnel_ip`, VXLAN tunnelling.
pub struct L2Report {
    proc: Proc,
    pub host: String,
}

impl L2Report {
    pub fn start(
        stack: &Stack,
        host: &str,
        physnets: &[&str],
        tunnel_ip: Option<&str>,
    ) -> Result<Self> {
        eprintln!(
            "harness: reporting an Open vSwitch agent for host {host} on the node's behalf (port binding needs one)"
        );
        let mut c = command(stack, host, "ovs");
        for p in physnets {
            c.arg("--bridge-mapping").arg(format!("{p}=br-{p}"));
        }
        if let Some(ip) = tunnel_ip {
            c.args(["--tunnel-ip", ip]);
        }
        c.args(["--interval", &REPORT_INTERVAL.to_string()]);
        let log = stack.dir.join(format!("l2-report-{host}.log"));
        let mut proc = Proc::spawn(
            &format!("L2 report for {host}"),
            c,
            &log,
            Duration::from_secs(2),
        )?;
        super::proc::wait_until(
            &format!("the first L2 report for {host}"),
            Duration::from_secs(60),
            Some(&mut proc),
            || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("report_state ovs")),
        )?;
        Ok(Self {
            proc,
            host: host.to_string(),
        })
    }

    /// Stops reporting (the node's L2 agent "dies"; neutron sees it dead after agent_down_time).
    pub fn stop(self) {
        drop(self.proc);
    }
}

/// One report of `kind` ("l3" or "ovs") for `host`, as a freshly started agent sends it.
pub fn report_once(stack: &Stack, host: &str, kind: &str) -> Result<String> {
    let out = command(stack, host, kind)
        .output()
        .context("running report_state.py")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "report_state {kind} for {host} failed: {}\nneutron-rpc-server log:\n{}",
            err.lines().last().unwrap_or_default(),
            stack.log_tail("rpc-server", 30)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
