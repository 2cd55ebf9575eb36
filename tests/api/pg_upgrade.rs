//! A database written by the first PostgreSQL release (schema 1, before the
//! shared HubSpot window and completions), restored from its `pg_dump` into a
//! fresh database, is upgraded in place and behaves as before.

use std::{path::Path, process::Command, time::Duration};

use attendance_relay::store::{
    Admission, CallWindow, Ingest, Operator, PostgresStore, StoreOptions,
};

use crate::{pg::TestDatabase, store::first_release_records_are_kept};

fn psql(url: &str, args: &[&str]) -> String {
    let output = Command::new("psql")
        .args(["-X", "-At", "-q", "-v", "ON_ERROR_STOP=1", url])
        .args(args)
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn schema_version(url: &str) -> String {
    psql(url, &["-c", "SELECT MAX(version) FROM relay_schema"])
}

#[actix_web::test]
#[ignore = "needs PostgreSQL (RELAY_TEST_POSTGRES_URL or 127.0.0.1:5432) and psql: --include-ignored"]
async fn a_first_postgres_release_database_is_upgraded_in_place() {
    let database = TestDatabase::create();
    let dump =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/postgres-first-release.sql");
    psql(&database.url, &["-f", dump.to_str().unwrap()]);
    assert_eq!(schema_version(&database.url), "1");

    let store = PostgresStore::open(&database.url, &StoreOptions::default()).unwrap();
    first_release_records_are_kept(&store).await;
    // The shared HubSpot window, which that release did not have, works.
    assert!(matches!(
        store
            .admit_call(100, Duration::from_secs(10))
            .await
            .unwrap(),
        Admission::Admitted { .. }
    ));
    store.close().await;
    assert_eq!(schema_version(&database.url), "3");
    // Opening again is a no-op.
    let reopened = PostgresStore::open(&database.url, &StoreOptions::default()).unwrap();
    assert_eq!(reopened.records(None, 10).await.unwrap().len(), 6);
    reopened.close().await;
}
