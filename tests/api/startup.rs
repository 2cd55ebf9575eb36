//! A store that cannot open stops the start with one log line (its JSON
//! `error` field) naming what failed and what to do, exit status 1 (2 for a
//! URL that cannot work), no panic and never the password; a PostgreSQL
//! server not up yet is waited for.

use std::{
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    cluster::{Cluster, PASSWORD_ROLE},
    helpers::{Gateway, free_port},
};

/// What a start that fails printed and how it ended.
struct Failure {
    status: i32,
    /// Every line, as JSON.
    lines: Vec<Value>,
    raw: String,
}

impl Failure {
    /// The one error line's `error` field.
    fn error(&self) -> &str {
        let errors: Vec<&Value> = self
            .lines
            .iter()
            .filter(|line| line["level"] == "ERROR")
            .collect();
        assert_eq!(errors.len(), 1, "one error line: {}", self.raw);
        errors[0]["error"].as_str().expect("an error field")
    }
}

/// Starts the binary on `database_url`, which must fail within 30 s.
fn start_failing(database_url: &str, env: &[(&str, &str)]) -> Failure {
    let mut child = Command::new(env!("CARGO_BIN_EXE_attendance-relay"))
        .env_clear()
        .env("RELAY_LISTEN_ADDR", "127.0.0.1:0")
        .env("RELAY_ADMIN_ADDR", "127.0.0.1:0")
        .env("RELAY_LOG_FORMAT", "json")
        .env("RELAY_DATABASE_URL", database_url)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{database_url}: the gateway started");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let raw = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !raw.contains("panicked") && !raw.contains("backtrace"),
        "{raw}"
    );
    let lines = raw
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    Failure {
        status: output.status.code().expect("exited"),
        lines,
        raw,
    }
}

#[track_caller]
fn fails_with(database_url: &str, env: &[(&str, &str)], status: i32, saying: &[&str]) -> Failure {
    let failure = start_failing(database_url, env);
    assert_eq!(failure.status, status, "{}", failure.raw);
    let error = failure.error();
    for words in saying {
        assert!(error.contains(words), "{error:?} does not say {words:?}");
    }
    failure
}

#[test]
fn each_sqlite_start_up_failure_is_one_line_and_exit_status_1() {
    fails_with(
        "sqlite:///dev/null/relay.db",
        &[],
        1,
        &[
            "cannot write the SQLite database /dev/null/relay.db",
            "writable volume",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let newer = dir.path().join("newer.db");
    rusqlite::Connection::open(&newer)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    fails_with(
        &format!("sqlite://{}", newer.display()),
        &[],
        1,
        &[
            "schema version 99, newer than this gateway's",
            "run a newer gateway",
        ],
    );
    fails_with("mysql://db/relay", &[], 2, &["unsupported database url"]);
}

#[test]
#[ignore = "needs root (mounts a read-only tmpfs): cargo test --test api -- --include-ignored startup::"]
fn a_read_only_sqlite_database_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mount = |options: &str| {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(status.success(), "mount -o {options} (needs root)");
    };
    mount("size=8m");
    let path = dir.path().join("relay.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    mount("remount,ro");
    let failure = start_failing(&format!("sqlite://{}", path.display()), &[]);
    let _ = Command::new("umount").arg(dir.path()).status();
    assert_eq!(failure.status, 1, "{}", failure.raw);
    let error = failure.error();
    assert!(
        error.contains("cannot write the SQLite database")
            && error.contains("Read-only file system"),
        "{error}"
    );
}

#[test]
#[ignore = "needs PostgreSQL 15, openssl and root or the postgres user: cargo test --test api -- --include-ignored startup::"]
fn each_postgres_start_up_failure_is_one_line_and_exit_status_1() {
    let tls = Cluster::start(true);
    let plain = Cluster::start(false);
    let certs = tls.certs.as_ref().unwrap();

    let port = free_port();
    let unreachable = fails_with(
        &format!("postgres://postgres@127.0.0.1:{port}/relay"),
        &[("RELAY_STORE_CONNECT_TIMEOUT_SECS", "1")],
        1,
        &[
            &format!("cannot reach 127.0.0.1:{port}"),
            "RELAY_STORE_CONNECT_TIMEOUT_SECS",
        ],
    );
    assert!(
        unreachable
            .lines
            .iter()
            .any(|line| line["level"] == "WARN" && line["attempt"] == 1),
        "a line per attempt: {}",
        unreachable.raw
    );
    let wrong_password = fails_with(
        &format!(
            "postgres://{PASSWORD_ROLE}:wrong-password@127.0.0.1:{}/relay",
            plain.port
        ),
        &[],
        1,
        &[&format!("refused role \"{PASSWORD_ROLE}\""), "password"],
    );
    assert!(!wrong_password.raw.contains("wrong-password"));
    fails_with(
        &plain.url("nowhere", ""),
        &[],
        1,
        &[
            "database \"nowhere\" does not exist",
            "CREATE DATABASE nowhere",
        ],
    );
    fails_with(
        &plain.url("relay", "sslmode=require"),
        &[],
        1,
        &["requires TLS", "does not offer it"],
    );
    fails_with(
        &tls.url(
            "relay",
            &format!(
                "sslmode=verify-full&sslrootcert={}",
                certs.path("other-ca.crt")
            ),
        ),
        &[],
        1,
        &["is not trusted", "CA bundle"],
    );
    fails_with(
        &tls.url_by_address(
            "relay",
            &format!("sslmode=verify-full&sslrootcert={}", certs.path("ca.crt")),
        ),
        &[],
        1,
        &["not issued for that host name"],
    );
    tls.sql("CREATE DATABASE future");
    tls.sql_in(
        "future",
        "CREATE TABLE relay_schema (version INTEGER NOT NULL); INSERT INTO relay_schema VALUES (99)",
    );
    fails_with(
        &tls.verified_url("future"),
        &[],
        1,
        &[
            "schema version 99, newer than this gateway's",
            "run a newer gateway",
        ],
    );
    fails_with(
        &tls.url("relay", "sslmode=verify"),
        &[],
        2,
        &["sslmode=verify is not supported"],
    );
}

#[actix_web::test]
#[ignore = "needs PostgreSQL 15, openssl and root or the postgres user: cargo test --test api -- --include-ignored startup::"]
async fn a_server_not_up_yet_is_waited_for() {
    let cluster = Arc::new(Cluster::start(true));
    cluster.stop("fast");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gateway.log");
    // The server starts once the gateway has said it is waiting.
    let starter = {
        let (cluster, log) = (Arc::clone(&cluster), log.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("the database is not reachable yet")
            {
                assert!(Instant::now() < deadline, "no line about the wait");
                std::thread::sleep(Duration::from_millis(20));
            }
            cluster.start_again();
        })
    };
    let mut gateway = Gateway::start_with(
        &dir.path().join("unused.db"),
        &[
            ("RELAY_DATABASE_URL", cluster.verified_url("relay")),
            ("RUST_LOG", "info".into()),
        ],
        Some(&log),
    )
    .await;
    starter.join().unwrap();
    assert_eq!(
        gateway.post_join(1).await,
        Some(actix_web::http::StatusCode::OK)
    );
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();
}
