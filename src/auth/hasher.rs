//! A small pool of low-priority threads for argon2.
//!
//! Password hashing is deliberately expensive (tens of milliseconds of CPU
//! and 19 MiB per hash). A login storm — a fleet of phones reconnecting, a
//! load test ramping up — would otherwise take every core away from the
//! riders who are already connected. Here hashing runs on at most
//! `auth.hash_threads` threads whose scheduling priority is lowered to
//! `auth.hash_nice`, behind a bounded queue: live WebSocket traffic keeps
//! its latency, logins wait their turn, and when the queue is full a login
//! gets 503 with `Retry-After` instead of an unbounded backlog.

use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug, thiserror::Error)]
pub enum HasherError {
    #[error("password hashing queue is full")]
    Busy,
    #[error("password hashing pool stopped")]
    Stopped,
}

pub struct Hasher {
    queue: mpsc::SyncSender<Job>,
}

impl Hasher {
    pub fn new(threads: usize, nice: i32, queue: usize) -> Hasher {
        let (tx, rx) = mpsc::sync_channel::<Job>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    lower_priority(nice);
                    loop {
                        // The lock is held only while waiting for the next job.
                        let job = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(event = "hasher_thread_failed", cause = %e, "could not start a hashing thread");
            }
        }
        Hasher { queue: tx }
    }

    /// Runs `f` on the pool and awaits its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HasherError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.queue.try_send(job).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => HasherError::Busy,
            mpsc::TrySendError::Disconnected(_) => HasherError::Stopped,
        })?;
        rx.await.map_err(|_| HasherError::Stopped)
    }
}

/// Lowers this thread's scheduling priority (Linux applies `setpriority`
/// with a thread id to that thread alone).
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
        tracing::warn!(event = "hasher_nice_failed", cause = %e, nice, "hashing thread keeps normal priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_answers_busy_and_jobs_still_run() {
        let hasher = Arc::new(Hasher::new(1, 10, 1));
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let h = hasher.clone();
        let first = tokio::spawn(async move {
            h.run(move || {
                started_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                1
            })
            .await
        });
        // The first job occupies the only thread…
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        // …a queued job fills the queue of one…
        let (ran_tx, ran_rx) = oneshot::channel::<()>();
        assert!(
            hasher
                .queue
                .try_send(Box::new(move || {
                    let _ = ran_tx.send(());
                }))
                .is_ok()
        );
        // …so the next one is refused at once.
        assert!(matches!(hasher.run(|| 3).await, Err(HasherError::Busy)));
        release_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 1);
        ran_rx.await.expect("the queued job ran after the first");
    }
}
