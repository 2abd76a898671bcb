//! What an agent is granted beyond the sandbox: its settings, read through
//! the `config` import. Plain values and secrets come from the host's config
//! file (`[agents.NAME.config]`, `[agents.NAME.secrets]`); a secret names
//! where its value lives (`env:VAR` or `file:PATH`) and is resolved when the
//! agent loads. A secret's value is never written by the host: it is
//! replaced by `***` in the guest's log lines, in its stderr and in the
//! failure reasons it returns, and `warren config` shows only its source.

use std::borrow::Cow;
use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};

use super::manifest::LimitOverrides;

/// One agent's section of the host's config file.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AgentSection {
    pub limits: LimitOverrides,
    /// Plain values, given to the agent as they are.
    pub config: BTreeMap<String, String>,
    /// Secret name → source (`env:VAR` or `file:PATH`).
    pub secrets: BTreeMap<String, String>,
    /// Outbound HTTP granted (`[agents.NAME.http]`).
    pub http: super::outbound::HttpOverrides,
}

/// The resolved settings an agent can `get`.
#[derive(Default, Clone, PartialEq)]
pub struct AgentSettings {
    values: BTreeMap<String, String>,
    secrets: BTreeMap<String, String>,
}

impl std::fmt::Debug for AgentSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSettings")
            .field("values", &self.values)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl AgentSettings {
    /// Resolves a section's secrets; names the secret and its source (never
    /// a value) when one cannot be read.
    pub fn resolve(agent: &str, section: &AgentSection) -> Result<Self> {
        let mut secrets = BTreeMap::new();
        for (name, source) in &section.secrets {
            let value = read_secret(source)
                .with_context(|| format!("secret `{name}` of agent `{agent}` (from `{source}`)"))?;
            secrets.insert(name.clone(), value);
        }
        Ok(AgentSettings {
            values: section.config.clone(),
            secrets,
        })
    }

    /// The value of `key`: a plain value or a secret.
    pub fn get(&self, key: &str) -> Option<String> {
        self.values
            .get(key)
            .or_else(|| self.secrets.get(key))
            .cloned()
    }

    /// Settings holding only these secrets (tests).
    pub fn with_secrets<'a>(secrets: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        AgentSettings {
            values: BTreeMap::new(),
            secrets: secrets
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// `text` with every secret value replaced by `***`.
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for secret in self.secrets.values().filter(|s| !s.is_empty()) {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), "***"));
            }
        }
        out
    }
}

fn read_secret(source: &str) -> Result<String> {
    if let Some(var) = source.strip_prefix("env:") {
        return std::env::var(var)
            .with_context(|| format!("the environment variable {var} is not set"));
    }
    if let Some(path) = source.strip_prefix("file:") {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        return Ok(text.trim_end_matches(['\n', '\r']).to_string());
    }
    bail!("a secret's source is `env:VARIABLE` or `file:PATH`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_resolve_from_env_and_file_and_are_scrubbed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "from-a-file\n").unwrap();
        unsafe { std::env::set_var("WARREN_SETTINGS_TEST", "from-the-env") };
        let section = AgentSection {
            config: [("model".to_string(), "gpt-x".to_string())].into(),
            secrets: [
                ("a".to_string(), "env:WARREN_SETTINGS_TEST".to_string()),
                ("b".to_string(), format!("file:{}", file.display())),
            ]
            .into(),
            ..Default::default()
        };
        let s = AgentSettings::resolve("x", &section).unwrap();
        assert_eq!(s.get("model").as_deref(), Some("gpt-x"));
        assert_eq!(s.get("a").as_deref(), Some("from-the-env"));
        assert_eq!(s.get("b").as_deref(), Some("from-a-file"));
        assert_eq!(s.get("c"), None);
        assert_eq!(s.scrub("key=from-the-env, from-a-file"), "key=***, ***");
        assert!(!format!("{s:?}").contains("from-the-env"));
        let missing = AgentSection {
            secrets: [("k".to_string(), "env:WARREN_NOT_SET_ANYWHERE".to_string())].into(),
            ..Default::default()
        };
        let e = format!("{:#}", AgentSettings::resolve("x", &missing).unwrap_err());
        assert!(
            e.contains("secret `k` of agent `x`")
                && e.contains("WARREN_NOT_SET_ANYWHERE is not set"),
            "{e}"
        );
    }
}
