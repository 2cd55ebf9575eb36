//! The call-window role: what replicas sharing the store must agree on to
//! stay within HubSpot's rate limit together.

use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;

/// What [`CallWindow::admit_call`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Admitted: pass `call` to [`CallWindow::call_answered`].
    Admitted { call: i64 },
    /// The store keeps no window: the process's own limiter decides alone.
    LeftToProcess,
    /// The deployment's window is full, or HubSpot asked every replica to
    /// pause: ask again after this.
    Wait(Duration),
}

#[async_trait]
pub trait CallWindow: Send + Sync {
    /// Admits one HubSpot call for the whole deployment, whose window holds
    /// `limit` calls, each counted until `window` after its answer.
    async fn admit_call(&self, limit: u32, window: Duration) -> Result<Admission, StoreError>;

    /// The call HubSpot answered: its place in the window starts to age.
    /// Returns the calls the deployment's window holds now.
    async fn call_answered(&self, call: i64) -> Result<u32, StoreError>;

    /// HubSpot asked to slow down: no replica calls for `pause`.
    async fn hold_calls(&self, pause: Duration) -> Result<(), StoreError>;
}
