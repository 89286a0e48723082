//! The `passthrough` section: which keys and tenants may call a provider's own API through
//! `/passthrough/{provider}/{path}` (any path, the key swapped for the provider's credential),
//! and which providers each may reach. Off for everyone unless granted here.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::Errors;

/// The `passthrough` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassthrough {
    /// Providers each key may reach through passthrough, by key id (`["*"]`: every provider).
    /// A key listed here gets exactly these, whatever its tenant's grant says.
    #[serde(default)]
    pub keys: BTreeMap<String, Vec<String>>,
    /// Providers the keys of each tenant may reach through passthrough, by tenant name
    /// (`["*"]`: every provider), for keys without an entry of their own under `keys`.
    #[serde(default)]
    pub tenants: BTreeMap<String, Vec<String>>,
}

/// The providers one grant reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Every configured provider.
    All,
    /// These providers, by name.
    Only(BTreeSet<String>),
}

impl Grant {
    fn allows(&self, provider: &str) -> bool {
        match self {
            Grant::All => true,
            Grant::Only(set) => set.contains(provider),
        }
    }
}

/// The validated `passthrough` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Passthrough {
    /// Grants by key id.
    pub keys: BTreeMap<String, Grant>,
    /// Grants by tenant name.
    pub tenants: BTreeMap<String, Grant>,
}

impl Passthrough {
    /// Whether the key `key_id` (of `tenant`, empty for none) may reach `provider` through
    /// passthrough: the key's own grant when it has one, else its tenant's; no grant, no access.
    pub fn allows(&self, key_id: &str, tenant: &str, provider: &str) -> bool {
        match self.keys.get(key_id) {
            Some(g) => g.allows(provider),
            None if tenant.is_empty() => false,
            None => self.tenants.get(tenant).is_some_and(|g| g.allows(provider)),
        }
    }

    /// Whether any key or tenant may use passthrough at all.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty() || !self.tenants.is_empty()
    }
}

/// Validates the section against the configured provider names.
pub(super) fn validate(
    raw: &RawPassthrough,
    providers: &BTreeSet<&str>,
    errs: &mut Errors,
) -> Passthrough {
    let mut grants = |section: &str, map: &BTreeMap<String, Vec<String>>| {
        let mut out = BTreeMap::new();
        for (name, list) in map {
            let path = format!("passthrough.{section}.{name}");
            if name.is_empty() {
                errs.add(format!("passthrough.{section}"), "has an empty name");
                continue;
            }
            if list.is_empty() {
                errs.add(
                    path.clone(),
                    "lists no provider (name providers, or `*` for all; remove the entry to grant none)",
                );
            }
            let grant = if list.iter().any(|p| p == "*") {
                if list.len() > 1 {
                    errs.add(
                        path.clone(),
                        "`*` already grants every provider: list it alone",
                    );
                }
                Grant::All
            } else {
                for (i, p) in list.iter().enumerate() {
                    if !providers.contains(p.as_str()) {
                        errs.add(format!("{path}[{i}]"), format!("names no provider: `{p}`"));
                    }
                }
                Grant::Only(list.iter().cloned().collect())
            };
            out.insert(name.clone(), grant);
        }
        out
    };
    let keys = grants("keys", &raw.keys);
    let tenants = grants("tenants", &raw.tenants);
    Passthrough { keys, tenants }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> (Passthrough, Vec<String>) {
        let raw: RawPassthrough = serde_yaml::from_str(yaml).unwrap();
        let providers: BTreeSet<&str> = ["openai", "anthropic"].into_iter().collect();
        let mut errs = Errors(Vec::new());
        let p = validate(&raw, &providers, &mut errs);
        (p, errs.0.into_iter().map(|e| e.path).collect())
    }

    #[test]
    fn key_grant_wins_over_tenant_and_default_is_off() {
        let (p, errs) = check("keys: { k1: [openai] }\ntenants: { acme: ['*'] }\n");
        assert!(errs.is_empty());
        assert!(p.allows("k1", "acme", "openai"));
        assert!(
            !p.allows("k1", "acme", "anthropic"),
            "the key's own grant wins"
        );
        assert!(p.allows("k2", "acme", "anthropic"), "the tenant's grant");
        assert!(!p.allows("k2", "", "openai"));
        assert!(!p.allows("k3", "other", "openai"));
        assert!(!Passthrough::default().allows("k1", "acme", "openai"));
    }

    #[test]
    fn errors_name_the_field() {
        let (_, errs) = check("keys: { k1: [nope], k2: [], k3: ['*', openai] }\n");
        assert_eq!(
            errs,
            vec![
                "passthrough.keys.k1[0]".to_owned(),
                "passthrough.keys.k2".to_owned(),
                "passthrough.keys.k3".to_owned()
            ]
        );
    }
}
