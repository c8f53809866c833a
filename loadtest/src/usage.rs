//! What the load client itself costs: CPU time and memory of this process.
//!
//! A load test whose client is saturated measures the client, not the
//! server. Locust warns when its CPU passes 90 %; we do the same per second
//! and also report the client's CPU seconds per 1000 round trips, the
//! figure that compares load tools (README, "Performance").

use std::time::Duration;

use nix::sys::resource::{UsageWho, getrusage};

/// A second in which the client used this share of its worker threads'
/// capacity is counted as saturated.
pub(crate) const SATURATED_SHARE: f64 = 0.9;

/// CPU time (user + system) and peak resident memory of this process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ProcessUsage {
    pub(crate) cpu: Duration,
    pub(crate) peak_rss_bytes: u64,
}

impl ProcessUsage {
    /// Reads the process's counters; zero when the kernel refuses (it
    /// does not for `RUSAGE_SELF`, but a report must not fail over it).
    pub(crate) fn now() -> ProcessUsage {
        let Ok(u) = getrusage(UsageWho::RUSAGE_SELF) else {
            return ProcessUsage::default();
        };
        let tv = |t: nix::sys::time::TimeVal| {
            Duration::from_secs(t.tv_sec().max(0) as u64)
                + Duration::from_micros(t.tv_usec().max(0) as u64)
        };
        ProcessUsage {
            cpu: tv(u.user_time()) + tv(u.system_time()),
            // Linux reports ru_maxrss in KiB.
            peak_rss_bytes: u.max_rss().max(0) as u64 * 1024,
        }
    }
}

/// Worker threads of the current Tokio runtime (1 for a current-thread one).
pub(crate) fn runtime_threads() -> usize {
    tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_workers())
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_monotonic_and_grows_with_work() {
        // Work measured by the clock under test, not by a wall clock: on a
        // busy machine this thread gets less CPU per wall-clock second, but
        // the process's CPU time still only moves forward, and moves when
        // this thread works.
        let before = ProcessUsage::now();
        let mut last = before;
        let mut x = 0u64;
        for _ in 0..100_000 {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let now = ProcessUsage::now();
            assert!(now.cpu >= last.cpu, "{last:?} → {now:?}");
            last = now;
            if last.cpu > before.cpu {
                break;
            }
        }
        assert!(last.cpu > before.cpu, "{before:?} → {last:?}");
        assert!(last.peak_rss_bytes > 1024 * 1024, "{last:?}");
    }
}
