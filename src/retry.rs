//! How long to wait before trying again: shared by everything that retries
//! (forwarding to HubSpot, fetching from a platform's API).

use std::time::Duration;

pub const RETRY_FIRST: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(900);

/// Exponential in the attempts made so far (the first failure waits about
/// [`RETRY_FIRST`]), with jitter so what failed together spreads out.
pub fn backoff(attempts: i64) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(16);
    let full = RETRY_FIRST.saturating_mul(1 << exponent).min(RETRY_MAX);
    full.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// The reason to stop retrying what arrived at `since_ms` and failed with
/// `reason`, once it is older than `max_age` (`RELAY_MAX_RECORD_AGE_SECS`).
pub fn give_up(now_ms: i64, since_ms: i64, max_age: Duration, reason: &str) -> Option<String> {
    let age = Duration::from_millis(u64::try_from(now_ms - since_ms).unwrap_or(0));
    (age >= max_age).then(|| {
        format!(
            "gave up after {}s (RELAY_MAX_RECORD_AGE_SECS): {reason}",
            age.as_secs()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for attempts in 1..30 {
            let wait = backoff(attempts);
            let full = RETRY_FIRST
                .saturating_mul(1 << (attempts - 1).min(16))
                .min(RETRY_MAX);
            assert!(
                wait >= full / 2 && wait <= full,
                "attempt {attempts}: {wait:?}"
            );
        }
    }

    #[test]
    fn retries_stop_at_the_maximum_age() {
        let hour = Duration::from_secs(3600);
        assert_eq!(give_up(10_000, 0, hour, "503"), None);
        let given_up = give_up(3_600_000, 0, hour, "503").unwrap();
        assert!(given_up.contains("RELAY_MAX_RECORD_AGE_SECS") && given_up.ends_with("503"));
    }
}
