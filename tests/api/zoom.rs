use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use attendance_relay::{record::State, store::RecordStatus};
use serde_json::json;

use crate::helpers::{
    ZOOM_SECRET, metric, now_secs, spawn_app, spawn_app_with, zoom_examples, zoom_join, zoom_leave,
    zoom_registration, zoom_signature,
};

const EVENT_TS: i64 = 1_626_230_691_572;
const JOINED_MS: i64 = 1_626_212_691_000; // 2021-07-13T21:44:51Z
const LEFT_MS: i64 = 1_626_216_651_000; // 2021-07-13T22:50:51Z
/// Where a test needs only a body, not Zoom's own examples.
const WEBINAR: &str = "1234567890";
const EMAIL: &str = "jchill@example.com";

fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The SPEC's mapping of each attendance event, as Zoom's own examples carry it.
fn expected(event: &str) -> (State, i64, BTreeMap<String, String>, bool) {
    let registration = |state| (state, EVENT_TS, props(&[]), true);
    match event.split_once('.').unwrap().1 {
        "registration_created" | "registration_approved" => registration(State::Register),
        "registration_cancelled" => registration(State::Cancel),
        "registration_denied" if event.starts_with("webinar") => {
            // Zoom's example for this event says `"event": "webinar.registration_created"`.
            registration(State::Register)
        }
        "registration_denied" => registration(State::Cancel),
        "participant_joined" => (
            State::Attend,
            JOINED_MS,
            props(&[("joinedAt", "2021-07-13T21:44:51Z")]),
            false,
        ),
        "participant_left" => (
            State::Attend,
            LEFT_MS,
            props(&[("leftAt", "2021-07-13T22:50:51Z")]),
            false,
        ),
        other => panic!("no expectation for {other}"),
    }
}

const ATTENDANCE_EVENTS: [&str; 12] = [
    "meeting.registration_created",
    "meeting.registration_approved",
    "meeting.registration_cancelled",
    "meeting.registration_denied",
    "meeting.participant_joined",
    "meeting.participant_left",
    "webinar.registration_created",
    "webinar.registration_approved",
    "webinar.registration_cancelled",
    "webinar.registration_denied",
    "webinar.participant_joined",
    "webinar.participant_left",
];

#[actix_web::test]
#[ignore = "needs Zoom's webhook document in ../shared/specs/zoom: --include-ignored"]
async fn every_zoom_attendance_example_maps_as_the_spec_says() {
    let examples = zoom_examples();
    for event in ATTENDANCE_EVENTS {
        let app = spawn_app().await;
        let (status, body) = app.post_zoom(&examples[event]).await;
        assert_eq!(status, StatusCode::OK, "{event}: {body}");
        assert_eq!(
            body,
            json!({"accepted": 1, "duplicates": 0, "ignored": 0}),
            "{event}"
        );

        let records = app.records().await;
        assert_eq!(records.len(), 1, "{event}");
        let stored = &records[0];
        let (state, interaction_ms, properties, named) = expected(event);
        assert_eq!(stored.source, "zoom");
        assert_eq!(stored.status, RecordStatus::Pending, "{event}");
        let record = &stored.record;
        assert_eq!(record.state, state, "{event}");
        assert_eq!(record.email, "jchill@example.com", "{event}");
        assert_eq!(record.external_event_id, "1234567890", "{event}");
        assert_eq!(record.external_account_id, "AAAAAABBBB", "{event}");
        assert_eq!(record.interaction_ms, interaction_ms, "{event}");
        assert_eq!(record.properties, properties, "{event}");
        assert_eq!(record.vid, None);
        if named {
            assert_eq!(record.first_name.as_deref(), Some("Jill"), "{event}");
            assert_eq!(record.last_name.as_deref(), Some("Chill"), "{event}");
        }
        let info = record.event.as_ref().expect("event info kept");
        assert_eq!(info.start.as_deref(), Some("2021-07-13T21:44:51Z"));
        assert_eq!(info.end.as_deref(), Some("2021-07-13T22:44:51Z"));
    }
}

const END_EVENTS: [&str; 2] = ["meeting.ended", "webinar.ended"];

#[actix_web::test]
#[ignore = "needs Zoom's webhook document in ../shared/specs/zoom: --include-ignored"]
async fn zoom_s_end_examples_complete_the_event_with_its_start_and_end() {
    let mut examples = zoom_examples();
    for event in END_EVENTS {
        let app = spawn_app().await;
        let mut body: serde_json::Value = serde_json::from_slice(&examples[event]).unwrap();
        // Zoom's webinar example is a practice session's end, which completes nothing.
        if let Some(true) = body["payload"]["object"]["practice_session"].as_bool() {
            let (status, answer) = app.post_zoom(&examples[event]).await;
            assert_eq!(
                (status, answer["ignored"].clone()),
                (StatusCode::OK, json!(1))
            );
            body["payload"]["object"]["practice_session"] = false.into();
        }
        examples.insert(event.to_owned(), body.to_string().into_bytes());
        let (status, answer) = app.post_zoom(&examples[event]).await;
        assert_eq!(status, StatusCode::OK, "{event}: {answer}");
        assert_eq!(answer["accepted"], 1, "{event}");
        let records = app.records().await;
        let record = &records[0].record;
        assert_eq!(record.state, State::Complete, "{event}");
        assert_eq!(record.external_event_id, "1234567890");
        assert_eq!(record.external_account_id, "AAAAAABBBB");
        assert_eq!(
            record.properties,
            props(&[
                ("startDateTime", "2021-07-13T21:44:51Z"),
                ("endDateTime", "2021-07-13T23:00:51Z")
            ]),
            "{event}"
        );
        assert_eq!(records[0].status, RecordStatus::Pending, "{event}");
    }
}

#[actix_web::test]
#[ignore = "needs Zoom's webhook document in ../shared/specs/zoom: --include-ignored"]
async fn every_other_zoom_example_is_acknowledged_and_ignored() {
    let examples = zoom_examples();
    let app = spawn_app().await;
    let mut ignored = 0;
    for (event, body) in &examples {
        if ATTENDANCE_EVENTS.contains(&event.as_str()) || END_EVENTS.contains(&event.as_str()) {
            continue;
        }
        let (status, answer) = app.post_zoom(body).await;
        assert_eq!(status, StatusCode::OK, "{event}: {answer}");
        assert_eq!(
            answer,
            json!({"accepted": 0, "duplicates": 0, "ignored": 1}),
            "{event}"
        );
        ignored += 1;
    }
    assert!(
        ignored > 80,
        "Zoom's document lists over 90 other events, saw {ignored}"
    );
    assert!(app.records().await.is_empty());
    let metrics = app.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "relay_webhooks_received_total",
            &[("source", "zoom"), ("outcome", "ignored")]
        ),
        Some(ignored as f64)
    );
}

#[actix_web::test]
async fn a_leave_carries_the_time_of_the_join_it_closes() {
    let app = spawn_app().await;
    let join = zoom_join(WEBINAR, EMAIL, "2021-07-13T21:44:51Z");
    assert_eq!(app.post_zoom(&join).await.0, StatusCode::OK);
    let leave = zoom_leave(WEBINAR, EMAIL, "2021-07-13T22:50:51Z");
    let (status, body) = app.post_zoom(&leave).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["accepted"], 1);

    let records = app.records().await;
    assert_eq!(records.len(), 2, "a join and its leave are two records");
    let left = &records[1].record;
    assert_eq!(left.interaction_ms, JOINED_MS);
    assert_eq!(
        left.properties,
        props(&[
            ("joinedAt", "2021-07-13T21:44:51Z"),
            ("leftAt", "2021-07-13T22:50:51Z")
        ])
    );
}

#[actix_web::test]
async fn a_participant_without_email_is_kept_but_not_forwarded() {
    let app = spawn_app().await;
    let body = json!({
        "event": "webinar.participant_joined", "event_ts": EVENT_TS,
        "payload": {"account_id": "ACC", "object": {"id": "99", "participant": {"email": "", "user_name": "Guest", "join_time": "2021-07-13T21:44:51Z"}}}
    });
    let (status, answer) = app.post_zoom(body.to_string().as_bytes()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["accepted"], 1);
    let records = app.records().await;
    assert_eq!(records[0].status, RecordStatus::Unmappable);
    let metrics = app.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "relay_records_total",
            &[("state", "attend"), ("outcome", "unmappable")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "relay_queue_records", &[("status", "unmappable")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "relay_queue_records", &[("status", "pending")]),
        Some(0.0)
    );
}

#[actix_web::test]
async fn the_configured_account_id_replaces_the_payloads() {
    let app = spawn_app_with(&[("ZOOM_EXTERNAL_ACCOUNT_ID", "hubspot-side-account")]).await;
    app.post_zoom(&zoom_registration(
        "meeting.registration_approved",
        1,
        EMAIL,
    ))
    .await;
    assert_eq!(
        app.records().await[0].record.external_account_id,
        "hubspot-side-account"
    );
}

#[actix_web::test]
async fn url_validation_is_answered_after_the_signature_is_checked() {
    let app = spawn_app().await;
    let body = br#"{"payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680,"event":"endpoint.url_validation"}"#;
    let (status, answer) = app.post_zoom(body).await;
    assert_eq!(status, StatusCode::OK);
    let expected = {
        use hmac::{Hmac, KeyInit, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(ZOOM_SECRET.as_bytes()).unwrap();
        mac.update(b"qgg8vlvZRS6UYooatFL8Aw");
        hex::encode(mac.finalize().into_bytes())
    };
    assert_eq!(
        answer,
        json!({"plainToken": "qgg8vlvZRS6UYooatFL8Aw", "encryptedToken": expected})
    );

    let (status, _) = app.post("/webhooks/zoom", body, &[]).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "an unsigned handshake is refused"
    );
}

#[actix_web::test]
async fn forged_missing_and_stale_signatures_are_refused_and_nothing_is_stored() {
    let app = spawn_app().await;
    let body = &zoom_join(WEBINAR, EMAIL, "2021-07-13T21:44:51Z");
    let now = now_secs();
    let stale = now - 5401;
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("no headers", vec![]),
        (
            "no signature",
            vec![("x-zm-request-timestamp", now.to_string())],
        ),
        (
            "no timestamp",
            vec![("x-zm-signature", zoom_signature(ZOOM_SECRET, now, body))],
        ),
        (
            "wrong secret",
            vec![
                ("x-zm-signature", zoom_signature("guess", now, body)),
                ("x-zm-request-timestamp", now.to_string()),
            ],
        ),
        (
            "signature of another timestamp",
            vec![
                ("x-zm-signature", zoom_signature(ZOOM_SECRET, now, body)),
                ("x-zm-request-timestamp", (now - 1).to_string()),
            ],
        ),
        (
            "stale",
            vec![
                ("x-zm-signature", zoom_signature(ZOOM_SECRET, stale, body)),
                ("x-zm-request-timestamp", stale.to_string()),
            ],
        ),
        (
            "garbage",
            vec![
                ("x-zm-signature", "v0=not-hex".to_owned()),
                ("x-zm-request-timestamp", now.to_string()),
            ],
        ),
    ];
    for (case, headers) in &cases {
        let (status, answer) = app.post("/webhooks/zoom", body, headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}");
        assert_eq!(answer["error"], "unauthorized", "{case}");
        assert!(
            answer["message"].as_str().unwrap().contains("x-zm-"),
            "{case}: {answer}"
        );
    }
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    let sig = zoom_signature(ZOOM_SECRET, now, body);
    let (status, _) = app
        .post(
            "/webhooks/zoom",
            &tampered,
            &[
                ("x-zm-signature", sig),
                ("x-zm-request-timestamp", now.to_string()),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "tampered body");

    assert!(app.records().await.is_empty());
    let metrics = app.metrics().await;
    let refused = metric(
        &metrics,
        "relay_webhooks_received_total",
        &[("source", "zoom"), ("outcome", "unauthorized")],
    );
    assert_eq!(refused, Some(cases.len() as f64 + 1.0));
}

#[actix_web::test]
async fn malformed_and_incomplete_bodies_get_a_400_naming_the_problem() {
    let app = spawn_app().await;
    let cases: [(&[u8], &str); 4] = [
        (b"not json", "not a Zoom event"),
        (br#"{"payload":{}}"#, "event"),
        (br#"{"event":"webinar.participant_joined","event_ts":1,"payload":{"account_id":"A","object":{"id":"1"}}}"#, "participant"),
        (br#"{"event":"meeting.registration_created","event_ts":1,"payload":{"account_id":"A","object":{"id":1,"registrant":{"first_name":"x"}}}}"#, "email"),
    ];
    for (body, named) in cases {
        let (status, answer) = app.post_zoom(body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["error"], "invalid_request");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(named), "{message:?} should name {named:?}");
    }
    assert!(app.records().await.is_empty());
}

#[actix_web::test]
async fn an_oversized_body_gets_413() {
    let app = spawn_app_with(&[("RELAY_MAX_BODY_BYTES", "1024")]).await;
    let body = json!({"event": "webinar.participant_joined", "pad": "x".repeat(2000)}).to_string();
    let (status, answer) = app.post_zoom(body.as_bytes()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer["error"], "payload_too_large");
    let metrics = app.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "relay_webhooks_received_total",
            &[("source", "zoom"), ("outcome", "too_large")]
        ),
        Some(1.0)
    );
}

#[actix_web::test]
async fn a_repeated_delivery_is_acknowledged_and_stored_once() {
    let app = spawn_app().await;
    let body = &zoom_registration("webinar.registration_approved", 1, EMAIL);
    let (_, first) = app.post_zoom(body).await;
    let (status, second) = app.post_zoom(body).await;
    assert_eq!(first, json!({"accepted": 1, "duplicates": 0, "ignored": 0}));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        second,
        json!({"accepted": 0, "duplicates": 1, "ignored": 0})
    );

    // The same record through another delivery (created, then approved) is also one record.
    let (_, third) = app
        .post_zoom(&zoom_registration("webinar.registration_created", 1, EMAIL))
        .await;
    assert_eq!(third, json!({"accepted": 0, "duplicates": 1, "ignored": 0}));
    assert_eq!(app.records().await.len(), 1);

    let metrics = app.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "relay_webhooks_received_total",
            &[("source", "zoom"), ("outcome", "duplicate")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "relay_webhooks_received_total",
            &[("source", "zoom"), ("outcome", "accepted")]
        ),
        Some(1.0)
    );
}

#[actix_web::test]
async fn the_zoom_route_is_absent_without_a_secret() {
    let app = spawn_app_with(&[("ZOOM_WEBHOOK_SECRET_TOKEN", "")]).await;
    let (status, answer) = app.post("/webhooks/zoom", b"{}", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(answer["error"], "not_found");
}

#[actix_web::test]
async fn a_locked_store_answers_503_never_4xx() {
    let join = zoom_join(WEBINAR, EMAIL, "2021-07-13T21:44:51Z");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let url = format!("sqlite://{}", db.display());
    let app = spawn_app_with(&[("RELAY_DATABASE_URL", &url)]).await;
    let blocker = rusqlite::Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let (status, answer) = app.post_zoom(&join).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["error"], "store_unavailable");
    let (ready, _) = app.get(&format!("{}/readyz", app.public)).await;
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE);

    blocker.execute_batch("ROLLBACK").unwrap();
    let (status, answer) = app.post_zoom(&join).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the retry is taken once the store is back: {answer}"
    );
    assert_eq!(answer["accepted"], 1);
    let metrics = app.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "relay_webhooks_received_total",
            &[("source", "zoom"), ("outcome", "unavailable")]
        ),
        Some(1.0)
    );
}
