//! The real binary, killed and restarted: what got a 200 is still there.

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use actix_web::http::StatusCode;
use serde_json::json;

use crate::helpers::{ZOOM_SECRET, metric, now_secs, zoom_signature};

struct Gateway {
    child: Child,
    public: String,
    admin: String,
    client: awc::Client,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Gateway {
    async fn start(db: &Path) -> Self {
        let (public, admin) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_attendance-relay"))
            .env_clear()
            .env("RELAY_LISTEN_ADDR", format!("127.0.0.1:{public}"))
            .env("RELAY_ADMIN_ADDR", format!("127.0.0.1:{admin}"))
            .env("RELAY_DATABASE_URL", format!("sqlite://{}", db.display()))
            .env("ZOOM_WEBHOOK_SECRET_TOKEN", ZOOM_SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("binary starts");
        let gateway = Self {
            child,
            public: format!("http://127.0.0.1:{public}"),
            admin: format!("http://127.0.0.1:{admin}"),
            client: awc::Client::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = gateway
                .client
                .get(format!("{}/readyz", gateway.public))
                .send()
                .await;
            if matches!(ready, Ok(ref r) if r.status() == StatusCode::OK) {
                return gateway;
            }
            assert!(Instant::now() < deadline, "gateway did not become ready");
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn post_join(&self, n: usize) -> Option<StatusCode> {
        let body = json!({
            "event": "webinar.participant_joined", "event_ts": 1_700_000_000_000_i64,
            "payload": {"account_id": "A", "object": {"id": "77", "participant": {
                "email": format!("p{n}@example.com"), "join_time": "2026-01-01T10:00:00Z"}}}
        })
        .to_string();
        let ts = now_secs();
        let response = self
            .client
            .post(format!("{}/webhooks/zoom", self.public))
            .insert_header((
                "x-zm-signature",
                zoom_signature(ZOOM_SECRET, ts, body.as_bytes()),
            ))
            .insert_header(("x-zm-request-timestamp", ts.to_string()))
            .send_body(body)
            .await;
        response.ok().map(|r| r.status())
    }

    async fn pending(&self) -> f64 {
        let mut response = self
            .client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap();
        let text =
            String::from_utf8(response.body().limit(1 << 22).await.unwrap().to_vec()).unwrap();
        metric(&text, "relay_queue_records", &[("status", "pending")]).unwrap()
    }
}

#[actix_web::test]
async fn an_acknowledged_webhook_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let mut gateway = Gateway::start(&db).await;
    let answers = futures_util::future::join_all((0..40).map(|n| gateway.post_join(n))).await;
    assert!(
        answers.iter().all(|a| *a == Some(StatusCode::OK)),
        "{answers:?}"
    );
    gateway.child.kill().unwrap(); // SIGKILL: no chance to flush anything
    gateway.child.wait().unwrap();

    let mut restarted = Gateway::start(&db).await;
    assert_eq!(restarted.pending().await, 40.0);
    restarted.child.kill().unwrap();
    restarted.child.wait().unwrap();
}

#[actix_web::test]
async fn sigterm_finishes_requests_in_flight_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let mut gateway = Gateway::start(&db).await;
    let pid = gateway.child.id().to_string();
    let requests = futures_util::future::join_all((0..60).map(|n| gateway.post_join(n)));
    let terminate = async {
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    };
    let (answers, ()) = tokio::join!(requests, terminate);
    let status = gateway.child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");

    let acknowledged = answers
        .iter()
        .filter(|a| **a == Some(StatusCode::OK))
        .count();
    assert!(
        answers
            .iter()
            .all(|a| a.is_none() || *a == Some(StatusCode::OK)),
        "{answers:?}"
    );
    let mut restarted = Gateway::start(&db).await;
    assert!(restarted.pending().await >= acknowledged as f64);
    restarted.child.kill().unwrap();
    restarted.child.wait().unwrap();
}
