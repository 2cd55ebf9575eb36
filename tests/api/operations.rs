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

#[actix_web::test]
async fn liveness_fails_once_the_store_can_no_longer_write() {
    let app = spawn_app().await;
    app.store.close().await;
    let (status, body) = app.get(&format!("{}/healthz", app.public)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("writer"), "{body}");
}

#[actix_web::test]
async fn every_fetch_series_is_exported_before_the_first_delivery() {
    let app = crate::helpers::spawn_app_with(&[("EVENTBRITE_WEBHOOK_TOKEN", "path-token")]).await;
    let text = app.metrics().await;
    for outcome in ["resolved", "retry", "failed", "refused"] {
        assert_eq!(
            metric(
                &text,
                "relay_fetches_total",
                &[("source", "eventbrite"), ("outcome", outcome)]
            ),
            Some(0.0),
            "{outcome}"
        );
    }
}

/// A request whose body is still coming holds its share of the in-flight
/// budget; past the budget new deliveries are told to come back later.
#[actix_web::test]
async fn past_the_in_flight_budget_deliveries_get_503_with_retry_after_and_nothing_is_lost() {
    use std::io::Write;

    let app = crate::helpers::spawn_app_with(&[("RELAY_MAX_INFLIGHT_BYTES", "300000")]).await;
    let addr = app.public.trim_start_matches("http://").to_owned();
    // 200 kB announced, 10 sent: it keeps its reservation while it trickles.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        slow,
        "POST /webhooks/zoom HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200000\r\n\r\n0123456789"
    )
    .unwrap();
    slow.flush().unwrap();
    actix_web::rt::time::sleep(std::time::Duration::from_millis(200)).await;

    let big = vec![b' '; 200_000];
    let mut response = app
        .client
        .post(format!("{}/webhooks/zoom", app.public))
        .send_body(big)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let _ = response.body().await;
    let text = app.metrics().await;
    assert_eq!(
        metric(
            &text,
            "relay_webhooks_received_total",
            &[("source", "zoom"), ("outcome", "unavailable")]
        ),
        Some(1.0)
    );

    // The trickling request goes away; its room is free again.
    drop(slow);
    actix_web::rt::time::sleep(std::time::Duration::from_millis(200)).await;
    let join = crate::helpers::zoom_join("1", "a@example.com", "2026-01-01T10:00:00Z");
    let (status, body) = app.post_zoom(&join).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.records().await.len(), 1);
}
