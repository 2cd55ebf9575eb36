//! Logging: level from `RUST_LOG` (else the command's default), JSON with
//! `RELAY_LOG_FORMAT=json`.

use tracing_subscriber::{EnvFilter, fmt};

pub fn init(format: &str, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format.eq_ignore_ascii_case("json") {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
