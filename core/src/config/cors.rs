//! Browser access (CORS): the `cors` policy of a key or a tenant, its origin patterns compiled
//! once per config version, and the `access-control-*` headers of a preflight, of a real
//! request and of an error answered before the key is known.
//!
//! Tollgate answers CORS itself, in ext_proc (see README "Browsers (CORS)"): a preflight
//! (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered from the policies
//! that list its origin, without a key and without reaching a provider; a real request is
//! checked against its key's own policy once the key is known.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde::Deserialize;

use super::Errors;

/// The `cors` section of a key or a tenant: which web pages may call the gateway with it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    /// Origins whose pages may use the key: exact (`https://app.example.com`,
    /// `http://localhost:5173`) or one leading wildcard label (`https://*.example.com`, any
    /// subdomain at any depth, not the apex itself). Scheme and host, a port only when it is
    /// not the scheme's default; no path.
    pub origins: Vec<String>,
    /// Request headers a page may send besides the built-in ones (the key headers,
    /// `content-type`, `anthropic-*`, `openai-*`, `x-stainless-*`, the trace context, the
    /// end-user header); a trailing `*` matches a prefix (`x-my-*`).
    #[serde(default)]
    pub allowed_headers: Vec<String>,
    /// Response headers a page may read besides the built-in ones (`x-tollgate-*`, the
    /// `x-ratelimit-*` headers, `retry-after`).
    #[serde(default)]
    pub exposed_headers: Vec<String>,
    /// How long a browser may cache a preflight answer, in seconds (0 to 86400; browsers cap
    /// it themselves, Chromium at 7200). Default 600.
    #[serde(default = "default_max_age_secs")]
    pub max_age_secs: u32,
    /// Whether a page may send credentials (cookies, TLS client certificates) along:
    /// `access-control-allow-credentials: true`. Not needed for a key in a header. Off by
    /// default.
    #[serde(default)]
    pub allow_credentials: bool,
}

fn default_max_age_secs() -> u32 {
    600
}

/// The longest preflight cache time accepted.
const MAX_AGE_CEILING_SECS: u32 = 86_400;

/// The methods a preflight may ask for.
pub const ALLOWED_METHODS: &str = "GET, POST, DELETE";

/// Request headers every policy allows (lowercase; a trailing `*` matches a prefix).
const BUILTIN_ALLOWED_HEADERS: [&str; 14] = [
    "authorization",
    "content-type",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "x-goog-api-client",
    "anthropic-*",
    "openai-*",
    "x-stainless-*",
    "traceparent",
    "tracestate",
    "x-request-id",
    "x-tollgate-request-id",
    "accept",
];

/// Response headers every policy exposes to the page.
const BUILTIN_EXPOSED_HEADERS: [&str; 12] = [
    "x-tollgate-request-id",
    "x-tollgate-provider",
    "x-tollgate-budget-warning",
    "x-tollgate-feedback-token",
    "x-tollgate-token-count",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "retry-after",
];

/// One allowed origin, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginPattern {
    /// The whole origin, lowercase.
    Exact(String),
    /// `scheme://*.<suffix>`: `prefix` is `scheme://`, `suffix` starts with the dot (and ends
    /// with the port when the pattern names one).
    Subdomains { prefix: String, suffix: String },
}

impl OriginPattern {
    /// Parses one configured origin; the error says what is wrong with it.
    fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim().to_ascii_lowercase();
        if s == "*" || s == "null" {
            return Err(format!(
                "`{raw}` is not allowed: name the origins (scheme://host[:port])"
            ));
        }
        let Some((scheme, authority)) = s.split_once("://") else {
            return Err(format!("`{raw}` is not an origin (scheme://host[:port])"));
        };
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return Err(format!("`{raw}` has no valid scheme"));
        }
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "`{raw}` is not an origin: scheme://host[:port], without path or trailing `/`"
            ));
        }
        let (host, port) = if authority.starts_with('[') {
            // An IPv6 literal: the port, if any, follows the `]`.
            match authority.split_once(']') {
                Some((h, rest)) => (
                    &authority[..=h.len()],
                    match rest.strip_prefix(':') {
                        Some(p) => Some(p),
                        None if rest.is_empty() => None,
                        None => Some(rest),
                    },
                ),
                None => return Err(format!("`{raw}` has an invalid host")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if let Some(p) = port {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("`{raw}` has an invalid port"));
            }
        }
        if let Some(rest) = host.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') || !valid_host(rest) {
                return Err(format!(
                    "`{raw}`: a wildcard stands for leading labels only, as in https://*.example.com"
                ));
            }
            return Ok(OriginPattern::Subdomains {
                prefix: format!("{scheme}://"),
                suffix: authority[1..].to_owned(),
            });
        }
        if host.contains('*') {
            return Err(format!(
                "`{raw}`: a wildcard stands for leading labels only, as in https://*.example.com"
            ));
        }
        if !valid_host(host) {
            return Err(format!("`{raw}` has an invalid host"));
        }
        Ok(OriginPattern::Exact(s))
    }

    /// Whether `origin` (lowercase) matches.
    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Exact(o) => o == origin,
            OriginPattern::Subdomains { prefix, suffix } => {
                let Some(rest) = origin.strip_prefix(prefix.as_str()) else {
                    return false;
                };
                let Some(labels) = rest.strip_suffix(suffix.as_str()) else {
                    return false;
                };
                !labels.is_empty()
                    && labels
                        .split('.')
                        .all(|l| !l.is_empty() && l.bytes().all(host_byte))
            }
        }
    }
}

fn host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn valid_host(host: &str) -> bool {
    if host.starts_with('[') && host.ends_with(']') {
        return host.len() > 2
            && host[1..host.len() - 1]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
    }
    !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(host_byte))
}

/// An allowed request header: exact, or a prefix (configured with a trailing `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum HeaderPattern {
    Exact(String),
    Prefix(String),
}

impl HeaderPattern {
    fn parse(raw: &str) -> Option<Self> {
        let s = raw.trim().to_ascii_lowercase();
        let (name, prefix) = match s.strip_suffix('*') {
            Some(p) => (p.to_owned(), true),
            None => (s, false),
        };
        let check = name.trim_end_matches('-');
        if !check.is_empty() && !super::valid_header_name(check) {
            return None;
        }
        if name.is_empty() {
            return None;
        }
        Some(if prefix {
            HeaderPattern::Prefix(name)
        } else {
            HeaderPattern::Exact(name)
        })
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            HeaderPattern::Exact(h) => h == name,
            HeaderPattern::Prefix(p) => name.starts_with(p.as_str()),
        }
    }
}

/// A validated `cors` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsPolicy {
    origins: Vec<OriginPattern>,
    allowed_headers: Vec<HeaderPattern>,
    /// Every exposed header name (built-in and configured), sorted, without duplicates.
    exposed_headers: BTreeSet<String>,
    /// Preflight cache time, seconds.
    pub max_age_secs: u32,
    /// `access-control-allow-credentials: true`.
    pub allow_credentials: bool,
}

impl CorsPolicy {
    /// Whether a page of `origin` (the request's `Origin`, any case) may use this policy.
    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        self.origins.iter().any(|p| p.matches(&origin))
    }

    /// The headers of an answer to a request from `origin` that this policy allows.
    pub fn response_headers(&self, origin: &str) -> Vec<(&'static str, String)> {
        answer_headers(
            origin,
            self.exposed_headers.iter().map(String::as_str),
            self.allow_credentials,
        )
    }
}

fn answer_headers<'a>(
    origin: &str,
    exposed: impl Iterator<Item = &'a str>,
    credentials: bool,
) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("access-control-allow-origin", origin.to_owned()),
        ("vary", "origin".to_owned()),
        (
            "access-control-expose-headers",
            exposed.collect::<Vec<_>>().join(", "),
        ),
    ];
    if credentials {
        h.push(("access-control-allow-credentials", "true".to_owned()));
    }
    h
}

/// What a preflight gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preflight {
    /// 204 with these headers.
    Allowed(Vec<(&'static str, String)>),
    /// No policy lists the origin, or the method is not one Tollgate serves: refused, without
    /// CORS headers (the browser reports a CORS error).
    Refused,
}

/// Every `cors` policy of the config, by key id and by tenant.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    by_key: HashMap<String, Arc<CorsPolicy>>,
    by_tenant: HashMap<String, Arc<CorsPolicy>>,
    all: Vec<Arc<CorsPolicy>>,
}

impl Cors {
    /// Whether no key or tenant has a policy (then requests are never checked).
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The policy of a key: its own, else its tenant's.
    pub fn policy(&self, key_id: &str, tenant: Option<&str>) -> Option<&CorsPolicy> {
        self.by_key
            .get(key_id)
            .or_else(|| tenant.and_then(|t| self.by_tenant.get(t)))
            .map(Arc::as_ref)
    }

    /// The policies that list `origin`.
    fn listing<'a>(&'a self, origin: &'a str) -> impl Iterator<Item = &'a CorsPolicy> + 'a {
        let lower = origin.trim().to_ascii_lowercase();
        self.all
            .iter()
            .map(Arc::as_ref)
            .filter(move |p| p.origins.iter().any(|o| o.matches(&lower)))
    }

    /// The headers of an answer given before (or without) a key's policy applying — a
    /// refused or missing key, a key whose policy does not list the origin — when some policy
    /// lists `origin`: the page may read the error. `None` when none does.
    pub fn any_headers(&self, origin: &str) -> Option<Vec<(&'static str, String)>> {
        let mut exposed = BTreeSet::new();
        let mut credentials = false;
        let mut any = false;
        for p in self.listing(origin) {
            any = true;
            exposed.extend(p.exposed_headers.iter().map(String::as_str));
            credentials |= p.allow_credentials;
        }
        any.then(|| answer_headers(origin, exposed.into_iter(), credentials))
    }

    /// The answer to a preflight from `origin` for `method` with the requested headers (the
    /// `Access-Control-Request-Headers` list): from every policy that lists the origin (no
    /// key travels with a preflight). Requested headers no such policy allows are left out of
    /// `access-control-allow-headers`, so the browser refuses the request.
    pub fn preflight(&self, origin: &str, method: &str, requested: Option<&str>) -> Preflight {
        let method = method.trim().to_ascii_uppercase();
        if !ALLOWED_METHODS.split(", ").any(|m| m == method) {
            return Preflight::Refused;
        }
        let policies: Vec<&CorsPolicy> = self.listing(origin).collect();
        if policies.is_empty() {
            return Preflight::Refused;
        }
        let allowed: Vec<String> = requested
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .filter(|h| {
                policies
                    .iter()
                    .any(|p| p.allowed_headers.iter().any(|a| a.matches(h)))
            })
            .collect();
        let max_age = policies.iter().map(|p| p.max_age_secs).min().unwrap_or(0);
        let mut h = vec![
            ("access-control-allow-origin", origin.to_owned()),
            ("vary", "origin".to_owned()),
            ("access-control-allow-methods", ALLOWED_METHODS.to_owned()),
            ("access-control-max-age", max_age.to_string()),
        ];
        if !allowed.is_empty() {
            h.push(("access-control-allow-headers", allowed.join(", ")));
        }
        if policies.iter().any(|p| p.allow_credentials) {
            h.push(("access-control-allow-credentials", "true".to_owned()));
        }
        Preflight::Allowed(h)
    }
}

/// Validates one `cors` section at `path` (`keys[3].cors`, `tenants.acme.cors`); `extra_allowed`
/// are request headers the config adds to the built-in ones (the end-user header).
fn validate_policy(
    raw: &RawCors,
    path: &str,
    extra_allowed: &[&str],
    errs: &mut Errors,
) -> Option<CorsPolicy> {
    let before = errs.0.len();
    if raw.origins.is_empty() {
        errs.add(format!("{path}.origins"), "needs at least one origin");
    }
    let mut origins = Vec::new();
    for (i, o) in raw.origins.iter().enumerate() {
        match OriginPattern::parse(o) {
            Ok(p) => origins.push(p),
            Err(m) => errs.add(format!("{path}.origins[{i}]"), m),
        }
    }
    let mut allowed_headers: Vec<HeaderPattern> = BUILTIN_ALLOWED_HEADERS
        .iter()
        .chain(extra_allowed.iter())
        .filter_map(|h| HeaderPattern::parse(h))
        .collect();
    for (i, h) in raw.allowed_headers.iter().enumerate() {
        match HeaderPattern::parse(h) {
            Some(p) => allowed_headers.push(p),
            None => errs.add(
                format!("{path}.allowed_headers[{i}]"),
                "is not a header name (a trailing `*` matches a prefix)",
            ),
        }
    }
    let mut exposed_headers: BTreeSet<String> = BUILTIN_EXPOSED_HEADERS
        .iter()
        .map(|h| (*h).to_owned())
        .collect();
    for (i, h) in raw.exposed_headers.iter().enumerate() {
        let h = h.trim().to_ascii_lowercase();
        if super::valid_header_name(&h) {
            exposed_headers.insert(h);
        } else {
            errs.add(
                format!("{path}.exposed_headers[{i}]"),
                "is not a header name",
            );
        }
    }
    if raw.max_age_secs > MAX_AGE_CEILING_SECS {
        errs.add(
            format!("{path}.max_age_secs"),
            format!("must be at most {MAX_AGE_CEILING_SECS}"),
        );
    }
    (errs.0.len() == before).then_some(CorsPolicy {
        origins,
        allowed_headers,
        exposed_headers,
        max_age_secs: raw.max_age_secs,
        allow_credentials: raw.allow_credentials,
    })
}

/// Validates the `cors` sections of keys (`(index, id, section)`) and tenants.
pub(super) fn validate<'a>(
    keys: impl Iterator<Item = (usize, &'a str, &'a RawCors)>,
    tenants: impl Iterator<Item = (&'a str, &'a RawCors)>,
    end_user_header: &str,
    errs: &mut Errors,
) -> Cors {
    let mut cors = Cors::default();
    let extra = [end_user_header];
    for (i, id, raw) in keys {
        if let Some(p) = validate_policy(raw, &format!("keys[{i}].cors"), &extra, errs) {
            let p = Arc::new(p);
            cors.all.push(Arc::clone(&p));
            cors.by_key.insert(id.to_owned(), p);
        }
    }
    for (name, raw) in tenants {
        if let Some(p) = validate_policy(raw, &format!("tenants.{name}.cors"), &extra, errs) {
            let p = Arc::new(p);
            cors.all.push(Arc::clone(&p));
            cors.by_tenant.insert(name.to_owned(), p);
        }
    }
    cors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(origins: &[&str]) -> RawCors {
        RawCors {
            origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            allowed_headers: vec![],
            exposed_headers: vec![],
            max_age_secs: 600,
            allow_credentials: false,
        }
    }

    fn policy(origins: &[&str]) -> CorsPolicy {
        let mut errs = Errors(Vec::new());
        let p = validate_policy(&raw(origins), "keys[0].cors", &[], &mut errs);
        assert!(errs.0.is_empty(), "{:?}", errs.0);
        p.unwrap()
    }

    #[test]
    fn exact_origins_match_whole_origins_only() {
        let p = policy(&["https://app.example.com", "http://localhost:5173"]);
        assert!(p.allows("https://app.example.com"));
        assert!(p.allows("HTTPS://App.Example.com"));
        assert!(p.allows("http://localhost:5173"));
        for o in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.com.evil.com",
            "https://evilapp.example.com",
            "https://x.app.example.com",
            "http://localhost:5174",
            "http://localhost",
            "null",
            "",
        ] {
            assert!(!p.allows(o), "{o}");
        }
    }

    #[test]
    fn a_wildcard_matches_subdomains_not_the_apex_nor_lookalikes() {
        let p = policy(&["https://*.example.com"]);
        for o in [
            "https://a.example.com",
            "https://a-b.example.com",
            "https://deep.a.example.com",
        ] {
            assert!(p.allows(o), "{o}");
        }
        for o in [
            "https://example.com",
            "https://.example.com",
            "https://a..example.com",
            "https://evil-example.com",
            "https://aexample.com",
            "http://a.example.com",
            "https://a.example.com:8443",
            "https://a.example.com.evil.com",
            "https://evil.com/.example.com",
            "https://a@b.example.com",
            "https://a:1@b.example.com",
        ] {
            assert!(!p.allows(o), "{o}");
        }
        let with_port = policy(&["http://*.localhost:8080"]);
        assert!(with_port.allows("http://a.localhost:8080"));
        assert!(!with_port.allows("http://a.localhost:8081"));
        assert!(!with_port.allows("http://a.localhost"));
    }

    #[test]
    fn bad_origins_are_refused_with_their_path() {
        let mut errs = Errors(Vec::new());
        let bad = [
            "*",
            "null",
            "example.com",
            "https://example.com/",
            "https://example.com/path",
            "https://a.*.example.com",
            "https://*example.com",
            "https://*.",
            "https://example.com:port",
            "https://exa mple.com",
        ];
        let r = raw(&bad);
        assert!(validate_policy(&r, "tenants.acme.cors", &[], &mut errs).is_none());
        let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
        let want: Vec<String> = (0..bad.len())
            .map(|i| format!("tenants.acme.cors.origins[{i}]"))
            .collect();
        assert_eq!(paths, want, "{:?}", errs.0);

        let mut errs = Errors(Vec::new());
        let mut r = raw(&[]);
        r.max_age_secs = 100_000;
        r.allowed_headers = vec!["bad header".into()];
        r.exposed_headers = vec!["x-ok".into(), "no:pe".into()];
        assert!(validate_policy(&r, "keys[2].cors", &[], &mut errs).is_none());
        let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "keys[2].cors.origins",
                "keys[2].cors.allowed_headers[0]",
                "keys[2].cors.exposed_headers[1]",
                "keys[2].cors.max_age_secs"
            ]
        );
    }

    fn two_tenants() -> Cors {
        let mut errs = Errors(Vec::new());
        let mut a = raw(&["https://a.example"]);
        a.max_age_secs = 300;
        a.allowed_headers = vec!["x-custom-*".into()];
        a.exposed_headers = vec!["x-a-only".into()];
        let mut b = raw(&["https://*.example", "https://b.example"]);
        b.allow_credentials = true;
        let key = raw(&["https://key.example"]);
        let cors = validate(
            [(0usize, "k1", &key)].into_iter(),
            [("a", &a), ("b", &b)].into_iter(),
            "x-tollgate-end-user",
            &mut errs,
        );
        assert!(errs.0.is_empty(), "{:?}", errs.0);
        cors
    }

    #[test]
    fn a_keys_own_policy_overrides_its_tenants() {
        let cors = two_tenants();
        let own = cors.policy("k1", Some("a")).unwrap();
        assert!(own.allows("https://key.example"));
        assert!(!own.allows("https://a.example"));
        let tenant = cors.policy("k2", Some("a")).unwrap();
        assert!(tenant.allows("https://a.example"));
        assert!(cors.policy("k2", None).is_none());
        assert!(cors.policy("k2", Some("nobody")).is_none());
    }

    fn get<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_preflight_is_answered_from_every_policy_listing_the_origin() {
        let cors = two_tenants();
        // `https://a.example` is listed by tenant a and (by wildcard) tenant b.
        let Preflight::Allowed(h) = cors.preflight(
            "https://a.example",
            "POST",
            Some("Authorization, content-type, x-custom-thing, x-stainless-os, x-unknown"),
        ) else {
            panic!("refused")
        };
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("https://a.example")
        );
        assert_eq!(get(&h, "vary"), Some("origin"));
        assert_eq!(
            get(&h, "access-control-allow-headers"),
            Some("authorization, content-type, x-custom-thing, x-stainless-os")
        );
        assert_eq!(get(&h, "access-control-max-age"), Some("300"));
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(
            get(&h, "access-control-allow-methods"),
            Some("GET, POST, DELETE")
        );
        // Only tenant b lists it: no custom header, b's max age.
        let Preflight::Allowed(h) = cors.preflight("https://x.example", "GET", Some("x-custom-a"))
        else {
            panic!("refused")
        };
        assert_eq!(get(&h, "access-control-allow-headers"), None);
        assert_eq!(get(&h, "access-control-max-age"), Some("600"));
        assert_eq!(
            cors.preflight("https://other.test", "POST", None),
            Preflight::Refused
        );
        assert_eq!(
            cors.preflight("https://a.example", "PUT", None),
            Preflight::Refused
        );
    }

    #[test]
    fn answers_expose_the_tollgate_headers() {
        let cors = two_tenants();
        let p = cors.policy("k9", Some("a")).unwrap();
        let h = p.response_headers("https://a.example");
        let exposed = get(&h, "access-control-expose-headers").unwrap();
        for name in [
            "x-tollgate-request-id",
            "x-tollgate-provider",
            "x-ratelimit-remaining-requests",
            "x-a-only",
        ] {
            assert!(exposed.split(", ").any(|e| e == name), "{exposed}");
        }
        assert_eq!(get(&h, "access-control-allow-credentials"), None);
        // Before a key is known: every policy listing the origin.
        let any = cors.any_headers("https://a.example").unwrap();
        assert!(get(&any, "access-control-expose-headers")
            .unwrap()
            .contains("x-a-only"));
        assert_eq!(get(&any, "access-control-allow-credentials"), Some("true"));
        assert!(cors.any_headers("https://nobody.test").is_none());
    }
}
