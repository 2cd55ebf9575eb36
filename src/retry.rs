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

/// After a failure worth retrying: `Ok` with when to try next (epoch ms), or
/// `Err` with the reason to give up once what failed, received at
/// `since_ms`, is older than `max_age` (`RELAY_MAX_RECORD_AGE_SECS`).
/// `attempts` counts the one that just failed.
pub fn next_attempt(
    now_ms: i64,
    since_ms: i64,
    attempts: i64,
    retry_after: Option<Duration>,
    max_age: Duration,
    reason: &str,
) -> Result<i64, String> {
    let age = Duration::from_millis(u64::try_from(now_ms - since_ms).unwrap_or(0));
    if age >= max_age {
        return Err(format!(
            "gave up after {}s (RELAY_MAX_RECORD_AGE_SECS): {reason}",
            age.as_secs()
        ));
    }
    let wait = backoff(attempts).max(retry_after.unwrap_or_default());
    Ok(now_ms + wait.as_millis() as i64)
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
    fn retries_wait_for_retry_after_and_stop_at_the_maximum_age() {
        let hour = Duration::from_secs(3600);
        let at = next_attempt(10_000, 0, 1, Some(Duration::from_secs(30)), hour, "503").unwrap();
        assert_eq!(at, 40_000, "Retry-After beats the first backoff");
        let at = next_attempt(10_000, 0, 1, None, hour, "503").unwrap();
        assert!((10_500..=11_000).contains(&at));
        let given_up = next_attempt(3_600_000, 0, 9, None, hour, "503").unwrap_err();
        assert!(given_up.contains("RELAY_MAX_RECORD_AGE_SECS") && given_up.ends_with("503"));
    }
}
