//! The `warren` command line: parse, then call the library (see `cli`).

mod cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cli::main().await
}
