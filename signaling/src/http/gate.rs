//! Bounds the CPU and memory that password verification may take.
//!
//! One argon2id verification holds 19 MiB and a blocking-pool thread for its whole
//! run. Unbounded, a storm of failed logins runs hundreds at once (tokio's blocking
//! pool grows to 512 threads) and the allocator keeps the arenas afterwards: gigabytes
//! resident. [`HashGate`] lets at most `running` verifications run at once (sized to
//! the cores: more would not finish sooner) and at most `queued` more wait for a turn;
//! a login beyond that is shed at once with `429` and `Retry-After`. Memory for
//! hashing is therefore bounded by `running` x 19 MiB, whatever the load.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a shed login is told to wait, in seconds: a few verifications' time.
pub const SHED_RETRY_AFTER_S: i64 = 2;

/// Admission to, and the permits of, password verification.
#[derive(Debug)]
pub struct HashGate {
    /// Verifications running or waiting: `running + queued` places.
    places: Arc<Semaphore>,
    /// Verifications running: `running` permits.
    running: Arc<Semaphore>,
    limits: (usize, usize),
}

/// A place in the gate, held from admission until the verification has finished.
#[derive(Debug)]
#[must_use = "a place is given back when dropped"]
pub struct Admission {
    place: OwnedSemaphorePermit,
    running: Arc<Semaphore>,
}

impl HashGate {
    /// At most `running` verifications at once (at least 1) and `queued` waiting.
    pub fn new(running: usize, queued: usize) -> Self {
        let running = running.max(1);
        HashGate {
            places: Arc::new(Semaphore::new(running + queued)),
            running: Arc::new(Semaphore::new(running)),
            limits: (running, queued),
        }
    }

    /// One running verification per core, four waiting per core.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores, 4 * cores)
    }

    /// `(running, queued)`: the bounds this gate enforces.
    pub fn limits(&self) -> (usize, usize) {
        self.limits
    }

    /// A place among the running and waiting verifications, or `None` when every
    /// place is taken (shed the request).
    pub fn try_admit(&self) -> Option<Admission> {
        let place = self.places.clone().try_acquire_owned().ok()?;
        Some(Admission {
            place,
            running: self.running.clone(),
        })
    }

    /// Takes every running permit, as that many verifications in flight would, until
    /// the returned guard is dropped. For tests of the shedding, which must not depend
    /// on timing.
    pub async fn occupy_running(&self) -> Occupied {
        let places = self
            .places
            .clone()
            .acquire_many_owned(self.limits.0 as u32)
            .await
            .ok();
        let running = self
            .running
            .clone()
            .acquire_many_owned(self.limits.0 as u32)
            .await
            .ok();
        Occupied {
            _places: places,
            _running: running,
        }
    }
}

/// Running permits taken by [`HashGate::occupy_running`]; given back when dropped.
#[derive(Debug)]
#[must_use = "the permits are given back when dropped"]
pub struct Occupied {
    _places: Option<OwnedSemaphorePermit>,
    _running: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// Waits for a running permit, then runs `f` on the blocking pool. The permit and
    /// the place move into the blocking task, so a client that disconnects mid-way
    /// does not free them before the verification really ends. `None` if the task
    /// panicked.
    pub async fn run<T: Send + 'static>(self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let permit = self.running.clone().acquire_owned().await.ok()?;
        let place = self.place;
        tokio::task::spawn_blocking(move || {
            let out = f();
            drop(permit);
            drop(place);
            out
        })
        .await
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn places_beyond_running_plus_queued_are_refused() {
        let gate = HashGate::new(2, 3);
        let held: Vec<Admission> = (0..5).map(|_| gate.try_admit().unwrap()).collect();
        assert!(gate.try_admit().is_none(), "a sixth place was given");
        drop(held);
        assert!(gate.try_admit().is_some());
    }

    #[tokio::test]
    async fn at_most_running_verifications_run_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let gate = Arc::new(HashGate::new(2, 10));
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let a = gate.try_admit().unwrap();
            let (now, peak) = (now.clone(), peak.clone());
            tasks.push(tokio::spawn(a.run(move || {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(5));
                now.fetch_sub(1, Ordering::SeqCst);
            })));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 2);
    }

    #[tokio::test]
    async fn an_abandoned_verification_keeps_its_permit_until_it_ends() {
        let gate = HashGate::new(1, 0);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let a = gate.try_admit().unwrap();
        let fut = tokio::spawn(a.run(move || rx.recv().ok()));
        tokio::task::yield_now().await;
        // The caller goes away (a client that disconnected); the hash still runs.
        fut.abort();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(gate.try_admit().is_none(), "the permit was freed too early");
        tx.send(()).unwrap();
        for _ in 0..100 {
            if gate.try_admit().is_some() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the place never came back");
    }
}
