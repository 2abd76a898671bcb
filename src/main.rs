//! The `warren` command line: parse, then call the library (see `cli`).

mod cli;

/// mimalloc instead of glibc's malloc: under load, allocating and freeing
/// (frames, envelopes, JSON) took about a fifth of the host's CPU with
/// glibc, largely in its arena bookkeeping (see BENCHMARKS.md, profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // A flag on the process, not the thread: the runtime's threads,
    // already started, are covered too.
    no_huge_pages();
    cli::main().await
}

/// Turns transparent huge pages off for this process. mimalloc asks for
/// them (`MADV_HUGEPAGE` on its arenas), and then the first touch of each
/// new 2 MiB stops the thread that made it while the kernel clears the
/// whole page: on a two-vCPU VM, captures of paced relays showed the host
/// holding a delivery for 10-80 ms at such faults, a message host's p99
/// set by its allocator (BENCHMARKS.md, profile). Throughput and the
/// embedded broker's hops were the same without them.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and
    // touches no memory of ours; it only sets a flag on this process.
    unsafe {
        // A kernel without the flag (before 3.15) refuses it: nothing to do then.
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
