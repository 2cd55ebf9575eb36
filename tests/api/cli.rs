//! The real binary's command line: help with every setting, version, refused
//! arguments, and settings that cannot work refused before anything listens.

use std::process::{Command, Output};

use attendance_relay::settings::{self, TABLE};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("relay.db").display());
    Command::new(env!("CARGO_BIN_EXE_attendance-relay"))
        .args(args)
        .env_clear()
        .env("RELAY_DATABASE_URL", db)
        .env("RELAY_LISTEN_ADDR", "127.0.0.1:0")
        .env("RELAY_ADMIN_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_prints_the_usage_and_every_setting_without_starting_even_with_bad_settings() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["serve", "--help"],
        &["help", "serve"],
    ] {
        let output = run(args, &[("RELAY_LOG_FORMAT", "xml")]);
        let stdout = text(&output.stdout);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            text(&output.stderr)
        );
        assert!(
            stdout.contains("Usage: attendance-relay"),
            "{args:?}: {stdout}"
        );
        for setting in TABLE {
            assert!(
                stdout.contains(setting.name),
                "{args:?}: {} missing",
                setting.name
            );
        }
        // As printed, so docs/configuration.md, held to the same text, says
        // what `--help` says.
        assert!(
            stdout.contains(settings::help().trim_end()),
            "{args:?}: {stdout}"
        );
        assert!(
            stdout.contains(
                "RELAY_MAX_BODY_BYTES  (a positive whole number of bytes; default: 262144)"
            )
        );
        assert!(stdout.contains("HUBSPOT_TOKEN_URL  (an absolute http(s) URL; unset: `{HUBSPOT_BASE_URL}/oauth/2026-03/token`)"));
    }
    let top = text(&run(&["--help"], &[]).stdout);
    assert!(top.contains("serve") && top.contains("demo"), "{top}");
}

#[test]
fn version_prints_the_version() {
    let output = run(&["--version"], &[]);
    assert!(output.status.success());
    assert_eq!(
        text(&output.stdout).trim(),
        format!("attendance-relay {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn unknown_arguments_are_refused_with_exit_status_2() {
    for args in [
        &["run"][..],
        &["--port", "8080"],
        &["serve", "now"],
        &["demo", "-x"],
    ] {
        let output = run(args, &[]);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = text(&output.stderr);
        assert!(
            stderr.contains("error:") && stderr.contains("Usage:"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn settings_that_cannot_work_stop_the_start_with_exit_status_2_naming_what_is_expected() {
    let cases = [
        (
            ("HUBSPOT_BASE_URL", "not a url"),
            r#"HUBSPOT_BASE_URL="not a url": expected an absolute http(s) URL"#,
        ),
        (
            ("RELAY_LOG_FORMAT", "xml"),
            r#"RELAY_LOG_FORMAT="xml": expected text or json"#,
        ),
        (
            ("RELAY_MAX_BODY_BYTES", "lots"),
            r#"RELAY_MAX_BODY_BYTES="lots": expected a positive whole number of bytes"#,
        ),
        (
            ("RELAY_UPSERT_EVENTS", "yes"),
            r#"RELAY_UPSERT_EVENTS="yes": expected true or false"#,
        ),
        // Found by the build, before it binds.
        (("HUBSPOT_CLIENT_ID", "half-an-oauth-app"), "go together"),
    ];
    for ((name, value), expected) in cases {
        let output = run(&["serve"], &[(name, value)]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(!stderr.contains("listening"), "{name}: {stderr}");
    }
}
