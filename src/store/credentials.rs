//! The credential role: the OAuth credential as last refreshed, shared by
//! restarts and replicas, and the lock one refresh holds.

use async_trait::async_trait;

use super::StoreError;
use crate::settings::Secret;

/// The OAuth credential as last refreshed, shared by restarts and replicas.
#[derive(Clone, Debug)]
pub struct StoredCredential {
    /// The installation it descends from: a hash of the configured refresh
    /// token, so configuring a new one supersedes what is stored.
    pub origin: String,
    pub refresh_token: Secret,
    pub access_token: Secret,
    pub expires_at_ms: i64,
    /// When it was refreshed (epoch ms, the refreshing replica's clock, like
    /// the expiry): with the expiry, the token's lifetime, so every replica
    /// refreshes it at the same point.
    pub refreshed_ms: i64,
}

/// Held while a replica refreshes the credential (see
/// [`Credentials::lock_credential`]).
pub struct CredentialLock {
    /// `None` where the process's own refresh lock suffices.
    pub(super) _held: Option<Box<dyn Send>>,
}

#[async_trait]
pub trait Credentials: Send + Sync {
    /// The credential stored under `key`, if any.
    async fn load_credential(&self, key: &str) -> Result<Option<StoredCredential>, StoreError>;

    /// Replaces the credential stored under `key`.
    async fn save_credential(
        &self,
        key: &str,
        credential: &StoredCredential,
    ) -> Result<(), StoreError>;

    /// Holds the deployment-wide lock of the credential `key` until the
    /// returned guard is dropped: one replica refreshes while the others
    /// wait, then re-read what it stored.
    async fn lock_credential(&self, key: &str) -> Result<CredentialLock, StoreError>;
}
