//! `router-ctl`: the daemon and its CLI client in one binary.
use clap::{CommandFactory as _, Parser, Subcommand};
use router_ctl::{agent, cli, daemon};

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
    /// Run as the L3 agent of an existing neutron-server (RabbitMQ RPC).
    Agent(agent::AgentArgs),
    #[command(flatten)]
    Client(cli::Command),
}

fn main() -> std::process::ExitCode {
    let args = Cli::parse();
    let result = match args.cmd {
        Cmd::Daemon(d) => daemon::run(d),
        Cmd::Agent(a) => agent::run(a),
        Cmd::Client(cli::Command::Completion { shell }) => {
            cli::completion(shell, Cli::command());
            Ok(())
        }
        Cmd::Client(c) => cli::run(&args.global, c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("router-ctl: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
