//! The thread pool, and parallelism switched off in forked children.
//!
//! PyTorch's DataLoader forks worker processes. A forked child inherits the parent's memory but
//! not its threads, so a rayon pool created before the fork would wait forever for workers that
//! do not exist. A `pthread_atfork` child handler marks the process as forked; from then on
//! every pass runs on the calling thread, and the pool's mutex (which another thread may have held
//! at the fork) is never touched again.

use rayon::prelude::*;
use rayon::ThreadPool;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};

static FORKED: AtomicBool = AtomicBool::new(false);
/// 0 means "as many as the machine has".
static THREADS: AtomicUsize = AtomicUsize::new(0);
static POOL: Mutex<Option<Arc<ThreadPool>>> = Mutex::new(None);
static ATFORK: Once = Once::new();

extern "C" fn in_forked_child() {
    FORKED.store(true, Ordering::SeqCst);
}

/// Registers the fork handler; called once when the extension module loads.
pub fn register_fork_handler() {
    ATFORK.call_once(|| {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::pthread_atfork(None, None, Some(in_forked_child));
        }
    });
}

pub fn set_num_threads(n: usize) {
    THREADS.store(n, Ordering::SeqCst);
    if !FORKED.load(Ordering::SeqCst) {
        if let Ok(mut pool) = POOL.lock() {
            *pool = None;
        }
    }
}

/// The threads a pass uses: the number set, at most 4 per core (a pass over memory gains nothing
/// from more, and a pool of 100000 threads would take minutes to start); 0 means one per core.
pub fn num_threads() -> usize {
    if FORKED.load(Ordering::Relaxed) {
        return 1;
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    match THREADS.load(Ordering::Relaxed) {
        0 => cores,
        n => n.min(4 * cores),
    }
}

fn pool() -> Option<Arc<ThreadPool>> {
    let mut guard = POOL.lock().ok()?;
    if guard.is_none() {
        let built = rayon::ThreadPoolBuilder::new()
            .num_threads(num_threads())
            .thread_name(|i| format!("nnprobe-{i}"))
            .build()
            .ok()?;
        *guard = Some(Arc::new(built));
    }
    guard.clone()
}

/// `map(i)` for i in 0..n, combined with `reduce`, in parallel when threads allow. `reduce` must be
/// associative; results are combined in index order either way.
pub fn map_reduce<R: Send>(n: usize, map: impl Fn(usize) -> R + Sync + Send, reduce: impl Fn(R, R) -> R + Sync + Send) -> Option<R> {
    if n == 0 {
        return None;
    }
    if n > 1 && num_threads() > 1 {
        if let Some(pool) = pool() {
            return pool.install(|| (0..n).into_par_iter().map(&map).reduce_with(&reduce));
        }
    }
    (0..n).map(map).reduce(reduce)
}

/// `f(i)` for i in 0..n, collected in order, in parallel when threads allow.
pub fn map_collect<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    if n > 1 && num_threads() > 1 {
        if let Some(pool) = pool() {
            return pool.install(|| (0..n).into_par_iter().map(&f).collect());
        }
    }
    (0..n).map(f).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_is_capped() {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        set_num_threads(1_000_000);
        assert_eq!(num_threads(), 4 * cores);
        set_num_threads(0);
        assert_eq!(num_threads(), cores);
    }

    #[test]
    fn map_reduce_keeps_index_order() {
        let s = map_reduce(100, |i| vec![i], |mut a, b| {
            a.extend(b);
            a
        });
        assert_eq!(s.unwrap(), (0..100).collect::<Vec<_>>());
        assert!(map_reduce(0, |i| i, |a, b| a + b).is_none());
    }
}
