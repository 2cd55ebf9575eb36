//! The real binary, killed and restarted: what got a 200 is still there.

use std::{process::Command, time::Duration};

use actix_web::http::StatusCode;

use attendance_relay::{
    demo::simulator::{Fault, Options, Simulator},
    hubspot::Operation,
};

use crate::helpers::{Gateway, HUBSPOT_TOKEN, metric, wait_until};

#[actix_web::test]
async fn an_acknowledged_webhook_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let mut gateway = Gateway::start(&db).await;
    let answers = futures_util::future::join_all((0..40).map(|n| gateway.post_join(n))).await;
    assert!(
        answers.iter().all(|a| *a == Some(StatusCode::OK)),
        "{answers:?}"
    );
    gateway.child.kill().unwrap(); // SIGKILL: no chance to flush anything
    gateway.child.wait().unwrap();

    let mut restarted = Gateway::start(&db).await;
    assert_eq!(restarted.pending().await, 40.0);
    restarted.child.kill().unwrap();
    restarted.child.wait().unwrap();
}

#[actix_web::test]
async fn sigterm_finishes_requests_in_flight_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let mut gateway = Gateway::start(&db).await;
    let pid = gateway.child.id().to_string();
    let requests = futures_util::future::join_all((0..60).map(|n| gateway.post_join(n)));
    let terminate = async {
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    };
    let (answers, ()) = tokio::join!(requests, terminate);
    let status = gateway.child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");

    let acknowledged = answers
        .iter()
        .filter(|a| **a == Some(StatusCode::OK))
        .count();
    assert!(
        answers
            .iter()
            .all(|a| a.is_none() || *a == Some(StatusCode::OK)),
        "{answers:?}"
    );
    let mut restarted = Gateway::start(&db).await;
    assert!(restarted.pending().await >= acknowledged as f64);
    restarted.child.kill().unwrap();
    restarted.child.wait().unwrap();
}

#[actix_web::test]
async fn a_record_whose_call_was_cut_by_a_crash_is_delivered_after_restart() {
    let hubspot = Simulator::start(Options::default()).await.unwrap();
    hubspot.add_contact("p0@example.com");
    // The first create hangs; the gateway dies while waiting for it.
    hubspot.fail_next(
        Operation::AttendanceCreate,
        Fault::status(200).delayed(Duration::from_secs(30)),
    );
    let env = [
        ("HUBSPOT_BASE_URL", hubspot.url()),
        ("HUBSPOT_ACCESS_TOKEN", HUBSPOT_TOKEN.to_owned()),
        ("RELAY_BATCH_LINGER_MS", "0".to_owned()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let mut gateway = Gateway::start_with(&db, &env, None).await;
    assert_eq!(gateway.post_join(0).await, Some(StatusCode::OK));
    wait_until("the create call is in flight", 10, async || {
        hubspot
            .calls()
            .iter()
            .any(|c| c.operation == Operation::AttendanceCreate)
    })
    .await;
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();
    assert!(hubspot.attendance().is_empty());

    let mut restarted = Gateway::start_with(&db, &env, None).await;
    // Its lease (15 s) has to run out first: the dead process held it.
    wait_until("the record reaches HubSpot", 40, async || {
        hubspot.attendance().len() == 1
    })
    .await;
    wait_until("it is settled as delivered", 10, async || {
        let text = restarted.metrics().await;
        metric(&text, "relay_queue_records", &[("status", "delivered")]) == Some(1.0)
    })
    .await;
    assert_eq!(hubspot.attendance().len(), 1);
    restarted.child.kill().unwrap();
    restarted.child.wait().unwrap();
}
