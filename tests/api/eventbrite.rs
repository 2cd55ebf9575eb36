//! Eventbrite: the secret path route, the background fetch from a mock
//! Eventbrite API over real HTTP, the mapping of every action, the burst of
//! one purchase, and the URLs the gateway refuses to fetch.

use std::{
    collections::{HashMap, VecDeque},
    net::TcpListener,
    sync::{Arc, Mutex},
    time::Duration,
};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use attendance_relay::{
    demo::simulator::{Options, Simulator},
    record::{State, parse_rfc3339_ms},
    store::RecordStatus,
};
use serde_json::{Value, json};

use crate::helpers::{TestApp, metric, spawn_app_with, spawn_forwarding_app, wait_until};

const PATH_TOKEN: &str = "eb-path-token-7c2d";
const API_TOKEN: &str = "eb-api-token-0f3a";

/// A request as the mock saw it: path with query, and `Authorization`.
type Request = (String, Option<String>);

/// Eventbrite's API as far as the gateway uses it: objects by path, every
/// request recorded, failures on demand.
#[derive(Clone, Default)]
struct EventbriteMock {
    url: String,
    objects: Arc<Mutex<HashMap<String, Value>>>,
    requests: Arc<Mutex<Vec<Request>>>,
    failures: Arc<Mutex<VecDeque<u16>>>,
}

impl EventbriteMock {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut mock = EventbriteMock {
            url: format!("http://{}", listener.local_addr().unwrap()),
            ..EventbriteMock::default()
        };
        let served = mock.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(served.clone()))
                .default_service(web::to(answer))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        actix_web::rt::spawn(server);
        mock.url.push_str("/v3/");
        mock
    }

    fn put(&self, path: &str, object: Value) {
        self.objects.lock().unwrap().insert(path.to_owned(), object);
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

async fn answer(request: HttpRequest, mock: web::Data<EventbriteMock>) -> HttpResponse {
    let auth = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let target = request
        .uri()
        .path_and_query()
        .map_or("", |pq| pq.as_str())
        .to_owned();
    mock.requests.lock().unwrap().push((target, auth));
    if let Some(status) = mock.failures.lock().unwrap().pop_front() {
        return HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
            .finish();
    }
    match mock.objects.lock().unwrap().get(request.path()) {
        Some(object) => HttpResponse::Ok().json(object),
        None => HttpResponse::NotFound().json(json!({"error": "NOT_FOUND"})),
    }
}

fn attendee(id: &str, email: &str, status: &str) -> Value {
    json!({
        "id": id, "event_id": "5551212", "order_id": "900",
        "created": "2026-02-01T09:00:00Z", "changed": "2026-02-03T18:30:00Z",
        "profile": {"email": email, "first_name": "Ann", "last_name": "Lee", "name": "Ann Lee"},
        "checked_in": status == "Checked In", "cancelled": status == "Not Attending",
        "refunded": false, "status": status,
    })
}

fn order(attendees: Vec<Value>) -> Value {
    json!({"id": "900", "event_id": "5551212", "email": "buyer@example.com", "name": "The Buyer",
           "status": "placed", "attendees": attendees})
}

/// One purchase of two tickets: the order and each attendee, as Eventbrite
/// serves them.
async fn two_tickets() -> EventbriteMock {
    let mock = EventbriteMock::start().await;
    let (a, b) = (
        attendee("1", "Ann@Example.com", "Attending"),
        attendee("2", "bo@example.com", "Attending"),
    );
    mock.put("/v3/orders/900/", order(vec![a.clone(), b.clone()]));
    mock.put("/v3/events/5551212/attendees/1/", a);
    mock.put("/v3/events/5551212/attendees/2/", b);
    mock
}

fn webhook(action: &str, api_url: &str) -> String {
    json!({
        "config": {"action": action, "user_id": "eb-org-42", "endpoint_url": "https://relay.example.com/webhooks/eventbrite/x", "webhook_id": "1990496"},
        "api_url": api_url,
    })
    .to_string()
}

async fn eventbrite_app(mock: &EventbriteMock) -> TestApp {
    spawn_app_with(&[
        ("EVENTBRITE_WEBHOOK_TOKEN", PATH_TOKEN),
        ("EVENTBRITE_API_TOKEN", API_TOKEN),
        ("EVENTBRITE_API_BASE_URL", &mock.url),
    ])
    .await
}

async fn post(app: &TestApp, token: &str, body: &str) -> (u16, Value) {
    let (status, answer) = app
        .post(
            &format!("/webhooks/eventbrite/{token}"),
            body.as_bytes(),
            &[],
        )
        .await;
    (status.as_u16(), answer)
}

/// Nothing the mock was asked for but a later delivery's fetch, which went
/// the same way: once it was made, any fetch of an earlier one would have been.
async fn fetched_only_the_sentinel(app: &TestApp, mock: &EventbriteMock) {
    let sentinel = format!("{}events/5551212/attendees/99/", mock.url);
    let (status, _) = post(app, PATH_TOKEN, &webhook("attendee.updated", &sentinel)).await;
    assert_eq!(status, 200);
    wait_until("the later delivery is fetched", 15, async || {
        !mock.requests().is_empty()
    })
    .await;
    let paths: Vec<String> = mock.requests().into_iter().map(|(path, _)| path).collect();
    assert!(
        paths
            .iter()
            .all(|path| path == "/v3/events/5551212/attendees/99/"),
        "{paths:?}"
    );
}

/// Records of the delivery's fetch, once `n` exist.
async fn records(app: &TestApp, n: usize) -> Vec<attendance_relay::store::StoredRecord> {
    wait_until("the fetched records are stored", 15, async || {
        app.records().await.len() >= n
    })
    .await;
    app.records().await
}

#[actix_web::test]
async fn the_test_action_is_acknowledged_and_a_wrong_token_is_a_404() {
    let mock = EventbriteMock::start().await;
    let app = eventbrite_app(&mock).await;
    let test = webhook("test", "https://www.eventbriteapi.com/v3/placeholder/");
    assert_eq!(
        post(&app, PATH_TOKEN, &test).await,
        (200, json!({"accepted": 0, "duplicates": 0, "ignored": 1}))
    );
    let (status, answer) = post(
        &app,
        "not-the-token",
        &webhook("order.placed", &format!("{}orders/900/", mock.url)),
    )
    .await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("not_found")));
    assert!(app.records().await.is_empty());
    fetched_only_the_sentinel(&app, &mock).await;

    let without = spawn_app_with(&[]).await;
    assert_eq!(
        post(&without, PATH_TOKEN, &test).await.0,
        404,
        "route off without a token"
    );
}

#[actix_web::test]
async fn an_order_placed_registers_each_attendee_under_their_own_email() {
    let mock = two_tickets().await;
    let app = eventbrite_app(&mock).await;
    let (status, answer) = post(
        &app,
        PATH_TOKEN,
        &webhook("order.placed", &format!("{}orders/900/", mock.url)),
    )
    .await;
    assert_eq!(
        (status, answer),
        (200, json!({"accepted": 1, "duplicates": 0, "ignored": 0}))
    );

    let stored = records(&app, 2).await;
    let emails: Vec<&str> = stored.iter().map(|r| r.record.email.as_str()).collect();
    assert_eq!(
        emails,
        ["ann@example.com", "bo@example.com"],
        "the attendees', not the buyer's"
    );
    for r in &stored {
        assert_eq!(
            (r.record.state, r.source.as_str()),
            (State::Register, "eventbrite")
        );
        assert_eq!(
            (
                r.record.external_event_id.as_str(),
                r.record.external_account_id.as_str()
            ),
            ("5551212", "eb-org-42")
        );
        assert_eq!(
            r.record.interaction_ms,
            parse_rfc3339_ms("2026-02-01T09:00:00Z").unwrap()
        );
    }
    assert_eq!(
        mock.requests(),
        vec![(
            "/v3/orders/900/?expand=attendees".to_owned(),
            Some(format!("Bearer {API_TOKEN}"))
        )]
    );
    let metrics = app.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "relay_fetches_total",
            &[("source", "eventbrite"), ("outcome", "resolved")]
        ),
        Some(1.0)
    );
}

#[actix_web::test]
async fn updates_follow_the_state_eventbrite_shows_and_check_ins_are_attendance() {
    let mock = EventbriteMock::start().await;
    mock.put(
        "/v3/orders/900/",
        order(vec![
            attendee("1", "a@example.com", "Attending"),
            attendee("2", "b@example.com", "Not Attending"),
            attendee("3", "c@example.com", "Checked In"),
            attendee("4", "d@example.com", "Deleted"),
        ]),
    );
    mock.put(
        "/v3/events/5551212/attendees/5/",
        attendee("5", "e@example.com", "Not Attending"),
    );
    mock.put(
        "/v3/events/5551212/attendees/6/",
        attendee("6", "f@example.com", "Attending"),
    );
    mock.put(
        "/v3/events/5551212/attendees/7/",
        attendee("7", "g@example.com", "Attending"),
    );
    let app = eventbrite_app(&mock).await;
    for (action, path) in [
        ("order.updated", "orders/900/"),
        ("attendee.updated", "events/5551212/attendees/5/"),
        ("attendee.checked_in", "events/5551212/attendees/6/"),
        ("barcode.checked_in", "events/5551212/attendees/7/"),
    ] {
        assert_eq!(
            post(
                &app,
                PATH_TOKEN,
                &webhook(action, &format!("{}{path}", mock.url))
            )
            .await
            .0,
            200
        );
    }
    let stored = records(&app, 7).await;
    let state_of = |email: &str| {
        let r = stored.iter().find(|r| r.record.email == email).unwrap();
        (r.record.state, r.record.interaction_ms)
    };
    let (created, changed) = (
        parse_rfc3339_ms("2026-02-01T09:00:00Z").unwrap(),
        parse_rfc3339_ms("2026-02-03T18:30:00Z").unwrap(),
    );
    assert_eq!(state_of("a@example.com"), (State::Register, created));
    assert_eq!(state_of("b@example.com"), (State::Cancel, changed));
    assert_eq!(state_of("c@example.com"), (State::Attend, changed));
    assert_eq!(state_of("d@example.com"), (State::Cancel, changed));
    assert_eq!(state_of("e@example.com"), (State::Cancel, changed));
    assert_eq!(
        state_of("f@example.com"),
        (State::Attend, changed),
        "attendee.checked_in"
    );
    assert_eq!(
        state_of("g@example.com"),
        (State::Attend, changed),
        "barcode.checked_in"
    );
    assert!(
        mock.requests()
            .iter()
            .all(|(path, _)| path.contains("/orders/") == path.ends_with("?expand=attendees"))
    );
}

#[actix_web::test]
async fn a_refund_cancels_every_attendee_of_the_order() {
    let mock = two_tickets().await;
    let app = eventbrite_app(&mock).await;
    post(
        &app,
        PATH_TOKEN,
        &webhook("order.refunded", &format!("{}orders/900/", mock.url)),
    )
    .await;
    let stored = records(&app, 2).await;
    assert!(stored.iter().all(|r| r.record.state == State::Cancel));
}

#[actix_web::test]
async fn one_purchases_burst_reaches_hubspot_once_per_attendee() {
    let mock = two_tickets().await;
    let hubspot = Simulator::start(Options::default()).await.unwrap();
    let app = spawn_forwarding_app(
        &hubspot,
        &[
            ("EVENTBRITE_WEBHOOK_TOKEN", PATH_TOKEN),
            ("EVENTBRITE_API_TOKEN", API_TOKEN),
            ("EVENTBRITE_API_BASE_URL", &mock.url),
        ],
    )
    .await;
    // What Eventbrite sent for one purchase of two tickets, within a second.
    let order_url = format!("{}orders/900/", mock.url);
    for (action, url) in [
        ("order.updated", order_url.clone()),
        ("order.placed", order_url.clone()),
        (
            "attendee.updated",
            format!("{}events/5551212/attendees/1/", mock.url),
        ),
        (
            "attendee.updated",
            format!("{}events/5551212/attendees/2/", mock.url),
        ),
        ("order.updated", order_url.clone()),
    ] {
        let (status, answer) = post(&app, PATH_TOKEN, &webhook(action, &url)).await;
        assert_eq!(
            (status, &answer["accepted"]),
            (200, &json!(1)),
            "every delivery is kept"
        );
    }
    wait_until("both registrations reach HubSpot", 15, async || {
        hubspot.attendance().len() >= 2
    })
    .await;
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let attendance = hubspot.attendance();
    assert_eq!(attendance.len(), 2, "{attendance:?}");
    assert!(
        attendance
            .iter()
            .all(|a| a.state == "register" && a.external_event_id == "5551212")
    );
    assert_eq!(app.records().await.len(), 2, "one record per attendee");
}

#[actix_web::test]
async fn urls_outside_the_eventbrite_api_are_refused_counted_and_never_requested() {
    let mock = EventbriteMock::start().await;
    // Another local service the gateway could be tricked into calling.
    let canary = EventbriteMock::start().await;
    let app = eventbrite_app(&mock).await;
    let host = mock
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/v3/")
        .to_owned();
    let refused = [
        format!("{}orders/900/", canary.url), // loopback, another port
        format!(
            "http://localhost:{}/v3/orders/900/",
            host.rsplit(':').next().unwrap()
        ),
        "http://169.254.169.254/latest/meta-data/".to_owned(), // link-local metadata
        "https://evil.example.com/v3/orders/900/".to_owned(),
        format!("https://{host}/v3/orders/900/"), // other scheme
        format!("ftp://{host}/v3/orders/900/"),
        "file:///etc/passwd".to_owned(),
        format!("http://{host}/v3/../admin/"), // `..` out of the API
        format!("http://{host}/v3/%2e%2e/admin/"),
        format!("http://{host}/v3evil/orders/900/"),
        format!("http://user@{host}/v3/orders/900/"),
        format!("http://{host}@evil.example.com/v3/orders/900/"),
        "orders/900/".to_owned(),
    ];
    for url in &refused {
        let (status, answer) = post(&app, PATH_TOKEN, &webhook("order.placed", url)).await;
        assert_eq!(status, 400, "{url} was accepted");
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .contains("EVENTBRITE_API_BASE_URL"),
            "{answer}"
        );
    }
    assert!(app.records().await.is_empty());
    fetched_only_the_sentinel(&app, &mock).await;
    assert!(
        canary.requests().is_empty(),
        "no request was made: {:?}",
        canary.requests()
    );
    let metrics = app.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "relay_fetches_total",
            &[("source", "eventbrite"), ("outcome", "refused")]
        ),
        Some(refused.len() as f64)
    );
}

#[actix_web::test]
async fn a_failing_eventbrite_is_retried_until_it_answers() {
    let mock = EventbriteMock::start().await;
    mock.put(
        "/v3/orders/900/",
        order(vec![attendee("1", "a@example.com", "Attending")]),
    );
    mock.failures.lock().unwrap().extend([503, 500]);
    let app = eventbrite_app(&mock).await;
    post(
        &app,
        PATH_TOKEN,
        &webhook("order.placed", &format!("{}orders/900/", mock.url)),
    )
    .await;
    let stored = records(&app, 1).await;
    assert_eq!(stored[0].status, RecordStatus::Pending);
    assert_eq!(mock.requests().len(), 3);
    let metrics = app.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "relay_fetches_total",
            &[("source", "eventbrite"), ("outcome", "retry")]
        ),
        Some(2.0)
    );
}

#[actix_web::test]
async fn a_delivery_that_cannot_become_records_stays_visible_and_good_attendees_still_arrive() {
    let mock = EventbriteMock::start().await;
    let mut broken = attendee("3", "cy@example.com", "Attending");
    broken.as_object_mut().unwrap().remove("created");
    broken.as_object_mut().unwrap().remove("changed");
    mock.put(
        "/v3/orders/900/",
        order(vec![attendee("1", "a@example.com", "Attending"), broken]),
    );
    let app = eventbrite_app(&mock).await;
    let queue =
        |text: &str, status: &str| metric(text, "relay_queue_records", &[("status", status)]);
    // Eventbrite no longer has this order: nothing to fetch, ever.
    post(
        &app,
        PATH_TOKEN,
        &webhook("order.placed", &format!("{}orders/404/", mock.url)),
    )
    .await;
    // This order has one attendee the mapping cannot use.
    post(
        &app,
        PATH_TOKEN,
        &webhook("order.placed", &format!("{}orders/900/", mock.url)),
    )
    .await;
    let stored = records(&app, 1).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].record.email, "a@example.com",
        "the good attendee is not sunk"
    );
    wait_until("both deliveries are settled", 15, async || {
        queue(&app.metrics().await, "dead") == Some(2.0)
    })
    .await;
    let text = app.metrics().await;
    assert_eq!(
        queue(&text, "pending"),
        Some(1.0),
        "only the one record waits"
    );
    assert_eq!(
        metric(
            &text,
            "relay_fetches_total",
            &[("source", "eventbrite"), ("outcome", "failed")]
        ),
        Some(2.0)
    );
}

#[actix_web::test]
async fn a_failed_fetch_is_listed_as_a_dead_delivery_and_an_operator_retry_fetches_it_again() {
    use crate::helpers::{ADMIN_SECRET, admin_token};

    let mock = EventbriteMock::start().await;
    let app = spawn_app_with(&[
        ("EVENTBRITE_WEBHOOK_TOKEN", PATH_TOKEN),
        ("EVENTBRITE_API_TOKEN", API_TOKEN),
        ("EVENTBRITE_API_BASE_URL", &mock.url),
        ("RELAY_ADMIN_JWT_SECRET", ADMIN_SECRET),
    ])
    .await;
    // Eventbrite does not have the order (yet): the fetch fails for good.
    let url = format!("{}orders/900/", mock.url);
    post(&app, PATH_TOKEN, &webhook("order.placed", &url)).await;
    let dead = async || app.admin("GET", "/admin/records?status=dead").await;
    wait_until("the delivery is a dead letter", 15, async || {
        !dead().await["records"].as_array().unwrap().is_empty()
    })
    .await;
    let listed = dead().await;
    let delivery = &listed["records"][0];
    assert_eq!(delivery["id"], "d1", "{listed}");
    assert_eq!(delivery["kind"], "delivery");
    assert_eq!(delivery["source"], "eventbrite");
    assert!(delivery["last_error"].as_str().is_some(), "{delivery}");
    assert_eq!(app.admin("GET", "/admin/status").await["queue"]["dead"], 1);

    mock.put(
        "/v3/orders/900/",
        order(vec![attendee("1", "a@example.com", "Attending")]),
    );
    let (status, body) = app
        .call(
            "POST",
            &format!("{}/admin/records/d1/retry", app.admin),
            Some(&admin_token()),
        )
        .await;
    assert_eq!(
        (status.as_u16(), &body["retried"]),
        (200, &json!(true)),
        "{body}"
    );
    let stored = records(&app, 1).await;
    assert_eq!(stored[0].record.email, "a@example.com");
    assert_eq!(
        app.admin("GET", "/admin/records?status=dead").await["records"],
        json!([])
    );
}
