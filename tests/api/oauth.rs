//! The OAuth credential held centrally: first fetch, refresh ahead of expiry
//! (exactly once however many calls need it), 401 → refresh → retry, refused
//! refresh → pause → recovery, restart reusing the stored token, and no
//! secret in any log line, metric or answer.

use std::{
    net::TcpListener,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use actix_web::{App, HttpResponse, HttpServer, http::StatusCode, web};
use serde_json::{Value, json};

use attendance_relay::{
    demo::simulator::{Fault, OAuthOptions, Options, Simulator},
    hubspot::Operation,
    store::RecordStatus,
};

use crate::helpers::{
    Gateway, StoreDir, TestApp, metric, spawn_forwarding_app, spawn_forwarding_app_in, wait_until,
    zoom_join,
};

const CLIENT_ID: &str = "test-client-id";
const CLIENT_SECRET: &str = "test-client-secret-5f1c";
const REFRESH_TOKEN: &str = "test-refresh-token-9a7e";
const GENERIC_SECRET: &str = "test-generic-jwt-secret";

async fn hubspot(expires_in_secs: u64) -> Simulator {
    let oauth = OAuthOptions {
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        refresh_token: REFRESH_TOKEN.into(),
        expires_in_secs,
    };
    Simulator::start(Options {
        oauth: Some(oauth),
        ..Options::default()
    })
    .await
    .unwrap()
}

const OAUTH_ENV: [(&str, &str); 4] = [
    ("HUBSPOT_ACCESS_TOKEN", ""),
    ("HUBSPOT_CLIENT_ID", CLIENT_ID),
    ("HUBSPOT_CLIENT_SECRET", CLIENT_SECRET),
    ("HUBSPOT_REFRESH_TOKEN", REFRESH_TOKEN),
];

async fn oauth_app(dir: Arc<StoreDir>, hubspot: &Simulator) -> TestApp {
    spawn_forwarding_app_in(dir, hubspot, &OAUTH_ENV).await
}

async fn deliver(app: &TestApp, hubspot: &Simulator, webinar: &str, email: &str) {
    let before = hubspot.attendance().len();
    hubspot.add_contact(email);
    let (status, _) = app
        .post_zoom(&zoom_join(webinar, email, "2026-01-01T10:00:00Z"))
        .await;
    assert_eq!(status.as_u16(), 200);
    wait_until("the join reaches HubSpot", 15, async || {
        hubspot.attendance().len() > before
    })
    .await;
}

#[actix_web::test]
async fn the_token_is_fetched_once_stored_and_reused_after_a_restart() {
    let hubspot = hubspot(1800).await;
    let dir = StoreDir::new();
    let app = oauth_app(Arc::clone(&dir), &hubspot).await;
    deliver(&app, &hubspot, "1", "ann@example.com").await;

    let requests = hubspot.token_requests();
    assert_eq!(requests.len(), 1);
    let form = &requests[0].form;
    assert_eq!(form["grant_type"], "refresh_token");
    assert_eq!(
        (
            form["client_id"].as_str(),
            form["client_secret"].as_str(),
            form["refresh_token"].as_str()
        ),
        (CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN)
    );
    assert!(
        hubspot
            .calls()
            .iter()
            .all(|c| c.authorization.as_deref() == Some("Bearer sim-access-1"))
    );
    let metrics = app.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "relay_token_refreshes_total",
            &[("outcome", "success")]
        ),
        Some(1.0)
    );
    let expires_in = metric(&metrics, "relay_token_expires_in_seconds", &[]).unwrap();
    assert!((1790.0..=1800.0).contains(&expires_in), "{expires_in}");

    let dir = app.stop().await;
    let restarted = oauth_app(dir, &hubspot).await;
    deliver(&restarted, &hubspot, "1", "bob@example.com").await;
    assert_eq!(
        hubspot.token_requests().len(),
        1,
        "the stored token was reused"
    );
    assert_eq!(
        hubspot.calls().last().unwrap().authorization.as_deref(),
        Some("Bearer sim-access-1")
    );
}

/// An OAuth gateway that also takes generic deliveries.
async fn oauth_app_with_generic(hubspot: &Simulator) -> TestApp {
    let mut env = OAUTH_ENV.to_vec();
    env.push(("GENERIC_JWT_SECRET", GENERIC_SECRET));
    spawn_forwarding_app_in(StoreDir::new(), hubspot, &env).await
}

/// Waits until the gateway's token has at most `left` seconds to live, as
/// `relay_token_expires_in_seconds` says: past its refresh point.
pub async fn wait_until_stale(app: &TestApp, left: f64) {
    wait_until("the access token is due for its refresh", 30, async || {
        let metrics = app.metrics().await;
        metric(&metrics, "relay_token_expires_in_seconds", &[]).is_some_and(|secs| secs <= left)
    })
    .await;
}

/// Twenty webinars in one delivery, contact ids given: twenty create calls
/// ask for the token at the same moment.
async fn post_twenty_webinars(app: &TestApp, hubspot: &Simulator) {
    let records: Vec<Value> = (0..20)
        .map(|i| {
            let vid = hubspot.add_contact(&format!("p{i}@example.com"));
            json!({"id": format!("r{i}"), "externalEventId": format!("w{i}"), "externalAccountId": "acc",
                   "state": "attend", "vid": vid, "occurredAt": "2026-01-01T10:00:00Z"})
        })
        .collect();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(GENERIC_SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let body = json!({"records": records}).to_string();
    let (status, answer) = app
        .post(
            "/webhooks/generic",
            body.as_bytes(),
            &[("authorization", format!("Bearer {jwt}"))],
        )
        .await;
    assert_eq!(
        (status.as_u16(), &answer["accepted"]),
        (200, &json!(20)),
        "{answer}"
    );
}

#[actix_web::test]
async fn a_token_near_expiry_is_refreshed_ahead_exactly_once_under_load() {
    // 10 s to live and refreshed half its life ahead: stale once five seconds
    // are left, which leaves the second wave five seconds on the new token.
    let hubspot = hubspot(10).await;
    let app = oauth_app_with_generic(&hubspot).await;
    deliver(&app, &hubspot, "0", "first@example.com").await;
    assert_eq!(hubspot.token_requests().len(), 1);
    wait_until_stale(&app, 5.0).await;

    post_twenty_webinars(&app, &hubspot).await;
    wait_until("all twenty reach HubSpot", 15, async || {
        hubspot.attendance().len() == 21
    })
    .await;

    assert_eq!(
        hubspot.token_requests().len(),
        2,
        "one refresh for all waiting calls"
    );
    assert!(
        hubspot.calls().iter().all(|c| c.status != 401),
        "refreshed before HubSpot refused the old token"
    );
    let creates: Vec<_> = hubspot
        .calls()
        .into_iter()
        .filter(|c| c.operation == Operation::AttendanceCreate)
        .collect();
    assert!(creates.len() >= 20);
    assert!(
        creates[1..]
            .iter()
            .all(|c| c.authorization.as_deref() == Some("Bearer sim-access-2"))
    );
}

#[actix_web::test]
async fn calls_waiting_on_a_failed_refresh_share_it_and_the_next_waits_for_the_backoff() {
    let hubspot = hubspot(1800).await;
    hubspot.fail_next_token(Fault::status(503));
    let app = oauth_app_with_generic(&hubspot).await;
    post_twenty_webinars(&app, &hubspot).await;
    wait_until("all twenty reach HubSpot", 20, async || {
        hubspot.attendance().len() == 20
    })
    .await;

    let requests = hubspot.token_requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [503, 200],
        "one refresh for twenty calls, each time"
    );
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "asked again after {gap:?}"
    );
}

#[actix_web::test]
async fn a_five_second_token_is_refreshed_at_half_its_life_not_on_every_call() {
    let hubspot = hubspot(5).await;
    let app = oauth_app(StoreDir::new(), &hubspot).await;
    let started = Instant::now();
    let mut delivered = 0;
    while started.elapsed() < Duration::from_secs(6) {
        deliver(&app, &hubspot, "1", &format!("p{delivered}@example.com")).await;
        delivered += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();

    let calls = hubspot.calls();
    assert!(calls.len() >= 10, "only {} HubSpot calls", calls.len());
    assert!(
        calls.iter().all(|c| c.status != 401),
        "a token expired in use"
    );
    // The first token, then one per 2.5 s of use (and one to spare).
    let refreshes = hubspot.token_requests().len() as f64;
    assert!(
        (2.0..=elapsed / 2.5 + 2.0).contains(&refreshes),
        "{refreshes} token requests in {elapsed:.1} s for {} calls",
        calls.len()
    );
}

/// A loopback server that answers every request with `status` (and a
/// `Location`), counting the requests.
fn counting_server(status: u16, location: Option<String>) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        let (counted, location) = (Arc::clone(&counted), location.clone());
        App::new().default_service(web::to(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut answer = HttpResponse::build(StatusCode::from_u16(status).unwrap());
            if let Some(location) = &location {
                answer.insert_header(("location", location.as_str()));
            }
            async move { answer.finish() }
        }))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    actix_web::rt::spawn(server);
    (url, hits)
}

#[actix_web::test]
async fn a_redirect_from_the_token_endpoint_is_not_followed() {
    let hubspot = hubspot(1800).await;
    let (elsewhere, reached) = counting_server(200, None);
    for status in [302, 307] {
        let (redirector, asked) =
            counting_server(status, Some(format!("{elsewhere}/oauth/2026-03/token")));
        let token_url = format!("{redirector}/oauth/2026-03/token");
        let mut env = OAUTH_ENV.to_vec();
        env.push(("HUBSPOT_TOKEN_URL", &token_url));
        let app = spawn_forwarding_app(&hubspot, &env).await;
        hubspot.add_contact("ann@example.com");
        let (answer, _) = app
            .post_zoom(&zoom_join("1", "ann@example.com", "2026-01-01T10:00:00Z"))
            .await;
        assert_eq!(answer.as_u16(), 200);
        wait_until("the refresh has an outcome", 10, async || {
            let metrics = app.metrics().await;
            ["success", "refused", "error"].iter().any(|outcome| {
                metric(
                    &metrics,
                    "relay_token_refreshes_total",
                    &[("outcome", outcome)],
                ) >= Some(1.0)
            })
        })
        .await;
        assert!(asked.load(Ordering::SeqCst) >= 1, "{status}");
        assert_eq!(reached.load(Ordering::SeqCst), 0, "{status} was followed");
        assert!(hubspot.attendance().is_empty());
        let metrics = app.metrics().await;
        let refused = [("outcome", "refused")];
        assert!(metric(&metrics, "relay_token_refreshes_total", &refused) >= Some(1.0));
    }
}

#[actix_web::test]
async fn a_401_refreshes_once_and_retries_the_call() {
    let hubspot = hubspot(1800).await;
    let app = oauth_app(StoreDir::new(), &hubspot).await;
    deliver(&app, &hubspot, "1", "ann@example.com").await;
    hubspot.expire_access_tokens();
    deliver(&app, &hubspot, "1", "bob@example.com").await;

    assert_eq!(hubspot.token_requests().len(), 2);
    let statuses: Vec<u16> = hubspot.calls().iter().map(|c| c.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        1,
        "{statuses:?}"
    );
    let metrics = app.metrics().await;
    assert_eq!(metric(&metrics, "relay_forwarding_paused", &[]), Some(0.0));
    assert!(
        app.records()
            .await
            .iter()
            .all(|r| r.status == RecordStatus::Delivered)
    );
}

#[actix_web::test]
async fn a_refused_refresh_pauses_forwarding_until_the_credential_works_again() {
    let hubspot = hubspot(1800).await;
    let app = oauth_app(StoreDir::new(), &hubspot).await;
    deliver(&app, &hubspot, "1", "ann@example.com").await;

    hubspot.revoke(); // the app was uninstalled
    hubspot.add_contact("bob@example.com");
    let (status, _) = app
        .post_zoom(&zoom_join("1", "bob@example.com", "2026-01-01T10:00:00Z"))
        .await;
    assert_eq!(status.as_u16(), 200, "ingest goes on");
    wait_until("forwarding pauses", 10, async || {
        metric(&app.metrics().await, "relay_forwarding_paused", &[]) == Some(1.0)
    })
    .await;
    let metrics = app.metrics().await;
    assert!(
        metric(
            &metrics,
            "relay_token_refreshes_total",
            &[("outcome", "refused")]
        )
        .unwrap()
            >= 1.0
    );
    let (ready, _) = app.get(&format!("{}/readyz", app.public)).await;
    assert_eq!(
        ready.as_u16(),
        200,
        "a HubSpot outage never makes the gateway unready"
    );
    let bob = app
        .records()
        .await
        .into_iter()
        .find(|r| r.record.email == "bob@example.com")
        .unwrap();
    assert_eq!(bob.status, RecordStatus::Pending, "kept, not dead-lettered");

    hubspot.grant_refresh_token(REFRESH_TOKEN); // reinstalled
    wait_until("forwarding resumes by itself", 15, async || {
        hubspot.attendance().len() == 2
    })
    .await;
    wait_until("the pause clears", 5, async || {
        metric(&app.metrics().await, "relay_forwarding_paused", &[]) == Some(0.0)
    })
    .await;
}

#[actix_web::test]
async fn no_secret_reaches_a_log_line_a_metric_or_an_answer() {
    let hubspot = hubspot(1800).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gateway.log");
    let mut env: Vec<(&str, String)> = OAUTH_ENV
        .iter()
        .map(|(k, v)| (*k, (*v).to_owned()))
        .collect();
    env.extend([
        ("HUBSPOT_BASE_URL", hubspot.url()),
        ("RELAY_BATCH_LINGER_MS", "0".to_owned()),
        // Everything every crate logs, as an operator debugging would see it.
        ("RUST_LOG", "trace".to_owned()),
        ("RELAY_LOG_FORMAT", "json".to_owned()),
    ]);
    let mut gateway = Gateway::start_with(&dir.path().join("relay.db"), &env, Some(&log)).await;
    hubspot.add_contact("p0@example.com");
    hubspot.add_contact("p1@example.com");
    hubspot.add_contact("p2@example.com");

    // First fetch, a 401 and its refresh, a refused refresh, recovery.
    assert_eq!(gateway.post_join(0).await.map(|s| s.as_u16()), Some(200));
    wait_until("first join forwarded", 15, async || {
        hubspot.attendance().len() == 1
    })
    .await;
    hubspot.expire_access_tokens();
    assert_eq!(gateway.post_join(1).await.map(|s| s.as_u16()), Some(200));
    wait_until("second join forwarded", 15, async || {
        hubspot.attendance().len() == 2
    })
    .await;
    hubspot.revoke();
    assert_eq!(gateway.post_join(2).await.map(|s| s.as_u16()), Some(200));
    wait_until("the refresh is refused", 15, async || {
        hubspot.token_requests().iter().any(|r| r.status == 400)
    })
    .await;
    hubspot.grant_refresh_token(REFRESH_TOKEN);
    wait_until("third join forwarded", 15, async || {
        hubspot.attendance().len() == 3
    })
    .await;

    let metrics = gateway.metrics().await;
    let mut refused = gateway
        .client
        .post(format!("{}/webhooks/zoom", gateway.public))
        .insert_header(("x-zm-signature", "v0=00"))
        .insert_header(("x-zm-request-timestamp", "1"))
        .send_body("{}")
        .await
        .unwrap();
    let answer = String::from_utf8(refused.body().await.unwrap().to_vec()).unwrap();
    gateway.child.kill().unwrap();
    gateway.child.wait().unwrap();

    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("refreshed the HubSpot access token"),
        "the log was captured"
    );
    let issued = hubspot
        .token_requests()
        .iter()
        .filter(|r| r.status == 200)
        .count();
    let mut secrets = vec![CLIENT_SECRET.to_owned(), REFRESH_TOKEN.to_owned()];
    secrets.extend((1..=issued).map(|n| format!("sim-access-{n}")));
    for secret in &secrets {
        for (place, text) in [("log", &logs), ("metrics", &metrics), ("answer", &answer)] {
            assert!(
                !text.contains(secret.as_str()),
                "{secret} appears in the {place}"
            );
        }
    }
}
