//! GCRA, the generic cell rate algorithm: a limit of `L` per minute is one
//! number, the time at which its bucket would be full again (the
//! "theoretical arrival time", TAT). Each unit moves it `60/L` seconds on;
//! a take is allowed while the TAT stays within a minute of now. The shared
//! store's script (`shared.rs`) does the same arithmetic in Lua.

/// The window every limit is counted over, in seconds.
pub const WINDOW_S: f64 = 60.0;

/// Slack for floating-point rounding.
const EPSILON: f64 = 1e-9;

/// A take that was allowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Taken {
    /// The new TAT.
    pub tat: f64,
    /// Units that could still be taken now.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_s: f64,
}

/// Takes `n` units of a limit of `limit` a minute at `now`, or says in how
/// many seconds they would fit (`None`: never, `n` is over the limit).
pub fn take(tat: f64, now: f64, limit: u64, n: u64) -> Result<Taken, Option<f64>> {
    let limit = limit.max(1);
    if n > limit {
        return Err(None);
    }
    let interval = WINDOW_S / limit as f64;
    let new_tat = tat.max(now) + n as f64 * interval;
    let ahead = new_tat - now;
    if ahead > WINDOW_S + EPSILON {
        return Err(Some(ahead - WINDOW_S));
    }
    Ok(Taken { tat: new_tat, remaining: remaining(ahead, interval), reset_s: ahead })
}

/// What is left at `now` without taking anything: (remaining, reset seconds).
pub fn peek(tat: f64, now: f64, limit: u64) -> (u64, f64) {
    let interval = WINDOW_S / limit.max(1) as f64;
    let ahead = (tat - now).max(0.0);
    (remaining(ahead, interval), ahead)
}

/// Corrects a take by `diff` units (the real use minus what was taken):
/// more moves the TAT on, less gives units back (never past a full bucket).
pub fn settle(tat: f64, now: f64, limit: u64, diff: i64) -> f64 {
    let interval = WINDOW_S / limit.max(1) as f64;
    (tat + diff as f64 * interval).max(now)
}

fn remaining(ahead: f64, interval: f64) -> u64 {
    ((WINDOW_S - ahead) / interval + EPSILON).floor().max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_minute_is_a_burst_then_one_unit_each_interval() {
        // 60 a minute: one a second, and a burst of 60.
        let mut tat = 0.0;
        for i in 0..60 {
            let taken = take(tat, 100.0, 60, 1).unwrap_or_else(|_| panic!("take {i} refused"));
            assert_eq!(taken.remaining, 59 - i);
            tat = taken.tat;
        }
        let retry = take(tat, 100.0, 60, 1).unwrap_err().unwrap();
        assert!((retry - 1.0).abs() < 1e-6, "{retry}");
        // A second later one more fits.
        assert!(take(tat, 101.0, 60, 1).is_ok());
        assert!(take(tat, 100.5, 60, 1).is_err());
    }

    #[test]
    fn tokens_take_many_units_and_settle_either_way() {
        let t = take(0.0, 0.0, 1000, 600).unwrap();
        assert_eq!((t.remaining, t.reset_s), (400, 36.0));
        let wait = take(t.tat, 0.0, 1000, 401).unwrap_err().unwrap();
        assert!((wait - 0.06).abs() < 1e-9, "{wait}");
        // The answer used 100 fewer: they come back.
        let tat = settle(t.tat, 0.0, 1000, -100);
        assert_eq!(peek(tat, 0.0, 1000).0, 500);
        // It used 900 more than reserved: the bucket is past empty for a while.
        let tat = settle(t.tat, 0.0, 1000, 900);
        assert!(take(tat, 0.0, 1000, 1).is_err());
        assert_eq!(peek(tat, 0.0, 1000).0, 0);
        // Giving back never fills past full.
        assert_eq!(settle(1.0, 50.0, 1000, -10_000), 50.0);
    }

    #[test]
    fn more_than_the_limit_never_fits() {
        assert_eq!(take(0.0, 0.0, 100, 101), Err(None));
    }
}
