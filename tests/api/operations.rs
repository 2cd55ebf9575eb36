use actix_web::http::StatusCode;

use crate::helpers::{metric, spawn_app, wait_until};

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

    // A 200 kB delivery, unsigned: 401 while it fits beside the trickling
    // one, 503 with Retry-After while that one holds its reservation.
    let big = async || {
        let mut response = app
            .client
            .post(format!("{}/webhooks/zoom", app.public))
            .send_body(vec![b' '; 200_000])
            .await
            .unwrap();
        let _ = response.body().await;
        (
            response.status(),
            response.headers().contains_key("retry-after"),
        )
    };
    let mut answer = None;
    wait_until(
        "the trickling request holds its reservation",
        10,
        async || {
            answer = Some(big().await);
            answer.is_some_and(|(status, _)| status != StatusCode::UNAUTHORIZED)
        },
    )
    .await;
    assert_eq!(answer, Some((StatusCode::SERVICE_UNAVAILABLE, true)));
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
    wait_until("the trickling request's room is free", 10, async || {
        big().await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    let join = crate::helpers::zoom_join("1", "a@example.com", "2026-01-01T10:00:00Z");
    let (status, body) = app.post_zoom(&join).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.records().await.len(), 1);
}

/// `# TYPE` of each family in Prometheus text.
fn family_types(text: &str) -> std::collections::HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

/// `le` bounds of a histogram family's first series.
fn buckets(text: &str, family: &str) -> Vec<f64> {
    let prefix = format!("{family}_bucket{{");
    let mut bounds: Vec<f64> = text
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .filter_map(|line| line.split("le=\"").nth(1)?.split('"').next()?.parse().ok())
        .filter(|bound: &f64| bound.is_finite())
        .collect();
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    bounds
}

/// A gateway that has ingested, forwarded, refused and answered admin calls.
async fn busy_gateway() -> (
    crate::helpers::TestApp,
    attendance_relay::demo::simulator::Simulator,
) {
    use attendance_relay::demo::simulator::{Options, Simulator};

    let hubspot = Simulator::start(Options::default()).await.unwrap();
    hubspot.add_contact("jill@example.com");
    let app = crate::helpers::spawn_forwarding_app(
        &hubspot,
        &[("RELAY_ADMIN_JWT_SECRET", crate::helpers::ADMIN_SECRET)],
    )
    .await;
    let join = crate::helpers::zoom_join("8675309", "jill@example.com", "2026-01-01T10:00:00Z");
    let (status, _) = app.post_zoom(&join).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.post("/webhooks/zoom", b"{}", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.admin("GET", "/admin/status").await;
    crate::helpers::wait_until("the record is delivered", 20, async || {
        app.records().await[0].status == attendance_relay::store::RecordStatus::Delivered
    })
    .await;
    (app, hubspot)
}

#[actix_web::test]
async fn every_spec_metric_family_is_exported_with_its_type_and_bounded_labels() {
    let (app, _hubspot) = busy_gateway().await;
    let text = app.metrics().await;
    let types = family_types(&text);
    for (family, kind) in [
        ("relay_webhooks_received_total", "counter"),
        ("relay_records_total", "counter"),
        ("relay_queue_records", "gauge"),
        ("relay_oldest_pending_age_seconds", "gauge"),
        ("relay_hubspot_requests_total", "counter"),
        ("relay_hubspot_request_duration_seconds", "histogram"),
        ("relay_hubspot_batch_size", "histogram"),
        ("relay_forwarding_paused", "gauge"),
        ("relay_token_refreshes_total", "counter"),
        ("relay_token_expires_in_seconds", "gauge"),
        ("relay_ingest_duration_seconds", "histogram"),
        ("relay_http_requests_total", "counter"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("process_open_fds", "gauge"),
    ] {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    // Ingest commits take from a fraction of a millisecond to seconds.
    let ingest = buckets(&text, "relay_ingest_duration_seconds");
    assert!(
        ingest[0] < 0.001 && *ingest.last().unwrap() >= 5.0,
        "{ingest:?}"
    );
    let hubspot = buckets(&text, "relay_hubspot_request_duration_seconds");
    assert!(
        hubspot[0] <= 0.01 && *hubspot.last().unwrap() >= 15.0,
        "{hubspot:?}"
    );
    // Routes by pattern, never by path; no email or event id in any label.
    let matched = [
        ("listener", "public"),
        ("route", "/webhooks/zoom"),
        ("status", "200"),
    ];
    assert_eq!(
        metric(&text, "relay_http_requests_total", &matched),
        Some(1.0)
    );
    let admin = [
        ("listener", "admin"),
        ("route", "/admin/status"),
        ("status", "200"),
    ];
    assert_eq!(
        metric(&text, "relay_http_requests_total", &admin),
        Some(1.0)
    );
    for personal in ["jill", "example.com", "8675309"] {
        assert!(!text.contains(personal), "{personal} in a label:\n{text}");
    }
}

#[actix_web::test]
#[ignore = "needs promtool (Debian's prometheus package): --include-ignored"]
async fn promtool_finds_nothing_to_complain_about_in_the_metrics() {
    use std::{io::Write, process::Stdio};

    let (app, _hubspot) = busy_gateway().await;
    let text = app.metrics().await;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("promtool (Debian's prometheus package) is needed: {err}"));
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}

#[actix_web::test]
async fn json_logs_carry_one_line_per_delivery_with_its_source_outcome_and_id_and_no_email() {
    use crate::helpers::{Gateway, ZOOM_SECRET, now_secs, zoom_join, zoom_signature};

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gateway.log");
    let env = [
        ("RELAY_LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ];
    let mut gateway = Gateway::start_with(&dir.path().join("relay.db"), &env, Some(&log)).await;
    let body = zoom_join("8675309", "jill@example.com", "2026-01-01T10:00:00Z");
    let ts = now_secs();
    for signature in [zoom_signature(ZOOM_SECRET, ts, &body), "v0=00".to_owned()] {
        let response = gateway
            .client
            .post(format!("{}/webhooks/zoom", gateway.public))
            .insert_header(("x-zm-signature", signature))
            .insert_header(("x-zm-request-timestamp", ts.to_string()))
            .send_body(body.clone())
            .await
            .unwrap();
        assert!(response.status().is_success() || response.status() == StatusCode::UNAUTHORIZED);
    }
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let deliveries: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|line| line["source"] == "zoom" && line["delivery"].is_string())
        .collect();
    let outcomes: Vec<&str> = deliveries
        .iter()
        .map(|line| line["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["accepted", "unauthorized"], "{text}");
    assert_ne!(deliveries[0]["delivery"], deliveries[1]["delivery"]);
    assert!(!text.contains("jill"), "an email at info level:\n{text}");
}
