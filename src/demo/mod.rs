//! `attendance-relay demo`: the real gateway on the embedded store, fed the
//! bundled sample Zoom webhooks (signed as Zoom signs them) and forwarding to
//! the built-in HubSpot simulator. Prints what HubSpot received — the
//! attendance, then the completed event — and the metrics that moved; needs
//! no account and leaves nothing behind.

pub mod simulator;

use std::{collections::HashMap, error::Error, time::Duration};

use serde::Deserialize;
use serde_json::Value;

use crate::{
    app::Application,
    demo::simulator::{Options, Simulator},
    record::{State, format_utc, now_ms},
    settings::Settings,
    sources::zoom::Zoom,
    store::{RecordStatus, Store},
};

/// The sample deliveries, in the order Zoom would send them.
const SAMPLES: &str = include_str!("../../samples/zoom-webhooks.json");
const ZOOM_SECRET: &str = "demo-zoom-secret-token";
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
struct Sample {
    what: String,
    body: Value,
}

pub async fn run() -> Result<(), Box<dyn Error>> {
    let dir = std::env::temp_dir().join(format!("attendance-relay-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = demo(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Posts `body` to the gateway at `public` as Zoom would, signed now: the
/// answer's status and body.
pub async fn post_as_zoom(
    client: &awc::Client,
    zoom: &Zoom,
    public: std::net::SocketAddr,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), Box<dyn Error>> {
    let timestamp = now_ms() / 1000;
    let mut response = client
        .post(format!("http://{public}/webhooks/zoom"))
        .insert_header(("content-type", "application/json"))
        .insert_header(("x-zm-request-timestamp", timestamp.to_string()))
        .insert_header(("x-zm-signature", zoom.sign(timestamp, &body)))
        .send_body(body)
        .await?;
    let answer = response.body().await?;
    Ok((response.status().as_u16(), answer.to_vec()))
}

async fn demo(dir: &std::path::Path) -> Result<(), Box<dyn Error>> {
    // No marketing event exists yet and only Ada is a HubSpot contact: the
    // gateway creates the event and the other contacts itself.
    let hubspot = Simulator::start(Options {
        known_events: Some(Vec::new()),
        ..Options::default()
    })
    .await?;
    hubspot.add_contact("ada@example.com");
    let app = Application::build(settings(dir, &hubspot)?)?;
    let (public, admin, store) = (app.public_addr(), app.admin_addr(), app.store());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = actix_web::rt::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    let client = awc::Client::default();
    deliver_samples(&client, public).await?;
    settled(store.as_ref()).await?;
    show_calls(&hubspot);
    show_attendance(&hubspot, store.as_ref()).await?;
    show_metrics(&client, admin).await?;

    let _ = stop.send(());
    server.await??;
    hubspot.stop().await;
    Ok(())
}

/// The gateway on a store in `dir`, forwarding to `hubspot`.
fn settings(dir: &std::path::Path, hubspot: &Simulator) -> Result<Settings, Box<dyn Error>> {
    let env: HashMap<String, String> = [
        ("RELAY_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("RELAY_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        (
            "RELAY_DATABASE_URL",
            format!("sqlite://{}", dir.join("relay.db").display()),
        ),
        ("ZOOM_WEBHOOK_SECRET_TOKEN", ZOOM_SECRET.to_owned()),
        ("HUBSPOT_BASE_URL", hubspot.url()),
        ("HUBSPOT_ACCESS_TOKEN", "demo-hubspot-token".to_owned()),
        ("RELAY_UPSERT_EVENTS", "true".to_owned()),
        ("RELAY_BATCH_LINGER_MS", "200".to_owned()),
        // Late leaves are not waited for here: the demo's have all arrived.
        ("RELAY_COMPLETE_DELAY_SECS", "1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    Ok(Settings::init_from_hashmap(&env)?)
}

/// Step 1: the samples, signed and posted as Zoom would.
async fn deliver_samples(
    client: &awc::Client,
    public: std::net::SocketAddr,
) -> Result<(), Box<dyn Error>> {
    let zoom = Zoom::new(ZOOM_SECRET.parse()?, 300, None);
    let samples: Vec<Sample> = serde_json::from_str(SAMPLES)?;
    println!(
        "1. Zoom delivers {} webhooks to http://{public}/webhooks/zoom",
        samples.len()
    );
    for sample in &samples {
        let body = serde_json::to_vec(&sample.body)?;
        let (status, answer) = post_as_zoom(client, &zoom, public, body).await?;
        println!(
            "   {:<44} {status} {}",
            sample.what,
            String::from_utf8_lossy(&answer)
        );
    }
    Ok(())
}

/// Waits until no record is pending any more.
async fn settled(store: &dyn Store) -> Result<(), Box<dyn Error>> {
    let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
    while store.queue_stats().await?.oldest_pending_ms.is_some() {
        if std::time::Instant::now() > deadline {
            return Err("records were still pending after 30 s".into());
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Step 2: every call HubSpot received.
fn show_calls(hubspot: &Simulator) {
    println!(
        "\n2. HubSpot (the simulator at {}) was called:",
        hubspot.url()
    );
    for call in hubspot.calls() {
        let inputs = call.body["inputs"]
            .as_array()
            .map_or_else(String::new, |inputs| format!("  ({} inputs)", inputs.len()));
        println!("   {} POST {}{inputs}", call.status, call.path);
    }
}

/// Step 3: the attendance HubSpot recorded, what was kept back, and the
/// completed event.
async fn show_attendance(hubspot: &Simulator, store: &dyn Store) -> Result<(), Box<dyn Error>> {
    let records = store.records(None, 1000).await?;
    let email_of: HashMap<i64, &str> = records
        .iter()
        .filter_map(|r| {
            Some((
                hubspot.contact_id(&r.record.email)?,
                r.record.email.as_str(),
            ))
        })
        .collect();
    println!("\n3. Attendance HubSpot recorded, each once:");
    for attended in hubspot.attendance() {
        println!(
            "   {:<8} {:<26} at {}  {}",
            attended.state,
            email_of.get(&attended.vid).copied().unwrap_or("?"),
            format_utc(attended.interaction_ms).unwrap_or_default(),
            serde_json::to_string(&attended.properties)?,
        );
    }
    for kept in records
        .iter()
        .filter(|r| r.status != RecordStatus::Delivered)
    {
        println!(
            "   kept, not forwarded: {} {} ({})",
            kept.record.state.as_str(),
            kept.status.as_str(),
            kept.last_error
                .as_deref()
                .unwrap_or("the platform sent no email"),
        );
    }

    for kept in records.iter().filter(|r| r.record.state == State::Complete) {
        let event = hubspot
            .event(
                &kept.record.external_account_id,
                &kept.record.external_event_id,
            )
            .unwrap_or_default();
        println!(
            "\n   The marketing event {:?} was completed ({} to {}, {} time): HubSpot now \
             computes each attendee's duration from the sessions above.",
            event.name.unwrap_or_default(),
            event.start.unwrap_or_default(),
            event.end.unwrap_or_default(),
            event.completions,
        );
    }
    Ok(())
}

/// Step 4: the metrics that are not zero.
async fn show_metrics(
    client: &awc::Client,
    admin: std::net::SocketAddr,
) -> Result<(), Box<dyn Error>> {
    println!("\n4. Metrics that moved (http://{admin}/metrics):");
    let mut response = client.get(format!("http://{admin}/metrics")).send().await?;
    let metrics = response.body().limit(1 << 22).await?;
    for line in String::from_utf8_lossy(&metrics).lines() {
        let moved = line.starts_with("relay_")
            && !line.contains("_bucket{")
            && line.rsplit_once(' ').is_some_and(|(_, value)| value != "0");
        if moved {
            println!("   {line}");
        }
    }
    Ok(())
}
