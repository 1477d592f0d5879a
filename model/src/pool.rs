//! Keeping the rayon pool awake through a forward pass.
//!
//! A forward makes one parallel call per norm, projection group, RoPE, cache write, attention
//! and activation of every layer (hundreds per token). Between two calls the pool's other
//! threads run out of work, and after a few microseconds of looking for more rayon puts them
//! to sleep; the next call then waits for a wake-up (a futex and, on a VM, an inter-processor
//! interrupt), once per call. Spinning them for the length of the forward instead keeps every
//! call's second half starting at once.

use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `work` on the current rayon pool while its other threads spin, taking every job
/// `work` spawns, instead of sleeping between its parallel calls. On a pool of one thread it
/// just runs `work`.
pub(crate) fn with_pool_awake<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    let threads = rayon::current_num_threads();
    if threads < 2 {
        return work();
    }
    let done = &AtomicBool::new(false);
    rayon::scope(|scope| {
        // Taken inside the scope: its body always runs on a worker of the pool, even when the
        // caller is not one.
        let caller = rayon::current_thread_index();
        for _ in 1..threads {
            scope.spawn(move |_| {
                // A spinner the working thread picks up itself (while it waits for a job of its
                // own) must return, or it would wait for the end of the work it is part of.
                if rayon::current_thread_index() == caller {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        // Set even if `work` panics: the scope waits for the spinners before it unwinds.
        let _stop = StopOnDrop(done);
        work()
    })
}

/// Sets its flag when dropped, on return or unwinding alike.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    #[test]
    fn parallel_work_inside_gives_its_result_on_any_pool() {
        for threads in [1, 2, 3] {
            let sum = pool(threads).install(|| {
                with_pool_awake(|| (0..100_000u64).into_par_iter().map(|i| i * i).sum::<u64>())
            });
            assert_eq!(sum, (0..100_000u64).map(|i| i * i).sum::<u64>());
        }
    }

    #[test]
    fn called_from_outside_the_pool_it_returns() {
        // The global pool, entered from the test's own thread.
        let n = with_pool_awake(|| (0..1000).into_par_iter().filter(|i| i % 7 == 0).count());
        assert_eq!(n, 143);
    }

    #[test]
    fn a_panic_in_the_work_reaches_the_caller_and_stops_the_spinners() {
        let pool = pool(2);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| with_pool_awake(|| panic!("work failed")))
        }));
        assert!(caught.is_err());
        // The pool still runs work afterwards: no thread was left spinning.
        assert_eq!(pool.install(|| with_pool_awake(|| 7)), 7);
    }
}
