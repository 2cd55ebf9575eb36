//! Through a real PgBouncer: session pooling works end to end; transaction
//! pooling, which hands a server connection to another client between
//! transactions, is refused at start with what to change.

use std::time::Duration;

use actix_web::http::StatusCode;
use attendance_relay::{
    demo::simulator::{Options, Simulator},
    store::{PostgresStore, StoreOptions},
};

use crate::{
    cluster::{Bouncer, Cluster},
    helpers::{StoreDir, spawn_forwarding_app_in, wait_until, zoom_join},
};

#[actix_web::test]
#[ignore = "needs PostgreSQL 15 and pgbouncer, as root or the postgres user: cargo test --test api -- --include-ignored pg_pooler"]
async fn session_pooling_carries_ingest_and_forwarding_and_transaction_pooling_is_refused() {
    let cluster = Cluster::start(false);
    let transaction = Bouncer::start(&cluster, "transaction");
    let options = StoreOptions {
        connect_wait: Duration::ZERO,
        ..StoreOptions::default()
    };
    match PostgresStore::open(&transaction.url("relay"), &options) {
        Ok(_) => panic!("transaction pooling was accepted"),
        Err(err) => {
            let err = err.to_string();
            assert!(
                err.contains("transaction or statement mode")
                    && err.contains("pool_mode = session"),
                "{err}"
            );
        }
    }

    let session = Bouncer::start(&cluster, "session");
    let hubspot = Simulator::start(Options::default()).await.unwrap();
    let url = session.url("relay");
    let app = spawn_forwarding_app_in(
        StoreDir::new(),
        &hubspot,
        &[("RELAY_DATABASE_URL", url.as_str())],
    )
    .await;
    for n in 0..20 {
        let body = zoom_join("900", &format!("p{n}@example.com"), "2026-01-01T10:00:00Z");
        assert_eq!(app.post_zoom(&body).await.0, StatusCode::OK);
    }
    wait_until("every join reached HubSpot", 30, async || {
        hubspot.attendance().len() == 20
    })
    .await;
    app.stop().await;
}
