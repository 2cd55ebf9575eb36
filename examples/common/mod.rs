//! What the benchmark programs share: their arguments, and gateways started
//! in their own process.

// Each program compiles this module for itself and uses part of it.
#![allow(dead_code)]

use std::{collections::HashMap, error::Error, net::SocketAddr, sync::Arc};

use attendance_relay::{app::Application, settings::Settings, store::Store};

/// The `i`th command-line argument as a number, else `default`.
pub fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Settings of a benchmark gateway on `database_url` that calls `hubspot`:
/// loopback ports chosen by the system, then `more`.
pub fn gateway_env(
    database_url: &str,
    hubspot: &str,
    more: &[(&str, String)],
) -> HashMap<String, String> {
    [
        ("RELAY_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("RELAY_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        ("RELAY_DATABASE_URL", database_url.to_owned()),
        ("HUBSPOT_BASE_URL", hubspot.to_owned()),
        ("HUBSPOT_ACCESS_TOKEN", "bench-token".to_owned()),
    ]
    .into_iter()
    .chain(more.iter().cloned())
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A gateway serving in this process until [`Gateway::stop`].
pub struct Gateway {
    pub public: SocketAddr,
    pub store: Arc<dyn Store>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: actix_web::rt::task::JoinHandle<std::io::Result<()>>,
}

impl Gateway {
    pub async fn start(env: &HashMap<String, String>) -> Result<Self, Box<dyn Error>> {
        let app = Application::build(Settings::init_from_hashmap(env)?).await?;
        let (public, store) = (app.public_addr(), app.store());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = actix_web::rt::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Ok(Self {
            public,
            store,
            stop,
            server,
        })
    }

    pub async fn stop(self) -> Result<(), Box<dyn Error>> {
        let _ = self.stop.send(());
        Ok(self.server.await??)
    }
}
