//! Retry timing, as the Collector's exporters retry: exponential backoff with jitter, or the
//! delay the server asked for.

use std::time::{Duration, SystemTime};

/// `wait × (1 ± factor)`, uniformly (`Duration::mul_f64` panics on overflow: this saturates).
pub fn jitter(wait: Duration, factor: f64) -> Duration {
    let r: f64 = rand::random::<f64>() * 2.0 - 1.0;
    Duration::try_from_secs_f64(wait.as_secs_f64() * (1.0 + factor * r).max(0.0))
        .unwrap_or(Duration::MAX)
}

/// The next retry interval: `interval × multiplier`, at most `max`, never a panic.
pub fn backoff(interval: Duration, multiplier: f64, max: Duration) -> Duration {
    Duration::try_from_secs_f64(interval.as_secs_f64() * multiplier)
        .unwrap_or(max)
        .min(max)
}

/// `Retry-After`: delay-seconds or an HTTP date.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_saturates_instead_of_panicking() {
        let max = Duration::from_secs(30);
        assert_eq!(
            backoff(Duration::from_secs(5), 1.5, max),
            Duration::from_millis(7500)
        );
        assert_eq!(backoff(Duration::from_secs(29), 1e20, max), max);
        assert_eq!(backoff(Duration::from_secs(29), f64::INFINITY, max), max);
        assert_eq!(backoff(Duration::MAX, 2.0, max), max);
        assert!(jitter(Duration::MAX, 0.5) > Duration::ZERO);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(retry_after(&later, now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after("soon", now), None);
    }
}
