//! What an operator follows a request and a record by: the request id in
//! the answer and the log, the record id from claim to HubSpot's answer,
//! and metric series that exist before anything happened.

use actix_web::http::StatusCode;
use attendance_relay::hubspot::Operation;
use serde_json::Value;

use crate::helpers::{
    Gateway, HUBSPOT_TOKEN, ZOOM_SECRET, metric, now_secs, spawn_app, wait_until, zoom_join,
    zoom_signature,
};
use attendance_relay::demo::simulator::{Options, Simulator};

/// The `x-request-id` of the answer to a signed join sent with `incoming`.
async fn request_id(
    client: &awc::Client,
    public: &str,
    incoming: Option<&str>,
    email: &str,
) -> String {
    let body = zoom_join("5150", email, "2026-01-01T10:00:00Z");
    let ts = now_secs();
    let mut request = client
        .post(format!("{public}/webhooks/zoom"))
        .insert_header(("content-type", "application/json"))
        .insert_header(("x-zm-signature", zoom_signature(ZOOM_SECRET, ts, &body)))
        .insert_header(("x-zm-request-timestamp", ts.to_string()));
    if let Some(incoming) = incoming {
        request = request.insert_header(("x-request-id", incoming));
    }
    let response = request.send_body(body).await.expect("request sent");
    assert_eq!(response.status(), StatusCode::OK);
    response
        .headers()
        .get("x-request-id")
        .expect("the answer carries x-request-id")
        .to_str()
        .unwrap()
        .to_owned()
}

fn fresh(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[actix_web::test]
async fn every_answer_carries_a_request_id_and_a_sane_incoming_one_is_kept() {
    let app = spawn_app().await;
    let (public, client) = (app.public.as_str(), &app.client);
    let first = request_id(client, public, None, "a@example.com").await;
    let second = request_id(client, public, None, "b@example.com").await;
    assert!(
        fresh(&first) && fresh(&second) && first != second,
        "{first} {second}"
    );
    let kept = request_id(client, public, Some("ingress-7f3a:1"), "c@example.com").await;
    assert_eq!(kept, "ingress-7f3a:1");
    for insane in ["two words", &"x".repeat(65), "quote\"brace}"] {
        let replaced = request_id(client, public, Some(insane), "d@example.com").await;
        assert!(fresh(&replaced), "{insane:?} became {replaced:?}");
    }
    // Refusals and the unrouted too, on both listeners.
    for url in [
        format!("{public}/nowhere"),
        format!("{}/admin/status", app.admin),
        format!("{}/metrics", app.admin),
    ] {
        let response = client.get(&url).send().await.expect("request sent");
        let id = response.headers().get("x-request-id");
        assert!(id.is_some_and(|id| fresh(id.to_str().unwrap())), "{url}");
    }
}

#[actix_web::test]
async fn every_hubspot_call_series_is_exported_at_zero_before_the_first_call() {
    let app = spawn_app().await;
    let text = app.metrics().await;
    for operation in Operation::ALL {
        for status in [
            "200", "207", "400", "401", "403", "404", "429", "500", "503", "error",
        ] {
            let labels = [("operation", operation.as_str()), ("status", status)];
            assert_eq!(
                metric(&text, "relay_hubspot_requests_total", &labels),
                Some(0.0),
                "{labels:?}"
            );
        }
        assert_eq!(
            metric(
                &text,
                "relay_hubspot_request_duration_seconds_count",
                &[("operation", operation.as_str())]
            ),
            Some(0.0)
        );
    }
}

fn lines(log: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

#[actix_web::test]
async fn a_webhook_is_followed_in_the_json_log_by_its_request_id_and_its_record_by_its_id() {
    let hubspot = Simulator::start(Options::default()).await.unwrap();
    hubspot.add_contact("follow@example.com");
    let dir = tempfile::tempdir().unwrap();
    let (db, log) = (dir.path().join("relay.db"), dir.path().join("gateway.log"));
    let env = [
        ("RELAY_LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info".to_owned()),
        ("HUBSPOT_BASE_URL", hubspot.url()),
        ("HUBSPOT_ACCESS_TOKEN", HUBSPOT_TOKEN.to_owned()),
        ("RELAY_BATCH_LINGER_MS", "50".to_owned()),
    ];
    let mut gateway = Gateway::start_with(&db, &env, Some(&log)).await;
    let id = request_id(
        &gateway.client,
        &gateway.public,
        Some("follow-me-1"),
        "follow@example.com",
    )
    .await;
    assert_eq!(id, "follow-me-1");
    wait_until("the batch is settled in the log", 20, async || {
        lines(&log).iter().any(|l| l["message"] == "batch settled")
    })
    .await;
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();
    let lines = lines(&log);

    let ingest: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["request_id"] == "follow-me-1")
        .collect();
    assert!(
        ingest
            .iter()
            .any(|l| l["message"] == "webhook stored" && l["request_id"] == "follow-me-1"),
        "{ingest:?}"
    );

    let store = attendance_relay::store::open(
        &format!("sqlite://{}", db.display()),
        &attendance_relay::store::StoreOptions::default(),
    )
    .unwrap();
    let records = store.records(None, 10).await.unwrap();
    assert_eq!(records.len(), 1);
    let record = format!("[{}]", records[0].id);
    let claimed = lines
        .iter()
        .find(|l| l["message"] == "batch claimed" && l["records"] == record.as_str())
        .unwrap_or_else(|| panic!("no claim of {record}: {lines:?}"));
    assert_eq!(claimed["requests"], r#"["follow-me-1"]"#);
    let lease = &claimed["span"]["lease"];
    assert_eq!(claimed["span"]["name"], "batch");
    assert_eq!(claimed["span"]["event"], "5150");
    let in_batch = |message: &str| {
        lines
            .iter()
            .filter(|l| l["message"] == message && &l["span"]["lease"] == lease)
            .collect::<Vec<_>>()
    };
    let answered = in_batch("hubspot call");
    assert!(
        answered
            .iter()
            .any(|l| l["operation"] == "attendance_create" && l["status"] == "200"),
        "{answered:?}"
    );
    let settled = in_batch("batch settled");
    assert_eq!(settled.len(), 1, "{settled:?}");
    assert_eq!(settled[0]["delivered"], record.as_str());
    hubspot.stop().await;
}
