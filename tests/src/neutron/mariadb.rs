//! MariaDB for the stack: a private data dir, socket and pid file under the stack's dir, the
//! server listening on 127.0.0.1:3306 of the stack's namespace (`--no-defaults`: nothing read
//! from, nothing written to the machine's own MariaDB), and the `neutron` database and user.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result};

use super::proc::Proc;
use crate::netns::{netns_cmd, try_sh};

/// The SQLAlchemy URL neutron uses, valid inside the stack's namespace.
pub const DB_URL: &str = "mysql+pymysql://neutron:neutron@127.0.0.1:3306/neutron?charset=utf8mb4";

/// Initialises a data dir under `dir`, starts the server in namespace `ns` and creates the
/// neutron database; returns the running server.
pub fn start(ns: &str, dir: &Path) -> Result<Proc> {
    let data = dir.join("data");
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let sock = dir.join("mysqld.sock");
    try_sh(
        netns_cmd(ns, "mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--skip-test-db"])
            .args(["--auth-root-authentication-method=normal"])
            .arg(format!("--datadir={}", data.display())),
    )
    .context("mariadb-install-db")?;
    let mut cmd = netns_cmd(ns, "mariadbd");
    cmd.args([
        "--no-defaults",
        "--user=root",
        "--bind-address=127.0.0.1",
        "--port=3306",
    ])
    .arg(format!("--datadir={}", data.display()))
    .arg(format!("--socket={}", sock.display()))
    .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
    .arg(format!("--tmpdir={}", tmp.display()))
    .arg(format!("--log-error={}", dir.join("error.log").display()))
    // A throwaway database: small and fast rather than durable.
    .args([
        "--skip-name-resolve",
        "--innodb-buffer-pool-size=64M",
        "--innodb-flush-log-at-trx-commit=0",
        "--innodb-doublewrite=0",
        "--character-set-server=utf8mb4",
        "--collation-server=utf8mb4_general_ci",
    ]);
    let log = dir.join("mariadbd.log");
    let mut proc = Proc::spawn("mariadbd", cmd, &log, Duration::from_secs(15))?;
    let client = |sql: &str| {
        netns_cmd(ns, "mariadb")
            .args(["--no-defaults", "-u", "root"])
            .arg(format!("--socket={}", sock.display()))
            .args(["-e", sql])
            .output()
    };
    proc.wait_ready("MariaDB answers", Duration::from_secs(60), || {
        client("SELECT 1").is_ok_and(|o| o.status.success())
    })
    .with_context(|| super::proc::log_tail(&dir.join("error.log"), 30))?;
    let setup = "CREATE DATABASE neutron CHARACTER SET utf8mb4; \
                 CREATE USER 'neutron'@'127.0.0.1' IDENTIFIED BY 'neutron'; \
                 GRANT ALL PRIVILEGES ON neutron.* TO 'neutron'@'127.0.0.1'; FLUSH PRIVILEGES;";
    let out = client(setup).context("running mariadb")?;
    if !out.status.success() {
        anyhow::bail!(
            "creating the neutron database failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(proc)
}
