//! The command line: `attendance-relay [serve|demo]`, parsed before any
//! setting is read so that `--help` works whatever the environment holds.
//! Operator subcommands (`status`, `records list …`) are further variants of
//! [`Command`], each with its own arguments.

use clap::{Parser, Subcommand};

use crate::settings;

#[derive(Debug, Parser)]
#[command(
    name = "attendance-relay",
    version,
    about = "Webhook gateway from event platforms to HubSpot marketing-event attendance",
    after_help = settings::help()
)]
struct Cli {
    /// What to run; `serve` when none is given.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the gateway, configured from the environment (the default).
    #[command(after_help = settings::help())]
    Serve,
    /// Show the gateway end to end: sample Zoom webhooks in, a built-in
    /// HubSpot simulator out; prints what HubSpot received, then exits.
    Demo,
}

/// The command the arguments name; `--help`, `--version` and arguments that
/// are refused (exit status 2) end the process here.
pub fn parse() -> Command {
    from_args(std::env::args_os()).unwrap_or_else(|err| err.exit())
}

fn from_args<I, T>(args: I) -> Result<Command, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Ok(Cli::try_parse_from(args)?.command.unwrap_or(Command::Serve))
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;

    use super::*;

    fn kind(args: &[&str]) -> ErrorKind {
        from_args(args).expect_err("refused").kind()
    }

    #[test]
    fn no_subcommand_means_serve() {
        assert_eq!(from_args(["attendance-relay"]).unwrap(), Command::Serve);
        assert_eq!(
            from_args(["attendance-relay", "serve"]).unwrap(),
            Command::Serve
        );
        assert_eq!(
            from_args(["attendance-relay", "demo"]).unwrap(),
            Command::Demo
        );
    }

    #[test]
    fn unknown_arguments_are_refused() {
        assert_eq!(
            kind(&["attendance-relay", "run"]),
            ErrorKind::InvalidSubcommand
        );
        assert_eq!(
            kind(&["attendance-relay", "--port", "1"]),
            ErrorKind::UnknownArgument
        );
        assert_eq!(
            kind(&["attendance-relay", "serve", "extra"]),
            ErrorKind::UnknownArgument
        );
    }
}
