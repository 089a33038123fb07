//! Giving freed memory back to the system. mimalloc (the binary's allocator) purges freed pages
//! only as a thread goes on allocating; a node agent goes quiet after start (program loading,
//! BTF parsing), and ~20 MB it freed stayed resident, about half its idle RSS. A collect a
//! second after start returns it, and another every 10 s while oxeye is quiet (under 5 % of a
//! core since the last look). Busy, it is not collected: mimalloc purges as it allocates, and a
//! collect every 10 s under a flood of large requests raised the gateway's peak RSS in tests.

use std::time::Duration;

/// CPU seconds this process has used (user + system).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we pass; no other memory is touched.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Collects mimalloc's freed pages in the background until the runtime ends.
pub(crate) fn return_freed() -> tokio::task::JoinHandle<()> {
    const EVERY: Duration = Duration::from_secs(10);
    tokio::spawn(async {
        let mut every =
            tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(1), EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first = true;
        let mut used = cpu_seconds();
        loop {
            every.tick().await;
            let now = cpu_seconds();
            let quiet = now - used < EVERY.as_secs_f64() * 0.05;
            used = now;
            if first || quiet {
                // SAFETY: mi_collect takes no pointers. With `force` it collects this thread's
                // heap and purges the arenas' freed segments, where the start-up work's memory
                // ends up (other live threads' heaps are theirs to collect). Harmless when
                // mimalloc is not the global allocator (a custom binary's choice).
                let _ =
                    tokio::task::spawn_blocking(|| unsafe { libmimalloc_sys::mi_collect(true) })
                        .await;
            }
            first = false;
        }
    })
}
