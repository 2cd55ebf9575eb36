use actix_web::http::StatusCode;

use crate::helpers::{metric, spawn_app};

#[actix_web::test]
async fn health_and_readiness_answer_on_the_public_port() {
    let app = spawn_app().await;
    let (status, body) = app.get(&format!("{}/healthz", app.public)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.get(&format!("{}/readyz", app.public)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[actix_web::test]
async fn metrics_are_served_on_the_admin_port_only() {
    let app = spawn_app().await;
    let (status, _) = app.get(&format!("{}/metrics", app.public)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.get(&format!("{}/webhooks/zoom", app.admin)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let text = app.metrics().await;
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "relay_oldest_pending_age_seconds",
    ] {
        assert!(
            metric(&text, name, &[]).is_some(),
            "{name} missing from:\n{text}"
        );
    }
    for outcome in [
        "accepted",
        "duplicate",
        "ignored",
        "unauthorized",
        "invalid",
        "too_large",
        "unavailable",
    ] {
        let series = metric(
            &text,
            "relay_webhooks_received_total",
            &[("source", "zoom"), ("outcome", outcome)],
        );
        assert_eq!(series, Some(0.0), "{outcome}");
    }
    assert_eq!(
        metric(&text, "relay_queue_records", &[("status", "pending")]),
        Some(0.0)
    );
    assert!(text.contains("relay_ingest_duration_seconds_bucket"));
}

#[actix_web::test]
async fn pending_records_show_in_queue_metrics() {
    let app = spawn_app().await;
    let body = serde_json::json!({
        "event": "meeting.registration_approved", "event_ts": 1_700_000_000_000_i64,
        "payload": {"account_id": "A", "object": {"id": 5, "registrant": {"email": "Someone@Example.com"}}}
    });
    let (status, _) = app.post_zoom(body.to_string().as_bytes()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.records().await[0].record.email, "someone@example.com");

    let text = app.metrics().await;
    assert_eq!(
        metric(&text, "relay_queue_records", &[("status", "pending")]),
        Some(1.0)
    );
    let age = metric(&text, "relay_oldest_pending_age_seconds", &[]).unwrap();
    assert!((0.0..60.0).contains(&age), "{age}");
    let timed = metric(
        &text,
        "relay_ingest_duration_seconds_count",
        &[("source", "zoom")],
    );
    assert_eq!(timed, Some(1.0));
}
