//! A full disk under the SQLite store: ingest answers 503 with Retry-After
//! (never a 4xx, never a hang), what was acknowledged stays and is
//! forwarded, and ingest resumes by itself once there is room again.

use std::{io::Write, path::PathBuf, process::Command, time::Duration};

use actix_web::http::StatusCode;
use attendance_relay::demo::simulator::{Options, Simulator};

use crate::helpers::{
    StoreDir, ZOOM_SECRET, metric, now_secs, spawn_forwarding_app_in, wait_until, zoom_join,
    zoom_signature,
};

/// Room for the schema and a few hundred deliveries.
const VOLUME: &str = "size=4m";

/// A tmpfs of its own, unmounted when dropped.
struct Volume {
    dir: tempfile::TempDir,
}

impl Volume {
    /// Fails the test where mounting is not permitted (not root, no
    /// CAP_SYS_ADMIN).
    fn mount() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", VOLUME, "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap_or_else(|err| panic!("cannot run mount: {err}"));
        assert!(
            output.status.success(),
            "a tmpfs mount is needed (root): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `filler` until the volume has no room left.
    fn fill(&self) {
        let mut filler = std::fs::File::create(self.path("filler")).expect("filler");
        let block = vec![0u8; 4096];
        while filler
            .write_all(&block)
            .and_then(|()| filler.sync_data())
            .is_ok()
        {}
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[actix_web::test]
#[ignore = "needs root to mount a tmpfs: --include-ignored as root"]
async fn a_full_disk_means_503_and_ingest_resumes_when_space_returns() {
    let volume = Volume::mount();
    let hubspot = Simulator::start(Options::default()).await.unwrap();
    let database = format!("sqlite://{}", volume.path("relay.db").display());
    let app = spawn_forwarding_app_in(
        StoreDir::new(),
        &hubspot,
        &[("RELAY_DATABASE_URL", database.as_str())],
    )
    .await;
    let join = |n: usize| {
        let email = format!("p{n}@example.com");
        hubspot.add_contact(&email);
        // Bodies of a few KiB, so the volume fills in a few hundred deliveries.
        let mut body: serde_json::Value =
            serde_json::from_slice(&zoom_join("900", &email, "2026-01-01T10:00:00Z")).unwrap();
        body["payload"]["object"]["topic"] = "x".repeat(4000).into();
        body.to_string().into_bytes()
    };

    // Acknowledged and forwarded before the disk fills.
    for n in 0..5 {
        assert_eq!(app.post_zoom(&join(n)).await.0, StatusCode::OK);
    }
    wait_until("the first five are delivered", 30, async || {
        metric(
            &app.metrics().await,
            "relay_queue_records",
            &[("status", "delivered")],
        ) == Some(5.0)
    })
    .await;

    volume.fill();
    // Deliveries go on until the store refuses one: the WAL may have room
    // left for a few. Each is either stored or refused with 503.
    let mut acknowledged = 5;
    let mut refused = None;
    for n in 5..2000 {
        let body = join(n);
        let ts = now_secs();
        let mut response = app
            .client
            .post(format!("{}/webhooks/zoom", app.public))
            .timeout(Duration::from_secs(30))
            .insert_header(("content-type", "application/json"))
            .insert_header(("x-zm-signature", zoom_signature(ZOOM_SECRET, ts, &body)))
            .insert_header(("x-zm-request-timestamp", ts.to_string()))
            .send_body(body)
            .await
            .expect("an answer, not a hang");
        match response.status().as_u16() {
            200 => acknowledged += 1,
            503 => {
                let retry_after = response.headers().get("retry-after").cloned();
                let answer = response.body().await.unwrap();
                refused = Some((retry_after, answer));
                break;
            }
            status => panic!(
                "delivery {n} on a full disk: {status} {:?}",
                response.body().await
            ),
        }
    }
    let (retry_after, answer) = refused.expect("a full disk refuses deliveries");
    assert!(retry_after.is_some(), "503 says when to retry");
    assert!(
        String::from_utf8_lossy(&answer).contains("store_unavailable"),
        "{answer:?}"
    );

    // Room again: ingest resumes without a restart.
    std::fs::remove_file(volume.path("filler")).unwrap();
    let mut n = 2000;
    wait_until("ingest resumes", 30, async || {
        n += 1;
        let (status, _) = app.post_zoom(&join(n)).await;
        assert!(matches!(status.as_u16(), 200 | 503), "{status}");
        status == StatusCode::OK
    })
    .await;
    let (ready, _) = app.get(&format!("{}/readyz", app.public)).await;
    assert_eq!(ready, StatusCode::OK);

    // Every acknowledged join reaches HubSpot: the first five exactly once
    // (settled before the disk filled), the others at least once (a batch
    // whose settlement hit the full disk is sent again: create is idempotent).
    let expected = acknowledged + 1;
    wait_until("every acknowledged join is delivered", 60, async || {
        metric(
            &app.metrics().await,
            "relay_queue_records",
            &[("status", "delivered")],
        ) == Some(expected as f64)
    })
    .await;
    let attendance = hubspot.attendance();
    let vids: std::collections::BTreeSet<i64> = attendance.iter().map(|a| a.vid).collect();
    assert_eq!(vids.len(), expected, "no acknowledged join lost");
    for n in 0..5 {
        let vid = hubspot.contact_id(&format!("p{n}@example.com")).unwrap();
        assert_eq!(attendance.iter().filter(|a| a.vid == vid).count(), 1);
    }
    eprintln!(
        "disk full: {} acknowledged after filling, {} sent twice",
        acknowledged - 5,
        attendance.len() - vids.len()
    );
    app.stop().await;
}
