//! The worker threads behind [`Loop::queue_work`](crate::Loop::queue_work): one small
//! pool for the process, as in libuv (4 threads, started on demand), so a burst of
//! blocking jobs (one name lookup per `connect_host`) never costs a thread each.
//!
//! This module only runs closures; catching a job's panic and posting its result back
//! to the loop that queued it is done by the closure `queue_work` builds.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, OnceLock};

/// Worker threads at most.
pub(crate) const THREADS: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    workers: usize,
    idle: usize,
}

#[derive(Default)]
struct Pool {
    queue: Mutex<Queue>,
    ready: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::default)
}

/// Runs `job` on a worker thread. Starts a worker if none is idle and fewer than
/// [`THREADS`] exist. If no worker exists and none can be started, runs `job` here
/// (blocking the caller rather than losing the job).
pub(crate) fn submit(job: Job) {
    let pool = pool();
    let mut queue = match pool.queue.lock() {
        Ok(q) => q,
        Err(poisoned) => poisoned.into_inner(),
    };
    queue.jobs.push_back(job);
    if queue.idle > 0 {
        pool.ready.notify_one();
        return;
    }
    if queue.workers >= THREADS {
        return; // a busy worker takes it next
    }
    let started = std::thread::Builder::new()
        .name("biotls-worker".into())
        .spawn(worker);
    match started {
        Ok(_) => queue.workers += 1,
        Err(e) if queue.workers == 0 => {
            log::warn!("biotls: cannot start a worker thread ({e}); running the job inline");
            let job = queue.jobs.pop_back();
            drop(queue);
            if let Some(job) = job {
                job();
            }
        }
        Err(_) => {} // the existing workers take it
    }
}

fn worker() {
    let pool = pool();
    loop {
        let job = {
            let mut queue = match pool.queue.lock() {
                Ok(q) => q,
                Err(poisoned) => poisoned.into_inner(),
            };
            loop {
                if let Some(job) = queue.jobs.pop_front() {
                    break job;
                }
                queue.idle += 1;
                queue = match pool.ready.wait(queue) {
                    Ok(q) => q,
                    Err(poisoned) => poisoned.into_inner(),
                };
                queue.idle -= 1;
            }
        };
        // Jobs catch their own panics (see `Loop::queue_work`).
        job();
    }
}

/// Worker threads started so far (for tests).
#[cfg(test)]
pub(crate) fn workers() -> usize {
    pool().queue.lock().map_or(0, |q| q.workers)
}
