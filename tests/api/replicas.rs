//! Several gateways on one PostgreSQL store: one queue, one rate limit, one
//! credential refresh for the deployment.

use std::{sync::Arc, time::Duration};

use attendance_relay::{
    demo::simulator::{OAuthOptions, Options, Simulator},
    hubspot::Operation,
};

use crate::helpers::{StoreDir, spawn_forwarding_app_in, wait_until, zoom_join};

#[actix_web::test]
#[ignore = "needs PostgreSQL (RELAY_TEST_POSTGRES_URL or 127.0.0.1:5432): --include-ignored"]
async fn replicas_share_one_queue_and_one_rate_limit() {
    let dir = StoreDir::on_postgres();
    let hubspot = Simulator::start(Options {
        rate_limit_per_10s: Some(6),
        ..Options::default()
    })
    .await
    .unwrap();
    // Ten joins per webinar and a long linger: only full batches go, so the
    // count of calls does not depend on how fast the joins arrive.
    let settings = [
        ("HUBSPOT_RATE_LIMIT_PER_10S", "6"),
        ("HUBSPOT_BATCH_SIZE", "10"),
        ("RELAY_BATCH_LINGER_MS", "60000"),
    ];
    let replicas = [
        spawn_forwarding_app_in(Arc::clone(&dir), &hubspot, &settings).await,
        spawn_forwarding_app_in(Arc::clone(&dir), &hubspot, &settings).await,
        spawn_forwarding_app_in(Arc::clone(&dir), &hubspot, &settings).await,
    ];
    // 60 joins of 6 webinars, spread over the replicas as an ingress would.
    for i in 0..60 {
        let email = format!("p{i}@example.com");
        hubspot.add_contact(&email);
        let body = zoom_join(&format!("{}", 700 + i % 6), &email, "2026-01-01T10:00:00Z");
        let (status, answer) = replicas[i % 3].post_zoom(&body).await;
        assert_eq!(status.as_u16(), 200, "{answer}");
    }
    wait_until("every join is delivered", 60, async || {
        hubspot.attendance().len() >= 60
    })
    .await;
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        hubspot.attendance().len(),
        60,
        "each record reached HubSpot once"
    );
    assert_eq!(hubspot.rate_limited(), 0, "no call beyond HubSpot's limit");
    let calls = hubspot.calls();
    crate::helpers::assert_within_limit(&calls, 6);
    assert!(calls.len() > 6, "the load needed more than one window");
}

#[actix_web::test]
#[ignore = "needs PostgreSQL (RELAY_TEST_POSTGRES_URL or 127.0.0.1:5432): --include-ignored"]
async fn a_pause_hubspot_asks_of_one_replica_holds_every_replica() {
    use attendance_relay::{demo::simulator::Fault, store::RecordStatus};

    let dir = StoreDir::on_postgres();
    let hubspot = Simulator::start(Options::default()).await.unwrap();
    hubspot.fail_next(
        Operation::AttendanceCreate,
        Fault::status(429).with_header("Retry-After", "3"),
    );
    let settings = [("RELAY_BATCH_LINGER_MS", "0")];
    let replicas = [
        spawn_forwarding_app_in(Arc::clone(&dir), &hubspot, &settings).await,
        spawn_forwarding_app_in(Arc::clone(&dir), &hubspot, &settings).await,
        spawn_forwarding_app_in(Arc::clone(&dir), &hubspot, &settings).await,
    ];
    let post = async |i: usize| {
        let email = format!("p{i}@example.com");
        hubspot.add_contact(&email);
        let body = zoom_join(&format!("{}", 600 + i), &email, "2026-01-01T10:00:00Z");
        assert_eq!(replicas[i].post_zoom(&body).await.0.as_u16(), 200);
    };
    // The first replica's create is refused; once its record is settled
    // with the refusal (after the pause was shared), the others get work of
    // their own. (A leased record reads as pending: the error tells.)
    post(0).await;
    wait_until("the refused batch waits for its retry", 30, async || {
        replicas[0]
            .records()
            .await
            .iter()
            .any(|r| r.status == RecordStatus::Pending && r.last_error.is_some())
    })
    .await;
    post(1).await;
    post(2).await;
    wait_until("every join is delivered", 30, async || {
        hubspot.attendance().len() >= 3
    })
    .await;
    let calls = hubspot.calls();
    let refused = calls
        .iter()
        .find(|c| c.status == 429)
        .expect("the 429 was sent")
        .at;
    for call in calls.iter().filter(|c| c.at > refused) {
        assert!(
            call.at >= refused + Duration::from_secs(3),
            "{:?} called HubSpot {:?} into the pause",
            call.operation,
            call.at - refused
        );
    }
}

#[actix_web::test]
#[ignore = "needs PostgreSQL (RELAY_TEST_POSTGRES_URL or 127.0.0.1:5432): --include-ignored"]
async fn replicas_refresh_the_credential_once_for_the_deployment_at_start_and_near_expiry() {
    let dir = StoreDir::on_postgres();
    let hubspot = Simulator::start(Options {
        oauth: Some(OAuthOptions {
            client_id: "client".into(),
            client_secret: "secret".into(),
            refresh_token: "refresh".into(),
            // Refreshed at half its life: 4 s in, every replica needs a new one.
            expires_in_secs: 8,
        }),
        ..Options::default()
    })
    .await
    .unwrap();
    let oauth = [
        ("HUBSPOT_ACCESS_TOKEN", ""),
        ("HUBSPOT_CLIENT_ID", "client"),
        ("HUBSPOT_CLIENT_SECRET", "secret"),
        ("HUBSPOT_REFRESH_TOKEN", "refresh"),
        ("RELAY_BATCH_LINGER_MS", "0"),
    ];
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(spawn_forwarding_app_in(Arc::clone(&dir), &hubspot, &oauth).await);
    }
    // Each replica takes a join of its own webinar, so each needs a token at once.
    let round = async |n: usize| {
        let posts = replicas.iter().enumerate().map(|(i, replica)| {
            let email = format!("r{n}-{i}@example.com");
            hubspot.add_contact(&email);
            async move {
                let body = zoom_join(&format!("{}", 800 + i), &email, "2026-01-01T10:00:00Z");
                replica.post_zoom(&body).await
            }
        });
        futures_util::future::join_all(posts).await;
        wait_until("every join is delivered", 30, async || {
            hubspot.attendance().len() >= 3 * (n + 1)
        })
        .await;
    };
    round(0).await;
    assert_eq!(
        hubspot.token_requests().len(),
        1,
        "one refresh for the deployment, reused by every replica"
    );
    // The token nears its expiry: every replica needs a new one, whenever
    // it took the stored one up.
    for replica in &replicas {
        crate::oauth::wait_until_stale(replica, 4.0).await;
    }
    round(1).await;
    assert_eq!(
        hubspot.token_requests().len(),
        2,
        "again one refresh for the deployment"
    );
    let creates = hubspot
        .calls()
        .into_iter()
        .filter(|c| c.operation == Operation::AttendanceCreate)
        .count();
    assert_eq!(creates, 6);
    assert!(
        hubspot.calls().iter().all(|c| c.status != 401),
        "no replica used an expired token"
    );
}

/// Runs `sql` against the PostgreSQL server as its superuser.
async fn on_server(sql: &str) {
    let url = std::env::var("RELAY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let status = std::process::Command::new("psql")
        .args([url.as_str(), "-qAtc", sql])
        .status()
        .expect("psql runs");
    assert!(status.success(), "{sql}");
}

/// One signed join posted: its status and `Retry-After`.
async fn post_join(app: &crate::helpers::TestApp, n: usize) -> (u16, Option<String>) {
    use crate::helpers::{ZOOM_SECRET, now_secs, zoom_signature};

    let body = zoom_join("900", &format!("p{n}@example.com"), "2026-01-01T10:00:00Z");
    let ts = now_secs();
    let answer = app
        .client
        .post(format!("{}/webhooks/zoom", app.public))
        .insert_header(("content-type", "application/json"))
        .insert_header(("x-zm-signature", zoom_signature(ZOOM_SECRET, ts, &body)))
        .insert_header(("x-zm-request-timestamp", ts.to_string()))
        .send_body(body)
        .await;
    match answer {
        Ok(response) => (
            response.status().as_u16(),
            response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        ),
        // The gateway itself stays up: a failed request is a finding too.
        Err(err) => panic!("join {n}: no answer: {err}"),
    }
}

#[actix_web::test]
#[ignore = "needs PostgreSQL (RELAY_TEST_POSTGRES_URL or 127.0.0.1:5432): --include-ignored"]
async fn a_database_that_goes_away_during_ingest_means_503_and_the_gateway_recovers_by_itself() {
    use std::cell::{Cell, RefCell};

    let dir = StoreDir::on_postgres();
    let app = crate::helpers::spawn_app_in(Arc::clone(&dir), &[]).await;
    let database = dir.database_name().expect("on PostgreSQL").to_owned();
    // 0: up, 1: away, 2: back.
    let phase = Cell::new(0);
    let next = Cell::new(0);
    // Every answer: the join, the phase it was posted in, status, Retry-After.
    let answers = RefCell::new(Vec::new());
    let count = |phase_of: u8, ok: bool| {
        answers
            .borrow()
            .iter()
            .filter(|(_, p, status, _)| *p == phase_of && (*status == 200) == ok)
            .count()
    };
    // Four clients post one join after another until ingest works again.
    let poster = async || {
        while !(phase.get() == 2 && count(2, true) >= 20) {
            let n = next.replace(next.get() + 1);
            let posted_in = phase.get();
            let (status, retry_after) = post_join(&app, n).await;
            answers
                .borrow_mut()
                .push((n, posted_in, status, retry_after));
        }
    };
    let operator = async {
        wait_until("joins are acknowledged", 20, async || count(0, true) >= 20).await;
        // The database refuses connections and drops the ones it had.
        on_server(&format!(
            "ALTER DATABASE {database} ALLOW_CONNECTIONS false"
        ))
        .await;
        on_server(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
        ))
        .await;
        phase.set(1);
        wait_until("posts are refused", 30, async || count(1, false) >= 8).await;
        let (ready, _) = app.get(&format!("{}/readyz", app.public)).await;
        assert_eq!(ready.as_u16(), 503, "not ready while the database is away");
        let (live, _) = app.get(&format!("{}/healthz", app.public)).await;
        assert_eq!(live.as_u16(), 200, "but alive: a restart would not help");
        on_server(&format!("ALTER DATABASE {database} ALLOW_CONNECTIONS true")).await;
        phase.set(2);
    };
    futures_util::future::join5(poster(), poster(), poster(), poster(), operator).await;
    assert!(count(1, false) > 0, "the outage was seen");
    assert!(
        count(2, true) >= 20,
        "ingest works again, the gateway never restarted"
    );

    let stored: std::collections::HashSet<String> = app
        .records()
        .await
        .into_iter()
        .map(|r| r.record.email)
        .collect();
    for (n, _, status, retry_after) in answers.borrow().iter() {
        let email = format!("p{n}@example.com");
        match status {
            200 => assert!(
                stored.contains(&email),
                "join {n} was acknowledged, then lost"
            ),
            503 => {
                assert!(
                    retry_after.is_some(),
                    "503 for join {n} says when to come back"
                );
            }
            other => panic!("join {n} answered {other}: only 200 or 503"),
        }
    }
}

/// Three real gateway processes on one PostgreSQL, load through all of them,
/// one killed mid-way.
#[actix_web::test]
#[ignore = "needs PostgreSQL (RELAY_TEST_POSTGRES_URL or 127.0.0.1:5432): --include-ignored"]
async fn three_processes_lose_nothing_when_one_is_killed_and_stay_within_the_limit() {
    use attendance_relay::demo::simulator::Call;

    use crate::helpers::{Gateway, HUBSPOT_TOKEN};

    let dir = StoreDir::on_postgres();
    let hubspot = Simulator::start(Options {
        rate_limit_per_10s: Some(20),
        ..Options::default()
    })
    .await
    .unwrap();
    let env = [
        ("RELAY_DATABASE_URL", dir.database_url()),
        ("HUBSPOT_BASE_URL", hubspot.url()),
        ("HUBSPOT_ACCESS_TOKEN", HUBSPOT_TOKEN.to_owned()),
        ("HUBSPOT_RATE_LIMIT_PER_10S", "20".to_owned()),
        ("HUBSPOT_BATCH_SIZE", "25".to_owned()),
        ("RELAY_BATCH_LINGER_MS", "60000".to_owned()),
    ];
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(Gateway::start_with(dir.path(), &env, None).await);
    }
    let mut acknowledged = Vec::new();
    let mut killed_at = None;
    for n in 0..300 {
        hubspot.add_contact(&format!("p{n}@example.com"));
        if n == 150 {
            gateways[0].child.kill().unwrap();
            gateways[0].child.wait().unwrap();
            killed_at = Some(std::time::Instant::now());
        }
        let gateway = &gateways[if killed_at.is_some() {
            1 + n % 2
        } else {
            n % 3
        }];
        if gateway.post_join(n).await == Some(actix_web::http::StatusCode::OK) {
            acknowledged.push(hubspot.contact_id(&format!("p{n}@example.com")).unwrap());
        }
    }
    assert_eq!(acknowledged.len(), 300);
    wait_until("every acknowledged join is delivered", 90, async || {
        let delivered: std::collections::HashSet<i64> =
            hubspot.attendance().iter().map(|a| a.vid).collect();
        acknowledged.iter().all(|vid| delivered.contains(vid))
    })
    .await;

    // A record reaches HubSpot twice only when the killed process was sending it.
    let killed_at = killed_at.unwrap();
    let creates: Vec<Call> = hubspot
        .calls()
        .into_iter()
        .filter(|c| c.operation == Operation::AttendanceCreate && c.status == 200)
        .collect();
    let mut seen = std::collections::HashMap::new();
    for call in &creates {
        for input in call.body["inputs"].as_array().unwrap() {
            seen.entry(input["vid"].as_i64().unwrap())
                .or_insert_with(Vec::new)
                .push(call.at);
        }
    }
    for (vid, times) in &seen {
        assert!(
            times.len() == 1 || times[0] <= killed_at,
            "contact {vid} was sent {} times, not by the killed process",
            times.len()
        );
    }
    assert_eq!(hubspot.rate_limited(), 0, "no call beyond HubSpot's limit");
    let calls = hubspot.calls();
    crate::helpers::assert_within_limit(&calls, 20);
    for mut gateway in gateways.into_iter().skip(1) {
        gateway.child.kill().unwrap();
        gateway.child.wait().unwrap();
    }
}
