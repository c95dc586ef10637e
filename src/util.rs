//! Small leaf utilities every layer uses: the wall clock in milliseconds and a log throttle. Depends on no other
//! module of the crate.

use std::time::Duration;

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Lets a repeated warning through at most once per interval, from any thread, without a lock: a fault that
/// recurs on every request is said once in a while, with a count, instead of flooding the log.
#[derive(Debug, Default)]
pub struct LogThrottle {
    last_ms: std::sync::atomic::AtomicI64,
}

impl LogThrottle {
    pub const fn new() -> LogThrottle {
        LogThrottle {
            last_ms: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Whether a warning may be logged now (at most one caller per interval gets `true`).
    pub fn ready(&self, every: Duration) -> bool {
        use std::sync::atomic::Ordering;
        let now = unix_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= every.as_millis() as i64
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_throttle_lets_one_warning_through_per_interval() {
        let throttle = LogThrottle::new();
        assert!(throttle.ready(Duration::from_secs(60)));
        assert!(!throttle.ready(Duration::from_secs(60)));
        assert!(throttle.ready(Duration::ZERO));
    }
}
