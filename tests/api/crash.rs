//! A crash loop: the real binary stopped again and again under load and
//! started again on the same store. No acknowledged webhook is lost. Killed
//! (SIGKILL), a record reaches HubSpot twice only when a kill fell between
//! its two sends (its batch was in flight, unsettled, when the process
//! died); stopped (SIGTERM), never: what was in flight settles first.
//!
//! `RELAY_CRASH_KILLS` sets the number of stops (3 by default, as in CI); the
//! long form is in RELIABILITY.md.

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use actix_web::http::StatusCode;
use attendance_relay::{
    demo::simulator::{Options, Simulator},
    hubspot::Operation,
};

use crate::helpers::{Gateway, HUBSPOT_TOKEN, StoreDir, wait_until};

/// Deliveries in flight at any time.
const SENDERS: usize = 8;

fn kills() -> usize {
    std::env::var("RELAY_CRASH_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
}

async fn start(dir: &StoreDir, hubspot: &Simulator) -> Gateway {
    let env = [
        ("RELAY_DATABASE_URL", dir.database_url()),
        ("HUBSPOT_BASE_URL", hubspot.url()),
        ("HUBSPOT_ACCESS_TOKEN", HUBSPOT_TOKEN.to_owned()),
        ("RELAY_BATCH_LINGER_MS", "50".to_owned()),
    ];
    Gateway::start_with(&dir.path().join("relay.db"), &env, None).await
}

/// Runs `kills()` cycles of load, each ended by `signal` (`KILL` or `TERM`)
/// mid-load, then a last instance that drains the queue; checks what
/// HubSpot got.
async fn crash_loop(dir: Arc<StoreDir>, signal: &str) {
    let hubspot = Simulator::start(Options::default()).await.unwrap();
    let acknowledged = RefCell::new(BTreeSet::new());
    let next = Cell::new(0usize);
    let mut killed_at = Vec::new();
    for cycle in 0..kills() {
        let mut gateway = start(&dir, &hubspot).await;
        let stopped = Cell::new(false);
        let senders = (0..SENDERS).map(|_| async {
            while !stopped.get() {
                let n = next.replace(next.get() + 1);
                match gateway.post_join(n).await {
                    Some(StatusCode::OK) => {
                        acknowledged.borrow_mut().insert(n);
                    }
                    // Refused while the store was busy: the sender retries later.
                    Some(status) if status.is_server_error() => {}
                    Some(status) => panic!("delivery {n}: {status}"),
                    None => {} // cut by the kill: never acknowledged
                }
            }
        });
        let pid = gateway.child.id().to_string();
        let kill = async {
            // Varied, so kills land at different points of a batch's life.
            let run = Duration::from_millis(1000 + 700 * (cycle as u64 % 3));
            actix_web::rt::time::sleep(run).await;
            let status = std::process::Command::new("kill")
                .args([format!("-{signal}"), pid.clone()])
                .status()
                .unwrap();
            assert!(status.success());
            // Only a process that died may leave a batch to be sent again.
            if signal == "KILL" {
                killed_at.push(Instant::now());
            }
            stopped.set(true);
        };
        futures_util::future::join(futures_util::future::join_all(senders), kill).await;
        let exit = gateway.child.wait().unwrap();
        assert!(signal == "KILL" || exit.success(), "exit status {exit:?}");
    }
    let acknowledged = acknowledged.into_inner();
    assert!(acknowledged.len() > 100, "the load reached the gateway");

    // A last instance takes over what the dead ones leased, once their
    // leases (15 s) run out.
    let mut last = start(&dir, &hubspot).await;
    let email = |n: &usize| format!("p{n}@example.com");
    wait_until("every acknowledged join reaches HubSpot", 90, async || {
        let attended: BTreeSet<i64> = hubspot.attendance().iter().map(|a| a.vid).collect();
        acknowledged.iter().all(|n| {
            hubspot
                .contact_id(&email(n))
                .is_some_and(|vid| attended.contains(&vid))
        })
    })
    .await;
    wait_until("the queue is empty", 30, async || {
        last.pending().await == 0.0
    })
    .await;

    // Every send of each contact, by the time HubSpot received it.
    let mut sends: BTreeMap<i64, Vec<Instant>> = BTreeMap::new();
    for call in hubspot.calls() {
        if call.operation == Operation::AttendanceCreate && call.status == 200 {
            for input in call.body["inputs"].as_array().unwrap() {
                sends
                    .entry(input["vid"].as_i64().unwrap())
                    .or_default()
                    .push(call.at);
            }
        }
    }
    let mut twice = 0;
    for (vid, at) in &sends {
        for pair in at.windows(2) {
            assert!(
                killed_at
                    .iter()
                    .any(|kill| pair[0] < *kill && *kill < pair[1]),
                "contact {vid} was sent twice with no kill between the sends"
            );
            twice += 1;
        }
    }
    eprintln!(
        "crash loop ({}, SIG{signal}): {} stops, {} acknowledged, 0 lost, {} sent again after a kill",
        if dir.database_name().is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        kills(),
        acknowledged.len(),
        twice
    );
    last.child.kill().unwrap();
    last.child.wait().unwrap();
}

#[actix_web::test]
async fn a_gateway_killed_again_and_again_under_load_loses_no_acknowledged_webhook_on_sqlite() {
    crash_loop(StoreDir::new(), "KILL").await;
}

#[actix_web::test]
#[ignore = "needs PostgreSQL (RELAY_TEST_POSTGRES_URL or 127.0.0.1:5432): --include-ignored"]
async fn a_gateway_killed_again_and_again_under_load_loses_no_acknowledged_webhook_on_postgres() {
    crash_loop(StoreDir::on_postgres(), "KILL").await;
}

#[actix_web::test]
async fn a_gateway_stopped_again_and_again_under_load_loses_nothing_and_sends_nothing_twice_on_sqlite()
 {
    crash_loop(StoreDir::new(), "TERM").await;
}

#[actix_web::test]
#[ignore = "needs PostgreSQL (RELAY_TEST_POSTGRES_URL or 127.0.0.1:5432): --include-ignored"]
async fn a_gateway_stopped_again_and_again_under_load_loses_nothing_and_sends_nothing_twice_on_postgres()
 {
    crash_loop(StoreDir::on_postgres(), "TERM").await;
}
