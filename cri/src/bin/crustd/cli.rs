//! crustd's command line: the clap definition, from which `--help`, the shell
//! completions and the man pages are all generated.

use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser, Subcommand};

const LONG_ABOUT: &str = "\
crustd answers the Kubernetes Container Runtime Interface (CRI) over gRPC on a unix \
socket (default /run/crust/crust.sock): kubelet and crictl connect there. It pulls images \
into its content store, runs each pod's containers through a per-pod crust-shim and runc, \
and serves Exec, Attach and PortForward streams and Prometheus metrics on loopback.

Without a subcommand crustd runs in the foreground until SIGTERM or SIGINT, after which it \
finishes the calls in flight and exits; pods, shims and containers keep running and are \
found again at the next start. Started by systemd (crustd.service, Type=notify) it reports \
READY once the socket answers and logs to the journal.

Every setting has a built-in default; --config names a TOML file that overrides some of \
them (`crustd config default` prints them all, one comment per key).";

#[derive(Parser)]
#[command(
    name = "crustd",
    version,
    about = "crust: a Kubernetes CRI runtime",
    long_about = LONG_ABOUT,
    disable_version_flag = true
)]
pub struct Cli {
    /// Configuration file (TOML), e.g. /etc/crust/config.toml. Without it every setting has its
    /// built-in default.
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Print the version, the git commit and cargo profile it was built from, and the runtime
    /// handlers and shim this node would run containers with (as configured by --config).
    #[arg(long, short = 'V')]
    pub version: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Work with the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Print a completion script for a shell, e.g.
    /// `crustd completions bash > /usr/share/bash-completion/completions/crustd`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write crustd's man pages (section 8) into DIR.
    #[command(hide = true)]
    ManPages {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum ConfigAction {
    /// Print the full default configuration as TOML, a comment per key.
    Default,
    /// Check a configuration file (--config) and print the effective configuration.
    Check,
}

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: clap_complete::Shell) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "crustd", &mut std::io::stdout());
}

/// Writes `crustd.8` and a page per visible subcommand (`crustd-config-check.8`, ...)
/// into `dir`, which must exist. Returns the files written.
pub fn man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn write(cmd: clap::Command, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub.clone(), dir, out)?;
        }
        out.push(
            clap_mangen::Man::new(cmd)
                .section("8")
                .manual("System Administration")
                .source(format!("crust {}", env!("CARGO_PKG_VERSION")))
                .generate_to(dir)?,
        );
        Ok(())
    }
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Builds the display names (`crustd-config`) the page names come from.
    cmd.build();
    let mut out = Vec::new();
    write(cmd, dir, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_man_page_per_visible_command() {
        let d = tempfile::tempdir().unwrap();
        let mut names: Vec<String> = man_pages(d.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "crustd-completions.8",
                "crustd-config-check.8",
                "crustd-config-default.8",
                "crustd-config.8",
                "crustd.8"
            ]
        );
        let main = std::fs::read_to_string(d.path().join("crustd.8")).unwrap();
        assert!(main.starts_with(".ie \\n(.g .ds Aq \\(aq"), "{main}");
        assert!(main.contains(".TH crustd 8"), "{main}");
        assert!(main.contains("Type=notify"), "{main}");
        assert!(main.contains("crustd\\-config(8)"), "{main}");
        assert!(
            !main.contains("man\\-pages"),
            "hidden command documented: {main}"
        );
    }

    #[test]
    fn completions_name_the_subcommands() {
        let mut cmd = Cli::command();
        let mut buf = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "crustd", &mut buf);
        let text = String::from_utf8(buf).unwrap();
        assert!(text.contains("complete -F _crustd"), "{text}");
        assert!(text.contains("completions"), "{text}");
        assert!(text.contains("--config"), "{text}");
    }
}
