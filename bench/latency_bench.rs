//! End-to-end latency below the rate limit (run by `bench/latency.sh`):
//! signed Zoom joins posted over HTTP at a modest, steady rate to the real
//! gateway (SQLite store, default settings), each timed from its 200 to the
//! moment the HubSpot simulator received the `create` carrying it. Joins of
//! several webinars never fill a batch, so each goes after the linger.
//!
//! Usage: latency_bench [joins per second=3] [seconds=40] [webinars=3]

mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use attendance_relay::{
    demo::{
        post_as_zoom,
        simulator::{Options, Simulator},
    },
    hubspot::Operation,
    record::now_ms,
    sources::zoom::Zoom,
};
use common::{Gateway, arg, gateway_env};

const SECRET: &str = "bench-secret";
/// The gateway's default `RELAY_BATCH_LINGER_MS`, set here so the target is known.
const LINGER_MS: u64 = 250;

fn join(webinar: usize, email: &str) -> Vec<u8> {
    serde_json::json!({
        "event": "webinar.participant_joined",
        "event_ts": now_ms(),
        "payload": {
            "account_id": "bench-account",
            "object": {
                "id": format!("8601234{webinar:04}"), "uuid": "4444AAAiAAAAAiAiAiiAii==",
                "host_id": "x1yCzABCDEfg23HiJKl4mN", "topic": "Bench webinar", "type": 5,
                "start_time": "2026-01-01T10:00:00Z", "duration": 60, "timezone": "UTC",
                "participant": {
                    "user_id": "16778240", "user_name": "Bench Attendee", "id": email,
                    "join_time": "2026-01-01T10:00:00Z", "email": email
                }
            }
        }
    })
    .to_string()
    .into_bytes()
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (rate, seconds, webinars) = (arg(1, 3).max(1), arg(2, 40), arg(3, 3).max(1) as usize);
    let dir = std::env::temp_dir().join(format!("attendance-relay-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let hubspot = Simulator::start(Options {
        latency: Some(Duration::from_millis(20)),
        ..Options::default()
    })
    .await?;
    let database_url = format!("sqlite://{}", dir.join("relay.db").display());
    let env = gateway_env(
        &database_url,
        &hubspot.url(),
        &[
            ("ZOOM_WEBHOOK_SECRET_TOKEN", SECRET.to_owned()),
            ("RELAY_BATCH_LINGER_MS", LINGER_MS.to_string()),
        ],
    );
    let mut gateway = Gateway::start(&env, std::process::Stdio::inherit()).await?;
    let public = gateway.public;

    let zoom = Zoom::new(SECRET.parse()?, 300, None);
    let client = awc::Client::default();
    let joins = (rate * seconds) as usize;
    // When each join was acknowledged, by its HubSpot contact id.
    let mut accepted: HashMap<i64, Instant> = HashMap::with_capacity(joins);
    let mut pace = actix_web::rt::time::interval(Duration::from_secs(1) / rate as u32);
    for i in 0..joins {
        pace.tick().await;
        let email = format!("attendee{i}@example.com");
        hubspot.add_contact(&email);
        let body = join(i % webinars, &email);
        let (status, _) = post_as_zoom(&client, &zoom, public, body).await?;
        if status != 200 {
            return Err(format!("join {i} answered {status}").into());
        }
        let vid = hubspot.contact_id(&email).ok_or("no contact")?;
        accepted.insert(vid, Instant::now());
    }
    while gateway.busy().await? {
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    gateway.stop()?;

    let calls = hubspot.calls();
    let mut latencies: Vec<Duration> = Vec::with_capacity(joins);
    for call in calls
        .iter()
        .filter(|c| c.operation == Operation::AttendanceCreate && c.status == 200)
    {
        for input in call.body["inputs"].as_array().into_iter().flatten() {
            if let Some(at) = input["vid"].as_i64().and_then(|vid| accepted.remove(&vid)) {
                latencies.push(call.at.saturating_duration_since(at));
            }
        }
    }
    if latencies.is_empty() {
        return Err("no join reached HubSpot".into());
    }
    latencies.sort();
    let quantile =
        |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("joins posted            {joins} at {rate}/s over {webinars} webinar(s)");
    println!(
        "joins sent to HubSpot   {}  (never sent: {})",
        latencies.len(),
        accepted.len()
    );
    println!(
        "create calls            {}",
        calls
            .iter()
            .filter(|c| c.operation == Operation::AttendanceCreate)
            .count()
    );
    println!("rate-limited by HubSpot {}", hubspot.rate_limited());
    println!(
        "accepted -> create      p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms  (target p99 <= linger {LINGER_MS} + 100 ms)",
        ms(quantile(0.5)),
        ms(quantile(0.99)),
        ms(latencies[latencies.len() - 1])
    );
    hubspot.stop().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
