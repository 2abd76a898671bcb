//! `warren new NAME --lang rust|python|js`: a ready-to-build agent project.
//!
//! Everything a project needs is written into it (the WIT contract and the
//! language's helper SDK are vendored from this very binary), so it builds
//! anywhere the language's standard tool runs; its README says how.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::names;

/// The languages `warren new` can start an agent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

const WIT: &str = include_str!("../wit/agent.wit");

/// (path in the project, template) per language; `{{name}}` is the agent's
/// name, `{{Type}}` its CamelCase form.
fn files(lang: Lang) -> Vec<(&'static str, &'static str)> {
    match lang {
        Lang::Rust => vec![
            ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
            ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
            ("README.md", include_str!("../templates/rust/README.md")),
            (
                "warren-agent/Cargo.toml",
                include_str!("../sdk/rust/Cargo.toml"),
            ),
            (
                "warren-agent/src/lib.rs",
                include_str!("../sdk/rust/src/lib.rs"),
            ),
            (
                "warren-agent/src/http.rs",
                include_str!("../sdk/rust/src/http.rs"),
            ),
            ("warren-agent/wit/agent.wit", WIT),
        ],
        Lang::Python => vec![
            ("app.py", include_str!("../templates/python/app.py")),
            (
                "warren_agent.py",
                include_str!("../sdk/python/warren_agent.py"),
            ),
            ("README.md", include_str!("../templates/python/README.md")),
            ("wit/agent.wit", WIT),
        ],
        Lang::Js => vec![
            ("app.js", include_str!("../templates/js/app.js")),
            ("warren_agent.js", include_str!("../sdk/js/warren_agent.js")),
            ("package.json", include_str!("../templates/js/package.json")),
            ("README.md", include_str!("../templates/js/README.md")),
            ("wit/agent.wit", WIT),
        ],
    }
}

/// Creates `parent/NAME/` for a new agent; returns its path.
pub fn create(name: &str, lang: Lang, parent: &Path) -> Result<PathBuf> {
    let name = names::normalise(name);
    names::validate(&name)?;
    let dir = parent.join(&name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let type_name: String = name
        .split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect();
    for (path, template) in files(lang) {
        let mut text = template
            .replace("{{name}}", &name)
            .replace("{{Type}}", &type_name);
        if path == "warren-agent/Cargo.toml" {
            // Vendored inside the project: a member of its workspace, not a
            // workspace of its own.
            text = text.replace("\n[workspace]\n", "\n");
        }
        let target = dir.join(path);
        std::fs::create_dir_all(target.parent().unwrap())
            .with_context(|| format!("creating {}", target.display()))?;
        std::fs::write(&target, text).with_context(|| format!("writing {}", target.display()))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vendored_wit_is_the_one_the_host_uses() {
        assert_eq!(include_str!("../sdk/rust/wit/agent.wit"), WIT);
    }

    #[test]
    fn names_are_normalised_and_types_camel_cased() {
        let dir = tempfile::tempdir().unwrap();
        let p = create("Ticket Triage", Lang::Rust, dir.path()).unwrap();
        assert!(p.ends_with("ticket_triage"));
        let lib = std::fs::read_to_string(p.join("src/lib.rs")).unwrap();
        assert!(lib.contains("struct TicketTriage;"), "{lib}");
        assert!(!lib.contains("{{"));
        let sdk = std::fs::read_to_string(p.join("warren-agent/Cargo.toml")).unwrap();
        assert!(!sdk.contains("[workspace]"));
        assert!(
            create("Ticket Triage", Lang::Rust, dir.path()).is_err(),
            "no overwrite"
        );
    }
}
