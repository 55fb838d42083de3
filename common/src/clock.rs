//! The wall clock: reading it, and printing it for people.
//!
//! Every timestamp the tools record or compare (events, history, sync runs,
//! "seconds since the last success") comes from here, so there is one
//! reading of `now` and tests can fix it: code that must be testable takes a
//! [`Clock`] ([`SystemClock`] on a node, [`FixedClock`] in tests); the free
//! functions [`now_ms`]/[`now_secs`] read the system clock for the rest.
//! Status and history show UTC timestamps, printed the same way by every
//! tool without a time crate ([`fmt_utc`]).

#[cfg(any(test, feature = "testing"))]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where "now" comes from.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Seconds since the Unix epoch.
    fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }
}

/// The system's wall clock (0 if it is set before 1970).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that says what the test sets, for unit tests of anything that
/// computes ages or stamps times (test builds and the `testing` feature only).
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
pub struct FixedClock(AtomicU64);

#[cfg(any(test, feature = "testing"))]
impl FixedClock {
    pub fn at_ms(unix_ms: u64) -> Self {
        FixedClock(AtomicU64::new(unix_ms))
    }
    pub fn set_ms(&self, unix_ms: u64) {
        self.0.store(unix_ms, Ordering::SeqCst);
    }
    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

#[cfg(any(test, feature = "testing"))]
impl Clock for FixedClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Milliseconds since the Unix epoch, by the system clock.
pub fn now_ms() -> u64 {
    SystemClock.now_ms()
}

/// Seconds since the Unix epoch, by the system clock.
pub fn now_secs() -> u64 {
    SystemClock.now_secs()
}

/// `YYYY-MM-DD HH:MM:SS.mmm` UTC for Unix milliseconds (no time crate needed).
pub fn fmt_utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(fmt_utc(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(fmt_utc(1_795_635_642_123), "2026-11-25 19:40:42.123Z");
        assert_eq!(fmt_utc(951_782_400_000), "2000-02-29 00:00:00.000Z");
    }

    #[test]
    fn fixed_clock_says_what_it_is_told_and_system_clock_moves() {
        let c = FixedClock::at_ms(1_795_635_642_123);
        assert_eq!(c.now_secs(), 1_795_635_642);
        c.advance_ms(1_000);
        assert_eq!(c.now_ms(), 1_795_635_643_123);
        c.set_ms(5);
        assert_eq!(c.now_secs(), 0);
        // After 2026-01-01 and consistent between its two readings.
        let ms = now_ms();
        assert!(ms > 1_767_225_600_000, "{ms}");
        assert!(now_secs() >= ms / 1000);
    }
}
