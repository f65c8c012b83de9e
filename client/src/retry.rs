//! Bounded retries: every call gives up after a deadline and a number of attempts.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Total time one call may take, retries included.
    pub deadline: Duration,
    /// Attempts per call, whatever the deadline.
    pub max_attempts: u32,
    /// Timeout of one attempt.
    pub attempt_timeout: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            deadline: Duration::from_secs(60),
            max_attempts: 1000,
            attempt_timeout: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt` (1-based), doubling up to `max_backoff`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff(1), Duration::from_millis(20));
        assert_eq!(policy.backoff(2), Duration::from_millis(40));
        assert_eq!(policy.backoff(30), Duration::from_millis(500));
    }
}
