//! The credential on SQLite. One process uses the store, so its own refresh
//! lock is all the locking there is.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, sql_error};
use crate::{
    settings::Secret,
    store::{CredentialLock, Credentials, StoreError, StoredCredential},
};

#[async_trait]
impl Credentials for SqliteStore {
    async fn load_credential(&self, key: &str) -> Result<Option<StoredCredential>, StoreError> {
        let key = key.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT origin, refresh_token, access_token, expires_at_ms, updated_ms
                 FROM credentials WHERE key = ?1",
            )
            .and_then(|mut select| {
                select
                    .query_row(params![key], |row| {
                        Ok(StoredCredential {
                            origin: row.get(0)?,
                            refresh_token: Secret::from(row.get::<_, String>(1)?),
                            access_token: Secret::from(row.get::<_, String>(2)?),
                            expires_at_ms: row.get(3)?,
                            refreshed_ms: row.get(4)?,
                        })
                    })
                    .optional()
            })
            .map_err(sql_error)
        })
        .await
    }

    async fn save_credential(
        &self,
        key: &str,
        credential: &StoredCredential,
    ) -> Result<(), StoreError> {
        let key = key.to_owned();
        let credential = credential.clone();
        self.write(move |conn, _| {
            conn.prepare_cached(
                "INSERT INTO credentials (key, origin, refresh_token, access_token, expires_at_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (key) DO UPDATE SET origin = excluded.origin,
                     refresh_token = excluded.refresh_token, access_token = excluded.access_token,
                     expires_at_ms = excluded.expires_at_ms, updated_ms = excluded.updated_ms",
            )
            .and_then(|mut upsert| {
                upsert.execute(params![
                    key,
                    credential.origin,
                    credential.refresh_token.expose(),
                    credential.access_token.expose(),
                    credential.expires_at_ms,
                    credential.refreshed_ms,
                ])
            })
            .map(drop)
            .map_err(sql_error)
        })
        .await
    }

    /// No other process shares the store: nothing to hold.
    async fn lock_credential(&self, _key: &str) -> Result<CredentialLock, StoreError> {
        Ok(CredentialLock { _held: None })
    }
}
