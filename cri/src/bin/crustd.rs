//! crustd: the crust CRI daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use crust_cri::config::{Config, commented_default};

#[derive(Parser)]
#[command(name = "crustd", version, about = "crust: a Kubernetes CRI runtime")]
struct Cli {
    /// Configuration file (TOML). Without it every setting has its built-in default.
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Work with the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the full default configuration as TOML, a comment per key.
    Default,
    /// Check a configuration file (--config) and print the effective configuration.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("crustd: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    match cli.command {
        Some(Command::Config {
            action: ConfigAction::Default,
        }) => {
            print!("{}", commented_default());
            return ExitCode::SUCCESS;
        }
        Some(Command::Config {
            action: ConfigAction::Check,
        }) => {
            match toml::to_string_pretty(&config) {
                Ok(t) => print!("{t}"),
                Err(e) => {
                    eprintln!("crustd: {e}");
                    return ExitCode::FAILURE;
                }
            }
            return ExitCode::SUCCESS;
        }
        None => {}
    }

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("crustd")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("crustd: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crust_cri::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("crustd: {e}");
            ExitCode::FAILURE
        }
    }
}
