//! Keeps CPU-heavy request handling off the async workers: a large body's parse, guardrails
//! and translation run on a blocking thread (`block_in_place`, so the worker's other tasks
//! move to a fresh worker), at most as many at once as there are CPUs; the others wait for a
//! slot without holding a worker. Small bodies never come here: the hot path stays inline.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Semaphore;

/// The slots for heavy requests, one per CPU.
fn slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| {
        Semaphore::new(std::thread::available_parallelism().map_or(2, std::num::NonZero::get))
    })
}

/// Runs `work` to completion on a blocking thread once a slot is free. On a single-threaded
/// runtime (tests) there is no worker to spare: `work` runs inline.
pub(super) async fn blocking<F: Future>(work: F) -> F::Output {
    if Handle::current().runtime_flavor() != RuntimeFlavor::MultiThread {
        return work.await;
    }
    // The semaphore is never closed; were it, the work would still run, unbounded.
    let _slot = slots().acquire().await.ok();
    tracing::debug!("Handling a large request body on a blocking thread");
    tokio::task::block_in_place(|| Handle::current().block_on(work))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn heavy_work_leaves_the_async_worker_to_other_tasks() {
        // One async worker: work that blocked it would hold every other task until it ends.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let heavy = tokio::spawn(blocking(async {
                std::thread::sleep(Duration::from_millis(600));
                Instant::now()
            }));
            // Let the heavy task start first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let other = tokio::spawn(async { Instant::now() });
            let other = other.await.unwrap();
            let heavy = heavy.await.unwrap();
            assert!(
                other + Duration::from_millis(300) < heavy,
                "the other task waited for the heavy one"
            );
        });
    }

    #[tokio::test]
    async fn on_a_single_threaded_runtime_the_work_runs_inline() {
        assert_eq!(blocking(async { 7 }).await, 7);
    }
}
