//! The Prometheus registry of one application instance (not the global one,
//! so several instances can run in one test process).

use std::sync::{
    Mutex,
    atomic::{AtomicI64, Ordering},
};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder, core::Collector,
};

use crate::{
    hubspot::Operation,
    record::State,
    store::{QueueStats, RecordStatus},
};

/// Every `outcome` label of `relay_webhooks_received_total`.
pub const WEBHOOK_OUTCOMES: [&str; 7] = [
    "accepted",
    "duplicate",
    "ignored",
    "unauthorized",
    "invalid",
    "too_large",
    "unavailable",
];

/// Every `outcome` label of `relay_fetches_total`.
pub const FETCH_OUTCOMES: [&str; 4] = ["resolved", "retry", "failed", "refused"];

/// Every `outcome` label of `relay_records_total`.
pub const RECORD_OUTCOMES: [&str; 3] = ["delivered", "dead_lettered", "unmappable"];

pub struct Metrics {
    registry: Registry,
    pub webhooks_received: IntCounterVec,
    pub ingest_duration: HistogramVec,
    pub records: IntCounterVec,
    queue_records: IntGaugeVec,
    oldest_pending_age: Gauge,
    pub hubspot_requests: IntCounterVec,
    pub hubspot_request_duration: HistogramVec,
    pub hubspot_batch_size: Histogram,
    pub forwarding_paused: IntGauge,
    pub token_refreshes: IntCounterVec,
    pub fetches: IntCounterVec,
    token_expires_in: Gauge,
    /// When the held OAuth token expires (epoch ms; 0: no OAuth token).
    token_expires_at_ms: AtomicI64,
    /// Requests by listener, matched route pattern and answered status.
    pub http_requests: IntCounterVec,
    /// What `/admin/status` says beyond the gauges.
    operations: Mutex<OperationsStatus>,
}

/// The running gateway's own account of what the gauges cannot say: why
/// forwarding is paused, and how the last token refresh went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OperationsStatus {
    pub pause_reason: Option<String>,
    /// Outcome label (success, refused, error) and when (epoch ms).
    pub last_refresh: Option<(&'static str, i64)>,
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are unique");
    collector
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registers once");
        let metrics = Self {
            registry: registry.clone(),
            webhooks_received: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "relay_webhooks_received_total",
                        "Webhook deliveries by source and outcome.",
                    ),
                    &["source", "outcome"],
                )
                .expect("valid metric"),
            ),
            ingest_duration: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "relay_ingest_duration_seconds",
                        "Time from request to durable answer, by source.",
                    )
                    // An fsync'd commit takes from a fraction of a millisecond
                    // (shared group commit) to seconds (a stalled disk).
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5, 5.0,
                    ]),
                    &["source"],
                )
                .expect("valid metric"),
            ),
            records: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "relay_records_total",
                        "Attendance records by state and outcome.",
                    ),
                    &["state", "outcome"],
                )
                .expect("valid metric"),
            ),
            queue_records: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new("relay_queue_records", "Stored records by status."),
                    &["status"],
                )
                .expect("valid metric"),
            ),
            oldest_pending_age: register(
                &registry,
                Gauge::new(
                    "relay_oldest_pending_age_seconds",
                    "Age of the oldest record waiting to be forwarded.",
                )
                .expect("valid metric"),
            ),
            hubspot_requests: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "relay_hubspot_requests_total",
                        "HubSpot API calls by operation and answer (HTTP status, or `error` when none came).",
                    ),
                    &["operation", "status"],
                )
                .expect("valid metric"),
            ),
            hubspot_request_duration: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "relay_hubspot_request_duration_seconds",
                        "Duration of HubSpot API calls by operation.",
                    )
                    // Up to the longest request timeout worth setting.
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ]),
                    &["operation"],
                )
                .expect("valid metric"),
            ),
            hubspot_batch_size: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "relay_hubspot_batch_size",
                        "Inputs per attendance create call.",
                    )
                    .buckets(vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0]),
                )
                .expect("valid metric"),
            ),
            forwarding_paused: register(
                &registry,
                IntGauge::new(
                    "relay_forwarding_paused",
                    "1 while forwarding waits for a working HubSpot credential.",
                )
                .expect("valid metric"),
            ),
            token_refreshes: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "relay_token_refreshes_total",
                        "OAuth token refreshes by outcome (success, refused, error).",
                    ),
                    &["outcome"],
                )
                .expect("valid metric"),
            ),
            token_expires_in: register(
                &registry,
                Gauge::new(
                    "relay_token_expires_in_seconds",
                    "Time the held OAuth access token has left (0 without OAuth).",
                )
                .expect("valid metric"),
            ),
            token_expires_at_ms: AtomicI64::new(0),
            fetches: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "relay_fetches_total",
                        "Fetches of deferred deliveries from a platform's API by outcome \
                         (resolved, retry, failed; refused: a URL outside the platform's API, never requested).",
                    ),
                    &["source", "outcome"],
                )
                .expect("valid metric"),
            ),
            http_requests: register(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "relay_http_requests_total",
                        "HTTP requests by listener, route pattern (`unmatched` for none) and status.",
                    ),
                    &["listener", "route", "status"],
                )
                .expect("valid metric"),
            ),
            operations: Mutex::default(),
        };
        for operation in Operation::ALL {
            metrics
                .hubspot_request_duration
                .with_label_values(&[operation.as_str()]);
        }
        for outcome in ["success", "refused", "error"] {
            metrics.token_refreshes.with_label_values(&[outcome]);
        }
        for state in State::ALL {
            for outcome in RECORD_OUTCOMES {
                metrics
                    .records
                    .with_label_values(&[state.as_str(), outcome]);
            }
        }
        metrics
    }

    /// Makes a source's series visible (at zero) before its first delivery.
    pub fn init_source(&self, source: &str) {
        for outcome in WEBHOOK_OUTCOMES {
            self.webhooks_received.with_label_values(&[source, outcome]);
        }
        self.ingest_duration.with_label_values(&[source]);
    }

    /// The same for a source whose deliveries are fetched.
    pub fn init_fetching_source(&self, source: &str) {
        self.init_source(source);
        for outcome in FETCH_OUTCOMES {
            self.fetches.with_label_values(&[source, outcome]);
        }
    }

    pub fn observe_queue(&self, stats: &QueueStats, now_ms: i64) {
        for status in RecordStatus::ALL {
            self.queue_records
                .with_label_values(&[status.as_str()])
                .set(stats.count(status));
        }
        let age_ms = stats
            .oldest_pending_ms
            .map_or(0, |oldest| (now_ms - oldest).max(0));
        self.oldest_pending_age.set(age_ms as f64 / 1000.0);
    }

    pub fn set_token_expiry(&self, expires_at_ms: i64) {
        self.token_expires_at_ms
            .store(expires_at_ms, Ordering::Relaxed);
    }

    /// When the held OAuth token expires (epoch ms), if one is held.
    pub fn token_expires_at_ms(&self) -> Option<i64> {
        Some(self.token_expires_at_ms.load(Ordering::Relaxed)).filter(|at| *at > 0)
    }

    /// Forwarding paused for `reason`, or resumed (`None`): the gauge and
    /// the reason `/admin/status` shows change together.
    pub fn set_forwarding_paused(&self, reason: Option<&str>) {
        self.forwarding_paused.set(i64::from(reason.is_some()));
        self.operations().pause_reason = reason.map(str::to_owned);
    }

    /// Counts a token refresh by outcome and remembers it as the last one.
    pub fn record_token_refresh(&self, outcome: &'static str) {
        self.token_refreshes.with_label_values(&[outcome]).inc();
        self.operations().last_refresh = Some((outcome, crate::record::now_ms()));
    }

    pub fn operations_status(&self) -> OperationsStatus {
        self.operations().clone()
    }

    fn operations(&self) -> std::sync::MutexGuard<'_, OperationsStatus> {
        self.operations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Prometheus text exposition of everything registered.
    pub fn encode(&self) -> String {
        let expires_at_ms = self.token_expires_at_ms.load(Ordering::Relaxed);
        if expires_at_ms > 0 {
            let left_ms = (expires_at_ms - crate::record::now_ms()).max(0);
            self.token_expires_in.set(left_ms as f64 / 1000.0);
        }
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding into memory cannot fail");
        String::from_utf8(buffer).expect("text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
