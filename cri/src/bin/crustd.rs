//! crustd: the crust CRI daemon.

// Beside the binary, not in src/bin/ (where cargo would take it for a binary of its own).
#[path = "crustd/cli.rs"]
mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Command, ConfigAction};
use crust_cri::config::{Config, commented_default};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands that need no configuration do not read it.
    match &cli.command {
        Some(Command::Completions { shell }) => {
            cli::completions(*shell);
            return ExitCode::SUCCESS;
        }
        Some(Command::ManPages { dir }) => {
            return match cli::man_pages(dir) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("crustd: writing man pages into {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Config {
            action: ConfigAction::Default,
        }) => {
            print!("{}", commented_default());
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
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
    if cli.version {
        print!(
            "{}",
            crust_cri::version::report(&config, cli.config.as_deref())
        );
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Config {
        action: ConfigAction::Check,
    }) = cli.command
    {
        return match toml::to_string_pretty(&config) {
            Ok(t) => {
                print!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("crustd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    run(config)
}

/// The daemon itself, until SIGTERM or SIGINT.
fn run(config: Config) -> ExitCode {
    crust_cri::logging::init(&config.log_level, config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("crustd")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("starting the async runtime: {e}");
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
