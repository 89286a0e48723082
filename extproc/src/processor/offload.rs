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
