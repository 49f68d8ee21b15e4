//! `router-ctl daemon`: loads config and datapath, resyncs, runs the reconcile loop and serves
//! the API until SIGTERM/SIGINT.

use std::path::PathBuf;

/// Daemon options; each overrides the config file.
#[derive(Clone, Debug, clap::Args)]
pub struct DaemonArgs {
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    #[arg(long)]
    pub bpffs: Option<PathBuf>,
}

/// Runs the daemon until a shutdown signal.
pub fn run(_args: DaemonArgs) -> anyhow::Result<()> {
    crate::datapath::object()?;
    anyhow::bail!("daemon not implemented yet")
}
