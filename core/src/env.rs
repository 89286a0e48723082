//! The process environment behind one injectable source, so tests never touch `std::env`.

use std::collections::HashMap;
use std::sync::Mutex;

/// Where configuration reads environment variables from.
pub trait EnvSource: Send + Sync {
    /// The value of `name`, if set and valid UTF-8.
    fn var(&self, name: &str) -> Option<String>;

    /// Whether a secret that cannot be read (an unset variable, an unreadable file) may be left
    /// out rather than be an error: `path` is the secret's field path, `why` what is missing.
    /// Strict (`false`) for every source but [`AllowMissingSecrets`], which records it.
    fn allow_missing_secret(&self, _path: &str, _why: &str) -> bool {
        false
    }
}

/// A source that lets every missing secret pass (`tollgate check --allow-missing-secrets`, for
/// CI where provider keys do not exist) and keeps what was missing, for the warnings.
pub struct AllowMissingSecrets<'a> {
    inner: &'a dyn EnvSource,
    missing: Mutex<Vec<(String, String)>>,
}

impl<'a> AllowMissingSecrets<'a> {
    /// Reads variables from `inner`, letting missing secrets pass.
    pub fn new(inner: &'a dyn EnvSource) -> Self {
        Self {
            inner,
            missing: Mutex::new(Vec::new()),
        }
    }

    /// The secrets that were missing: `(field path, what is missing)`, in the order met.
    pub fn missing(&self) -> Vec<(String, String)> {
        match self.missing.lock() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl EnvSource for AllowMissingSecrets<'_> {
    fn var(&self, name: &str) -> Option<String> {
        self.inner.var(name)
    }

    fn allow_missing_secret(&self, path: &str, why: &str) -> bool {
        let mut m = match self.missing.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        m.push((path.to_owned(), why.to_owned()));
        true
    }
}

/// The real process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A fixed map, for tests.
#[derive(Debug, Default, Clone)]
pub struct MapEnv(pub HashMap<String, String>);

impl MapEnv {
    /// A map source from `(name, value)` pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }
}

impl EnvSource for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_secrets_may_pass_as_warnings_naming_their_field_path() {
        let yaml = r#"
providers:
  openai: { kind: openai, base_url: "https://api.openai.com/v1", credential: { env: NOT_SET_1 } }
models:
  m: { targets: [{ provider: openai, model: gpt-4o }] }
logging: { address: "127.0.0.1:1", spool_dir: /tmp/tollgate-spool-test }
feedback: { secret: { file: /nonexistent/tollgate-feedback-secret } }
budgets:
  redis: { url_env: NOT_SET_2 }
"#;
        let strict = crate::Config::from_yaml(yaml, &MapEnv::default()).unwrap_err();
        let paths: Vec<&str> = strict.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "providers.openai.credential.env",
                "feedback.secret.file",
                "budgets.redis.url_env"
            ],
            "{strict:?}"
        );
        let empty = MapEnv::default();
        let lenient = AllowMissingSecrets::new(&empty);
        let config = crate::Config::from_yaml(yaml, &lenient);
        assert!(config.is_ok(), "{config:?}");
        let missing: Vec<String> = lenient.missing().into_iter().map(|(p, _)| p).collect();
        assert_eq!(missing, paths);
        // Everything else is still an error.
        let bad = yaml.replace("gpt-4o }", "gpt-4o, weight: 0 }");
        let errs = crate::Config::from_yaml(&bad, &AllowMissingSecrets::new(&MapEnv::default()))
            .unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "models.m.targets[0].weight");
    }
}
