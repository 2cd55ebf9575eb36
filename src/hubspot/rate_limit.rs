//! One limiter for every HubSpot call of this process: at most `limit` calls
//! in any sliding 10-second window, and slower still when HubSpot's own
//! `X-HubSpot-RateLimit-Remaining` (or a 429's `Retry-After`) says so.

use std::{collections::VecDeque, sync::Mutex, time::Duration};

use tokio::time::Instant;

pub const WINDOW: Duration = Duration::from_secs(10);

pub struct RateLimiter {
    limit: usize,
    /// Callers queue here, so calls are admitted in arrival order.
    turn: tokio::sync::Mutex<()>,
    state: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    /// Start times of the calls of the last [`WINDOW`].
    sent: VecDeque<Instant>,
    /// No call before this (HubSpot asked to slow down).
    not_before: Option<Instant>,
}

impl RateLimiter {
    pub fn new(limit_per_10s: u32) -> Self {
        Self {
            limit: limit_per_10s.max(1) as usize,
            turn: tokio::sync::Mutex::new(()),
            state: Mutex::new(Window::default()),
        }
    }

    /// Waits until one more call fits, and counts it.
    pub async fn acquire(&self) {
        let _turn = self.turn.lock().await;
        loop {
            let wait_until = {
                let mut window = self.window();
                let now = Instant::now();
                while window
                    .sent
                    .front()
                    .is_some_and(|sent| now.duration_since(*sent) >= WINDOW)
                {
                    window.sent.pop_front();
                }
                let held = window.not_before.filter(|t| *t > now);
                let full = (window.sent.len() >= self.limit).then(|| window.sent[0] + WINDOW);
                match held.max(full) {
                    Some(until) => until,
                    None => {
                        window.sent.push_back(now);
                        return;
                    }
                }
            };
            tokio::time::sleep_until(wait_until).await;
        }
    }

    /// HubSpot said how many calls its window has left: spread those evenly
    /// over its interval once they are fewer than ours.
    pub fn observe_remaining(&self, remaining: u32, interval: Duration) {
        let mut window = self.window();
        let ours = self.limit.saturating_sub(window.sent.len());
        if (remaining as usize) < ours {
            let spacing = interval / (remaining + 1);
            window.hold(Instant::now() + spacing);
        }
    }

    /// HubSpot answered 429 with `Retry-After`: nobody calls before then.
    pub fn hold_for(&self, pause: Duration) {
        self.window().hold(Instant::now() + pause);
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Window {
    fn hold(&mut self, until: Instant) {
        self.not_before = self.not_before.max(Some(until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn no_window_ever_holds_more_than_the_limit() {
        let limiter = RateLimiter::new(5);
        let start = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..12 {
            limiter.acquire().await;
            starts.push(start.elapsed());
        }
        assert!(starts[..5].iter().all(|t| *t < Duration::from_millis(1)));
        assert!(starts[5] >= WINDOW && starts[10] >= 2 * WINDOW);
        for (i, t) in starts.iter().enumerate() {
            let in_window = starts[i..].iter().filter(|u| **u < *t + WINDOW).count();
            assert!(in_window <= 5, "{in_window} calls within 10 s of call {i}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn hubspot_running_low_spaces_the_calls_out() {
        let limiter = RateLimiter::new(100);
        limiter.acquire().await;
        limiter.observe_remaining(1, WINDOW);
        let start = Instant::now();
        limiter.acquire().await;
        assert!(start.elapsed() >= WINDOW / 2);
        limiter.hold_for(Duration::from_secs(3));
        let start = Instant::now();
        limiter.acquire().await;
        assert!(start.elapsed() >= Duration::from_secs(3));
    }
}
