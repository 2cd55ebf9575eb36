//! What the running gateway says of itself beyond what the store holds:
//! whether forwarding is paused and why, how the last token refresh went,
//! when the held OAuth token expires. The forwarder and the token write it;
//! `/admin/status` and the `/metrics` gauges read it.

use std::sync::{Mutex, MutexGuard};

use crate::record::now_ms;

#[derive(Debug, Default)]
pub struct LiveStatus(Mutex<Snapshot>);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Why forwarding is paused; `None` while it runs.
    pub pause_reason: Option<String>,
    /// Outcome label (success, refused, error) and when (epoch ms).
    pub last_refresh: Option<(&'static str, i64)>,
    /// When the held OAuth token expires (epoch ms); `None` without one.
    pub token_expires_at_ms: Option<i64>,
}

impl LiveStatus {
    /// Forwarding paused for `reason`, or resumed (`None`).
    pub fn set_forwarding_paused(&self, reason: Option<&str>) {
        self.lock().pause_reason = reason.map(str::to_owned);
    }

    pub fn record_token_refresh(&self, outcome: &'static str) {
        self.lock().last_refresh = Some((outcome, now_ms()));
    }

    pub fn set_token_expiry(&self, expires_at_ms: i64) {
        self.lock().token_expires_at_ms = Some(expires_at_ms);
    }

    pub fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Snapshot> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
