//! The credential on PostgreSQL, and its deployment-wide lock: a session
//! advisory lock held by a pooled connection while one replica refreshes.

use async_trait::async_trait;

use super::PostgresStore;
use crate::{
    settings::Secret,
    store::{CredentialLock, Credentials, StoreError, StoredCredential},
};

type Result<T> = std::result::Result<T, StoreError>;

#[async_trait]
impl Credentials for PostgresStore {
    async fn load_credential(&self, key: &str) -> Result<Option<StoredCredential>> {
        let key = key.to_owned();
        self.with(move |client| async move {
            let row = client
                .query_opt(
                    "SELECT origin, refresh_token, access_token, expires_at_ms, updated_ms
                     FROM credentials WHERE key = $1",
                    &[&key],
                )
                .await?;
            Ok(row.map(|row| StoredCredential {
                origin: row.get(0),
                refresh_token: Secret::from(row.get::<_, String>(1)),
                access_token: Secret::from(row.get::<_, String>(2)),
                expires_at_ms: row.get(3),
                refreshed_ms: row.get(4),
            }))
        })
        .await
    }

    async fn save_credential(&self, key: &str, credential: &StoredCredential) -> Result<()> {
        let key = key.to_owned();
        let credential = credential.clone();
        self.with(move |client| async move {
            client
                .execute(
                    "INSERT INTO credentials (key, origin, refresh_token, access_token, expires_at_ms, updated_ms)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (key) DO UPDATE SET origin = EXCLUDED.origin,
                         refresh_token = EXCLUDED.refresh_token, access_token = EXCLUDED.access_token,
                         expires_at_ms = EXCLUDED.expires_at_ms, updated_ms = EXCLUDED.updated_ms",
                    &[
                        &key,
                        &credential.origin,
                        &credential.refresh_token.expose(),
                        &credential.access_token.expose(),
                        &credential.expires_at_ms,
                        &credential.refreshed_ms,
                    ],
                )
                .await?;
                Ok(())
        })
        .await
    }

    async fn lock_credential(&self, key: &str) -> Result<CredentialLock> {
        let key = key.to_owned();
        let runtime = self.runtime.get().handle().clone();
        let pool = self.pool.clone();
        // Waiting for another replica's refresh may take its token endpoint's time.
        let task = self.runtime.get().spawn(async move {
            let client = pool.get().await?;
            client
                .execute("SELECT pg_advisory_lock(hashtext($1))", &[&key])
                .await?;
            Ok::<_, StoreError>(AdvisoryLock {
                client: Some(client),
                key,
                runtime,
            })
        });
        let held = task.await.map_err(|_| StoreError::Closed)??;
        Ok(CredentialLock {
            _held: Some(Box::new(held)),
        })
    }
}

/// A session advisory lock; released (on the store's runtime) when dropped.
struct AdvisoryLock {
    client: Option<deadpool_postgres::Object>,
    key: String,
    runtime: tokio::runtime::Handle,
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let key = std::mem::take(&mut self.key);
            self.runtime.spawn(async move {
                if let Err(err) = client
                    .execute("SELECT pg_advisory_unlock(hashtext($1))", &[&key])
                    .await
                {
                    // The connection goes, and the lock with it.
                    tracing::warn!(error = %err, "cannot release the credential lock");
                    drop(deadpool_postgres::Object::take(client));
                }
            });
        }
    }
}
