use std::{
    collections::HashMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use actix_web::http::StatusCode;
use attendance_relay::{
    app::Application,
    demo::simulator::Simulator,
    settings::Settings,
    store::{Store, StoredRecord},
};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tempfile::TempDir;

pub const ZOOM_SECRET: &str = "test-zoom-secret-token";

pub struct TestApp {
    pub public: String,
    pub admin: String,
    pub store: Arc<dyn Store>,
    pub client: awc::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    stopped: Option<actix_web::rt::task::JoinHandle<std::io::Result<()>>>,
    _dir: Arc<StoreDir>,
}

/// Settings of a test instance: loopback port 0, a fresh database, Zoom on.
pub fn test_env(dir: &StoreDir, overrides: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("RELAY_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("RELAY_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("RELAY_DATABASE_URL", dir.database_url()),
        ("RELAY_WORKERS", "1".to_owned()),
        ("ZOOM_WEBHOOK_SECRET_TOKEN", ZOOM_SECRET.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (key, value) in overrides {
        env.insert((*key).to_owned(), (*value).to_owned());
    }
    env
}

/// Where the instances of a test keep their store: a folder for SQLite, or
/// with `RELAY_TEST_STORE=postgres` a PostgreSQL database of its own, dropped
/// with the folder.
pub struct StoreDir {
    dir: TempDir,
    database: Option<crate::pg::TestDatabase>,
}

impl StoreDir {
    pub fn new() -> Arc<Self> {
        if std::env::var("RELAY_TEST_STORE").as_deref() == Ok("postgres") {
            return Self::on_postgres();
        }
        Arc::new(Self {
            dir: tempfile::tempdir().expect("temp dir"),
            database: None,
        })
    }

    /// On a PostgreSQL database whatever `RELAY_TEST_STORE` says (replicas
    /// share one); the test fails when no server answers.
    pub fn on_postgres() -> Arc<Self> {
        Arc::new(Self {
            dir: tempfile::tempdir().expect("temp dir"),
            database: Some(crate::pg::TestDatabase::create()),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The PostgreSQL database's name, if the store is one.
    pub fn database_name(&self) -> Option<&str> {
        self.database
            .as_ref()
            .map(|database| database.name.as_str())
    }

    pub fn database_url(&self) -> String {
        match &self.database {
            Some(database) => database.url.clone(),
            None => format!("sqlite://{}", self.path().join("relay.db").display()),
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    spawn_app_in(StoreDir::new(), overrides).await
}

/// An instance on the store in `dir` (a restart, or a second replica).
pub async fn spawn_app_in(dir: Arc<StoreDir>, overrides: &[(&str, &str)]) -> TestApp {
    let settings = Settings::init_from_hashmap(&test_env(&dir, overrides)).expect("valid settings");
    let app = Application::build(settings).await.expect("app starts");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let test_app = TestApp {
        public: format!("http://{}", app.public_addr()),
        admin: format!("http://{}", app.admin_addr()),
        store: app.store(),
        client: awc::Client::default(),
        stop: Some(stop),
        stopped: None,
        _dir: dir,
    };
    let running = actix_web::rt::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let mut test_app = test_app;
    test_app.stopped = Some(running);
    test_app
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `v0=hex(HMAC-SHA256(secret, "v0:{timestamp}:{body}"))`, computed here
/// independently of the gateway's code.
pub fn zoom_signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// Zoom's official example body for each event, from Zoom's webhook OpenAPI
/// document beside the checkout (`../shared/specs/zoom/`); the test fails
/// when it is missing.
pub fn zoom_examples() -> HashMap<String, Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/specs/zoom/webhooks.meetings.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "Zoom's webhook document is needed at {}: {err}",
            path.display()
        )
    });
    let doc: Value = serde_json::from_str(&text).expect("Zoom document is JSON");
    doc["webhooks"]
        .as_object()
        .expect("webhooks")
        .iter()
        .filter_map(|(event, op)| {
            let examples =
                op["post"]["requestBody"]["content"]["application/json"]["examples"].as_object()?;
            let body = examples.values().next()?["value"].as_str()?;
            Some((event.clone(), body.as_bytes().to_vec()))
        })
        .collect()
}

impl TestApp {
    /// Stops the instance as SIGTERM would; returns its folder for a restart.
    pub async fn stop(mut self) -> Arc<StoreDir> {
        let _ = self.stop.take().expect("running").send(());
        self.stopped
            .take()
            .expect("running")
            .await
            .expect("joins")
            .expect("stops cleanly");
        Arc::clone(&self._dir)
    }

    pub async fn post_zoom(&self, body: &[u8]) -> (StatusCode, Value) {
        let ts = now_secs();
        let sig = zoom_signature(ZOOM_SECRET, ts, body);
        self.post(
            "/webhooks/zoom",
            body,
            &[
                ("x-zm-signature", sig),
                ("x-zm-request-timestamp", ts.to_string()),
            ],
        )
        .await
    }

    pub async fn post(
        &self,
        path: &str,
        body: &[u8],
        headers: &[(&str, String)],
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .post(format!("{}{path}", self.public))
            .insert_header(("content-type", "application/json"));
        for (name, value) in headers {
            request = request.insert_header((*name, value.as_str()));
        }
        let mut response = request
            .send_body(body.to_vec())
            .await
            .expect("request sent");
        let status = response.status();
        let bytes = response.body().limit(1 << 20).await.expect("body read");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn get(&self, url: &str) -> (StatusCode, String) {
        let mut response = self.client.get(url).send().await.expect("request sent");
        let bytes = response.body().limit(1 << 22).await.expect("body read");
        (
            response.status(),
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    pub async fn metrics(&self) -> String {
        scrape(&self.client, &self.admin).await
    }

    pub async fn records(&self) -> Vec<StoredRecord> {
        self.store
            .records(None, 10_000)
            .await
            .expect("records readable")
    }
}

/// `/metrics` of the admin listener at `admin`.
async fn scrape(client: &awc::Client, admin: &str) -> String {
    let mut response = client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.body().limit(1 << 22).await.expect("body read");
    String::from_utf8(bytes.to_vec()).expect("metrics are UTF-8")
}

/// Value of the sample `name{labels}` in Prometheus text; labels in any order.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            let matches = series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse().ok()).flatten()
        })
}

pub const HUBSPOT_TOKEN: &str = "test-hubspot-token";

/// A gateway forwarding to `hubspot` with a static token and a short linger.
pub async fn spawn_forwarding_app(hubspot: &Simulator, overrides: &[(&str, &str)]) -> TestApp {
    let dir = StoreDir::new();
    spawn_forwarding_app_in(dir, hubspot, overrides).await
}

pub async fn spawn_forwarding_app_in(
    dir: Arc<StoreDir>,
    hubspot: &Simulator,
    overrides: &[(&str, &str)],
) -> TestApp {
    let url = hubspot.url();
    let mut settings = vec![
        ("HUBSPOT_BASE_URL", url.as_str()),
        ("HUBSPOT_ACCESS_TOKEN", HUBSPOT_TOKEN),
        ("RELAY_BATCH_LINGER_MS", "100"),
        ("HUBSPOT_REQUEST_TIMEOUT_MS", "2000"),
    ];
    settings.extend_from_slice(overrides);
    spawn_app_in(dir, &settings).await
}

/// A signed-ready `webinar.participant_joined` body.
pub fn zoom_join(webinar: &str, email: &str, join_time: &str) -> Vec<u8> {
    zoom_participant(
        "webinar.participant_joined",
        webinar,
        email,
        ("join_time", join_time),
    )
}

/// A signed-ready `webinar.participant_left` body, of the participant
/// [`zoom_join`] joins.
pub fn zoom_leave(webinar: &str, email: &str, leave_time: &str) -> Vec<u8> {
    zoom_participant(
        "webinar.participant_left",
        webinar,
        email,
        ("leave_time", leave_time),
    )
}

/// A participant event shaped as Zoom's own examples are.
fn zoom_participant(event: &str, webinar: &str, email: &str, time: (&str, &str)) -> Vec<u8> {
    let mut participant = json!({
        "user_id": "16778240", "user_name": "Jill Chill", "id": "iFxeBPYun6SAiWUzBcEkX",
        "email": email
    });
    participant[time.0] = time.1.into();
    zoom_event(event, webinar.into(), ("participant", participant))
}

/// A signed-ready registration body (`webinar.registration_created`,
/// `…_approved`, …) shaped as Zoom's own examples are: the same registrant
/// of `webinar` whatever the event.
pub fn zoom_registration(event: &str, webinar: i64, email: &str) -> Vec<u8> {
    let registrant = json!({
        "id": "iFxeBPYun6SAiWUzBcEkX", "first_name": "Jill", "last_name": "Chill",
        "email": email, "status": "approved", "join_url": "https://example.com"
    });
    zoom_event(event, webinar.into(), ("registrant", registrant))
}

/// `event` of webinar `id` about `person` (a participant or a registrant).
fn zoom_event(event: &str, id: Value, person: (&str, Value)) -> Vec<u8> {
    let mut object = json!({
        "id": id, "uuid": "4444AAAiAAAAAiAiAiiAii==", "host_id": "x1yCzABCDEfg23HiJKl4mN",
        "topic": "Launch webinar", "type": 5, "start_time": "2026-01-01T10:00:00Z",
        "duration": 60, "timezone": "UTC"
    });
    object[person.0] = person.1;
    json!({
        "event": event,
        "event_ts": 1_767_261_600_000_i64,
        "payload": {"account_id": "zoom-account-1", "object": object}
    })
    .to_string()
    .into_bytes()
}

/// Polls `done` every 20 ms until it holds, failing the test after `secs`.
pub async fn wait_until(what: &str, secs: u64, mut done: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !done().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The real binary, started as an operator would, on `db`.
pub struct Gateway {
    pub child: Child,
    pub public: String,
    pub admin: String,
    pub client: awc::Client,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Gateway {
    pub async fn start(db: &Path) -> Self {
        Self::start_with(db, &[], None).await
    }

    /// With extra environment, and its log (stderr) written to `log`. Its
    /// ports are picked free and bound only by the child, so a test running
    /// beside may take one in between: a child that exits before it is ready
    /// is started again on other ports.
    pub async fn start_with(db: &Path, env: &[(&str, String)], log: Option<&Path>) -> Self {
        for _ in 0..3 {
            let (public, admin) = (free_port(), free_port());
            let child = Command::new(env!("CARGO_BIN_EXE_attendance-relay"))
                .env_clear()
                .env("RELAY_LISTEN_ADDR", format!("127.0.0.1:{public}"))
                .env("RELAY_ADMIN_ADDR", format!("127.0.0.1:{admin}"))
                .env("RELAY_DATABASE_URL", format!("sqlite://{}", db.display()))
                .env("ZOOM_WEBHOOK_SECRET_TOKEN", ZOOM_SECRET)
                .env("RUST_LOG", "warn")
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(log.map_or_else(Stdio::inherit, |path| {
                    Stdio::from(std::fs::File::create(path).expect("log file"))
                }))
                .spawn()
                .expect("binary starts");
            let mut gateway = Self {
                child,
                public: format!("http://127.0.0.1:{public}"),
                admin: format!("http://127.0.0.1:{admin}"),
                client: awc::Client::default(),
            };
            if gateway.ready().await {
                return gateway;
            }
        }
        panic!("the gateway exited before it was ready, three times");
    }

    /// Waits until it answers `/readyz`; false when it exited first.
    async fn ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = self
                .client
                .get(format!("{}/readyz", self.public))
                .send()
                .await;
            if matches!(ready, Ok(ref r) if r.status() == StatusCode::OK) {
                return true;
            }
            if let Some(status) = self.child.try_wait().expect("child status") {
                eprintln!("the gateway exited before it was ready ({status})");
                return false;
            }
            assert!(Instant::now() < deadline, "gateway did not become ready");
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn post_join(&self, n: usize) -> Option<StatusCode> {
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

    pub async fn metrics(&self) -> String {
        scrape(&self.client, &self.admin).await
    }

    pub async fn pending(&self) -> f64 {
        metric(
            &self.metrics().await,
            "relay_queue_records",
            &[("status", "pending")],
        )
        .unwrap()
    }
}

pub const ADMIN_SECRET: &str = "test-admin-secret";

/// An HS256 token with these claims, made here with jsonwebtoken directly.
pub fn jwt(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("key"),
    )
    .expect("token encodes")
}

/// A valid admin token for five minutes.
pub fn admin_token() -> String {
    jwt(
        ADMIN_SECRET,
        json!({"aud": "attendance-relay-admin", "exp": now_secs() + 300}),
    )
}

impl TestApp {
    /// `method path` on `base` with an optional bearer token; the answer as JSON.
    pub async fn call(&self, method: &str, url: &str, token: Option<&str>) -> (StatusCode, Value) {
        let method = actix_web::http::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.client.request(method, url);
        if let Some(token) = token {
            request = request.insert_header(("authorization", format!("Bearer {token}")));
        }
        let mut response = request.send().await.expect("request sent");
        let bytes = response.body().limit(1 << 22).await.expect("body read");
        (
            response.status(),
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// An admin API call with a valid token.
    pub async fn admin(&self, method: &str, path: &str) -> Value {
        let (status, body) = self
            .call(
                method,
                &format!("{}{path}", self.admin),
                Some(&admin_token()),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {body}");
        body
    }
}

/// No 10 seconds of calls as HubSpot received them hold more than `limit`.
pub fn assert_within_limit(calls: &[attendance_relay::demo::simulator::Call], limit: usize) {
    for (i, call) in calls.iter().enumerate() {
        let in_window = calls[i..]
            .iter()
            .filter(|c| c.at < call.at + Duration::from_secs(10))
            .count();
        assert!(
            in_window <= limit,
            "{in_window} calls within 10 s, limit {limit}"
        );
    }
}
