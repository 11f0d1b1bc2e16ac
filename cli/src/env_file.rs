//! Settings as the CLI's commands read them: the process environment first, then the env
//! file (`FOO=x hookline …` overrides the file).

use std::collections::HashMap;
use std::path::Path;

pub struct EnvFile(HashMap<String, String>);

impl EnvFile {
    /// The file's entries; a missing or unreadable file reads as empty, as the environment
    /// may hold everything.
    pub fn read(path: &Path) -> Self {
        Self(
            dotenvy::from_path_iter(path)
                .map(|entries| entries.filter_map(Result::ok).collect())
                .unwrap_or_default(),
        )
    }

    /// `name` from the environment, else from the file; unset or blank is `None`.
    pub fn var(&self, name: &str) -> Option<String> {
        hookline::config::var(name).or_else(|| hookline::config::present(self.0.get(name)).cloned())
    }
}
