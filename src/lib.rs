//! attendance-relay: verified, durable webhook ingest from event platforms,
//! forwarded to HubSpot as marketing-event attendance.
//!
//! The pipeline, module by module: `sources` (one per platform) turn deliveries
//! into `record`s (or, for platforms that send only a pointer, the `fetcher`
//! does so later); `store` keeps them durably; `forwarder` sends them through
//! the `hubspot` client with the credential of `token`; `http` serves the
//! routes; `app` wires it together from `settings`.
//!
//! The modules are declared below in layers, bottom-up, and a module uses
//! only those declared before it (tests/api/layers.rs holds the code to it):
//!
//! 1. leaves: `record`, `settings`, `retry`, `outbound`, `telemetry`,
//!    `metrics` (labels as plain strings), `status` (what the running gateway
//!    says of itself), `auth` (bearer tokens);
//! 2. `store`;
//! 3. the pipeline's stages, in order: `sources`, `fetcher`, `token`,
//!    `hubspot`, `forwarder`;
//! 4. what serves and assembles them: `operations`, `http`, `app`, `cli`,
//!    `demo`.

/// What a delivery becomes: attendance records, their states and times.
pub mod record;

/// Every setting, from the environment.
pub mod settings;

/// The backoff schedule of records and fetches.
pub mod retry;

/// The HTTP client of every call out.
pub mod outbound;

/// Logging.
pub mod telemetry;

/// The Prometheus registry of one instance.
pub mod metrics;

/// What the running gateway says of itself beyond the gauges.
pub mod status;

/// Bearer tokens: reading them, and saying what is wrong with one.
pub mod auth;

/// Durable records, deliveries and credentials (SQLite or PostgreSQL).
pub mod store;

/// One module per platform: verify a delivery, map it to records.
pub mod sources;

/// Completes deliveries that carry only a pointer, from the platform's API.
pub mod fetcher;

/// The HubSpot credential.
pub mod token;

/// The HubSpot API client.
pub mod hubspot;

/// Sends stored records to HubSpot in batches.
pub mod forwarder;

/// What the admin API and the operator commands ask of the store.
pub mod operations;

/// The routes of both listeners.
pub mod http;

/// Builds and runs the whole gateway.
pub mod app;

/// The command line.
pub mod cli;

/// `attendance-relay demo` and its HubSpot simulator (the `demo` feature).
#[cfg(feature = "demo")]
pub mod demo;
