//! `halyard-control`: Halyard's control server. For now the mesh's certificate authority
//! (Istio's certificate service over gRPC); translation and xDS serving come next.

mod auth;
mod ca_service;
mod check;
mod conn;
mod duration;
mod echo;
mod mesh_state;
pub mod model;
mod serve;
mod serving_cert;
mod tokens;
mod translate;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Halyard's control server.
#[derive(Debug, Parser)]
#[command(name = "halyard-control", version, about)]
struct Cli {
    /// Log filter, e.g. `info` or `info,halyard_control=debug`.
    #[arg(long, global = true, env = "HALYARD_LOG", default_value = "info")]
    log_level: String,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up
enum Command {
    /// Serve the CA (Istio's IstioCertificateService) on a plaintext and a TLS gRPC port.
    Serve(serve::ServeArgs),
    /// Load and validate a directory of mesh configuration (Istio resources and MeshConfig);
    /// print every problem as `file:line: Kind/namespace/name: field: message`.
    Check(check::CheckArgs),
    /// Run a whole mesh on loopback: the control server, a sidecar per WorkloadEntry and the
    /// echo app behind those labelled `halyard.dev/demo-app: echo`.
    Up(up::UpArgs),
    /// A demo app answering every request with JSON: its name, method, path and headers.
    Echo(echo::EchoArgs),
}

/// Logs to stderr with the given filter.
fn init_logging(filter: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| format!("--log-level `{filter}`: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .map_err(|e| format!("logging: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli.log_level) {
        eprintln!("halyard-control: {e}");
        return ExitCode::from(2);
    }
    if let Command::Check(args) = &cli.command {
        return check::run(args);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("halyard-control: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Up(args) => ExitCode::from(runtime.block_on(up::run(args))),
        Command::Echo(args) => match runtime.block_on(echo::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("halyard-control echo: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve(args) => match runtime.block_on(serve::run(args)) {
            serve::Outcome::Stopped => ExitCode::SUCCESS,
            serve::Outcome::StartFailed(e) => {
                eprintln!("halyard-control: {e}");
                ExitCode::from(2)
            }
            serve::Outcome::Failed(e) => {
                eprintln!("halyard-control: {e}");
                ExitCode::from(1)
            }
        },
        Command::Check(args) => check::run(&args),
    }
}
