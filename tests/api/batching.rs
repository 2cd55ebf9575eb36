//! The promise under load and faults: every record reaches HubSpot once, in
//! full batches, within the limit — whatever the arrival order, however
//! HubSpot fails.

use std::{sync::Arc, time::Duration};

use attendance_relay::{
    demo::simulator::{Call, Chaos, Fault, Options, Simulator},
    hubspot::Operation,
    store::RecordStatus,
};
use futures_util::{StreamExt, stream};

use crate::helpers::{
    StoreDir, TestApp, metric, spawn_app_in, spawn_forwarding_app, spawn_forwarding_app_in,
    wait_until, zoom_join,
};

/// Posts joins `(webinar, email)` through `connections` concurrent senders.
async fn post_joins(app: &TestApp, joins: &[(String, String)], connections: usize) {
    stream::iter(joins)
        .for_each_concurrent(connections, |(webinar, email)| async move {
            let (status, body) = app
                .post_zoom(&zoom_join(webinar, email, "2026-01-01T10:00:00Z"))
                .await;
            assert_eq!(status.as_u16(), 200, "{body}");
        })
        .await;
}

fn creates(hubspot: &Simulator) -> Vec<Call> {
    hubspot
        .calls()
        .into_iter()
        .filter(|c| c.operation == Operation::AttendanceCreate)
        .collect()
}

fn inputs(call: &Call) -> usize {
    call.body["inputs"].as_array().map_or(0, Vec::len)
}

/// Joins of `webinars` webinars, interleaved as concurrent webinars' joins arrive.
fn interleaved(webinars: usize, per_webinar: usize) -> Vec<(String, String)> {
    (0..webinars * per_webinar)
        .map(|i| {
            (
                format!("{}", 8_000 + i % webinars),
                format!("p{i}@example.com"),
            )
        })
        .collect()
}

/// Stores `joins` while forwarding waits for a credential, then restarts
/// the gateway with one, forwarding to `hubspot`.
async fn backlog_then_drain(
    joins: &[(String, String)],
    hubspot: &Simulator,
    overrides: &[(&str, &str)],
) -> TestApp {
    let dir = StoreDir::new();
    let waiting = spawn_app_in(Arc::clone(&dir), &[]).await;
    post_joins(&waiting, joins, 16).await;
    let dir = waiting.stop().await;
    for (_, email) in joins {
        hubspot.add_contact(email);
    }
    spawn_forwarding_app_in(dir, hubspot, overrides).await
}

#[actix_web::test]
async fn a_backlog_over_many_webinars_drains_in_full_batches() {
    let hubspot = Simulator::start(Options::default()).await.unwrap();
    let joins = interleaved(12, 100);
    let _app = backlog_then_drain(&joins, &hubspot, &[]).await;
    wait_until("the backlog is delivered", 60, async || {
        hubspot.attendance().len() == joins.len()
    })
    .await;
    let sizes: Vec<usize> = creates(&hubspot).iter().map(inputs).collect();
    assert_eq!(sizes, vec![100; 12], "one full create per webinar");
}

#[actix_web::test]
async fn joins_arriving_fast_go_in_full_batches_and_linger_only_bounds_the_rest() {
    let hubspot = Simulator::start(Options::default()).await.unwrap();
    let joins = interleaved(1, 1_050);
    for (_, email) in &joins {
        hubspot.add_contact(email);
    }
    // Long enough that even a loaded runner posts faster than batches linger:
    // every batch then leaves full, and only the last one waits.
    let app = spawn_forwarding_app(&hubspot, &[("RELAY_BATCH_LINGER_MS", "3000")]).await;
    post_joins(&app, &joins, 16).await;
    wait_until("every join is delivered", 30, async || {
        hubspot.attendance().len() == joins.len()
    })
    .await;
    let sizes: Vec<usize> = creates(&hubspot).iter().map(inputs).collect();
    assert!(
        sizes.len() <= joins.len().div_ceil(100) + 1,
        "{} creates for {} joins: {sizes:?}",
        sizes.len(),
        joins.len()
    );
}

/// Six batches whose contact look-ups time out together are one failure of
/// HubSpot's, not six: the shared backoff stays short, so the drain goes on
/// soon after HubSpot recovers.
#[actix_web::test]
async fn look_ups_failing_together_count_as_one_failure() {
    let hubspot = Simulator::start(Options::default()).await.unwrap();
    hubspot.set_latency(Some(Duration::from_secs(30)));
    let joins = interleaved(6, 100);
    let app = backlog_then_drain(&joins, &hubspot, &[("HUBSPOT_REQUEST_TIMEOUT_MS", "1000")]).await;
    // Once every batch's look-up has failed and all six wait to be tried
    // again, they have counted as one failure (two or three if retries failed
    // too): nothing is due more than 4 s ahead. Counted one by one, the six
    // batches of the first round alone would push the last of them 16–32 s
    // ahead.
    let mut waiting = Vec::new();
    wait_until(
        "every batch's look-up has failed and waits",
        30,
        async || {
            let records = app.records().await;
            let now = attendance_relay::record::now_ms();
            waiting = records
                .iter()
                .filter(|r| r.status == RecordStatus::Pending && r.last_error.is_some())
                .map(|r| r.next_attempt_ms - now)
                .collect();
            waiting.len() == joins.len() && waiting.iter().all(|ahead| *ahead > 0)
        },
    )
    .await;
    let furthest = waiting.iter().max().copied().unwrap_or_default();
    assert!(furthest <= 4_000, "a retry {furthest} ms ahead");
    assert!(creates(&hubspot).is_empty());
}

/// HubSpot answers slowly for a spell (every call times out), then fails at
/// random: 5xx, 429s with and without `Retry-After` (and a burst of them),
/// hangs, connections cut mid-answer.
#[actix_web::test]
async fn under_faults_and_a_slow_spell_everything_arrives_once_in_full_batches_within_the_limit() {
    let hubspot = Simulator::start(Options {
        rate_limit_per_10s: Some(100),
        chaos: Some(Chaos {
            server_errors: 0.3,
            rate_limited: 0.05,
            hangs: 0.05,
            hang: Duration::from_secs(3),
            resets: 0.05,
            seed: 7,
        }),
        ..Options::default()
    })
    .await
    .unwrap();
    for _ in 0..5 {
        let burst = Fault::status(429).with_header("Retry-After", "2");
        hubspot.fail_next(Operation::AttendanceCreate, burst);
    }
    hubspot.set_latency(Some(Duration::from_millis(1500)));
    let joins = interleaved(6, 100);
    let app = backlog_then_drain(&joins, &hubspot, &[("HUBSPOT_REQUEST_TIMEOUT_MS", "1000")]).await;
    actix_web::rt::time::sleep(Duration::from_secs(5)).await;
    hubspot.set_latency(None);
    wait_until("every record is delivered", 120, async || {
        hubspot.attendance().len() >= joins.len()
    })
    .await;

    let attendance = hubspot.attendance();
    assert_eq!(
        attendance.len(),
        joins.len(),
        "each record reached HubSpot once"
    );
    let calls = creates(&hubspot);
    let total: usize = calls.iter().map(inputs).sum();
    let full: usize = calls.iter().map(inputs).filter(|n| *n == 100).sum();
    assert!(
        full as f64 >= 0.9 * total as f64,
        "{full} of {total} create inputs in full batches: {:?}",
        calls
            .iter()
            .map(|c| (inputs(c), c.status))
            .collect::<Vec<_>>()
    );
    assert_eq!(hubspot.rate_limited(), 0, "no call beyond HubSpot's limit");
    assert!(
        hubspot.max_in_flight() <= 8,
        "at most 8 batches at a time, however HubSpot answers: {}",
        hubspot.max_in_flight()
    );
    let failed = calls.iter().filter(|c| c.status != 200).count();
    assert!(failed > 0, "the faults happened");
    let metrics = app.metrics().await;
    let timed_out: f64 = Operation::ALL
        .iter()
        .filter_map(|operation| {
            metric(
                &metrics,
                "relay_hubspot_requests_total",
                &[("operation", operation.as_str()), ("status", "error")],
            )
        })
        .sum();
    assert!(timed_out > 0.0, "the slow spell's calls timed out");
    eprintln!(
        "faults: {} records in {} creates ({failed} failed), {full} of {total} inputs in full \
         batches, {timed_out} calls timed out, at most {} calls in flight, 0 over the limit",
        attendance.len(),
        calls.len(),
        hubspot.max_in_flight()
    );
    // The last batch is settled just after HubSpot took it.
    wait_until("every record is settled as delivered", 30, async || {
        let metrics = app.metrics().await;
        metric(&metrics, "relay_queue_records", &[("status", "delivered")])
            == Some(joins.len() as f64)
    })
    .await;
}
