//! The command line: `attendance-relay [serve|demo|status|events|records]`,
//! parsed before any setting is read so that `--help` works whatever the
//! environment holds. The operator subcommands act on the store of
//! `RELAY_DATABASE_URL` through [`crate::operations`], as the admin API does,
//! and print a table for a person or `--json` for scripts.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::{
    operations::{
        Counts, DeadQuery, EventQuery, EventView, Item, ListQuery, Operations, OpsError, Page,
        RetriedOne, Status,
    },
    settings::{self, Settings},
    store,
};

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
    #[command(flatten)]
    Operator(Operator),
}

/// The operator subcommands, on the store of `RELAY_DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Operator {
    /// What the store holds: queue by status, per source, oldest pending
    /// (as `GET /admin/status`, which also knows the running gateway's state).
    #[command(after_help = settings::help())]
    Status(Output),
    /// Per event: records by state and status, first and last seen
    /// (as `GET /admin/events`): did everyone arrive?
    #[command(after_help = settings::help())]
    Events {
        /// Only this externalEventId.
        #[arg(long)]
        event: Option<String>,
        /// Only records from this source (zoom, eventbrite, generic).
        #[arg(long)]
        source: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// Stored records and deliveries: list them, retry dead letters.
    #[command(subcommand)]
    Records(Records),
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Records {
    /// Records (then deliveries still owed) in id order, a page at a time
    /// (as `GET /admin/records`).
    #[command(after_help = settings::help())]
    List {
        /// pending, dead, unmappable or delivered.
        #[arg(long)]
        status: Option<String>,
        /// Only this externalEventId.
        #[arg(long)]
        event: Option<String>,
        #[arg(long)]
        source: Option<String>,
        /// Most entries to print (1 to 1000).
        #[arg(long)]
        limit: Option<i64>,
        /// Continue after this id (the `next_cursor` of the page before).
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// Makes dead letters pending again, each forwarded once (as `POST
    /// /admin/records/{id}/retry` and `POST /admin/dead-letters/retry`).
    #[command(after_help = settings::help())]
    Retry {
        /// Ids to retry: a record's number, or `d` and a delivery's.
        #[arg(required_unless_present = "dead", conflicts_with = "dead")]
        ids: Vec<String>,
        /// Every dead letter, or those the filters name.
        #[arg(long)]
        dead: bool,
        #[arg(long, conflicts_with = "ids")]
        event: Option<String>,
        #[arg(long, conflicts_with = "ids")]
        source: Option<String>,
        /// Part of the reason, case-insensitively.
        #[arg(long, conflicts_with = "ids")]
        reason: Option<String>,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct Output {
    /// Print JSON (for scripts) instead of a table.
    #[arg(long)]
    pub json: bool,
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

/// Runs an operator subcommand on the store of `RELAY_DATABASE_URL`.
pub async fn run_operator(command: &Operator, settings: &Settings) -> ExitCode {
    let options = store::StoreOptions::from_settings(settings);
    let store = match store::open(settings.database_url.expose(), &options) {
        Ok(store) => store,
        Err(err) => {
            eprintln!("attendance-relay: cannot open the store: {err}");
            return ExitCode::FAILURE;
        }
    };
    let ops = Operations::new(std::sync::Arc::clone(&store), settings, None);
    let printed = operate(&ops, command).await;
    store.close().await;
    match printed {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("attendance-relay: {err}");
            // As for refused arguments.
            ExitCode::from(if matches!(err, OpsError::Invalid(_)) {
                2
            } else {
                1
            })
        }
    }
}

/// The command's answer, as a table or as JSON.
async fn operate(ops: &Operations, command: &Operator) -> Result<String, OpsError> {
    match command {
        Operator::Status(output) => {
            let status = ops.status().await?;
            Ok(shown(output, &status, status_table))
        }
        Operator::Events {
            event,
            source,
            output,
        } => {
            let query = EventQuery {
                event: event.clone(),
                source: source.clone(),
            };
            let events = ops.events(&query).await?;
            Ok(shown(output, &events, |events| events_table(events)))
        }
        Operator::Records(Records::List {
            status,
            event,
            source,
            limit,
            cursor,
            output,
        }) => {
            let query = ListQuery {
                status: status.clone(),
                event: event.clone(),
                source: source.clone(),
                limit: *limit,
                cursor: cursor.clone(),
            };
            let page = ops.list(&query).await?;
            Ok(shown(output, &page, page_table))
        }
        Operator::Records(Records::Retry {
            ids,
            dead: true,
            event,
            source,
            reason,
            output,
        }) if ids.is_empty() => {
            let query = DeadQuery {
                event: event.clone(),
                source: source.clone(),
                reason: reason.clone(),
            };
            let retried = ops.retry_dead(&query).await?;
            Ok(shown(output, &retried, |r| {
                format!(
                    "retried {} records and {} deliveries\n",
                    r.records, r.deliveries
                )
            }))
        }
        Operator::Records(Records::Retry { ids, output, .. }) => {
            let mut retried: Vec<RetriedOne> = Vec::new();
            for id in ids {
                retried.push(ops.retry(id).await?);
            }
            Ok(shown(output, &retried, |retried| {
                let rows = retried
                    .iter()
                    .map(|r| {
                        let what = if r.retried {
                            "retried"
                        } else {
                            "not a dead letter: unchanged"
                        };
                        vec![r.id.clone(), what.to_owned()]
                    })
                    .collect();
                table(&["ID", "RESULT"], rows)
            }))
        }
    }
}

fn shown<T: Serialize + ?Sized>(
    output: &Output,
    value: &T,
    as_table: impl Fn(&T) -> String,
) -> String {
    if output.json {
        let mut json = serde_json::to_string_pretty(value).expect("answers serialize");
        json.push('\n');
        json
    } else {
        as_table(value)
    }
}

/// Left-aligned columns two spaces apart.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut text = line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        text.push_str(&line(row));
    }
    text
}

const STATUS_COLUMNS: [&str; 4] = ["pending", "dead", "unmappable", "delivered"];

fn counts_cells(counts: &Counts) -> impl Iterator<Item = String> + '_ {
    STATUS_COLUMNS
        .iter()
        .map(|status| counts.get(status).copied().unwrap_or(0).to_string())
}

fn status_table(status: &Status) -> String {
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".into());
    let forwarding = match &status.forwarding.reason {
        Some(reason) => format!("{}: {reason}", status.forwarding.state),
        None => status.forwarding.state.to_owned(),
    };
    let mut text = table(
        &["", ""],
        vec![
            vec!["version".into(), status.version.into()],
            vec!["store".into(), status.store.clone()],
            vec!["forwarding".into(), forwarding],
            vec!["credential".into(), status.credential.mode.into()],
            vec![
                "token expires in".into(),
                or_dash(
                    status
                        .credential
                        .expires_in_seconds
                        .map(|s| format!("{s} s")),
                ),
            ],
            vec![
                "last refresh".into(),
                or_dash(
                    status
                        .credential
                        .last_refresh
                        .as_ref()
                        .map(|r| r.outcome.to_owned()),
                ),
            ],
            vec![
                "oldest pending".into(),
                or_dash(
                    status
                        .oldest_pending_age_seconds
                        .map(|s| format!("{s:.1} s ago")),
                ),
            ],
        ],
    );
    text = text.trim_start().to_owned();
    let mut rows: Vec<Vec<String>> = status
        .sources
        .iter()
        .map(|(source, counts)| {
            std::iter::once(source.clone())
                .chain(counts_cells(counts))
                .collect()
        })
        .collect();
    rows.push(
        std::iter::once("all".to_owned())
            .chain(counts_cells(&status.queue))
            .collect(),
    );
    text.push('\n');
    text.push_str(&table(
        &["SOURCE", "PENDING", "DEAD", "UNMAPPABLE", "DELIVERED"],
        rows,
    ));
    text
}

fn events_table(events: &[EventView]) -> String {
    let mut rows = Vec::new();
    for event in events {
        let seen =
            [event.first_seen.clone(), event.last_seen.clone()].map(Option::unwrap_or_default);
        for (state, counts) in event
            .states
            .iter()
            .map(|(state, counts)| (*state, counts))
            .chain([("all", &event.total)])
        {
            let mut row = vec![
                event.external_account_id.clone(),
                event.external_event_id.clone(),
                state.to_owned(),
            ];
            row.extend(counts_cells(counts));
            row.extend(seen.clone());
            rows.push(row);
        }
    }
    table(
        &[
            "ACCOUNT",
            "EVENT",
            "STATE",
            "PENDING",
            "DEAD",
            "UNMAPPABLE",
            "DELIVERED",
            "FIRST SEEN",
            "LAST SEEN",
        ],
        rows,
    )
}

fn page_table(page: &Page) -> String {
    let cell = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".into());
    let rows = page
        .records
        .iter()
        .map(|item: &Item| {
            vec![
                item.id.clone(),
                item.source.clone(),
                item.status.to_owned(),
                item.state.unwrap_or("-").to_owned(),
                cell(&item.external_event_id),
                cell(&item.email),
                item.attempts.to_string(),
                cell(&item.received_at),
                cell(&item.last_error),
            ]
        })
        .collect();
    let mut text = table(
        &[
            "ID",
            "SOURCE",
            "STATUS",
            "STATE",
            "EVENT",
            "EMAIL",
            "ATTEMPTS",
            "RECEIVED",
            "LAST ERROR",
        ],
        rows,
    );
    if let Some(cursor) = &page.next_cursor {
        text.push_str(&format!("more: --cursor {cursor}\n"));
    }
    text
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
    fn operator_subcommands_take_their_arguments() {
        assert_eq!(
            from_args([
                "attendance-relay",
                "records",
                "list",
                "--status",
                "dead",
                "--json"
            ])
            .unwrap(),
            Command::Operator(Operator::Records(Records::List {
                status: Some("dead".into()),
                event: None,
                source: None,
                limit: None,
                cursor: None,
                output: Output { json: true },
            }))
        );
        assert!(from_args(["attendance-relay", "records", "retry", "12", "d3"]).is_ok());
        assert!(
            from_args([
                "attendance-relay",
                "records",
                "retry",
                "--dead",
                "--event",
                "7"
            ])
            .is_ok()
        );
        // Ids and --dead exclude each other, and filters belong to --dead.
        assert!(from_args(["attendance-relay", "records", "retry"]).is_err());
        assert!(from_args(["attendance-relay", "records", "retry", "1", "--dead"]).is_err());
        assert!(from_args(["attendance-relay", "records", "retry", "1", "--event", "7"]).is_err());
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
