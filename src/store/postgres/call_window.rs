//! The call window on PostgreSQL: the deployment's HubSpot calls of the
//! last window and HubSpot's pause, shared by every replica
//! (`relay_admit_hubspot_call` in the schema).

use std::time::Duration;

use async_trait::async_trait;

use super::PostgresStore;
use crate::store::{Admission, CallWindow, StoreError, duration_ms};

/// A call with no answer after this long is taken as lost (its replica died).
const LOST_CALL: Duration = Duration::from_secs(60);

type Result<T> = std::result::Result<T, StoreError>;

#[async_trait]
impl CallWindow for PostgresStore {
    async fn admit_call(&self, limit: u32, window: Duration) -> Result<Admission> {
        let (limit, window) = (
            i32::try_from(limit).unwrap_or(i32::MAX),
            duration_ms(window),
        );
        self.with(move |client| async move {
            let row = client
                .query_one(
                    "SELECT call, wait_ms FROM relay_admit_hubspot_call($1, $2, $3)",
                    &[&limit, &window, &(window + duration_ms(LOST_CALL))],
                )
                .await?;
            Ok(match row.get::<_, Option<i64>>(0) {
                Some(call) => Admission::Admitted { call },
                None => Admission::Wait(Duration::from_millis(
                    u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
                )),
            })
        })
        .await
    }

    async fn call_answered(&self, call: i64) -> Result<u32> {
        self.with(move |client| async move {
            // The count does not depend on this call's update: it is in the window either way.
            let row = client
                .query_one(
                    "WITH answered AS (
                         UPDATE hubspot_calls
                         SET answered_ms = (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                         WHERE id = $1)
                     SELECT COUNT(*) FROM hubspot_calls",
                    &[&call],
                )
                .await?;
            Ok(u32::try_from(row.get::<_, i64>(0)).unwrap_or(u32::MAX))
        })
        .await
    }

    async fn hold_calls(&self, pause: Duration) -> Result<()> {
        let pause = duration_ms(pause);
        self.with(move |client| async move {
            client
                .execute(
                    "INSERT INTO hubspot_pause (id, not_before_ms)
                     VALUES (1, (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $1)
                     ON CONFLICT (id) DO UPDATE
                     SET not_before_ms = GREATEST(hubspot_pause.not_before_ms, EXCLUDED.not_before_ms)",
                    &[&pause],
                )
                .await?;
                Ok(())
        })
        .await
    }
}
