//! `router-ctl`: the daemon and its CLI client in one binary.
use clap::{Parser, Subcommand};
use router_ctl::{cli, daemon};

#[derive(Parser)]
#[command(
    name = "router-ctl",
    version,
    about = "Neutron-style router gateway with an eBPF datapath"
)]
struct Cli {
    #[command(flatten)]
    global: cli::GlobalArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the privileged daemon (API server, realisation, datapath).
    Daemon(daemon::DaemonArgs),
    #[command(flatten)]
    Client(cli::Command),
}

fn main() -> anyhow::Result<()> {
    let args = Cli::parse();
    match args.cmd {
        Cmd::Daemon(d) => daemon::run(d),
        Cmd::Client(c) => cli::run(&args.global, c),
    }
}
