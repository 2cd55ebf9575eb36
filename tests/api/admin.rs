//! The admin API (SPEC section 6) over real HTTP: its tokens, its listener,
//! and what an operator sees and repairs with it, ending in what HubSpot (the
//! simulator) received.

use std::time::Duration;

use actix_web::http::StatusCode;
use attendance_relay::{
    demo::simulator::{Options, Simulator},
    hubspot::Operation,
    store::RecordStatus,
};
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_SECRET, StoreDir, TestApp, admin_token, jwt, now_secs, spawn_app_with,
    spawn_forwarding_app, wait_until, zoom_join,
};

/// Every admin route, as a request that a valid token gets an answer to.
const ROUTES: [(&str, &str); 5] = [
    ("GET", "/admin/status"),
    ("GET", "/admin/records?status=dead"),
    ("POST", "/admin/records/1/retry"),
    ("POST", "/admin/dead-letters/retry"),
    ("GET", "/admin/events"),
];

async fn admin_app(overrides: &[(&str, &str)]) -> TestApp {
    let mut settings = vec![("RELAY_ADMIN_JWT_SECRET", ADMIN_SECRET)];
    settings.extend_from_slice(overrides);
    spawn_app_with(&settings).await
}

async fn join(app: &TestApp, webinar: &str, email: &str) {
    let (status, body) = app
        .post_zoom(&zoom_join(webinar, email, "2026-01-01T10:00:00Z"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn wait_for(app: &TestApp, status: RecordStatus, n: usize) {
    wait_until(&format!("{n} records are {status:?}"), 20, async || {
        app.records()
            .await
            .iter()
            .filter(|r| r.status == status)
            .count()
            == n
    })
    .await;
}

/// Inputs HubSpot accepted in `create` calls, per contact id.
fn created_vids(hubspot: &Simulator) -> Vec<i64> {
    let mut vids: Vec<i64> = hubspot
        .calls()
        .iter()
        .filter(|c| c.operation == Operation::AttendanceCreate && c.status == 200)
        .flat_map(|c| c.body["inputs"].as_array().cloned().unwrap_or_default())
        .filter_map(|input| input["vid"].as_i64())
        .collect();
    vids.sort_unstable();
    vids
}

#[actix_web::test]
async fn every_admin_route_refuses_missing_expired_wrongly_signed_and_wrong_audience_tokens() {
    let app = admin_app(&[]).await;
    let aud = "attendance-relay-admin";
    let refused = [
        ("missing", None),
        (
            "expired",
            Some(jwt(
                ADMIN_SECRET,
                json!({"aud": aud, "exp": now_secs() - 120}),
            )),
        ),
        (
            "wrongly signed",
            Some(jwt(
                "another-secret",
                json!({"aud": aud, "exp": now_secs() + 300}),
            )),
        ),
        (
            "wrong audience",
            Some(jwt(
                ADMIN_SECRET,
                json!({"aud": "attendance-relay-generic", "exp": now_secs() + 300}),
            )),
        ),
        ("without exp", Some(jwt(ADMIN_SECRET, json!({"aud": aud})))),
        ("not a JWT", Some("not-a-token".to_owned())),
    ];
    for (method, path) in ROUTES {
        let url = format!("{}{path}", app.admin);
        for (what, token) in &refused {
            let (status, body) = app.call(method, &url, token.as_deref()).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{what} {method} {path}: {body}"
            );
            assert_eq!(body["error"], "unauthorized", "{what}: {body}");
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        let (status, body) = app.call(method, &url, Some(&admin_token())).await;
        // Record 1 does not exist: the route answers, past the token.
        let expected = if path.starts_with("/admin/records/1") {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        assert_eq!(status, expected, "valid token {method} {path}: {body}");
    }
    let (_, body) = app
        .call(
            "GET",
            &format!("{}/admin/status", app.admin),
            Some(&jwt(
                ADMIN_SECRET,
                json!({"aud": aud, "exp": now_secs() - 120}),
            )),
        )
        .await;
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
}

#[actix_web::test]
async fn a_token_for_the_generic_route_is_not_an_admin_token_even_under_the_same_secret() {
    let app = admin_app(&[("GENERIC_JWT_SECRET", ADMIN_SECRET)]).await;
    // What a generic sender holds: signed with the same secret, no admin audience.
    let generic = jwt(ADMIN_SECRET, json!({"exp": now_secs() + 300}));
    let delivery = json!({"id": "r1", "externalEventId": "42", "externalAccountId": "a",
        "state": "register", "email": "g@example.com", "occurredAt": 1_767_261_600_000_i64});
    let (status, body) = app
        .post(
            "/webhooks/generic",
            delivery.to_string().as_bytes(),
            &[("authorization", format!("Bearer {generic}"))],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "the generic route takes it: {body}");
    let (status, body) = app
        .call(
            "GET",
            &format!("{}/admin/status", app.admin),
            Some(&generic),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["message"].as_str().unwrap().contains("aud"), "{body}");
}

#[actix_web::test]
async fn the_admin_api_is_absent_while_its_secret_is_unset() {
    let app = spawn_app_with(&[]).await;
    for (method, path) in ROUTES {
        let url = format!("{}{path}", app.admin);
        let (status, body) = app.call(method, &url, Some(&admin_token())).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert_eq!(body["error"], "not_found");
    }
}

#[actix_web::test]
async fn admin_routes_and_metrics_are_never_answered_on_the_public_listener() {
    let app = admin_app(&[]).await;
    for (method, path) in ROUTES
        .into_iter()
        .chain([("GET", "/metrics"), ("GET", "/openapi.json")])
    {
        let url = format!("{}{path}", app.public);
        let (status, body) = app.call(method, &url, Some(&admin_token())).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
    }
}

#[actix_web::test]
async fn status_shows_the_queue_sources_store_version_and_why_forwarding_waits() {
    let app = admin_app(&[]).await;
    join(&app, "42", "a@example.com").await;
    join(&app, "42", "b@example.com").await;
    let status = app.admin("GET", "/admin/status").await;
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    let expected_store = match std::env::var("RELAY_TEST_STORE").as_deref() {
        Ok("postgres") => "postgres",
        _ => "sqlite",
    };
    assert_eq!(status["store"], expected_store);
    assert_eq!(status["queue"]["pending"], 2, "{status}");
    assert_eq!(status["queue"]["dead"], 0);
    assert_eq!(status["sources"]["zoom"]["pending"], 2);
    assert!(status["oldest_pending_age_seconds"].as_f64().unwrap() >= 0.0);
    // No HubSpot credential is configured: forwarding waits and says why.
    assert_eq!(status["forwarding"]["state"], "paused");
    assert!(
        status["forwarding"]["reason"]
            .as_str()
            .unwrap()
            .contains("HUBSPOT_ACCESS_TOKEN")
    );
    assert_eq!(status["credential"]["mode"], "none");
    assert_eq!(status["credential"]["expires_in_seconds"], Value::Null);
}

#[actix_web::test]
async fn records_are_paged_by_cursor_and_records_arriving_meanwhile_do_not_disturb_the_pages() {
    let app = admin_app(&[]).await;
    for n in 0..5 {
        join(&app, "42", &format!("p{n}@example.com")).await;
    }
    let first = app
        .admin("GET", "/admin/records?status=pending&limit=2")
        .await;
    let ids: Vec<&str> = first["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["1", "2"]);
    assert_eq!(first["next_cursor"], "2");
    let record = &first["records"][0];
    assert_eq!(record["kind"], "record");
    assert_eq!(record["status"], "pending");
    assert_eq!(record["state"], "attend");
    assert_eq!(record["email"], "p0@example.com");
    assert_eq!(record["external_event_id"], "42");
    assert!(
        record.get("first_name").is_none(),
        "no more personal data than needed"
    );

    join(&app, "42", "late@example.com").await;
    let mut seen: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
    let mut cursor = first["next_cursor"].as_str().unwrap().to_owned();
    loop {
        let page = app
            .admin("GET", &format!("/admin/records?limit=2&cursor={cursor}"))
            .await;
        seen.extend(
            page["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, ["1", "2", "3", "4", "5", "6"]);

    let other = app.admin("GET", "/admin/records?event=43").await;
    assert_eq!(other["records"], json!([]));
    for bad in ["status=lost", "limit=0", "cursor=x", "colour=red"] {
        let (status, body) = app
            .call(
                "GET",
                &format!("{}/admin/records?{bad}", app.admin),
                Some(&admin_token()),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_request", "{bad}: {body}");
    }
}

#[actix_web::test]
async fn dead_letters_retried_twice_at_once_through_the_api_reach_hubspot_exactly_once() {
    let hubspot = Simulator::start(Options::default()).await.unwrap();
    let app = spawn_forwarding_app(
        &hubspot,
        &[
            ("RELAY_CREATE_CONTACTS", "false"),
            ("RELAY_ADMIN_JWT_SECRET", ADMIN_SECRET),
        ],
    )
    .await;
    for email in ["a@example.com", "b@example.com", "c@example.com"] {
        join(&app, "42", email).await;
    }
    wait_for(&app, RecordStatus::Dead, 3).await;
    let dead = app.admin("GET", "/admin/records?status=dead").await;
    assert_eq!(dead["records"].as_array().unwrap().len(), 3);
    assert!(
        dead["records"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("RELAY_CREATE_CONTACTS=false")
    );
    let vids: Vec<i64> = ["a@example.com", "b@example.com", "c@example.com"]
        .map(|email| hubspot.add_contact(email))
        .into();

    // One record alone, twice at once: one retry takes it, the other finds nothing to do.
    let (one, two) = tokio::join!(
        app.admin("POST", "/admin/records/1/retry"),
        app.admin("POST", "/admin/records/1/retry"),
    );
    let mut retried = [one["retried"].as_bool(), two["retried"].as_bool()];
    retried.sort();
    assert_eq!(retried, [Some(false), Some(true)], "{one} {two}");
    // The rest by the bulk route, twice at once, filtered by reason.
    let path = "/admin/dead-letters/retry?reason=create_contacts%3Dfalse";
    let (one, two) = tokio::join!(app.admin("POST", path), app.admin("POST", path));
    let records = [&one, &two].map(|r| r["records"].as_u64().unwrap());
    assert_eq!(records.iter().sum::<u64>(), 2, "{one} {two}");
    assert!(records.contains(&0));

    wait_for(&app, RecordStatus::Delivered, 3).await;
    // Any second forward would have gone out by now.
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let mut expected = vids.clone();
    expected.sort_unstable();
    assert_eq!(created_vids(&hubspot), expected);
    let again = app.admin("POST", "/admin/dead-letters/retry").await;
    assert_eq!(again, json!({"records": 0, "deliveries": 0}));
}

#[actix_web::test]
async fn retrying_an_unknown_or_malformed_id_says_so() {
    let app = admin_app(&[]).await;
    join(&app, "42", "a@example.com").await;
    let url = |id: &str| format!("{}/admin/records/{id}/retry", app.admin);
    let (status, body) = app.call("POST", &url("99"), Some(&admin_token())).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "no_such_record");
    let (status, body) = app.call("POST", &url("d99"), Some(&admin_token())).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = app.call("POST", &url("one"), Some(&admin_token())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // A pending record is no dead letter: nothing changes.
    assert_eq!(
        app.admin("POST", "/admin/records/1/retry").await,
        json!({"id": "1", "retried": false})
    );
}

#[actix_web::test]
async fn the_per_event_view_matches_what_hubspot_received() {
    let hubspot = Simulator::start(Options::default()).await.unwrap();
    for email in ["a@example.com", "b@example.com", "c@example.com"] {
        hubspot.add_contact(email);
    }
    let app = spawn_forwarding_app(
        &hubspot,
        &[
            ("RELAY_CREATE_CONTACTS", "false"),
            ("RELAY_ADMIN_JWT_SECRET", ADMIN_SECRET),
        ],
    )
    .await;
    for email in ["a@example.com", "b@example.com", "stranger@example.com"] {
        join(&app, "42", email).await;
    }
    join(&app, "77", "c@example.com").await;
    let register = json!({
        "event": "webinar.registration_approved", "event_ts": 1_767_261_600_000_i64,
        "payload": {"account_id": "zoom-account-1", "object": {"id": "42", "registrant": {"email": "c@example.com"}}}
    });
    let (status, _) = app.post_zoom(register.to_string().as_bytes()).await;
    assert_eq!(status, StatusCode::OK);
    wait_for(&app, RecordStatus::Delivered, 4).await;
    wait_for(&app, RecordStatus::Dead, 1).await;

    let events = app.admin("GET", "/admin/events").await;
    let events = events["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    let attendance = hubspot.attendance();
    for view in events {
        let event = view["external_event_id"].as_str().unwrap();
        assert_eq!(view["external_account_id"], "zoom-account-1");
        for state in ["register", "attend", "cancel"] {
            let received = attendance
                .iter()
                .filter(|a| a.external_event_id == event && a.state == state)
                .count();
            assert_eq!(
                view["states"][state]["delivered"].as_u64(),
                Some(received as u64),
                "{event} {state}: {view}"
            );
        }
        assert!(view["first_seen"].as_str().unwrap() <= view["last_seen"].as_str().unwrap());
    }
    let webinar = events
        .iter()
        .find(|v| v["external_event_id"] == "42")
        .unwrap();
    assert_eq!(webinar["states"]["attend"]["delivered"], 2);
    assert_eq!(webinar["states"]["attend"]["dead"], 1);
    assert_eq!(webinar["states"]["register"]["delivered"], 1);
    assert_eq!(
        webinar["total"],
        json!({"delivered": 3, "dead": 1, "pending": 0, "unmappable": 0})
    );
    let only = app.admin("GET", "/admin/events?event=77").await;
    assert_eq!(only["events"].as_array().unwrap().len(), 1);
}

/// The real binary's operator subcommand on the store in `dir`.
fn operator(dir: &StoreDir, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_attendance-relay"))
        .args(args)
        .env_clear()
        .env("RELAY_DATABASE_URL", dir.database_url())
        // The operator's shell has the gateway's settings.
        .env("HUBSPOT_ACCESS_TOKEN", crate::helpers::HUBSPOT_TOKEN)
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn operator_json(dir: &StoreDir, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&operator(dir, &args)).expect("--json prints JSON")
}

#[actix_web::test]
async fn dead_letters_retried_with_the_cli_while_the_gateway_is_stopped_reach_hubspot_once_after_restart()
 {
    let hubspot = Simulator::start(Options::default()).await.unwrap();
    let settings = [("RELAY_CREATE_CONTACTS", "false")];
    let app = spawn_forwarding_app(&hubspot, &settings).await;
    for email in ["a@example.com", "b@example.com"] {
        join(&app, "42", email).await;
    }
    wait_for(&app, RecordStatus::Dead, 2).await;
    let dir = app.stop().await;

    let listed = operator_json(&dir, &["records", "list", "--status", "dead"]);
    let emails: Vec<&str> = listed["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["a@example.com", "b@example.com"]);
    let table = operator(&dir, &["records", "list", "--status", "dead"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("a@example.com") && table.contains("RELAY_CREATE_CONTACTS=false"));
    let status = operator_json(&dir, &["status"]);
    assert_eq!(status["queue"]["dead"], 2, "{status}");
    assert_eq!(status["forwarding"]["state"], "unknown");
    assert_eq!(status["credential"]["mode"], "static");
    let events = operator(&dir, &["events", "--event", "42"]);
    assert!(
        events.contains("attend") && events.contains("zoom-account-1"),
        "{events}"
    );

    let vids: Vec<i64> = ["a@example.com", "b@example.com"]
        .map(|email| hubspot.add_contact(email))
        .into();
    assert_eq!(
        operator_json(&dir, &["records", "retry", "--dead", "--event", "42"]),
        json!({"records": 2, "deliveries": 0})
    );
    // Run again: nothing is dead any more, nothing changes.
    assert_eq!(
        operator_json(&dir, &["records", "retry", "--dead"]),
        json!({"records": 0, "deliveries": 0})
    );
    assert_eq!(
        operator_json(&dir, &["records", "retry", "1"]),
        json!([{"id": "1", "retried": false}])
    );

    let app = crate::helpers::spawn_forwarding_app_in(dir, &hubspot, &settings).await;
    wait_for(&app, RecordStatus::Delivered, 2).await;
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let mut expected = vids;
    expected.sort_unstable();
    assert_eq!(created_vids(&hubspot), expected);
}
