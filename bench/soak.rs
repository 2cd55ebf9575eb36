//! Soak: the release binary under hours of mixed traffic, sampled.
//!
//! Zoom joins and leaves (a sixth sent twice, a tenth with a bad signature),
//! generic batches (JWT), Eventbrite orders fetched from a local stand-in of
//! its API, forwarded to the HubSpot simulator having a bad day (5 % 5xx,
//! 3 % 429, 1 % hangs past the gateway's timeout). Every 10 s the gateway's
//! RSS, open descriptors and queue are written as a line of RESULTS.
//!
//! Usage (build first: `cargo build --release --bin attendance-relay --example soak`):
//!   target/release/examples/soak [minutes=60] [results=soak.tsv] [deliveries per second=40]
//! `SOAK_DATABASE_URL=postgres://…` (an empty database) soaks on PostgreSQL.

mod common;

use std::{
    io::Write,
    process::Stdio,
    time::{Duration, Instant},
};

use actix_web::{App, HttpResponse, HttpServer, web};
use attendance_relay::{
    demo::simulator::{Chaos, Options, Simulator},
    sources::zoom::Zoom,
};
use common::{Gateway, gateway_env, metric};
use futures_util::StreamExt;
use serde_json::{Value, json};

const ZOOM_SECRET: &str = "soak-zoom-secret";
const JWT_SECRET: &str = "soak-jwt-secret";
const EVENTBRITE_TOKEN: &str = "soak-path-token";
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Eventbrite's API as the gateway fetches it: every order has two attendees.
async fn eventbrite_api() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v3/", listener.local_addr().unwrap());
    let server = HttpServer::new(|| {
        App::new().route(
            "/v3/orders/{id}/",
            web::get().to(|id: web::Path<u64>| async move {
                let attendee = |n: u64| {
                    json!({"id": format!("{id}-{n}"), "event_id": "5551212", "order_id": id.to_string(),
                           "created": "2026-02-01T09:00:00Z", "changed": "2026-02-01T09:00:00Z",
                           "profile": {"email": format!("eb{id}-{n}@example.com")}, "status": "Attending"})
                };
                HttpResponse::Ok().json(json!({"id": id.to_string(), "event_id": "5551212",
                                               "attendees": [attendee(1), attendee(2)]}))
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    actix_web::rt::spawn(server);
    url
}

type Headers = Vec<(&'static str, String)>;

/// One delivery of the mix, numbered `n`: path, body and headers. `sent`
/// holds earlier Zoom bodies to send again.
fn delivery(n: u64, zoom: &Zoom, eventbrite: &str, sent: &[Vec<u8>]) -> (String, Vec<u8>, Headers) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let json = ("content-type", "application/json".to_owned());
    let signed = |body: Vec<u8>, signature: Option<String>| {
        let signature = signature.unwrap_or_else(|| zoom.sign(now, &body));
        let headers = vec![
            json.clone(),
            ("x-zm-signature", signature),
            ("x-zm-request-timestamp", now.to_string()),
        ];
        ("/webhooks/zoom".to_owned(), body, headers)
    };
    match n % 10 {
        // Zoom: joins, and the leave of the join five deliveries before.
        0..=3 => {
            let (event, person) = if n.is_multiple_of(2) {
                ("webinar.participant_joined", n)
            } else {
                ("webinar.participant_left", n.saturating_sub(5))
            };
            let body = json!({"event": event, "event_ts": 1_767_261_600_000_i64 + n as i64,
                "payload": {"account_id": "soak", "object": {"id": format!("{}", 900 + n % 7),
                    "participant": {"email": format!("z{person}@example.com"), "user_name": "Soak",
                        "join_time": "2026-01-01T10:00:00Z", "leave_time": "2026-01-01T11:00:00Z"}}}});
            signed(body.to_string().into_bytes(), None)
        }
        // A Zoom delivery sent again (a platform's retry): a duplicate.
        4 if !sent.is_empty() => signed(sent[n as usize % sent.len()].clone(), None),
        // A forged one.
        4 | 5 => signed(
            br#"{"event":"webinar.participant_joined","payload":{}}"#.to_vec(),
            Some("v0=00".to_owned()),
        ),
        6 | 7 => {
            let records: Vec<Value> = (0..5)
                .map(|i| {
                    json!({"id": format!("g{n}-{i}"), "externalEventId": "soak-generic",
                    "externalAccountId": "soak", "state": "register",
                    "email": format!("g{n}-{i}@example.com"), "occurredAt": 1_767_261_600_000_i64})
                })
                .collect();
            let token = jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &json!({"exp": now + 300}),
                &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()).unwrap(),
            )
            .unwrap();
            let body = json!({"records": records}).to_string().into_bytes();
            (
                "/webhooks/generic".to_owned(),
                body,
                vec![json, ("authorization", format!("Bearer {token}"))],
            )
        }
        _ => {
            let body = json!({"config": {"action": "order.placed", "user_id": "soak"},
                              "api_url": format!("{eventbrite}orders/{n}/")});
            let path = format!("/webhooks/eventbrite/{EVENTBRITE_TOKEN}");
            (path, body.to_string().into_bytes(), vec![json])
        }
    }
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let minutes: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(60);
    let results = args.get(2).cloned().unwrap_or_else(|| "soak.tsv".into());
    let rate: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(40);

    let hubspot = Simulator::start(Options {
        chaos: Some(Chaos {
            server_errors: 0.05,
            rate_limited: 0.03,
            hangs: 0.01,
            hang: Duration::from_secs(6),
            resets: 0.01,
            seed: 13,
        }),
        ..Options::default()
    })
    .await?;
    let eventbrite = eventbrite_api().await;
    let dir = std::env::temp_dir().join(format!("attendance-relay-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let database = std::env::var("SOAK_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.join("relay.db").display()));
    let env = gateway_env(
        &database,
        &hubspot.url(),
        &[
            ("RELAY_RETENTION_SECS", "300".to_owned()),
            ("RELAY_COMPLETE_DELAY_SECS", "5".to_owned()),
            ("HUBSPOT_REQUEST_TIMEOUT_MS", "3000".to_owned()),
            ("ZOOM_WEBHOOK_SECRET_TOKEN", ZOOM_SECRET.to_owned()),
            ("GENERIC_JWT_SECRET", JWT_SECRET.to_owned()),
            ("EVENTBRITE_WEBHOOK_TOKEN", EVENTBRITE_TOKEN.to_owned()),
            ("EVENTBRITE_API_TOKEN", "soak".to_owned()),
            ("EVENTBRITE_API_BASE_URL", eventbrite.clone()),
        ],
    );
    let log = std::fs::File::create(dir.join("gateway.log"))?;
    let gateway = Gateway::start(&env, Stdio::from(log)).await?;
    let public = gateway.public;
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let started = Instant::now();

    let zoom = Zoom::new(ZOOM_SECRET.parse()?, 300, None);
    let mut out = std::fs::File::create(&results)?;
    writeln!(
        out,
        "seconds\trss_kib\topen_fds\tpending\tdelivered\tdead\tanswers_2xx\tanswers_401\tanswers_other"
    )?;
    let (mut ok, mut unauthorized, mut other) = (0u64, 0u64, 0u64);
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut n = 0u64;
    let end = started + Duration::from_secs(minutes * 60);
    let mut next_sample = Instant::now();
    let mut tick = actix_web::rt::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    while Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => {
                n += 1;
                let (path, body, headers) = delivery(n, &zoom, &eventbrite, &sent);
                if n % 10 < 4 && sent.len() < 500 {
                    sent.push(body.clone());
                }
                let mut request = client.post(format!("http://{public}{path}"));
                for (name, value) in headers {
                    request = request.insert_header((name, value));
                }
                in_flight.push(async move { request.send_body(body).await.map(|r| r.status().as_u16()) });
            }
            Some(answer) = in_flight.next(), if !in_flight.is_empty() => match answer {
                Ok(200) => ok += 1,
                Ok(401) => unauthorized += 1,
                _ => other += 1,
            },
        }
        if Instant::now() >= next_sample {
            next_sample += SAMPLE_EVERY;
            let (rss, fds) = gateway.sample();
            let text = gateway.metrics().await;
            let queue = |status: &str| {
                metric(
                    &text,
                    &format!("relay_queue_records{{status=\"{status}\"}}"),
                )
            };
            writeln!(
                out,
                "{}\t{rss}\t{fds}\t{}\t{}\t{}\t{ok}\t{unauthorized}\t{other}",
                started.elapsed().as_secs(),
                queue("pending"),
                queue("delivered"),
                queue("dead"),
            )?;
            out.flush()?;
        }
    }
    gateway.stop()?;
    println!(
        "soak: {minutes} min, {n} deliveries, {ok} answered 200, {unauthorized} 401, {other} other; samples in {results}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
