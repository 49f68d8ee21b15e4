//! `router-ctl` client commands: a Neutron API client with tables, JSON and completions.

/// Connection options shared by every client command.
#[derive(Clone, Debug, clap::Args)]
pub struct GlobalArgs {
    /// API endpoint.
    #[arg(long, env = "ROUTER_CTL_URL", global = true)]
    pub url: Option<String>,
    /// API token (default: the local admin token when run as root on the daemon's host).
    #[arg(long, env = "ROUTER_CTL_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
}

/// Client commands.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {}

/// Runs a client command.
pub fn run(_global: &GlobalArgs, cmd: Command) -> anyhow::Result<()> {
    match cmd {}
}
