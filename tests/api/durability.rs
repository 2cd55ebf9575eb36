//! The real binary, killed and restarted: what got a 200 is still there.

use std::{path::Path, process::Command, time::Duration};

use actix_web::http::StatusCode;

use attendance_relay::{
    demo::simulator::{Fault, Options, Simulator},
    hubspot::Operation,
};

use crate::helpers::{
    Gateway, HUBSPOT_TOKEN, ZOOM_SECRET, metric, now_secs, wait_until, zoom_signature,
};

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
    use std::io::{Read, Write};

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let mut gateway = Gateway::start(&db).await;
    // A delivery whose body is still arriving when SIGTERM comes.
    let body = crate::helpers::zoom_join("77", "late@example.com", "2026-01-01T10:00:00Z");
    let ts = now_secs();
    let signature = zoom_signature(ZOOM_SECRET, ts, &body);
    let mut in_flight =
        std::net::TcpStream::connect(gateway.public.trim_start_matches("http://")).unwrap();
    write!(
        in_flight,
        "POST /webhooks/zoom HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         x-zm-signature: {signature}\r\nx-zm-request-timestamp: {ts}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    in_flight.write_all(first).unwrap();
    in_flight.flush().unwrap();
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;

    let pid = gateway.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    assert!(
        gateway.child.try_wait().unwrap().is_none(),
        "still finishing the request in flight"
    );
    in_flight.write_all(rest).unwrap();
    let mut answer = String::new();
    in_flight
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = in_flight.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""accepted":1"#), "{answer}");
    let status = gateway.child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");

    let mut restarted = Gateway::start(&db).await;
    assert_eq!(
        restarted.pending().await,
        1.0,
        "the acknowledged delivery is stored"
    );
    restarted.child.kill().unwrap();
    restarted.child.wait().unwrap();
}

/// A gateway forwarding to `hubspot` (with the environment it was started
/// with) whose one record's create call is in flight.
async fn gateway_mid_create(
    hubspot: &Simulator,
    db: &Path,
) -> (Gateway, Vec<(&'static str, String)>) {
    let env = vec![
        ("HUBSPOT_BASE_URL", hubspot.url()),
        ("HUBSPOT_ACCESS_TOKEN", HUBSPOT_TOKEN.to_owned()),
        ("RELAY_BATCH_LINGER_MS", "0".to_owned()),
    ];
    let gateway = Gateway::start_with(db, &env, None).await;
    assert_eq!(gateway.post_join(0).await, Some(StatusCode::OK));
    wait_until("the create call is in flight", 20, async || {
        hubspot
            .calls()
            .iter()
            .any(|c| c.operation == Operation::AttendanceCreate)
    })
    .await;
    (gateway, env)
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
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let (mut gateway, env) = gateway_mid_create(&hubspot, &db).await;
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

#[actix_web::test]
async fn sigterm_lets_a_batch_in_flight_finish_and_settle() {
    let hubspot = Simulator::start(Options::default()).await.unwrap();
    hubspot.add_contact("p0@example.com");
    hubspot.set_latency(Some(Duration::from_secs(2)));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let (mut gateway, env) = gateway_mid_create(&hubspot, &db).await;
    let pid = gateway.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = gateway.child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");

    // Settled before the exit: nothing waits out a lease held by the gone
    // process, and nothing is sent again.
    hubspot.set_latency(None);
    let mut restarted = Gateway::start_with(&db, &env, None).await;
    let text = restarted.metrics().await;
    assert_eq!(
        metric(&text, "relay_queue_records", &[("status", "delivered")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "relay_queue_records", &[("status", "pending")]),
        Some(0.0)
    );
    restarted.child.kill().unwrap();
    restarted.child.wait().unwrap();
    let creates = hubspot
        .calls()
        .iter()
        .filter(|c| c.operation == Operation::AttendanceCreate)
        .count();
    assert_eq!((creates, hubspot.attendance().len()), (1, 1));
}
