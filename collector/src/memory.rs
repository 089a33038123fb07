//! Giving freed memory back to the system. mimalloc (the binary's allocator) purges freed pages
//! only as a thread goes on allocating; a node agent goes quiet after start (program loading,
//! BTF parsing), and ~20 MB it freed stayed resident, about half its idle RSS. A collect a
//! second after start and then every 10 s returns it (`MIMALLOC_PURGE_DELAY=0` would too, at a
//! syscall per free under load).

use std::time::Duration;

/// Collects mimalloc's freed pages in the background until the runtime ends.
pub(crate) fn return_freed() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        let mut every = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(10),
        );
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            // SAFETY: mi_collect takes no pointers. With `force` it collects this thread's heap
            // and purges the arenas' freed segments, where the start-up work's memory ends up
            // (other live threads' own heaps are theirs to collect). Harmless when mimalloc is
            // not the global allocator (a custom binary's choice): it then holds nothing.
            let _ =
                tokio::task::spawn_blocking(|| unsafe { libmimalloc_sys::mi_collect(true) }).await;
        }
    })
}
