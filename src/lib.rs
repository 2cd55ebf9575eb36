//! attendance-relay: verified, durable webhook ingest from event platforms,
//! forwarded to HubSpot as marketing-event attendance.
//!
//! The pipeline, module by module: `sources` (one per platform) turn deliveries
//! into `record`s (or, for platforms that send only a pointer, the `fetcher`
//! does so later); `store` keeps them durably; `forwarder` sends them through
//! the `hubspot` client with the credential of `token`; `http` serves the
//! routes; `app` wires it together from `settings`.

pub mod app;
pub mod cli;
pub mod demo;
pub mod fetcher;
pub mod forwarder;
pub mod http;
pub mod hubspot;
pub mod metrics;
pub mod operations;
pub mod outbound;
pub mod record;
pub mod retry;
pub mod settings;
pub mod sources;
pub mod store;
pub mod telemetry;
pub mod token;
