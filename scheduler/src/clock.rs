//! The clock a replica stamps commands with: the system clock, slewed.
//!
//! The core takes the leader's stamp as the log's time (never backwards,
//! at most `MAX_STEP_MS` per command). A system clock that steps (a
//! mistaken `date -s`, a bad time server) would still reach the log within
//! a few commands. So the stamp follows the system clock only as fast as
//! real time allows: between half and twice the monotonic clock's pace,
//! the way ntpd slews rather than steps. While the system clock keeps
//! pace, the stamp is the system clock; after a step, it moves toward it
//! and meets it after about as long as the step was. It never goes back.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Slowest and fastest pace, relative to real time, while catching up.
const SLOWEST: (u64, u64) = (1, 2);
const FASTEST: (u64, u64) = (2, 1);

/// The stamp after `elapsed_us` of monotonic time, given the last stamp and
/// what the system clock says now (all in microseconds).
fn slew(last_us: u64, elapsed_us: u64, system_us: u64) -> u64 {
    let lo = last_us + elapsed_us * SLOWEST.0 / SLOWEST.1;
    let hi = last_us + elapsed_us * FASTEST.0 / FASTEST.1;
    system_us.clamp(lo, hi)
}

struct Slewed {
    last_us: u64,
    at: Instant,
}

/// Where the system time comes from, in microseconds since the Unix epoch.
pub type SystemSource = Arc<dyn Fn() -> u64 + Send + Sync>;

/// One replica's clock: its system time source, slewed. Each replica owns
/// one (not a process-wide static), so replicas sharing a process (a
/// local cluster, the simulation) keep their own pace and skew.
pub struct Clock {
    system: SystemSource,
    slewed: Mutex<Option<Slewed>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::from_source(Arc::new(system_us))
    }

    /// A clock reading another source (the simulation's, with its skews
    /// and jumps); the monotonic pace is tokio's clock.
    pub fn from_source(system: SystemSource) -> Self {
        Self {
            system,
            slewed: Mutex::new(None),
        }
    }

    /// Milliseconds since the Unix epoch, slewed (see the module docs):
    /// the `now` a replica stamps into commands.
    pub fn now_ms(&self) -> u64 {
        let system = (self.system)();
        let now = Instant::now();
        let mut clock = self.slewed.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = match clock.as_ref() {
            None => system,
            Some(c) => slew(
                c.last_us,
                now.duration_since(c.at).as_micros() as u64,
                system,
            ),
        };
        *clock = Some(Slewed {
            last_us: stamp,
            at: now,
        });
        stamp / 1000
    }
}

/// The system clock in milliseconds, unslewed: for displays (metrics'
/// ages), never for commands.
pub fn system_ms() -> u64 {
    system_us() / 1000
}

fn system_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn a_system_clock_that_keeps_pace_is_followed_exactly() {
        let mut stamp = 1_000 * S;
        for step in 1..100 {
            let next = slew(stamp, 10_000, 1_000 * S + step * 10_000);
            assert_eq!(next, 1_000 * S + step * 10_000);
            stamp = next;
        }
    }

    /// A day's step forward reaches the stamps at twice real time: after
    /// one second of real time they are two seconds later, not a day.
    #[test]
    fn a_step_forward_is_met_at_twice_real_time() {
        let day = 86_400 * S;
        let mut stamp = 1_000 * S;
        let mut system = stamp;
        for _ in 0..100 {
            system += 10_000;
            stamp = slew(stamp, 10_000, system + day);
        }
        assert_eq!(stamp, 1_000 * S + 2 * S);
        // It meets the system clock after about a day and then follows it.
        let mut elapsed = 0;
        while stamp < system + day {
            system += S;
            elapsed += S;
            stamp = slew(stamp, S, system + day);
        }
        assert!((day - 2 * S..=day + 2 * S).contains(&elapsed), "{elapsed}");
        system += S;
        assert_eq!(slew(stamp, S, system + day), system + day);
    }

    /// A step back never takes the stamps back: they go on at half pace
    /// until the system clock has caught up.
    #[test]
    fn a_step_back_slows_the_stamps_but_never_reverses_them() {
        let stamp = 10_000 * S;
        let next = slew(stamp, S, stamp - 3_600 * S);
        assert_eq!(next, stamp + S / 2);
    }
}
