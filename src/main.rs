//! The `warren` command line: parse, then call the library (see `cli`).

mod cli;

/// mimalloc instead of glibc's malloc: under load, allocating and freeing
/// (frames, envelopes, JSON) took about a fifth of the host's CPU with
/// glibc, largely in its arena bookkeeping (see BENCHMARKS.md, profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cli::main().await
}
