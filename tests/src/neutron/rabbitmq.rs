//! RabbitMQ for the stack: the broker started directly (not through the Debian service
//! wrapper) as node `rabbit@localhost` with every file under the stack's dir — Mnesia, logs,
//! config, the Erlang cookie (`HOME`) — and both the AMQP listener and Erlang distribution
//! on 127.0.0.1 of the stack's namespace. `ERL_EPMD_ADDRESS` keeps the epmd it spawns on that
//! loopback too; epmd daemonises out of the broker's process group, so [`stop_epmd`] ends it.

use std::{fs, net::TcpStream, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result};

use super::proc::Proc;
use crate::netns::{netns_cmd, try_enter_named};

/// The AMQP port on the stack's loopback.
pub const AMQP_PORT: u16 = 5672;
/// The oslo.messaging URL of the broker, valid inside the stack's namespace.
pub const TRANSPORT_URL: &str = "rabbit://guest:guest@127.0.0.1:5672/";

/// The environment that points every RabbitMQ and Erlang tool at the files under `dir`.
fn env(cmd: &mut Command, dir: &Path) {
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", dir)
        .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
        .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
        .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
        .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", dir.join("log"))
        .env("RABBITMQ_PID_FILE", dir.join("rabbit.pid"))
        .env("RABBITMQ_NODENAME", "rabbit@localhost")
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_NODE_PORT", AMQP_PORT.to_string())
        .env("RABBITMQ_DIST_PORT", "25672")
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .env("ERL_EPMD_PORT", "4369")
        .env(
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
            "-kernel inet_dist_use_interface {127,0,0,1}",
        );
}

/// Starts the broker in namespace `ns` with its files under `dir`; returns once AMQP answers.
pub fn start(ns: &str, dir: &Path) -> Result<Proc> {
    fs::create_dir_all(dir.join("mnesia"))?;
    fs::create_dir_all(dir.join("log"))?;
    fs::write(dir.join("rabbitmq-env.conf"), "")?;
    fs::write(
        dir.join("rabbitmq.conf"),
        "listeners.tcp.default = 127.0.0.1:5672\ndisk_free_limit.absolute = 50MB\n",
    )?;
    fs::write(dir.join("advanced.config"), "[].\n")?;
    fs::write(dir.join("enabled_plugins"), "[].\n")?;
    let mut cmd = netns_cmd(ns, "/usr/lib/rabbitmq/bin/rabbitmq-server");
    env(&mut cmd, dir);
    let log = dir.join("server.log");
    let mut proc = Proc::spawn("rabbitmq-server", cmd, &log, Duration::from_secs(20))?;
    let amqp = ([127, 0, 0, 1], AMQP_PORT).into();
    proc.wait_ready(
        "RabbitMQ listens on 127.0.0.1:5672",
        Duration::from_secs(120),
        || {
            try_enter_named(ns, || {
                TcpStream::connect_timeout(&amqp, Duration::from_secs(1)).is_ok()
            })
            .unwrap_or(false)
        },
    )?;
    Ok(proc)
}

/// `epmd -kill` inside namespace `ns` (epmd left the broker's process group when it
/// daemonised); quiet when none runs.
pub fn stop_epmd(ns: &str, dir: &Path) {
    let mut cmd = netns_cmd(ns, "epmd");
    env(&mut cmd, dir);
    let _ = cmd.arg("-kill").output().context("epmd -kill");
}
