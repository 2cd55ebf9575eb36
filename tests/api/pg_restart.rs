//! The PostgreSQL server stopped (`-m fast`, `-m immediate`) and started
//! again under a running gateway, during ingest and forwarding: 503 with
//! `Retry-After` while it is down, `/readyz` failing and `/healthz` holding,
//! recovery without a restart of the gateway, and every acknowledged
//! webhook delivered once.

use std::{cell::RefCell, collections::HashMap, rc::Rc, sync::Arc, time::Duration};

use actix_web::http::StatusCode;
use attendance_relay::demo::simulator::{Options, Simulator};

use crate::{
    cluster::Cluster,
    helpers::{
        StoreDir, TestApp, ZOOM_SECRET, now_secs, spawn_forwarding_app_in, wait_until, zoom_join,
        zoom_signature,
    },
};

/// The answers so far: each email posted, its status and `Retry-After`.
type Answers = Rc<RefCell<Vec<(String, StatusCode, Option<String>)>>>;

async fn post_join(app: &TestApp, email: &str) -> Option<(StatusCode, Option<String>)> {
    let body = zoom_join("900", email, "2026-01-01T10:00:00Z");
    let ts = now_secs();
    let response = app
        .client
        .post(format!("{}/webhooks/zoom", app.public))
        .insert_header(("x-zm-signature", zoom_signature(ZOOM_SECRET, ts, &body)))
        .insert_header(("x-zm-request-timestamp", ts.to_string()))
        .send_body(body)
        .await
        .ok()?;
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().to_owned());
    Some((response.status(), retry_after))
}

fn count(answers: &Answers, status: StatusCode) -> usize {
    answers
        .borrow()
        .iter()
        .filter(|(_, s, _)| *s == status)
        .count()
}

async fn the_gateway_rides_out_a_server_restart(mode: &'static str) {
    let cluster = Arc::new(Cluster::start(true));
    // Slow answers keep batches in flight when the server goes.
    let hubspot = Simulator::start(Options {
        latency: Some(Duration::from_millis(50)),
        ..Options::default()
    })
    .await
    .unwrap();
    let url = cluster.verified_url("relay");
    let app = Rc::new(
        spawn_forwarding_app_in(
            StoreDir::new(),
            &hubspot,
            &[("RELAY_DATABASE_URL", url.as_str())],
        )
        .await,
    );
    let answers: Answers = Rc::default();
    let posting = Rc::new(std::cell::Cell::new(true));
    let poster = {
        let (app, answers, posting) = (Rc::clone(&app), Rc::clone(&answers), Rc::clone(&posting));
        actix_web::rt::spawn(async move {
            let mut n = 0;
            while posting.get() {
                let email = format!("p{n}@example.com");
                if let Some((status, retry_after)) = post_join(&app, &email).await {
                    answers.borrow_mut().push((email, status, retry_after));
                }
                n += 1;
            }
        })
    };
    wait_until("joins are acknowledged and forwarded", 30, async || {
        count(&answers, StatusCode::OK) >= 40 && !hubspot.attendance().is_empty()
    })
    .await;

    let stopping = Arc::clone(&cluster);
    actix_web::rt::task::spawn_blocking(move || stopping.stop(mode))
        .await
        .unwrap();
    let refused_before = count(&answers, StatusCode::SERVICE_UNAVAILABLE);
    wait_until(
        "a delivery is refused while the server is down",
        30,
        async || count(&answers, StatusCode::SERVICE_UNAVAILABLE) > refused_before,
    )
    .await;
    assert!(
        answers
            .borrow()
            .iter()
            .filter(|(_, status, _)| *status == StatusCode::SERVICE_UNAVAILABLE)
            .all(|(_, _, retry_after)| retry_after.is_some()),
        "every 503 says when to retry"
    );
    let readyz = format!("{}/readyz", app.public);
    assert_eq!(app.get(&readyz).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        app.get(&format!("{}/healthz", app.public)).await.0,
        StatusCode::OK
    );

    let starting = Arc::clone(&cluster);
    actix_web::rt::task::spawn_blocking(move || starting.start_again())
        .await
        .unwrap();
    wait_until("ready again without a restart", 30, async || {
        app.get(&readyz).await.0 == StatusCode::OK
    })
    .await;
    let acknowledged_before = count(&answers, StatusCode::OK);
    wait_until("joins are acknowledged again", 30, async || {
        count(&answers, StatusCode::OK) >= acknowledged_before + 20
    })
    .await;
    posting.set(false);
    poster.await.unwrap();

    let answers = Rc::into_inner(answers)
        .expect("the poster ended")
        .into_inner();
    assert!(
        answers.iter().all(|(_, status, _)| matches!(
            *status,
            StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE
        )),
        "{:?}",
        answers.iter().map(|(_, s, _)| s).collect::<Vec<_>>()
    );
    let acknowledged: Vec<&str> = answers
        .iter()
        .filter(|(_, status, _)| *status == StatusCode::OK)
        .map(|(email, _, _)| email.as_str())
        .collect();
    let delivered = || {
        let mut per_contact = HashMap::new();
        for row in hubspot.attendance() {
            *per_contact.entry(row.vid).or_insert(0) += 1;
        }
        per_contact
    };
    wait_until("every acknowledged join reached HubSpot", 60, async || {
        let delivered = delivered();
        acknowledged.iter().all(|email| {
            hubspot
                .contact_id(email)
                .is_some_and(|vid| delivered.contains_key(&vid))
        })
    })
    .await;
    let twice: Vec<_> = delivered().into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    Rc::into_inner(app).expect("the poster ended").stop().await;
}

#[actix_web::test]
#[ignore = "needs PostgreSQL 15 and openssl, as root or the postgres user: cargo test --test api -- --include-ignored pg_restart"]
async fn a_fast_shutdown_of_the_server_loses_nothing_acknowledged() {
    the_gateway_rides_out_a_server_restart("fast").await;
}

#[actix_web::test]
#[ignore = "needs PostgreSQL 15 and openssl, as root or the postgres user: cargo test --test api -- --include-ignored pg_restart"]
async fn an_immediate_shutdown_of_the_server_loses_nothing_acknowledged() {
    the_gateway_rides_out_a_server_restart("immediate").await;
}
