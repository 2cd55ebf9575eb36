//! Logging: level from `RUST_LOG` (else the command's default), JSON with
//! `RELAY_LOG_FORMAT=json`.

use tracing_subscriber::{EnvFilter, fmt};

use crate::settings::LogFormat;

pub fn init(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
