use actix_web::http::header::HeaderMap;

use serde_json::{Value, json};

use super::*;

const READ: &str = "/crm/v3/objects/contacts/batch/read";
const UPSERT: &str = "/crm/v3/objects/contacts/batch/upsert";
const EVENTS: &str = "/marketing/marketing-events/2026-03/events/upsert";
const ATTEND_WEBINAR_1: &str = "/marketing/marketing-events/2026-03/attendance/webinar%201/attend/create?externalAccountId=zoom%3A1";

async fn post(sim: &Simulator, path: &str, body: Value) -> (u16, HeaderMap, Value) {
    post_as(sim, Some("Bearer test-token"), path, body).await
}

async fn post_as(
    sim: &Simulator,
    authorization: Option<&str>,
    path: &str,
    body: Value,
) -> (u16, HeaderMap, Value) {
    let mut request = awc::Client::default().post(format!("{}{path}", sim.url()));
    if let Some(authorization) = authorization {
        request = request.insert_header(("Authorization", authorization));
    }
    let mut response = request.send_json(&body).await.expect("simulator answers");
    let body = response.json().await.expect("JSON body");
    (response.status().as_u16(), response.headers().clone(), body)
}

fn read_body(emails: &[&str]) -> Value {
    let inputs: Vec<Value> = emails.iter().map(|email| json!({ "id": email })).collect();
    json!({
        "idProperty": "email",
        "inputs": inputs,
        "properties": ["email"],
        "propertiesWithHistory": [],
    })
}

fn upsert_body(email: &str, firstname: &str) -> Value {
    json!({ "inputs": [{
        "id": email,
        "idProperty": "email",
        "properties": { "email": email, "firstname": firstname },
    }]})
}

fn attend_body(vids: &[i64]) -> Value {
    let inputs: Vec<Value> = vids
        .iter()
        .map(|vid| json!({ "vid": vid, "interactionDateTime": 1_700_000_000_000_i64, "properties": {} }))
        .collect();
    json!({ "inputs": inputs })
}

fn event_body(account: &str, event: &str) -> Value {
    json!({ "inputs": [{
        "externalAccountId": account,
        "externalEventId": event,
        "eventName": "Webinar",
        "eventOrganizer": "Acme",
        "customProperties": [],
    }]})
}

#[actix_web::test]
async fn batch_read_answers_200_when_all_found_and_207_naming_the_missing() {
    let sim = Simulator::start(Options::default()).await.unwrap();
    let id = sim.add_contact("Ann@Example.com");

    let (status, _, body) = post(&sim, READ, read_body(&["ann@EXAMPLE.com"])).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "COMPLETE");
    assert_eq!(body["results"][0]["id"], id.to_string());
    assert_eq!(body["results"][0]["properties"]["email"], "ann@example.com");
    assert_eq!(
        body["results"][0]["properties"]["hs_object_id"],
        id.to_string()
    );
    assert!(body.get("errors").is_none());

    let (status, _, body) = post(
        &sim,
        READ,
        read_body(&["ann@example.com", "Bob@example.com"]),
    )
    .await;
    assert_eq!(status, 207);
    assert_eq!(body["results"].as_array().unwrap().len(), 1);
    assert_eq!(body["numErrors"], 1);
    assert_eq!(body["errors"][0]["category"], "OBJECT_NOT_FOUND");
    assert_eq!(
        body["errors"][0]["context"]["ids"],
        json!(["Bob@example.com"])
    );
}

#[actix_web::test]
async fn upsert_creates_then_updates_and_read_finds_it() {
    let sim = Simulator::start(Options::default()).await.unwrap();

    let (status, _, body) = post(&sim, UPSERT, upsert_body("Cy@example.com", "Cy")).await;
    assert_eq!(status, 200);
    assert_eq!(body["results"][0]["new"], true);
    let id = sim.contact_id("cy@example.com").expect("created");
    assert_eq!(body["results"][0]["id"], id.to_string());

    let (_, _, body) = post(&sim, UPSERT, upsert_body("cy@example.com", "Cyrus")).await;
    assert_eq!(body["results"][0]["new"], false);
    assert_eq!(body["results"][0]["id"], id.to_string());

    let (status, _, body) = post(&sim, READ, read_body(&["CY@example.com"])).await;
    assert_eq!(status, 200);
    assert_eq!(body["results"][0]["properties"]["firstname"], "Cyrus");
}

#[actix_web::test]
async fn create_records_attendance_and_names_unknown_vids() {
    let sim = Simulator::start(Options::default()).await.unwrap();
    let vid = sim.add_contact("ann@example.com");

    let (status, _, body) = post(&sim, ATTEND_WEBINAR_1, attend_body(&[vid, 999])).await;
    assert_eq!(status, 200);
    assert_eq!(body["results"], json!([{ "vid": vid }]));
    assert_eq!(body["numErrors"], 1);
    assert_eq!(body["errors"][0]["message"], "Contact 999 not found");
    assert_eq!(body["errors"][0]["context"]["vids"], json!(["999"]));
    assert_eq!(
        sim.attendance(),
        vec![Attendance {
            external_account_id: "zoom:1".to_owned(),
            external_event_id: "webinar 1".to_owned(),
            state: "attend".to_owned(),
            vid,
            interaction_ms: 1_700_000_000_000,
            properties: BTreeMap::new(),
        }]
    );
    assert_eq!(sim.calls()[0].path, ATTEND_WEBINAR_1);
}

#[actix_web::test]
async fn unknown_event_is_404_until_upserted() {
    let known = vec![("zoom:1".to_owned(), "webinar 0".to_owned())];
    let sim = Simulator::start(Options {
        known_events: Some(known),
        ..Options::default()
    })
    .await
    .unwrap();
    let vid = sim.add_contact("ann@example.com");

    let (status, _, body) = post(&sim, ATTEND_WEBINAR_1, attend_body(&[vid])).await;
    assert_eq!(status, 404);
    assert_eq!(body["category"], "OBJECT_NOT_FOUND");
    assert!(body["correlationId"].is_string());

    let (status, _, body) = post(&sim, EVENTS, event_body("zoom:1", "webinar 1")).await;
    assert_eq!(status, 200);
    assert_eq!(body["results"][0]["id"], body["results"][0]["objectId"]);
    assert_eq!(body["results"][0]["eventName"], "Webinar");

    let (status, _, _) = post(&sim, ATTEND_WEBINAR_1, attend_body(&[vid])).await;
    assert_eq!(status, 200);
    assert_eq!(sim.attendance().len(), 1);
}

#[actix_web::test]
async fn complete_needs_a_known_event_an_account_and_two_times() {
    let sim = Simulator::start(Options {
        known_events: Some(vec![("acc".into(), "webinar 1".into())]),
        ..Options::default()
    })
    .await
    .unwrap();
    let complete = "/marketing/marketing-events/2026-03/events/webinar%201/complete";
    let times =
        json!({"startDateTime": "2026-01-01T10:00:00Z", "endDateTime": "2026-01-01T11:00:00Z"});
    let (status, _, _) = post(&sim, complete, times.clone()).await;
    assert_eq!(status, 400, "externalAccountId is required");
    let with_account = format!("{complete}?externalAccountId=acc");
    let (status, _, _) = post(&sim, &with_account, json!({"startDateTime": "soon"})).await;
    assert_eq!(status, 400);
    let unknown = "/marketing/marketing-events/2026-03/events/other/complete?externalAccountId=acc";
    assert_eq!(post(&sim, unknown, times.clone()).await.0, 404);
    let (status, _, body) = post(&sim, &with_account, times).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["eventCompleted"], true);
    let event = sim.event("acc", "webinar 1").unwrap();
    assert_eq!(event.completions, 1);
    assert_eq!(event.end.as_deref(), Some("2026-01-01T11:00:00Z"));
}

#[actix_web::test]
async fn a_queued_fault_answers_one_call_then_normal_behaviour_resumes() {
    let sim = Simulator::start(Options::default()).await.unwrap();
    let vid = sim.add_contact("ann@example.com");
    sim.fail_next(
        Operation::AttendanceCreate,
        Fault::status(503).with_header("Retry-After", "1"),
    );
    sim.fail_next(
        Operation::AttendanceCreate,
        Fault::status(500).delayed(Duration::from_millis(60)),
    );

    let (status, headers, body) = post(&sim, ATTEND_WEBINAR_1, attend_body(&[vid])).await;
    assert_eq!(status, 503);
    assert_eq!(headers.get("Retry-After").unwrap(), "1");
    assert_eq!(body["category"], "INTERNAL_ERROR");

    let timed_out = awc::Client::default()
        .post(format!("{}{ATTEND_WEBINAR_1}", sim.url()))
        .insert_header(("Authorization", "Bearer test-token"))
        .timeout(Duration::from_millis(20))
        .send_json(&attend_body(&[vid]))
        .await;
    assert!(matches!(
        timed_out,
        Err(awc::error::SendRequestError::Timeout)
    ));
    assert!(sim.attendance().is_empty());

    let (status, _, _) = post(&sim, ATTEND_WEBINAR_1, attend_body(&[vid])).await;
    assert_eq!(status, 200);
    assert_eq!(sim.attendance().len(), 1);
    let calls = sim.calls();
    let statuses: Vec<u16> = calls.iter().map(|call| call.status).collect();
    assert_eq!(statuses, [503, 500, 200]);
    assert_eq!(calls[0].body, attend_body(&[vid]));
}

#[actix_web::test]
async fn calls_beyond_the_rate_limit_are_answered_429() {
    let sim = Simulator::start(Options {
        rate_limit_per_10s: Some(3),
        ..Options::default()
    })
    .await
    .unwrap();

    for remaining in ["2", "1", "0"] {
        let (status, headers, _) = post(&sim, READ, read_body(&[])).await;
        assert_eq!(status, 200);
        assert_eq!(headers.get("X-HubSpot-RateLimit-Max").unwrap(), "3");
        assert_eq!(
            headers.get("X-HubSpot-RateLimit-Remaining").unwrap(),
            remaining
        );
        let interval = headers.get("X-HubSpot-RateLimit-Interval-Milliseconds");
        assert_eq!(interval.unwrap(), "10000");
    }
    let (status, headers, body) = post(&sim, READ, read_body(&[])).await;
    assert_eq!(status, 429);
    assert_eq!(headers.get("X-HubSpot-RateLimit-Remaining").unwrap(), "0");
    assert_eq!(body["category"], "RATE_LIMITS");
    assert_eq!(sim.rate_limited(), 1);
}

#[actix_web::test]
async fn calls_without_a_bearer_token_are_answered_401() {
    let sim = Simulator::start(Options::default()).await.unwrap();

    let (status, _, body) = post_as(&sim, None, READ, read_body(&[])).await;
    assert_eq!(status, 401);
    assert_eq!(body["category"], "INVALID_AUTHENTICATION");
    let (status, _, _) = post_as(&sim, Some("Basic dXNlcg=="), READ, read_body(&[])).await;
    assert_eq!(status, 401);
    let (status, _, _) = post_as(&sim, Some("Bearer"), READ, read_body(&[])).await;
    assert_eq!(status, 401);

    let authorizations: Vec<_> = sim
        .calls()
        .into_iter()
        .map(|call| call.authorization)
        .collect();
    let basic = Some("Basic dXNlcg==".to_owned());
    assert_eq!(authorizations, [None, basic, Some("Bearer".to_owned())]);
    sim.stop().await;
}
