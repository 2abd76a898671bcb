//! `warren new`: scaffold an agent project.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct New {
    /// The agent's name (the project folder and the plugin file are named after it).
    name: String,
    #[arg(long, value_enum, default_value_t = warren::scaffold::Lang::Rust)]
    lang: warren::scaffold::Lang,
    /// Where to create the project folder.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

pub fn run(c: New) -> Result<()> {
    let path = warren::scaffold::create(&c.name, c.lang, &c.dir)?;
    println!(
        "created {}: see its README.md to build {}.wasm",
        path.display(),
        path.file_name().unwrap().to_string_lossy()
    );
    Ok(())
}
