//! One limiter for every HubSpot call of this process: at most `limit` calls
//! in any sliding 10-second window, and slower still when HubSpot's own
//! `X-HubSpot-RateLimit-Remaining` (or a 429's `Retry-After`) says so.
//!
//! HubSpot counts a call where it arrives, somewhere between our sending it
//! and its answer reaching us. So a call holds its place in the window from
//! the moment it is admitted until [`WINDOW`] (plus a small margin) after its
//! answer came: whatever the latency, no 10 seconds of arrivals at HubSpot
//! ever hold more than `limit` calls.
//!
//! Replicas sharing a store also keep that window in the store, so the limit
//! holds for the deployment as a whole, and HubSpot's requests to slow down
//! reach every replica.

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    sync::Arc,
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use crate::store::{Admission, CallWindow};

/// How long to wait before asking again when the shared window cannot be read.
const STORE_RETRY: Duration = Duration::from_secs(1);

pub const WINDOW: Duration = Duration::from_secs(10);
/// For clock granularity between our timer and HubSpot's.
const MARGIN: Duration = Duration::from_millis(100);

pub struct RateLimiter {
    limit: usize,
    /// Where the deployment's window is kept.
    store: Arc<dyn CallWindow>,
    /// Callers queue here, so calls are admitted in arrival order.
    turn: tokio::sync::Mutex<()>,
    state: RefCell<Window>,
    /// A call in flight answered: its place starts to age.
    answered: Notify,
    next_id: Cell<u64>,
}

#[derive(Default)]
struct Window {
    /// Admitted calls: their id, and when their answer came (None: in flight).
    calls: VecDeque<(u64, Option<Instant>)>,
    /// No call before this (HubSpot asked to slow down).
    not_before: Option<Instant>,
}

/// A call's place in the window; [`Permit::answered`], or dropping it, marks
/// the call answered.
pub struct Permit<'a> {
    limiter: &'a RateLimiter,
    id: u64,
    /// Its place in the deployment's window, where the store keeps one,
    /// until its answer is recorded there.
    shared: Option<i64>,
}

impl Permit<'_> {
    /// The call was answered (or failed): its place starts to age. Returns
    /// the calls the window (the deployment's, where the store keeps it)
    /// holds now — never fewer than HubSpot counted when this call arrived,
    /// unless someone else calls with our quota.
    pub async fn answered(mut self) -> usize {
        let here = self.limiter.mark_answered(self.id);
        let Some(call) = self.shared.take() else {
            return here;
        };
        match self.limiter.store.call_answered(call).await {
            Ok(held) => held as usize,
            Err(err) => {
                tracing::warn!(error = %err, "cannot record a HubSpot answer in the shared window");
                here
            }
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(call) = self.shared.take() {
            let store = Arc::clone(&self.limiter.store);
            actix_web::rt::spawn(async move {
                if let Err(err) = store.call_answered(call).await {
                    tracing::warn!(error = %err, "cannot record a HubSpot answer in the shared window");
                }
            });
        }
        self.limiter.mark_answered(self.id);
    }
}

impl RateLimiter {
    pub fn new(limit_per_10s: u32, store: Arc<dyn CallWindow>) -> Self {
        Self {
            limit: limit_per_10s.max(1) as usize,
            store,
            turn: tokio::sync::Mutex::new(()),
            state: RefCell::new(Window::default()),
            answered: Notify::new(),
            next_id: Cell::new(0),
        }
    }

    /// Waits until one more call fits, and counts it until the returned
    /// permit is dropped (when the answer came) plus the window.
    pub async fn acquire(&self) -> Permit<'_> {
        let asked = Instant::now();
        let _turn = self.turn.lock().await;
        let queued = asked.elapsed();
        let mut permit = self.acquire_here().await;
        let here = asked.elapsed();
        permit.shared = self.acquire_shared().await;
        tracing::debug!(
            queued_ms = queued.as_millis() as u64,
            window_ms = (here - queued).as_millis() as u64,
            shared_ms = (asked.elapsed() - here).as_millis() as u64,
            "hubspot call admitted"
        );
        permit
    }

    /// A place in the deployment's window (None: the store leaves it to us).
    async fn acquire_shared(&self) -> Option<i64> {
        let limit = u32::try_from(self.limit).unwrap_or(u32::MAX);
        loop {
            let wait = match self.store.admit_call(limit, WINDOW + MARGIN).await {
                Ok(Admission::Admitted { call }) => return Some(call),
                Ok(Admission::LeftToProcess) => return None,
                Ok(Admission::Wait(wait)) => wait,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the shared HubSpot window");
                    STORE_RETRY
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    async fn acquire_here(&self) -> Permit<'_> {
        loop {
            let answered = self.answered.notified();
            let wait_until = {
                let mut window = self.state.borrow_mut();
                let now = Instant::now();
                window
                    .calls
                    .retain(|(_, answered)| answered.is_none_or(|at| at + WINDOW + MARGIN > now));
                let held = window.not_before.filter(|t| *t > now);
                let full = window.calls.len() >= self.limit;
                // The earliest a place frees up, unless every call is still in flight.
                let frees_at = window
                    .calls
                    .iter()
                    .filter_map(|(_, answered)| answered.map(|at| at + WINDOW + MARGIN))
                    .min();
                match (held, full) {
                    (None, false) => {
                        let id = self.next_id.get();
                        self.next_id.set(id + 1);
                        window.calls.push_back((id, None));
                        return Permit {
                            limiter: self,
                            id,
                            shared: None,
                        };
                    }
                    (Some(until), false) => Some(until),
                    (held, true) => frees_at.max(held),
                }
            };
            match wait_until {
                Some(until) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        () = answered => {}
                    }
                }
                None => answered.await,
            }
        }
    }

    /// HubSpot said how many calls its window has left, answering a call
    /// after which ours holds `in_window`: spread those evenly over its
    /// interval once they are fewer than ours (someone else calls with our
    /// quota, or its limit is lower than ours).
    pub async fn observe_remaining(&self, in_window: usize, remaining: u32, interval: Duration) {
        let ours = self.limit.saturating_sub(in_window);
        if (remaining as usize) < ours {
            self.hold_for(interval / (remaining + 1)).await;
        }
    }

    /// Marks the call answered, the first time only; returns the calls the
    /// window holds.
    fn mark_answered(&self, id: u64) -> usize {
        let now = Instant::now();
        let mut window = self.state.borrow_mut();
        if let Some(call) = window
            .calls
            .iter_mut()
            .find(|(call, answered)| *call == id && answered.is_none())
        {
            call.1 = Some(now);
        }
        let held = window
            .calls
            .iter()
            .filter(|(_, answered)| answered.is_none_or(|at| at + WINDOW + MARGIN > now))
            .count();
        drop(window);
        self.answered.notify_waiters();
        held
    }

    /// HubSpot answered 429: nobody calls before `pause` has passed — in this
    /// process at once, in the other replicas from their next call.
    pub async fn hold_for(&self, pause: Duration) {
        tracing::debug!(pause_ms = pause.as_millis() as u64, "hubspot calls held");
        self.state.borrow_mut().hold(Instant::now() + pause);
        if let Err(err) = self.store.hold_calls(pause).await {
            tracing::warn!(error = %err, "cannot share HubSpot's pause with the other replicas");
        }
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

    /// A limiter of one process (SQLite leaves the window to it), and the
    /// folder of its store.
    fn limiter(limit: u32) -> (RateLimiter, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.db");
        let store = crate::store::SqliteStore::open(path.to_str().unwrap()).unwrap();
        (RateLimiter::new(limit, Arc::new(store)), dir)
    }

    /// Calls that take `latency` each; returns when each was admitted and answered.
    async fn calls(
        limiter: &RateLimiter,
        n: usize,
        latency: Duration,
    ) -> Vec<(Duration, Duration)> {
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..n {
            let permit = limiter.acquire().await;
            let admitted = start.elapsed();
            tokio::time::sleep(latency).await;
            drop(permit);
            times.push((admitted, start.elapsed()));
        }
        times
    }

    #[tokio::test(start_paused = true)]
    async fn no_window_ever_holds_more_than_the_limit() {
        let (limiter, _dir) = limiter(5);
        let times = calls(&limiter, 12, Duration::ZERO).await;
        assert!(
            times[..5]
                .iter()
                .all(|(t, _)| *t < Duration::from_millis(1))
        );
        assert!(times[5].0 >= WINDOW && times[10].0 >= 2 * WINDOW);
        for (i, (t, _)) in times.iter().enumerate() {
            let in_window = times[i..].iter().filter(|(u, _)| *u < *t + WINDOW).count();
            assert!(in_window <= 5, "{in_window} calls within 10 s of call {i}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_place_frees_only_a_window_after_the_answer_so_latency_cannot_squeeze_calls() {
        // Each call takes 2 s: HubSpot may see the first arrive as late as its
        // answer, so the next call past the limit waits for that answer + 10 s.
        let (limiter, _dir) = limiter(3);
        let latency = Duration::from_secs(2);
        let times = calls(&limiter, 4, latency).await;
        let first_answered = times[0].1;
        assert!(
            times[3].0 >= first_answered + WINDOW,
            "fourth call admitted at {:?}, first answered at {first_answered:?}",
            times[3].0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn calls_in_flight_keep_their_place_until_they_answer() {
        let (limiter, _dir) = limiter(1);
        let hanging = limiter.acquire().await;
        let waiter = async {
            let start = Instant::now();
            drop(limiter.acquire().await);
            start.elapsed()
        };
        let answer = async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(hanging);
        };
        let (waited, ()) = tokio::join!(waiter, answer);
        assert!(waited >= Duration::from_secs(30) + WINDOW, "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn hubspot_running_low_spaces_the_calls_out() {
        let (limiter, _dir) = limiter(100);
        let in_window = limiter.acquire().await.answered().await;
        limiter.observe_remaining(in_window, 1, WINDOW).await;
        let start = Instant::now();
        drop(limiter.acquire().await);
        assert!(start.elapsed() >= WINDOW / 2);
        limiter.hold_for(Duration::from_secs(3)).await;
        let start = Instant::now();
        drop(limiter.acquire().await);
        assert!(start.elapsed() >= Duration::from_secs(3));
    }
}
