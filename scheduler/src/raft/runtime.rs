//! openraft's async runtime: tokio, with the random numbers openraft draws
//! (election timeouts, tick phases) taken from a generator we can seed.
//!
//! openraft draws from `AsyncRuntime::thread_rng()`. Tokio's runtime
//! answers with the operating system's generator, so no two runs of the
//! simulation elect the same leader at the same instant. Here each thread
//! draws from its own stream, seeded from the operating system
//! unless [`seed_thread`] seeded it: the simulation runs every host on one
//! thread and seeds it with the run's seed, so a seed replays the same
//! elections. openraft's own `DeterministicRng` keeps its seed in a
//! task-local and panics when it is read outside one; a thread-local with a
//! fallback cannot panic on any path of a production replica.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::time::Duration;

use openraft::AsyncRuntime;
use openraft::OptionalSend;
use openraft_rt_tokio::TokioRuntime;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

thread_local! {
    /// This thread's stream; each draw seeds a generator from its next value.
    static STREAM: RefCell<Option<SmallRng>> = const { RefCell::new(None) };
}

/// Seeds this thread's stream: every later draw on this thread follows
/// from `seed` and the order of the draws.
pub fn seed_thread(seed: u64) {
    STREAM.with(|s| *s.borrow_mut() = Some(SmallRng::seed_from_u64(seed)));
}

/// The next value of this thread's stream, seeded from the OS on first use.
fn next_seed() -> u64 {
    STREAM.with(|s| {
        s.borrow_mut()
            .get_or_insert_with(|| SmallRng::seed_from_u64(os_seed()))
            .next_u64()
    })
}

fn os_seed() -> u64 {
    let mut bytes = [0u8; 8];
    // No entropy source at all is not a reason to stop a replica: the
    // hasher's per-process keys still differ between replicas.
    if getrandom::getrandom(&mut bytes).is_err() {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id().into());
        return h.finish();
    }
    u64::from_le_bytes(bytes)
}

/// Tokio, except for `thread_rng` (see the module docs).
#[derive(Debug)]
pub struct Runtime {
    inner: TokioRuntime,
}

impl AsyncRuntime for Runtime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;
    type Mpsc = <TokioRuntime as AsyncRuntime>::Mpsc;
    type Watch = <TokioRuntime as AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SmallRng::seed_from_u64(next_seed())
    }

    fn new(threads: usize) -> Self {
        Self {
            inner: TokioRuntime::new(threads),
        }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.inner.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        TokioRuntime::spawn_blocking(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    fn draws() -> Vec<u64> {
        (0..4)
            .map(|_| Runtime::thread_rng().random_range(150..300))
            .collect()
    }

    #[test]
    fn a_seeded_thread_draws_the_same_numbers_again() {
        seed_thread(7);
        let first = draws();
        seed_thread(7);
        assert_eq!(draws(), first);
        seed_thread(8);
        assert_ne!(draws(), first);
    }
}
