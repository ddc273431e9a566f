//! How many generations run at once against one backend: additive increase, multiplicative
//! decrease, as TCP does with its congestion window.
//!
//! A backend's limit starts at `jobs: N` (a cap it never goes above) or, with `jobs: auto`,
//! at a modest number that grows by one with every request the service accepts ("slow start")
//! until the service first refuses one with 429 RESOURCE_EXHAUSTED. A refusal halves the limit
//! and notes how many of its requests the service held at that moment (the ceiling); accepted
//! requests then bring the limit back to the ceiling one by one, and probe above it slowly (one
//! more per `limit` accepted requests, half as often after each refused probe). A refused probe
//! above a ceiling that still holds goes back to the ceiling instead of halving: the service's
//! limit did not move, so the limit settles there rather than on a saw-tooth. Refusals of
//! requests admitted before the last decrease are old news and do not lower it again. A
//! backend that reports nothing (the offline preview) stays where it started.
//!
//! A slot counts a request from before it is sent until the service is done with it (a Veo
//! operation's download that follows does not hold one of the service's slots). Admission is
//! first come, first served (a semaphore whose permits follow the limit): the scheduler's order
//! of ready nodes is kept; the limit grows only while it is full (the last nodes of a build do
//! not inflate it).

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::project::Jobs;

/// The most requests in flight `jobs: auto` grows to.
pub const AUTO_MAX: usize = 32;

/// What a backend says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// The service took the request (a Veo operation was started, an image was answered).
    Accepted,
    /// 429 RESOURCE_EXHAUSTED: too many requests in flight (or too many too fast).
    Throttled,
    /// The service is done with the request it took (a Veo operation finished): its slot
    /// there is free, whatever ttv still does with the result.
    Done,
}

/// A report hook, as backends get it in their `GenContext`.
pub type LoadFn = Arc<dyn Fn(Load) + Send + Sync>;

pub struct Limiter {
    sem: Arc<Semaphore>,
    max: usize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    limit: usize,
    /// Growth above the ceiling, in fractions of one request.
    credit: f64,
    /// Permits to drop as they come back (the limit went down while they were out).
    debt: usize,
    /// Requests the service held when it last refused one.
    ceiling: Option<usize>,
    /// Raised by each decrease.
    epoch: u64,
    /// Slots taken.
    in_flight: usize,
    /// Slots whose request the service took (a running Veo operation).
    holding: usize,
    throttled: u64,
    accepted: u64,
    used: bool,
    /// Above the ceiling, one more request per `limit * probe_every` accepted ones.
    probe_every: f64,
}

/// What a backend's limit did during a build (the `concurrency` of `ttv build --json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// The limit now.
    pub limit: usize,
    /// How many requests were refused with 429.
    pub throttled: u64,
    /// Whether any generation took a slot.
    #[serde(skip)]
    pub used: bool,
}

impl Limiter {
    /// The limiter of a backend configured with `jobs`; `start_auto` is where `jobs: auto`
    /// starts.
    pub fn new(jobs: Jobs, start_auto: usize) -> Arc<Limiter> {
        let (start, max) = match jobs {
            Jobs::Fixed(n) => (n.max(1), n.max(1)),
            Jobs::Auto => (start_auto.clamp(1, AUTO_MAX), AUTO_MAX),
        };
        Arc::new(Limiter {
            sem: Arc::new(Semaphore::new(start)),
            max,
            state: Mutex::new(State {
                limit: start,
                credit: 0.0,
                debt: 0,
                ceiling: None,
                epoch: 0,
                in_flight: 0,
                holding: 0,
                throttled: 0,
                accepted: 0,
                used: false,
                probe_every: 1.0,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot (in the order of asking).
    pub async fn acquire(self: &Arc<Self>) -> Result<Permit, tokio::sync::AcquireError> {
        let permit = self.sem.clone().acquire_owned().await?;
        let mut st = self.state();
        st.in_flight += 1;
        st.used = true;
        Ok(Permit {
            slot: Arc::new(Slot {
                limiter: self.clone(),
                permit: Mutex::new(Some(permit)),
                epoch: st.epoch,
                accepted_before: st.accepted,
                last: Mutex::default(),
            }),
        })
    }

    pub fn stats(&self) -> Stats {
        let st = self.state();
        Stats {
            limit: st.limit,
            throttled: st.throttled,
            used: st.used,
        }
    }

    fn grow(&self, st: &mut State) {
        if st.limit >= self.max {
            return;
        }
        st.limit += 1;
        if st.debt > 0 {
            st.debt -= 1;
        } else {
            self.sem.add_permits(1);
        }
    }

    fn report(&self, epoch: u64, load: Load, held: Held) {
        let mut st = self.state();
        match held {
            Held::Now => st.holding += 1,
            Held::NoLonger => st.holding -= 1,
            Held::Same => {}
        }
        match load {
            Load::Done => {}
            Load::Accepted => {
                st.accepted += 1;
                // Only a limit in use is known to be too low (as TCP does not grow a window
                // the sender does not fill): the last nodes of a build must not inflate it.
                // In use means the service holds that many requests now (this one counted):
                // slots taken by requests waiting out a 429's back-off, or not sent yet, say
                // nothing of what the service can hold, and counting them let the limit creep
                // above the service's under load.
                if st.holding < st.limit {
                    return;
                }
                match st.ceiling {
                    Some(c) if st.limit >= c => {
                        st.credit += 1.0 / (st.limit as f64 * st.probe_every);
                        if st.credit >= 1.0 {
                            st.credit -= 1.0;
                            self.grow(&mut st);
                        }
                    }
                    _ => self.grow(&mut st),
                }
            }
            Load::Throttled => {
                st.throttled += 1;
                let held = st.holding.max(1);
                let probing = st.ceiling.filter(|&c| st.limit > c && held >= c);
                let new = match probing {
                    // A probe above a ceiling that still holds, whoever's request was
                    // refused: back to the ceiling.
                    Some(c) => {
                        st.probe_every *= 2.0;
                        c
                    }
                    None if epoch < st.epoch => return,
                    None => {
                        st.ceiling = Some(held);
                        (st.limit / 2).max(1)
                    }
                };
                let drop = st.limit - new;
                st.limit = new;
                let forgotten = self.sem.forget_permits(drop);
                st.debt += drop - forgotten;
                st.credit = 0.0;
                st.epoch += 1;
            }
        }
    }
}

/// How a report changes whether the service holds a slot's request.
enum Held {
    Now,
    NoLonger,
    Same,
}

/// A slot of a [`Limiter`]: given back when the service is done with its request, or when
/// dropped.
pub struct Permit {
    slot: Arc<Slot>,
}

struct Slot {
    limiter: Arc<Limiter>,
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    epoch: u64,
    accepted_before: u64,
    /// What the backend reported last for this slot, and whether the service holds its
    /// request (counted in `holding`).
    last: Mutex<(Option<Load>, bool)>,
}

impl Slot {
    fn report(&self, load: Load) {
        let change = {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let was = last.1;
            *last = (Some(load), load == Load::Accepted);
            match (was, last.1) {
                (false, true) => Held::Now,
                (true, false) => Held::NoLonger,
                _ => Held::Same,
            }
        };
        self.limiter.report(self.epoch, load, change);
        // The download of a finished operation does not hold one of the service's slots.
        if load == Load::Done {
            self.release();
        }
    }

    /// Gives the semaphore's permit back (or drops it, if the limit went down meanwhile).
    fn release(&self) {
        let Some(p) = self.permit.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let mut st = self.limiter.state();
        st.in_flight -= 1;
        if st.debt > 0 {
            st.debt -= 1;
            p.forget();
        }
    }
}

impl Permit {
    /// The hook a backend reports each request's fate to.
    pub fn load_fn(&self) -> LoadFn {
        let slot = self.slot.clone();
        Arc::new(move |load| slot.report(load))
    }

    /// Whether the service's last word on this slot's requests was a 429.
    pub fn refused(&self) -> bool {
        self.slot.last.lock().unwrap_or_else(|e| e.into_inner()).0 == Some(Load::Throttled)
    }

    /// Whether the service accepted requests of other generations since this slot was taken:
    /// a generation that ran out of retries on 429s may then wait for a slot and try again.
    pub fn others_got_through(&self) -> bool {
        self.slot.limiter.state().accepted > self.slot.accepted_before
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let held = std::mem::take(&mut self.slot.last.lock().unwrap_or_else(|e| e.into_inner()).1);
        if held {
            self.slot.limiter.state().holding -= 1;
        }
        self.slot.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service that takes at most `k` requests at once, and a build of `n` requests that each
    /// take one step: the limit found, and how many requests were refused.
    async fn settle(jobs: Jobs, k: usize, n: usize) -> (Stats, usize) {
        let limiter = Limiter::new(jobs, 2);
        let held = Arc::new(Mutex::new(0usize));
        let mut max_held = 0;
        let mut done = 0;
        let mut running: Vec<Permit> = Vec::new();
        while done < n {
            // Admit what the limiter lets through; each submits at once.
            while let Ok(Ok(p)) =
                tokio::time::timeout(std::time::Duration::from_millis(1), limiter.acquire()).await
            {
                let report = p.load_fn();
                let mut h = held.lock().unwrap();
                if *h < k {
                    *h += 1;
                    max_held = max_held.max(*h);
                    report(Load::Accepted);
                    running.push(p);
                } else {
                    report(Load::Throttled);
                    drop(p);
                }
            }
            // One request finishes.
            if !running.is_empty() {
                running.remove(0);
                *held.lock().unwrap() -= 1;
                done += 1;
            }
        }
        assert!(max_held <= k);
        (limiter.stats(), max_held)
    }

    #[tokio::test]
    async fn auto_settles_near_the_services_limit() {
        for k in [3, 6, 10] {
            let (stats, max_held) = settle(Jobs::Auto, k, 200).await;
            assert!(stats.limit.abs_diff(k) <= 1, "k {k}: settled at {stats:?}");
            assert_eq!(max_held, k, "k {k}: the service was used to its limit");
            assert!(stats.throttled < 20, "k {k}: {stats:?}");
        }
    }

    #[tokio::test]
    async fn a_fixed_cap_is_never_passed() {
        let (stats, max_held) = settle(Jobs::Fixed(4), 10, 100).await;
        assert_eq!((stats.limit, stats.throttled, max_held), (4, 0, 4));
        let (stats, _) = settle(Jobs::Fixed(8), 3, 100).await;
        assert!(stats.limit <= 4, "{stats:?}");
    }
}
