//! Memory budgets for computations on untrusted input. A template in a spec
//! is a small program: fuel bounds its steps, but a few steps can build a
//! huge string (`{% set ns.s = ns.s ~ ns.s %}` in a loop, a chain of
//! `replace` filters, recursive macros). So templates run on a worker
//! thread whose allocations are counted by [`BudgetAlloc`]; an allocation
//! past the budget is never made: the worker stops for good (it waits
//! forever, holding what it has, which is at most the budget) and the
//! caller gets [`OverBudget`] at once.
//!
//! The budget holds only where the binary installs [`BudgetAlloc`] as its
//! global allocator and calls [`declare_installed`]; elsewhere [`run`] runs
//! the work on the caller's thread, unguarded. This module owns the
//! allocator and the worker; it knows nothing about templates.

use std::alloc::{GlobalAlloc, Layout, System};
use std::any::Any;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The global allocator that counts a guarded thread's allocations.
#[derive(Debug)]
pub struct BudgetAlloc;

thread_local! {
    /// The budget of this thread, in bytes (0: not guarded).
    static LIMIT: Cell<usize> = const { Cell::new(0) };
    /// Bytes allocated (and not freed) since the budget was set.
    static USED: Cell<usize> = const { Cell::new(0) };
    /// Raised when the budget is exceeded.
    static TRIPPED: Cell<*const AtomicBool> = const { Cell::new(std::ptr::null()) };
}

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Says that [`BudgetAlloc`] is the global allocator, so [`run`] guards.
pub fn declare_installed() {
    INSTALLED.store(true, Ordering::Relaxed);
}

/// Counts `size` more bytes on a guarded thread; past the budget, stops
/// the thread for good instead of allocating.
fn charge(size: usize) {
    let limit = LIMIT.try_with(Cell::get).unwrap_or(0);
    if limit == 0 {
        return;
    }
    let used = USED.try_with(Cell::get).unwrap_or(0);
    if used.saturating_add(size) > limit {
        let flag = TRIPPED.try_with(Cell::get).unwrap_or(std::ptr::null());
        if !flag.is_null() {
            // SAFETY: the worker sets the pointer from an `Arc` it keeps alive
            // for as long as it runs (and it never runs past this point).
            unsafe { (*flag).store(true, Ordering::SeqCst) };
        }
        loop {
            // Allocation-free, and never returns: the caller has moved on.
            // SAFETY: `pause` has no preconditions.
            unsafe { libc::pause() };
        }
    }
    let _ = USED.try_with(|u| u.set(used + size));
}

fn refund(size: usize) {
    if LIMIT.try_with(Cell::get).unwrap_or(0) != 0 {
        let _ = USED.try_with(|u| u.set(u.get().saturating_sub(size)));
    }
}

// SAFETY: every call is forwarded to `System` with the same arguments; the
// bookkeeping touches only const-initialized thread-locals without
// destructors, which never allocate.
unsafe impl GlobalAlloc for BudgetAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        charge(layout.size());
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        charge(layout.size());
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        refund(layout.size());
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            charge(new_size - layout.size());
        } else {
            refund(layout.size() - new_size);
        }
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Work that needed more memory than its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    /// The budget, in bytes.
    pub limit: usize,
}

type Job = Box<dyn FnOnce() -> Box<dyn Any + Send> + Send>;

struct Worker {
    jobs: Sender<(Job, usize)>,
    done: Receiver<Box<dyn Any + Send>>,
    tripped: Arc<AtomicBool>,
}

static WORKER: Mutex<Option<Worker>> = Mutex::new(None);

fn spawn_worker() -> Option<Worker> {
    let (jobs, job_rx) = mpsc::channel::<(Job, usize)>();
    let (done_tx, done) = mpsc::channel();
    let tripped = Arc::new(AtomicBool::new(false));
    let flag = tripped.clone();
    std::thread::Builder::new()
        .name("imgc-budget".into())
        .stack_size(64 << 20)
        .spawn(move || {
            let _ = TRIPPED.try_with(|t| t.set(Arc::as_ptr(&flag)));
            while let Ok((job, limit)) = job_rx.recv() {
                let _ = USED.try_with(|u| u.set(0));
                let _ = LIMIT.try_with(|l| l.set(limit));
                let out = job();
                let _ = LIMIT.try_with(|l| l.set(0));
                if done_tx.send(out).is_err() {
                    return;
                }
            }
        })
        .ok()?;
    Some(Worker {
        jobs,
        done,
        tripped,
    })
}

/// Runs `f` with at most `limit` bytes of memory (see the module
/// documentation); `Err` when it needed more (or its worker died).
pub fn run<T, F>(limit: usize, f: F) -> Result<T, OverBudget>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if !INSTALLED.load(Ordering::Relaxed) {
        return Ok(f());
    }
    let mut slot = WORKER.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        *slot = spawn_worker();
    }
    let Some(worker) = slot.as_ref() else {
        return Ok(f());
    };
    let job: Job = Box::new(move || Box::new(f()) as Box<dyn Any + Send>);
    if worker.jobs.send((job, limit)).is_err() {
        *slot = None;
        return Err(OverBudget { limit });
    }
    loop {
        match worker.done.recv_timeout(Duration::from_millis(10)) {
            Ok(out) => {
                return out
                    .downcast::<T>()
                    .map(|b| *b)
                    .map_err(|_| OverBudget { limit })
            }
            Err(RecvTimeoutError::Timeout) if !worker.tripped.load(Ordering::SeqCst) => {}
            Err(_) => {
                // The worker stays stopped; the next call starts another.
                *slot = None;
                return Err(OverBudget { limit });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOC: BudgetAlloc = BudgetAlloc;

    #[test]
    fn work_past_its_budget_is_stopped_and_the_next_runs() {
        declare_installed();
        let ok = run(1 << 20, || "x".repeat(1000).len());
        assert_eq!(ok, Ok(1000));
        let started = std::time::Instant::now();
        let big = run(1 << 20, || {
            let mut s = String::from("x");
            loop {
                s = s.repeat(2);
                if s.len() > 1 << 30 {
                    return s.len();
                }
            }
        });
        assert_eq!(big, Err(OverBudget { limit: 1 << 20 }));
        assert!(started.elapsed() < Duration::from_secs(2));
        // Freed memory is given back: many small rounds fit in a small budget.
        let rounds = run(1 << 16, || {
            (0..10_000).map(|i| i.to_string().len()).sum::<usize>()
        });
        assert!(rounds.is_ok());
    }
}
