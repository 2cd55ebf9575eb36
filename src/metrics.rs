//! The Prometheus registry of one application instance (not the global one,
//! so several instances can run in one test process).

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder, core::Collector,
};

use crate::record::State;

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

/// Every `outcome` label of `relay_token_refreshes_total`.
pub const REFRESH_OUTCOMES: [&str; 3] = ["success", "refused", "error"];

/// An fsync'd commit takes from a fraction of a millisecond (shared group
/// commit) to seconds (a stalled disk).
const INGEST_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Up to the longest request timeout worth setting.
const HUBSPOT_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0];

/// The families; labels are plain strings, so this module knows no
/// pipeline type. Gauges of state held elsewhere (the queue, the pause, the
/// token) are set by the `/metrics` handler when it is scraped.
pub struct Metrics {
    registry: Registry,
    pub webhooks_received: IntCounterVec,
    pub ingest_duration: HistogramVec,
    pub records: IntCounterVec,
    pub queue_records: IntGaugeVec,
    pub oldest_pending_age: Gauge,
    pub hubspot_requests: IntCounterVec,
    pub hubspot_request_duration: HistogramVec,
    pub hubspot_batch_size: Histogram,
    pub forwarding_paused: IntGauge,
    pub token_refreshes: IntCounterVec,
    pub fetches: IntCounterVec,
    pub token_expires_in: Gauge,
    /// Requests by listener, matched route pattern and answered status.
    pub http_requests: IntCounterVec,
}

/// Registers the families of one registry.
struct Families<'a>(&'a Registry);

impl Families<'_> {
    fn add<C: Collector + Clone + 'static>(&self, collector: prometheus::Result<C>) -> C {
        let collector = collector.expect("valid metric");
        self.0
            .register(Box::new(collector.clone()))
            .expect("metric names are unique");
        collector
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels))
    }

    fn histograms(&self, name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(HistogramVec::new(opts, labels))
    }

    fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.add(Gauge::new(name, help))
    }
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
        let family = Families(&registry);
        let metrics = Self {
            webhooks_received: family.counters(
                "relay_webhooks_received_total",
                "Webhook deliveries by source and outcome.",
                &["source", "outcome"],
            ),
            ingest_duration: family.histograms(
                "relay_ingest_duration_seconds",
                "Time from request to durable answer, by source.",
                &INGEST_BUCKETS,
                &["source"],
            ),
            records: family.counters(
                "relay_records_total",
                "Attendance records by state and outcome.",
                &["state", "outcome"],
            ),
            queue_records: family.add(IntGaugeVec::new(
                Opts::new("relay_queue_records", "Stored records by status."),
                &["status"],
            )),
            oldest_pending_age: family.gauge(
                "relay_oldest_pending_age_seconds",
                "Age of the oldest record waiting to be forwarded.",
            ),
            hubspot_requests: family.counters(
                "relay_hubspot_requests_total",
                "HubSpot API calls by operation and answer (HTTP status, or `error` when none came).",
                &["operation", "status"],
            ),
            hubspot_request_duration: family.histograms(
                "relay_hubspot_request_duration_seconds",
                "Duration of HubSpot API calls by operation.",
                &HUBSPOT_BUCKETS,
                &["operation"],
            ),
            hubspot_batch_size: family.add(Histogram::with_opts(
                HistogramOpts::new(
                    "relay_hubspot_batch_size",
                    "Inputs per attendance create call.",
                )
                .buckets(BATCH_BUCKETS.to_vec()),
            )),
            forwarding_paused: family.add(IntGauge::new(
                "relay_forwarding_paused",
                "1 while forwarding waits for a working HubSpot credential.",
            )),
            token_refreshes: family.counters(
                "relay_token_refreshes_total",
                "OAuth token refreshes by outcome (success, refused, error).",
                &["outcome"],
            ),
            token_expires_in: family.gauge(
                "relay_token_expires_in_seconds",
                "Time the held OAuth access token has left (0 without OAuth).",
            ),
            fetches: family.counters(
                "relay_fetches_total",
                "Fetches of deferred deliveries from a platform's API by outcome \
                 (resolved, retry, failed; refused: a URL outside the platform's API, never requested).",
                &["source", "outcome"],
            ),
            http_requests: family.counters(
                "relay_http_requests_total",
                "HTTP requests by listener, route pattern (`unmatched` for none) and status.",
                &["listener", "route", "status"],
            ),
            registry,
        };
        for outcome in REFRESH_OUTCOMES {
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

    /// Makes the series of HubSpot calls visible (at zero) before the first call.
    pub fn init_hubspot(&self, operations: &[&str], statuses: &[&str]) {
        for operation in operations {
            self.hubspot_request_duration
                .with_label_values(&[operation]);
            for status in statuses {
                self.hubspot_requests
                    .with_label_values(&[operation, status]);
            }
        }
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

    /// Prometheus text exposition of everything registered.
    pub fn encode(&self) -> String {
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
