//! Drain benchmark (run by `bench/drain.sh`): stored records of one or many
//! webinars, interleaved as concurrent webinars' joins arrive, forwarded by
//! the real gateway to the HubSpot simulator. Reports the create and look-up
//! calls, the mean batch size, and how much of the rate limit's budget the
//! drain used.
//!
//! With `faults`, HubSpot has a bad day for the whole drain: a third of the
//! calls answer 5xx, 5 % 429 (half with `Retry-After`), 3 % hang past the
//! gateway's timeout.
//!
//! With `REPLICAS=n` and `BENCH_DATABASE_URL=postgres://…`, n gateways share
//! the backlog on that (empty) database, and the limit holds for them together.
//!
//! The gateways are processes of the release binary (build it first), so
//! their memory is sampled apart from this process's (the simulator keeps
//! every call it answered).
//!
//! Usage: drain_bench [records=10000] [limit per 10 s=100] [simulated HubSpot latency ms=20] [webinars=1] [faults]

mod common;

use std::{collections::HashSet, process::Stdio, time::Duration};

use attendance_relay::{
    demo::simulator::{Call, Chaos, Options, Simulator},
    hubspot::Operation,
    record::{Delivery, NewRecord, State, now_ms},
    store,
};
use common::{Gateway, arg, gateway_env, rss_kib};

const PER_DELIVERY: usize = 100;
/// Seconds between RSS samples during the drain.
const RSS_EVERY: f64 = 5.0;

/// The largest resident memory among the gateways (MiB).
fn gateways_rss_mib(running: &[Gateway]) -> f64 {
    running
        .iter()
        .map(|g| g.sample().0 as f64 / 1024.0)
        .fold(0.0, f64::max)
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (records, limit, latency_ms) = (arg(1, 10_000) as usize, arg(2, 100) as u32, arg(3, 20));
    let webinars = arg(4, 1).max(1) as usize;
    let faults = std::env::args().nth(5).is_some_and(|a| a == "faults");
    if std::env::var_os("RUST_LOG").is_some() {
        attendance_relay::telemetry::init(attendance_relay::settings::LogFormat::Text, "warn");
    }
    let dir = std::env::temp_dir().join(format!("attendance-relay-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("relay.db");

    // The records are stored first, so the drain is measured alone.
    let replicas: usize = std::env::var("REPLICAS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let database_url = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", db.display()));
    let store = store::open(&database_url, &Default::default())?;
    let emails: Vec<String> = (0..records)
        .map(|i| format!("attendee{i}@example.com"))
        .collect();
    for (n, chunk) in emails.chunks(PER_DELIVERY).enumerate() {
        let batch = chunk.iter().enumerate().map(|(i, email)| {
            let k = n * PER_DELIVERY + i;
            NewRecord {
                state: State::Attend,
                email: email.clone(),
                first_name: None,
                last_name: None,
                vid: None,
                // Consecutive joins belong to different webinars.
                external_event_id: format!("8601234{:04}", k % webinars),
                external_account_id: "bench-account".into(),
                interaction_ms: 1_767_261_600_000 + k as i64,
                properties: Default::default(),
                event: None,
                sender_id: None,
                participant: None,
                closes_session: false,
            }
        });
        let delivery = Delivery {
            source: "zoom",
            body: Vec::new(),
            received_ms: now_ms(),
            deferred: false,
            request_id: format!("{:016x}", fastrand::u64(..)),
        };
        store.ingest(delivery, batch.collect()).await?;
    }
    store.close().await;

    let hubspot = Simulator::start(Options {
        rate_limit_per_10s: Some(limit),
        latency: Some(Duration::from_millis(latency_ms)),
        chaos: faults.then(|| Chaos {
            server_errors: 0.33,
            rate_limited: 0.05,
            hangs: 0.03,
            hang: Duration::from_secs(5),
            resets: 0.03,
            seed: 42,
        }),
        ..Options::default()
    })
    .await?;
    for email in &emails {
        hubspot.add_contact(email);
    }
    let more = [
        ("HUBSPOT_RATE_LIMIT_PER_10S", limit.to_string()),
        ("HUBSPOT_REQUEST_TIMEOUT_MS", "2000".to_owned()),
    ];
    let mut running = Vec::new();
    for _ in 0..replicas {
        // Each replica listens on ports of its own.
        let env = gateway_env(&database_url, &hubspot.url(), &more);
        running.push(Gateway::start(&env, Stdio::inherit()).await?);
    }
    let started = std::time::Instant::now();
    // (seconds into the drain, largest gateway RSS MiB, this process's RSS
    // MiB), every RSS_EVERY.
    let sample = |running: &[Gateway]| (gateways_rss_mib(running), rss_kib("self") as f64 / 1024.0);
    let mut rss = vec![(0.0, sample(&running))];
    // Seldom: each look counts the store's records, the whole backlog.
    while running[0].busy().await? {
        actix_web::rt::time::sleep(Duration::from_secs(1)).await;
        let at = started.elapsed().as_secs_f64();
        if at - rss.last().map_or(0.0, |(t, _)| *t) >= RSS_EVERY {
            rss.push((at, sample(&running)));
        }
    }
    let drained = started.elapsed();
    rss.push((drained.as_secs_f64(), sample(&running)));
    for gateway in running {
        gateway.stop()?;
    }

    let calls = hubspot.calls();
    let count = |op: Operation| calls.iter().filter(|c| c.operation == op).count();
    let creates = count(Operation::AttendanceCreate);
    let inputs = |c: &&Call| c.body["inputs"].as_array().map_or(0, Vec::len);
    let create_calls: Vec<_> = calls
        .iter()
        .filter(|c| c.operation == Operation::AttendanceCreate)
        .collect();
    let sent: usize = create_calls.iter().map(inputs).sum();
    let full: usize = create_calls.iter().map(inputs).filter(|n| *n == 100).sum();
    let lookups = count(Operation::ContactsRead) + count(Operation::ContactsUpsert);
    let first = calls.first().ok_or("no HubSpot call was made")?.at;
    let last = calls.last().ok_or("no HubSpot call was made")?.at;
    let elapsed = last.duration_since(first).as_secs_f64();
    // The first window's calls may all go at once; every further call must
    // wait for the window to move, so its best rate is the limit per 10 s.
    let paced = calls.len().saturating_sub(limit as usize);
    let fraction = if paced == 0 {
        f64::NAN
    } else {
        paced as f64 / (elapsed * f64::from(limit) / 10.0)
    };
    let delivered: HashSet<i64> = hubspot.attendance().iter().map(|a| a.vid).collect();

    println!("records stored          {records} over {webinars} webinar(s), {replicas} gateway(s)");
    println!(
        "delivered (distinct)    {}  (attendance rows {})",
        delivered.len(),
        hubspot.attendance().len()
    );
    println!(
        "create calls            {creates}  ({} answered 200)",
        create_calls.iter().filter(|c| c.status == 200).count()
    );
    println!(
        "inputs in full batches  {:.1} %  ({full} of {sent} create inputs)",
        100.0 * full as f64 / sent.max(1) as f64
    );
    println!("time to deliver all     {:.1} s", drained.as_secs_f64());
    println!(
        "contact look-up calls   {lookups}  (read {}, upsert {})",
        count(Operation::ContactsRead),
        count(Operation::ContactsUpsert)
    );
    println!(
        "mean batch size         {:.1}  (inputs per create call)",
        sent as f64 / creates as f64
    );
    println!(
        "HubSpot calls           {} over {elapsed:.2} s (first to last), limit {limit} per 10 s",
        calls.len()
    );
    println!("rate-limited by HubSpot {}", hubspot.rate_limited());
    println!(
        "drain rate / ceiling    {fraction:.3}  (calls after the first window per second, over limit/10)"
    );
    let curve = |pick: fn(&(f64, f64)) -> f64| {
        let peak = rss.iter().map(|(_, s)| pick(s)).fold(0.0, f64::max);
        let points: Vec<String> = rss
            .iter()
            .map(|(t, s)| format!("{t:.0}s {:.1}", pick(s)))
            .collect();
        format!("peak {peak:.1}; {}", points.join(", "))
    };
    println!("RSS MiB, gateway (largest process)  {}", curve(|s| s.0));
    println!(
        "RSS MiB, this process (simulator, bench)  {}",
        curve(|s| s.1)
    );
    hubspot.stop().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
