//! What the control plane stores: the editable shape ("spec") of keys, tenants, teams and
//! budgets, in the same field names as `tollgate_core::config`'s `RawKey`, `RawTenant` and
//! `RawBudget`, with the validation that names each field path.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The four kinds of object, each in its own table and change-feed `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Virtual keys.
    Key,
    /// Tenants.
    Tenant,
    /// Teams.
    Team,
    /// Budgets.
    Budget,
}

impl Kind {
    /// The table holding this kind.
    pub fn table(self) -> &'static str {
        match self {
            Kind::Key => "keys",
            Kind::Tenant => "tenants",
            Kind::Team => "teams",
            Kind::Budget => "budgets",
        }
    }

    /// The change feed's `kind`.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Key => "key",
            Kind::Tenant => "tenant",
            Kind::Team => "team",
            Kind::Budget => "budget",
        }
    }

    /// The field that names an object of this kind (`id` or `name`).
    pub fn name_field(self) -> &'static str {
        match self {
            Kind::Key | Kind::Budget => "id",
            Kind::Tenant | Kind::Team => "name",
        }
    }
}

/// An editable object: what create takes, what update patches.
pub trait Spec: Serialize + DeserializeOwned + Clone + Send + 'static {
    /// Its kind.
    const KIND: Kind;
    /// Its id or name.
    fn name(&self) -> &str;
    /// Every problem, each naming its field.
    fn validate(&self) -> Vec<String>;
}

/// A key's editable fields: `RawKey` without `hash` (the control plane makes the secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Stable id of the key (letters, digits, `.`, `_`, `-`; 1 to 128).
    pub id: String,
    /// The tenant the key belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The team the key belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Public model names the key may use; `"*"` allows every model.
    pub models: Vec<String>,
    /// When the key stops working (RFC 3339).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<OffsetDateTime>,
    /// A disabled key is refused by the sidecars (it still resolves, with `disabled: true`).
    #[serde(default)]
    pub disabled: bool,
    /// The guardrails policy of this key (a policy name of the sidecars' config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardrails: Option<String>,
    /// Requests per minute this key may make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Payload capture: `off`, `metadata` or `full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<String>,
    /// Tokens per minute this key may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u32>,
}

impl Spec for KeySpec {
    const KIND: Kind = Kind::Key;
    fn name(&self) -> &str {
        &self.id
    }
    fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        check_name("id", &self.id, &mut errs);
        if let Some(t) = &self.tenant {
            check_name("tenant", t, &mut errs);
        }
        if let Some(t) = &self.team {
            check_name("team", t, &mut errs);
        }
        if self.models.is_empty() {
            errs.push("models: must name at least one model (or \"*\")".to_owned());
        }
        for (i, m) in self.models.iter().enumerate() {
            if m.trim().is_empty() || m.len() > 256 {
                errs.push(format!("models[{i}]: must be 1 to 256 characters"));
            }
        }
        if let Some(g) = &self.guardrails {
            check_name("guardrails", g, &mut errs);
        }
        check_capture("capture", self.capture.as_deref(), &mut errs);
        check_positive("requests_per_minute", self.requests_per_minute, &mut errs);
        check_positive("tokens_per_minute", self.tokens_per_minute, &mut errs);
        errs
    }
}

/// A tenant: `RawTenant` plus its name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// The tenant's name (what keys' `tenant` names).
    pub name: String,
    /// Requests per minute for all the tenant's keys together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Payload capture of every key of the tenant that sets none itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<String>,
    /// Tokens per minute for all the tenant's keys together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u32>,
}

impl Spec for TenantSpec {
    const KIND: Kind = Kind::Tenant;
    fn name(&self) -> &str {
        &self.name
    }
    fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        check_name("name", &self.name, &mut errs);
        check_capture("capture", self.capture.as_deref(), &mut errs);
        check_positive("requests_per_minute", self.requests_per_minute, &mut errs);
        check_positive("tokens_per_minute", self.tokens_per_minute, &mut errs);
        errs
    }
}

impl TenantSpec {
    /// The bundle's `tenant`: the `RawTenant` shape (no name).
    pub fn raw(&self) -> serde_json::Value {
        let mut v = serde_json::Map::new();
        if let Some(r) = self.requests_per_minute {
            v.insert("requests_per_minute".into(), r.into());
        }
        if let Some(c) = &self.capture {
            v.insert("capture".into(), c.clone().into());
        }
        if let Some(t) = self.tokens_per_minute {
            v.insert("tokens_per_minute".into(), t.into());
        }
        serde_json::Value::Object(v)
    }
}

/// A team. Core's config has no team object (a team is a name on keys and budgets); the
/// control plane keeps the names it knows and the tenant they belong to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamSpec {
    /// The team's name (what keys' `team` names).
    pub name: String,
    /// The tenant the team belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl Spec for TeamSpec {
    const KIND: Kind = Kind::Team;
    fn name(&self) -> &str {
        &self.name
    }
    fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        check_name("name", &self.name, &mut errs);
        if let Some(t) = &self.tenant {
            check_name("tenant", t, &mut errs);
        }
        errs
    }
}

/// A budget: exactly `RawBudget`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// A unique id.
    pub id: String,
    /// Who it limits: `key`, `team`, `tenant` or `end_user`.
    pub scope: String,
    /// The one key id, team, tenant or end user it limits; absent: every member of the scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `daily`, `weekly`, `monthly` or `total`.
    pub period: String,
    /// The limit in USD, as a decimal string.
    pub amount_usd: String,
    /// `hard` (the default) or `soft`.
    #[serde(default = "default_mode")]
    pub mode: String,
}

fn default_mode() -> String {
    "hard".to_owned()
}

impl Spec for BudgetSpec {
    const KIND: Kind = Kind::Budget;
    fn name(&self) -> &str {
        &self.id
    }
    fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        check_name("id", &self.id, &mut errs);
        one_of(
            "scope",
            &self.scope,
            &["key", "team", "tenant", "end_user"],
            &mut errs,
        );
        if let Some(n) = &self.name {
            if n.is_empty() || n.len() > 256 {
                errs.push("name: must be 1 to 256 characters".to_owned());
            }
        }
        one_of(
            "period",
            &self.period,
            &["daily", "weekly", "monthly", "total"],
            &mut errs,
        );
        one_of("mode", &self.mode, &["hard", "soft"], &mut errs);
        if !is_decimal(&self.amount_usd) {
            errs.push(format!(
                "amount_usd: `{}` is not a non-negative decimal like \"100\" or \"0.50\"",
                self.amount_usd
            ));
        }
        errs
    }
}

impl BudgetSpec {
    /// Whether this budget applies to a request of `key`.
    pub fn applies_to(&self, key: &KeySpec) -> bool {
        let member = match self.scope.as_str() {
            "key" => Some(key.id.as_str()),
            "team" => match &key.team {
                Some(t) => Some(t.as_str()),
                None => return false,
            },
            "tenant" => match &key.tenant {
                Some(t) => Some(t.as_str()),
                None => return false,
            },
            // End-user budgets depend on the request, not the key: the sidecar decides.
            _ => None,
        };
        match (&self.name, member) {
            (Some(n), Some(m)) => n == m,
            _ => true,
        }
    }
}

fn check_name(path: &str, v: &str, errs: &mut Vec<String>) {
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if !ok {
        errs.push(format!(
            "{path}: `{v}` must be 1 to 128 letters, digits, `.`, `_`, `-` or `:`"
        ));
    }
}

fn check_capture(path: &str, v: Option<&str>, errs: &mut Vec<String>) {
    if let Some(v) = v {
        one_of(path, v, &["off", "metadata", "full"], errs);
    }
}

fn check_positive(path: &str, v: Option<u32>, errs: &mut Vec<String>) {
    if v == Some(0) {
        errs.push(format!(
            "{path}: must be at least 1 (leave it out for no limit)"
        ));
    }
}

fn one_of(path: &str, v: &str, allowed: &[&str], errs: &mut Vec<String>) {
    if !allowed.contains(&v) {
        errs.push(format!(
            "{path}: `{v}` is not one of {}",
            allowed.join(", ")
        ));
    }
}

fn is_decimal(s: &str) -> bool {
    let mut parts = s.splitn(2, '.');
    let int = parts.next().unwrap_or_default();
    let frac = parts.next();
    !int.is_empty()
        && int.len() <= 15
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac
            .is_none_or(|f| !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()))
}

/// The stored state of a key beside its spec.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyDoc {
    /// The editable fields.
    pub spec: KeySpec,
    /// `sha256:<hex>` of the current secret.
    pub hash: String,
    /// When it was revoked (unix seconds); a revoked key never resolves again.
    #[serde(default)]
    pub revoked_at: Option<i64>,
    /// Hashes of earlier secrets still valid after a rotation, until their `valid_until`.
    #[serde(default)]
    pub previous: Vec<PreviousHash>,
}

/// An old hash of a rotated key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreviousHash {
    /// `sha256:<hex>`.
    pub hash: String,
    /// The end of its grace period, unix seconds.
    pub valid_until: i64,
}

/// The `key` claim of a bundle: exactly `RawKey`'s fields.
pub fn bundle_key(
    spec: &KeySpec,
    hash: &str,
    expires_at: Option<OffsetDateTime>,
) -> serde_json::Value {
    let mut v = serde_json::Map::new();
    v.insert("id".into(), spec.id.clone().into());
    v.insert("hash".into(), hash.into());
    v.insert("tenant".into(), opt(&spec.tenant));
    v.insert("team".into(), opt(&spec.team));
    v.insert("models".into(), spec.models.clone().into());
    v.insert(
        "expires_at".into(),
        expires_at
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .map_or(serde_json::Value::Null, Into::into),
    );
    v.insert("disabled".into(), spec.disabled.into());
    v.insert("guardrails".into(), opt(&spec.guardrails));
    v.insert(
        "requests_per_minute".into(),
        spec.requests_per_minute
            .map_or(serde_json::Value::Null, Into::into),
    );
    v.insert("capture".into(), opt(&spec.capture));
    v.insert(
        "tokens_per_minute".into(),
        spec.tokens_per_minute
            .map_or(serde_json::Value::Null, Into::into),
    );
    serde_json::Value::Object(v)
}

fn opt(s: &Option<String>) -> serde_json::Value {
    s.clone().map_or(serde_json::Value::Null, Into::into)
}

/// RFC 3339 text of unix seconds.
pub fn rfc3339(unix: i64) -> serde_json::Value {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .map_or(serde_json::Value::Null, Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> KeySpec {
        serde_json::from_value(serde_json::json!({
            "id": "svc-a", "tenant": "acme", "team": "ml", "models": ["gpt-4o"],
            "expires_at": "2030-01-01T00:00:00Z", "guardrails": "strict",
            "requests_per_minute": 60, "capture": "metadata", "tokens_per_minute": 1000
        }))
        .unwrap()
    }

    #[test]
    fn the_bundle_key_reads_as_cores_raw_key() {
        let v = bundle_key(&key(), "sha256:00", key().expires_at);
        let raw: tollgate_core::config::RawKey = serde_json::from_value(v).unwrap();
        assert_eq!(raw.id, "svc-a");
        assert_eq!(raw.tenant.as_deref(), Some("acme"));
        assert_eq!(raw.requests_per_minute, Some(60));
        assert!(raw.expires_at.is_some());
        let bare: KeySpec =
            serde_json::from_value(serde_json::json!({"id": "k", "models": ["*"]})).unwrap();
        let _: tollgate_core::config::RawKey =
            serde_json::from_value(bundle_key(&bare, "sha256:00", None)).unwrap();
    }

    #[test]
    fn tenants_and_budgets_read_as_cores_shapes() {
        let t: TenantSpec = serde_json::from_value(serde_json::json!({
            "name": "acme", "requests_per_minute": 5, "capture": "full"
        }))
        .unwrap();
        let _: tollgate_core::config::RawTenant = serde_json::from_value(t.raw()).unwrap();
        let b: BudgetSpec = serde_json::from_value(serde_json::json!({
            "id": "acme-monthly", "scope": "tenant", "name": "acme", "period": "monthly",
            "amount_usd": "100"
        }))
        .unwrap();
        assert!(b.validate().is_empty());
        let _: tollgate_core::config::RawBudget =
            serde_json::from_value(serde_json::to_value(&b).unwrap()).unwrap();
        assert!(b.applies_to(&key()));
    }

    #[test]
    fn validation_names_the_field() {
        let mut k = key();
        k.models.clear();
        k.capture = Some("all".into());
        k.requests_per_minute = Some(0);
        k.id = "bad id".into();
        let errs = k.validate().join("\n");
        for f in ["id:", "models:", "capture:", "requests_per_minute:"] {
            assert!(errs.contains(f), "{f} in {errs}");
        }
        for bad in ["", "1.", ".5", "-1", "1e3", "abc"] {
            assert!(!is_decimal(bad), "{bad}");
        }
        for good in ["0", "100", "0.50"] {
            assert!(is_decimal(good), "{good}");
        }
    }
}
