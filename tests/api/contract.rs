//! The gateway's HubSpot traffic, routed through Stoplight Prism over
//! HubSpot's own OpenAPI documents: every request it sends (OAuth refresh,
//! contacts batch read and upsert, attendance create, events upsert, events
//! complete) must be valid. Prism
//! answers 422 to an invalid request and 500 to an answer that breaks the
//! documents; either fails the test.

use attendance_relay::{
    demo::simulator::{OAuthOptions, Options, Simulator},
    hubspot::Operation,
    store::RecordStatus,
};
use serde_json::json;

use crate::{
    helpers::{spawn_forwarding_app, wait_until},
    prism::Prism,
};

#[actix_web::test]
#[ignore = "needs Prism (npm ci) and HubSpot's documents in ../shared/specs/hubspot: --include-ignored"]
async fn every_hubspot_request_is_valid_against_hubspots_documents() {
    // No event exists and one contact is unknown: the gateway must use every
    // operation.
    let oauth = OAuthOptions {
        client_id: "contract-client".into(),
        client_secret: "contract-secret".into(),
        refresh_token: "contract-refresh".into(),
        expires_in_secs: 1800,
    };
    let hubspot = Simulator::start(Options {
        known_events: Some(Vec::new()),
        oauth: Some(oauth),
        ..Options::default()
    })
    .await
    .unwrap();
    let prism = Prism::start(&hubspot.url()).await;
    hubspot.add_contact("known@example.com");
    let prism_url = prism.url();
    let app = spawn_forwarding_app(
        &hubspot,
        &[
            ("HUBSPOT_BASE_URL", prism_url.as_str()),
            ("HUBSPOT_ACCESS_TOKEN", ""),
            ("HUBSPOT_CLIENT_ID", "contract-client"),
            ("HUBSPOT_CLIENT_SECRET", "contract-secret"),
            ("HUBSPOT_REFRESH_TOKEN", "contract-refresh"),
            ("RELAY_UPSERT_EVENTS", "true"),
            ("RELAY_COMPLETE_DELAY_SECS", "0"),
            ("ZOOM_EXTERNAL_ACCOUNT_ID", "acct 1/ü"),
        ],
    )
    .await;

    let webinar = json!({"id": 86012345678_i64, "topic": "Contract webinar", "start_time": "2026-03-10T16:00:00Z"});
    let registration = |email: &str, event: &str| {
        let mut object = webinar.clone();
        object["registrant"] =
            json!({"email": email, "first_name": "Ann", "last_name": "Lee", "status": "approved"});
        json!({"event": event, "event_ts": 1_772_900_000_000_i64, "payload": {"account_id": "A", "object": object}})
    };
    let participant = |email: &str, event: &str, times: serde_json::Value| {
        let mut object = webinar.clone();
        object["id"] = json!("86012345678");
        let mut person = json!({"email": email, "user_name": "Ann Lee", "id": "p1"});
        person
            .as_object_mut()
            .unwrap()
            .extend(times.as_object().unwrap().clone());
        object["participant"] = person;
        json!({"event": event, "event_ts": 1_773_158_405_000_i64, "payload": {"account_id": "A", "object": object}})
    };
    let deliveries = [
        registration("known@example.com", "webinar.registration_created"),
        registration("new@example.com", "webinar.registration_created"),
        registration("new@example.com", "webinar.registration_cancelled"),
        participant(
            "known@example.com",
            "webinar.participant_joined",
            json!({"join_time": "2026-03-10T16:00:05Z"}),
        ),
        participant(
            "known@example.com",
            "webinar.participant_left",
            json!({"leave_time": "2026-03-10T16:45:00Z"}),
        ),
        {
            let mut object = webinar.clone();
            object["end_time"] = json!("2026-03-10T17:02:00Z");
            json!({"event": "webinar.ended", "event_ts": 1_773_162_120_000_i64, "payload": {"account_id": "A", "object": object}})
        },
    ];
    for body in &deliveries {
        let (status, answer) = app.post_zoom(body.to_string().as_bytes()).await;
        assert_eq!(
            (status.as_u16(), &answer["accepted"]),
            (200, &json!(1)),
            "{answer}"
        );
    }

    // Settled, or stopped early by an answer from Prism itself (422, 500).
    wait_until("every record is settled", 30, async || {
        let metrics = app.metrics().await;
        let refused_by_prism = metrics.lines().any(|line| {
            // Every series is exported from the start: a refusal is one above 0.
            line.starts_with("relay_hubspot_requests_total")
                && (line.contains("status=\"422\"") || line.contains("status=\"500\""))
                && !line.ends_with(" 0")
        });
        refused_by_prism
            || app
                .records()
                .await
                .iter()
                .all(|r| r.status != RecordStatus::Pending)
    })
    .await;
    let judged = prism.violations();
    let refused: Vec<&String> = judged
        .iter()
        .filter(|line| !line.contains("-> 2") && !line.contains("-> 404"))
        .collect();
    assert!(
        refused.is_empty(),
        "Prism refused requests or answers: {refused:#?}\nall: {judged:#?}"
    );
    let records = app.records().await;
    assert!(
        records.iter().all(|r| r.status == RecordStatus::Delivered),
        "{records:#?}"
    );
    assert_eq!(
        hubspot
            .token_requests()
            .iter()
            .map(|r| r.status)
            .collect::<Vec<_>>(),
        vec![200],
        "the OAuth refresh went through Prism: {judged:#?}"
    );
    for operation in Operation::ALL {
        assert!(
            hubspot
                .calls()
                .iter()
                .any(|c| c.operation == operation && c.status < 300),
            "{operation:?} went through Prism: {judged:#?}"
        );
    }
}
