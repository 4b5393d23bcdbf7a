//! Long-lived worker threads released together, so multi-thread figures time no spawn.
//!
//! The calling thread is worker 0; the others spin on a generation counter between runs (no
//! sleeping, so a run starts on every thread at once) and report back through a done counter.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A job: `(worker, iterations, cursor)`; the cursor is the worker's own, kept between runs.
pub type Job = Arc<dyn Fn(usize, u64, &mut usize) + Send + Sync>;

struct Shared {
    ready: AtomicUsize,
    generation: AtomicU64,
    iters: AtomicU64,
    done: AtomicUsize,
    stop: AtomicBool,
    job: Mutex<Option<Job>>,
}

/// `threads` workers running one job, started and stopped together.
pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    job: Job,
    cursor: usize,
    handles: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `threads - 1` helpers for `job` (the caller is the first worker).
    pub fn new(threads: usize, job: Job) -> Pool {
        let shared = Arc::new(Shared {
            ready: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            iters: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            job: Mutex::new(Some(job.clone())),
        });
        let handles = (1..threads)
            .map(|worker| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || helper(worker, &shared))
            })
            .collect();
        // Every helper is spinning before the first run, so none starts late.
        while shared.ready.load(Ordering::Acquire) < threads - 1 {
            std::thread::yield_now();
        }
        Pool {
            threads,
            shared,
            job,
            cursor: 0,
            handles,
        }
    }

    /// Runs `iters` iterations on every worker; the wall time until the last one finished.
    pub fn run(&mut self, iters: u64) -> Duration {
        let shared = &*self.shared;
        shared.done.store(0, Ordering::Relaxed);
        shared.iters.store(iters, Ordering::Relaxed);
        let start = Instant::now();
        shared.generation.fetch_add(1, Ordering::Release);
        (self.job)(0, iters, &mut self.cursor);
        while shared.done.load(Ordering::Acquire) < self.threads - 1 {
            std::hint::spin_loop();
        }
        start.elapsed()
    }
}

fn helper(worker: usize, shared: &Shared) {
    let job = shared.job.lock().ok().and_then(|j| j.clone());
    let Some(job) = job else { return };
    let mut cursor = 0usize;
    let mut seen = 0u64;
    shared.ready.fetch_add(1, Ordering::Release);
    loop {
        let mut spins = 0u32;
        loop {
            let generation = shared.generation.load(Ordering::Acquire);
            if generation != seen {
                seen = generation;
                break;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1 << 20) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        job(worker, shared.iters.load(Ordering::Relaxed), &mut cursor);
        shared.done.fetch_add(1, Ordering::Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.generation.fetch_add(1, Ordering::Release);
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}
