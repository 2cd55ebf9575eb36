//! What the benchmark programs share: their arguments, and gateways started
//! from the release binary in processes of their own, so what a gateway
//! uses (memory, descriptors) is measured apart from the bench and the
//! HubSpot simulator beside it.

// Each program compiles this module for itself and uses part of it.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    error::Error,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The `i`th command-line argument as a number, else `default`.
pub fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Settings of a benchmark gateway on `database_url` that calls `hubspot`:
/// free loopback ports, the caller's `RUST_LOG` (else `warn`), then `more`.
pub fn gateway_env(
    database_url: &str,
    hubspot: &str,
    more: &[(&str, String)],
) -> HashMap<String, String> {
    [
        ("RELAY_LISTEN_ADDR", free_addr()),
        ("RELAY_ADMIN_ADDR", free_addr()),
        ("RELAY_DATABASE_URL", database_url.to_owned()),
        ("HUBSPOT_BASE_URL", hubspot.to_owned()),
        ("HUBSPOT_ACCESS_TOKEN", "bench-token".to_owned()),
        (
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        ),
    ]
    .into_iter()
    .chain(more.iter().cloned())
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A gateway process running the release binary until [`Gateway::stop`].
pub struct Gateway {
    pub public: SocketAddr,
    admin: String,
    child: Child,
    client: awc::Client,
}

impl Gateway {
    /// Starts `target/release/attendance-relay` (beside this program's own
    /// folder) with `env` alone, its log to `stderr`, and waits until it is
    /// ready.
    pub async fn start(
        env: &HashMap<String, String>,
        stderr: Stdio,
    ) -> Result<Self, Box<dyn Error>> {
        let binary = std::env::current_exe()?
            .parent()
            .and_then(|examples| examples.parent())
            .map(|release| release.join("attendance-relay"))
            .ok_or("no target folder")?;
        let child = Command::new(&binary)
            .env_clear()
            .envs(env)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|err| format!("{}: {err} (build it first)", binary.display()))?;
        let mut gateway = Self {
            public: env["RELAY_LISTEN_ADDR"].parse()?,
            admin: env["RELAY_ADMIN_ADDR"].clone(),
            child,
            client: awc::Client::builder()
                .timeout(Duration::from_secs(10))
                .finish(),
        };
        let started = Instant::now();
        let ready = format!("http://{}/readyz", gateway.public);
        while !gateway
            .client
            .get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            gateway.alive()?;
            if started.elapsed() > Duration::from_secs(60) {
                return Err("the gateway did not become ready within 60 s".into());
            }
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(gateway)
    }

    /// An error once the process has ended, so a bench never waits on a
    /// gateway that is gone.
    fn alive(&mut self) -> Result<(), Box<dyn Error>> {
        match self.child.try_wait()? {
            Some(status) => Err(format!("the gateway exited ({status})").into()),
            None => Ok(()),
        }
    }

    /// The process's resident memory (KiB) and open descriptors, from /proc.
    pub fn sample(&self) -> (u64, usize) {
        let pid = self.child.id().to_string();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
        (rss_kib(&pid), fds)
    }

    /// The admin listener's metrics (empty when it does not answer).
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.admin);
        match self.client.get(url).send().await {
            Ok(mut response) => match response.body().limit(1 << 22).await {
                Ok(body) => String::from_utf8_lossy(&body).into_owned(),
                Err(_) => String::new(),
            },
            Err(_) => String::new(),
        }
    }

    /// Whether any record is pending, leased ones included (true while it
    /// cannot tell); an error once the process has ended.
    pub async fn busy(&mut self) -> Result<bool, Box<dyn Error>> {
        self.alive()?;
        let pending = metric(
            &self.metrics().await,
            "relay_queue_records{status=\"pending\"}",
        );
        Ok(pending.is_nan() || pending > 0.0)
    }

    /// Kills the process (what it acknowledged is durable, so nothing is
    /// lost) and waits for it.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.child.kill()?;
        self.child.wait().map(drop)
    }
}

/// Resident memory (KiB) of process `pid` (`self` for this one), from /proc;
/// 0 where there is none.
pub fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The value of one series in Prometheus text, NaN where it is missing.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}
