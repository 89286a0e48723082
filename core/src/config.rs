//! The configuration file: a raw serde schema (`deny_unknown_fields`, a doc comment on every
//! field) validated into [`Config`], whose errors each name the field path they concern.
//!
//! Everything a request needs from the config (upstream paths, credential headers, the
//! weighted target list) is derived here once per config version, never per request.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use time::OffsetDateTime;

use crate::env::EnvSource;
use crate::keys::{self, KeyHash};
use crate::pricing::{PerToken, Price, PriceTable};
use crate::sigv4::{self, Signer};

mod control_plane;
mod cors;
mod guardrails;
mod jwt;
mod lifecycle;
pub use control_plane::{ControlPlane, RawControlPlane, SigningSecret};
pub use cors::{Cors, CorsPolicy, Preflight, RawCors};
pub use guardrails::{
    Guardrails, Policy, RawAction, RawDetector, RawFail, RawGuardrails, RawPolicy, RawRule,
    RawSide, RawWebhook, Side, WebhookRule,
};
pub use jwt::{
    looks_like_jwt, parse_jwks, JwkKeys, JwtClaimNames, JwtIssuer, JwtKeySource, JwtKeys,
    RawJwtClaims, RawJwtIssuer, RawJwtKeys,
};
pub use lifecycle::{RawShutdown, RawStartupCheck, Shutdown, StartupCheck};
mod responses;
pub use responses::{RawResponses, Responses, ResponsesBackend};
pub mod evaluators;
pub use evaluators::{Evaluators, RawEvaluators};
mod media;
pub use media::{MediaApi, RawMediaPrice};
mod cache;
pub use cache::{
    Cache, CacheBackend, CachePolicy, RawCache, RawCachePolicy, RawSemantic, Semantic,
};
mod passthrough;
pub use passthrough::{Grant, Passthrough, RawPassthrough};

// ---------------------------------------------------------------------------------------------
// Raw schema (what the YAML says)
// ---------------------------------------------------------------------------------------------

/// The YAML file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Where the gRPC services and the admin endpoint listen.
    #[serde(default)]
    pub listen: RawListen,
    /// Upstream providers by name.
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    /// Public model names clients use, each mapped to one or more provider targets.
    #[serde(default)]
    pub models: BTreeMap<String, RawModel>,
    /// Virtual keys.
    #[serde(default)]
    pub keys: Vec<RawKey>,
    /// Issuers whose signed JWTs are client keys by themselves, verified with no lookup.
    #[serde(default)]
    pub jwt_keys: RawJwtKeys,
    /// Request limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// Where per-request log events go; logging is off when the section is absent.
    #[serde(default)]
    pub logging: Option<RawLogging>,
    /// Model prices: overrides of (and additions to) the built-in catalog.
    #[serde(default)]
    pub pricing: RawPricing,
    /// Guardrail policies, and the tenants they apply to.
    #[serde(default)]
    pub guardrails: RawGuardrails,
    /// Per-tenant settings, by tenant name (the `tenant` of keys).
    #[serde(default)]
    pub tenants: BTreeMap<String, RawTenant>,
    /// Feedback tokens on responses and `POST /v1/feedback`; off when the section is absent.
    #[serde(default)]
    pub feedback: Option<RawFeedback>,
    /// Spending budgets, per-request caps and the ledger that keeps spend.
    #[serde(default)]
    pub budgets: RawBudgets,
    /// How the Envoy bootstrap that `tollgate envoy-bootstrap` renders attaches Tollgate.
    #[serde(default)]
    pub envoy: RawEnvoy,
    /// The xDS (ADS) server that hands Envoy the provider clusters; off by default.
    #[serde(default)]
    pub xds: RawXds,
    /// How `serve` drains on SIGTERM or Ctrl-C.
    #[serde(default)]
    pub shutdown: RawShutdown,
    /// Checks `serve` runs before it reports ready (all off by default).
    #[serde(default)]
    pub startup_check: RawStartupCheck,
    /// OpenTelemetry traces: one span per request, exported over OTLP. Off when the section
    /// is absent.
    #[serde(default)]
    pub traces: Option<RawTraces>,
    /// How `POST /v1/responses` keeps responses for `previous_response_id` and
    /// `GET`/`DELETE /v1/responses/{id}`.
    #[serde(default)]
    pub responses: RawResponses,
    /// A control plane (`tollgate control-plane`) that resolves keys this file does not list;
    /// off when the section is absent. File keys win over it on a clash.
    #[serde(default)]
    pub control_plane: Option<RawControlPlane>,
    /// Evaluators the logger runs on logged results once they are durable
    /// (docs/EVALUATORS.md); `serve` only validates the section.
    #[serde(default)]
    pub evaluators: Option<RawEvaluators>,
    /// The response cache (exact, by policy); off when the section is absent.
    #[serde(default)]
    pub cache: Option<RawCache>,
    /// Which keys and tenants may call providers' own APIs through `/passthrough/{provider}/…`
    /// (nobody unless granted here).
    #[serde(default)]
    pub passthrough: RawPassthrough,
}

/// The `traces` section: one span per LLM request (GenAI semantic conventions), exported to
/// an OTLP collector in the background. Read once at start-up: a change takes effect on
/// restart.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTraces {
    /// The collector: `http://host:port` for `grpc` (OTLP/gRPC, usually port 4317; plain
    /// HTTP/2 only), or an `http://` or `https://` URL for `http` (OTLP/HTTP with protobuf
    /// bodies, usually port 4318; `/v1/traces` is added to a URL without a path).
    pub otlp_endpoint: String,
    /// `grpc` (the default) or `http`.
    #[serde(default)]
    pub protocol: TraceProtocol,
    /// The share of new traces that are recorded, 0.0 to 1.0 (default 1.0). A request whose
    /// `traceparent` comes from a sampled trace is always recorded, one from an unsampled
    /// trace never (parent-based sampling).
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// The `service.name` resource attribute of every span (default `tollgate`).
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Finished spans held in memory for the exporter (1 to 1000000); when the queue is full
    /// a span is dropped and counted in `tollgate_trace_spans_total{outcome="dropped"}`, so a
    /// request never waits on tracing.
    #[serde(default = "default_trace_queue_capacity")]
    pub queue_capacity: usize,
    /// The most spans in one export (1 to 10000).
    #[serde(default = "default_trace_batch_size")]
    pub batch_size: usize,
    /// The longest a span waits for its batch to fill, in milliseconds (1 to 60000).
    #[serde(default = "default_trace_max_delay_ms")]
    pub max_delay_ms: u64,
    /// The longest one export may take, in milliseconds (1 to 60000); a batch that takes
    /// longer is dropped and counted as `failed`.
    #[serde(default = "default_trace_timeout_ms")]
    pub timeout_ms: u64,
}

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceProtocol {
    /// OTLP/gRPC (`opentelemetry.proto.collector.trace.v1.TraceService/Export`).
    #[default]
    Grpc,
    /// OTLP/HTTP: `POST` of a protobuf `ExportTraceServiceRequest`.
    Http,
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_service_name() -> String {
    "tollgate".to_owned()
}

fn default_trace_queue_capacity() -> usize {
    4096
}

fn default_trace_batch_size() -> usize {
    512
}

fn default_trace_max_delay_ms() -> u64 {
    1000
}

fn default_trace_timeout_ms() -> u64 {
    10_000
}

/// The `envoy` section: the shape of the rendered bootstrap.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvoy {
    /// Where keys are resolved and the coarse gates (budget precheck, rate limits) applied:
    /// `ext_proc` (the default: in ext_proc's request-headers phase, one gRPC exchange per
    /// request fewer) or `ext_authz` (a separate ext_authz filter, as meshes attach it, e.g.
    /// Istio's CUSTOM authorization provider). `tollgate serve` answers both ways whatever
    /// this says; it only decides the bootstrap.
    #[serde(default)]
    pub auth: AuthAttach,
    /// Client request headers passed on to Tollgate and the providers besides the built-in
    /// allow-list of the rendered bootstrap (README, "Hostile input at the edge"); every other
    /// client header is removed by Envoy. Names, matched case-insensitively.
    #[serde(default)]
    pub client_headers: Vec<String>,
}

/// Which Envoy filter asks Tollgate's key gate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthAttach {
    /// ext_proc's request-headers phase.
    #[default]
    ExtProc,
    /// A separate `envoy.filters.http.ext_authz` filter before ext_proc.
    ExtAuthz,
}

/// The `xds` section: `serve` answers Envoy's Aggregated Discovery Service on `listen.grpc`
/// with one cluster per provider, pushed again whenever a reloaded config changes them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawXds {
    /// Serve ADS (`envoy.service.discovery.v3.AggregatedDiscoveryService`) on `listen.grpc`.
    /// Read at start-up: a change takes effect on restart.
    #[serde(default)]
    pub enabled: bool,
    /// The CA bundle Envoy verifies `https` providers' certificates with: an absolute path on
    /// Envoy's filesystem (Envoy reads it, not `serve`).
    #[serde(default = "default_xds_ca_file")]
    pub ca_file: PathBuf,
}

impl Default for RawXds {
    fn default() -> Self {
        Self {
            enabled: false,
            ca_file: default_xds_ca_file(),
        }
    }
}

fn default_xds_ca_file() -> PathBuf {
    PathBuf::from(DEFAULT_CA_FILE)
}

/// The CA bundle of Debian-family systems, where Envoy looks for provider CAs by default.
pub const DEFAULT_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The `feedback` section: every admitted request's response carries a signed, short-lived
/// token naming it (`x-tollgate-feedback-token`), which `POST /v1/feedback` takes back with a
/// score, label and comment; the feedback is recorded through the logger.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeedback {
    /// Where the HS256 signing secret comes from (exactly one of `env`, `file`; at least 32
    /// bytes). Changing it invalidates every token handed out before.
    pub secret: RawCredential,
    /// How long a token stays valid, in seconds (60 to 2592000, i.e. 30 days).
    #[serde(default = "default_feedback_ttl")]
    pub token_ttl_secs: u64,
    /// The longest `comment` accepted, in bytes (1 to 65536); a longer one is refused with 400.
    #[serde(default = "default_feedback_comment")]
    pub max_comment_bytes: usize,
}

fn default_feedback_ttl() -> u64 {
    24 * 60 * 60
}

fn default_feedback_comment() -> usize {
    2048
}

/// The `budgets` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudgets {
    /// The budgets; every one that applies to a request must admit it.
    #[serde(default)]
    pub limits: Vec<RawBudget>,
    /// Output tokens reserved for a request that sets no `max_tokens` (or
    /// `max_completion_tokens`); 1 to 1000000.
    #[serde(default = "default_reserve_output_tokens")]
    pub default_max_tokens: u64,
    /// The request header naming the end user (else the body's `user`, or Anthropic's
    /// `metadata.user_id`); removed before the request goes upstream.
    #[serde(default = "default_end_user_header")]
    pub end_user_header: String,
    /// Where `serve` reads the spend already recorded in the current periods when it starts,
    /// so that a restart does not reset budgets. Absent: the ledger starts empty.
    #[serde(default)]
    pub restore: Option<RawRestore>,
    /// A Redis server holding the ledger, shared by every replica; absent: each `serve`
    /// keeps its own ledger in memory. Read once at start-up.
    #[serde(default)]
    pub redis: Option<RawRedisLedger>,
    /// What a request meets when the ledger cannot answer: `fail_closed` (503, the default)
    /// or `fail_open` (admitted without a reservation, logged and counted).
    #[serde(default)]
    pub on_ledger_error: RawLedgerErrorPolicy,
    /// The most output tokens one streamed request may receive; the stream then ends
    /// cleanly (`finish_reason: "length"` / `stop_reason: "max_tokens"`). No cap when absent.
    #[serde(default)]
    pub max_output_tokens_per_request: Option<u64>,
    /// The most one streamed request may cost, in USD as a decimal string; its stream ends
    /// cleanly when the output would go past it. No cap when absent.
    #[serde(default)]
    pub max_cost_per_request_usd: Option<String>,
}

/// The Redis ledger.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedisLedger {
    /// `redis://[:password@]host:port[/db]` or, for a server on this host's Unix socket,
    /// `redis+unix:///path/to/redis.sock[?db=N]`, written here (no password), or
    #[serde(default)]
    pub url: Option<String>,
    /// the name of an environment variable holding it (where a password belongs).
    #[serde(default)]
    pub url_env: Option<String>,
    /// Prefix of every key (a Redis Cluster hash tag, so all lines share a slot).
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
    /// The longest a ledger call may take, in milliseconds (1 to 1000). Keep it well below
    /// Envoy's ext_proc `message_timeout` (2 s in Tollgate's bootstraps), so that a slow Redis
    /// meets `on_ledger_error` rather than Envoy's own timeout.
    #[serde(default = "default_redis_timeout_ms")]
    pub timeout_ms: u64,
    /// Directory where settlements that could not reach Redis are written (at shutdown, past
    /// `shutdown.flush_timeout_ms`, or after their retries while running); the next start
    /// applies them to Redis before it serves, so a reservation never stays held. Default:
    /// `ledger/` under `logging.spool_dir` when logging is on; without either, such
    /// settlements are only logged.
    #[serde(default)]
    pub pending_dir: Option<PathBuf>,
}

fn default_redis_prefix() -> String {
    "tollgate".to_owned()
}

fn default_redis_timeout_ms() -> u64 {
    250
}

/// What happens to a request when the ledger cannot answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawLedgerErrorPolicy {
    /// Refuse with 503 `budget_unavailable`: no spend escapes its budget.
    #[default]
    FailClosed,
    /// Admit without a reservation: availability over the budget.
    FailOpen,
}

/// Where spend is restored from at start-up: the logger's stored requests. Exactly one of
/// `ndjson_dir` or `clickhouse`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRestore {
    /// The logger's NDJSON data directory (`tollgate logger --data-dir`), read at start-up.
    /// A directory that does not exist yet holds no spend.
    #[serde(default)]
    pub ndjson_dir: Option<PathBuf>,
    /// The logger's ClickHouse table (`tollgate logger --sink clickhouse`), queried at
    /// start-up. An unreachable server stops the start.
    #[serde(default)]
    pub clickhouse: Option<RawRestoreClickHouse>,
}

/// The ClickHouse table the logger writes, named as `tollgate logger` names it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRestoreClickHouse {
    /// ClickHouse's HTTP URL (`--clickhouse-url`), e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// The database (`--clickhouse-database`).
    #[serde(default = "default_clickhouse_database")]
    pub database: String,
    /// The table (`--clickhouse-table`).
    #[serde(default = "default_clickhouse_table")]
    pub table: String,
    /// The user (`--clickhouse-user`).
    #[serde(default = "default_clickhouse_user")]
    pub user: String,
    /// The name of an environment variable holding the user's password (the logger reads
    /// `TOLLGATE_CLICKHOUSE_PASSWORD`). Absent: no password.
    #[serde(default)]
    pub password_env: Option<String>,
}

fn default_clickhouse_database() -> String {
    "tollgate".to_owned()
}

fn default_clickhouse_table() -> String {
    "requests".to_owned()
}

fn default_clickhouse_user() -> String {
    "default".to_owned()
}

/// Where `serve` restores spend from at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreSource {
    /// The logger's NDJSON data directory.
    Ndjson(PathBuf),
    /// The logger's ClickHouse table.
    ClickHouse(RestoreClickHouse),
}

/// The validated `budgets.restore.clickhouse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreClickHouse {
    /// ClickHouse's HTTP URL.
    pub url: String,
    /// The database.
    pub database: String,
    /// The table.
    pub table: String,
    /// The user.
    pub user: String,
    /// The user's password, when it has one.
    pub password: Option<Secret>,
}

impl Default for RawBudgets {
    fn default() -> Self {
        Self {
            limits: Vec::new(),
            default_max_tokens: default_reserve_output_tokens(),
            end_user_header: default_end_user_header(),
            restore: None,
            redis: None,
            on_ledger_error: RawLedgerErrorPolicy::FailClosed,
            max_output_tokens_per_request: None,
            max_cost_per_request_usd: None,
        }
    }
}

fn default_reserve_output_tokens() -> u64 {
    4096
}

fn default_end_user_header() -> String {
    "x-tollgate-end-user".to_owned()
}

/// One budget.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    /// A unique id, shown to the key's owner in `GET /v1/budget`.
    pub id: String,
    /// Who it limits: `key`, `team`, `tenant` or `end_user`.
    pub scope: crate::budget::Scope,
    /// The one key id, team, tenant or end user it limits; absent: every member of the scope,
    /// each with a budget of its own.
    #[serde(default)]
    pub name: Option<String>,
    /// `daily`, `weekly`, `monthly` (UTC calendar) or `total`.
    pub period: crate::budget::Period,
    /// The limit in USD, as a decimal string (`"100"`, `"0.50"`).
    pub amount_usd: String,
    /// `hard` (refuse with 429; the default) or `soft` (admit, flagged).
    #[serde(default)]
    pub mode: RawBudgetMode,
}

impl RawBudget {
    /// The budget this raw one becomes (a file budget and a control-plane bundle's alike);
    /// the error says what is wrong with `amount_usd`. The other checks are the caller's.
    pub fn budget(&self) -> Result<crate::budget::Budget, String> {
        Ok(crate::budget::Budget {
            id: self.id.clone(),
            scope: self.scope,
            member: self.name.clone(),
            period: self.period,
            limit: crate::pricing::parse_usd(&self.amount_usd)?,
            hard: self.mode == RawBudgetMode::Hard,
        })
    }
}

/// What a budget does when it is used up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawBudgetMode {
    /// Refuse requests that do not fit, with 429.
    #[default]
    Hard,
    /// Admit them, with an `x-tollgate-budget-warning` header, a log line and a metric.
    Soft,
}

/// The `logging` section: how `serve` ships one `LogEvent` per request to `tollgate logger`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    /// The logger's gRPC address, `host:port` (what `tollgate logger --listen` binds).
    pub address: String,
    /// Directory holding batches while the logger is unreachable (created when missing);
    /// they are replayed in order once it is back.
    pub spool_dir: PathBuf,
    /// The most events in one batch sent to the logger (1 to 10000).
    #[serde(default = "default_log_batch_size")]
    pub batch_size: usize,
    /// The longest an event waits for its batch to fill before the batch is sent, in
    /// milliseconds (1 to 60000).
    #[serde(default = "default_log_max_delay_ms")]
    pub max_delay_ms: u64,
    /// Events held in memory for the sender (1 to 1000000); when the queue is full, an event
    /// goes straight to the spool instead of waiting, so a request never blocks on logging.
    #[serde(default = "default_log_queue_capacity")]
    pub queue_capacity: usize,
    /// The spool's size cap in bytes (at least 1 MiB); an event that does not fit is dropped
    /// and counted in `tollgate_log_events_total{outcome="dropped"}`.
    #[serde(default = "default_log_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// With `capture: full`, the most bytes kept of each of the request and the response body
    /// (after redaction; 256 to 65536); the rest is cut at a character boundary and a
    /// `…[truncated by Tollgate: …]` marker says how much was dropped.
    #[serde(default = "default_capture_max_bytes")]
    pub capture_max_bytes: usize,
}

fn default_capture_max_bytes() -> usize {
    16 * 1024
}

fn default_log_batch_size() -> usize {
    500
}

fn default_log_max_delay_ms() -> u64 {
    1000
}

fn default_log_queue_capacity() -> usize {
    10_000
}

fn default_log_spool_max_bytes() -> u64 {
    1024 * 1024 * 1024
}

/// Model prices.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPricing {
    /// Prices by provider model id (the `model` of a target, e.g. `gpt-4o` or
    /// `meta-llama/Llama-3.1-8B-Instruct`), replacing the built-in price of that id.
    #[serde(default)]
    pub models: BTreeMap<String, RawPrice>,
    /// Media models priced in their own units (per image by size and quality, per audio
    /// second, per character), by provider model id, replacing the built-in price of that id.
    #[serde(default)]
    pub media: BTreeMap<String, RawMediaPrice>,
}

/// One model's prices, in USD per million tokens written as decimal strings (`"2.50"`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    /// Uncached prompt tokens.
    pub input: String,
    /// Generated tokens.
    pub output: String,
    /// Prompt tokens read from the provider's cache (default: `input`).
    #[serde(default)]
    pub cache_read: Option<String>,
    /// Prompt tokens written to the provider's cache (default: `input`).
    #[serde(default)]
    pub cache_write: Option<String>,
    /// Reasoning tokens, when priced apart from other output (default: `output`).
    #[serde(default)]
    pub reasoning: Option<String>,
    /// USD per search unit (one rerank query over up to 100 documents, Cohere's billing
    /// unit), e.g. `"0.002"`. A model with this price is charged per search unit for rerank
    /// requests, its per-token prices unused there.
    #[serde(default)]
    pub search_unit: Option<String>,
}

/// Request limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// The largest request body accepted, in bytes (413 above it). Also the Envoy buffer limit
    /// in bootstraps rendered from this config. At most 32 MiB.
    #[serde(default = "default_max_body")]
    pub max_request_body_bytes: u64,
    /// The deepest nesting of objects and arrays a JSON request body may have (400
    /// `request_too_complex` above it). 1 to 128.
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
    /// The most members any one object of a JSON request body may have (400
    /// `request_too_complex` above it). At least 16.
    #[serde(default = "default_max_json_members")]
    pub max_json_members: usize,
    /// Request bodies of at least this many bytes are parsed, judged and translated on a
    /// blocking thread (at most as many at once as there are CPUs), so that they never hold
    /// an async worker that other requests need; smaller bodies stay on the fast path.
    #[serde(default = "default_blocking_body_bytes")]
    pub blocking_body_bytes: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_request_body_bytes: default_max_body(),
            max_json_depth: default_max_json_depth(),
            max_json_members: default_max_json_members(),
            blocking_body_bytes: default_blocking_body_bytes(),
        }
    }
}

fn default_max_json_depth() -> usize {
    64
}

fn default_max_json_members() -> usize {
    1000
}

fn default_blocking_body_bytes() -> u64 {
    256 * 1024
}

/// The validated shape limits of request bodies (`limits.max_json_*`,
/// `limits.blocking_body_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// The deepest nesting of objects and arrays.
    pub max_depth: usize,
    /// The most members of one object.
    pub max_members: usize,
    /// Bodies this large or larger are handled on a blocking thread.
    pub blocking_bytes: u64,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            max_depth: default_max_json_depth(),
            max_members: default_max_json_members(),
            blocking_bytes: default_blocking_body_bytes(),
        }
    }
}

fn default_max_body() -> u64 {
    8 * 1024 * 1024
}

/// The ceiling of `limits.max_request_body_bytes`.
pub const MAX_REQUEST_BODY_CEILING: u64 = 32 * 1024 * 1024;

/// Listen addresses.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    /// The gRPC address for ext_authz and ext_proc: `host:port`, or `unix:/path/to.sock`.
    #[serde(default = "default_grpc")]
    pub grpc: String,
    /// The admin HTTP address (`/metrics`, `/healthz`, `/readyz`): `host:port`.
    #[serde(default = "default_admin")]
    pub admin: String,
}

impl Default for RawListen {
    fn default() -> Self {
        Self {
            grpc: default_grpc(),
            admin: default_admin(),
        }
    }
}

fn default_grpc() -> String {
    "127.0.0.1:50051".to_owned()
}

fn default_admin() -> String {
    "127.0.0.1:9464".to_owned()
}

/// The API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI itself.
    Openai,
    /// Any OpenAI-compatible API (Groq, Mistral, Together, DeepSeek, Fireworks, OpenRouter,
    /// vLLM, Ollama, ...).
    OpenaiCompatible,
    /// Azure OpenAI: deployment in the path, `api-version` query, `api-key` header.
    AzureOpenai,
    /// Anthropic Messages API: `POST {base_url}/messages`, credential in `x-api-key`, an
    /// `anthropic-version` header (the client's when it sends one, else
    /// [`ANTHROPIC_VERSION`]).
    Anthropic,
    /// Google Gemini API: `POST {base_url}/models/{model}:generateContent` (or
    /// `:streamGenerateContent?alt=sse`), credential in `x-goog-api-key`; `base_url` defaults
    /// to [`GEMINI_BASE_URL`].
    Gemini,
    /// Google Vertex AI: `project`, `location` and a service account (the `credential` holds
    /// its JSON key) whose OAuth access token goes in `Authorization: Bearer`. Models whose
    /// id starts with `claude` are Anthropic's (`…/publishers/anthropic/models/{m}:rawPredict`,
    /// `:streamRawPredict`), the others Google's (`…/publishers/google/models/{m}:generateContent`,
    /// `:streamGenerateContent?alt=sse`).
    Vertex,
    /// AWS Bedrock Runtime Converse API: `POST {base_url}/model/{modelId}/converse` (or
    /// `converse-stream`), signed with SigV4 from the `aws` section.
    Bedrock,
    /// Cohere's Rerank API v2: `POST {base_url}/rerank`, `Authorization: Bearer`; `base_url`
    /// defaults to [`COHERE_BASE_URL`]. Serves `POST /v1/rerank` only.
    Cohere,
    /// Jina AI's reranker: `POST {base_url}/rerank` (Cohere's shape, `usage.total_tokens`),
    /// `Authorization: Bearer`; `base_url` defaults to [`JINA_BASE_URL`]. Serves rerank only.
    Jina,
    /// Voyage AI's reranker: `POST {base_url}/rerank` (`top_k`, answers `data[]`),
    /// `Authorization: Bearer`; `base_url` defaults to [`VOYAGE_BASE_URL`]. Serves rerank only.
    Voyage,
    /// Hugging Face text-embeddings-inference: `POST {base_url}/rerank` with `query` and
    /// `texts`, answering `[{index, score}]`; `base_url` is required, the credential
    /// optional (`Authorization: Bearer`). Serves rerank only.
    Tei,
}

impl ProviderKind {
    /// The wire format the provider speaks, which decides the translation.
    pub fn family(self) -> ApiFamily {
        match self {
            ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::AzureOpenai => {
                ApiFamily::OpenAi
            }
            ProviderKind::Anthropic => ApiFamily::Anthropic,
            ProviderKind::Gemini | ProviderKind::Vertex => ApiFamily::Gemini,
            ProviderKind::Bedrock => ApiFamily::Bedrock,
            // Never used to translate: these serve rerank only (see `serves_rerank`).
            ProviderKind::Cohere
            | ProviderKind::Jina
            | ProviderKind::Voyage
            | ProviderKind::Tei => ApiFamily::OpenAi,
        }
    }

    /// Whether the provider serves `POST /v1/rerank` (the rerank kinds, and
    /// `openai_compatible` servers such as vLLM, which answer Cohere's shape at
    /// `{base_url}/rerank`).
    pub fn serves_rerank(self) -> bool {
        self.rerank_only() || self == ProviderKind::OpenaiCompatible
    }

    /// Whether the provider serves rerank and nothing else (no chat, completions, embeddings).
    pub fn rerank_only(self) -> bool {
        match self {
            ProviderKind::Cohere
            | ProviderKind::Jina
            | ProviderKind::Voyage
            | ProviderKind::Tei => true,
            ProviderKind::Openai
            | ProviderKind::OpenaiCompatible
            | ProviderKind::AzureOpenai
            | ProviderKind::Anthropic
            | ProviderKind::Gemini
            | ProviderKind::Vertex
            | ProviderKind::Bedrock => false,
        }
    }

    /// The API of `model` at this provider: Vertex AI serves Anthropic's models too.
    pub fn family_of(self, model: &str) -> ApiFamily {
        match self {
            ProviderKind::Vertex if model.starts_with("claude") => ApiFamily::Anthropic,
            other => other.family(),
        }
    }

    /// The base URL used when the config gives none (`None`: `base_url` is required, or, for
    /// `bedrock`, follows from `aws.region`).
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Gemini => Some(GEMINI_BASE_URL),
            ProviderKind::Cohere => Some(COHERE_BASE_URL),
            ProviderKind::Jina => Some(JINA_BASE_URL),
            ProviderKind::Voyage => Some(VOYAGE_BASE_URL),
            // Per location: see `vertex_base_url`.
            ProviderKind::Vertex => None,
            ProviderKind::Openai
            | ProviderKind::OpenaiCompatible
            | ProviderKind::AzureOpenai
            | ProviderKind::Anthropic
            | ProviderKind::Bedrock
            | ProviderKind::Tei => None,
        }
    }
}

/// The base URL of `kind: cohere` providers that name none.
pub const COHERE_BASE_URL: &str = "https://api.cohere.com/v2";

/// The base URL of `kind: jina` providers that name none.
pub const JINA_BASE_URL: &str = "https://api.jina.ai/v1";

/// The base URL of `kind: voyage` providers that name none.
pub const VOYAGE_BASE_URL: &str = "https://api.voyageai.com/v1";

/// The base URL of `kind: gemini` providers that name none.
pub const GEMINI_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";

/// The base URL of a Vertex AI location (`global` has no regional host).
pub fn vertex_base_url(location: &str) -> String {
    if location == "global" {
        "https://aiplatform.googleapis.com/v1".to_owned()
    } else {
        format!("https://{location}-aiplatform.googleapis.com/v1")
    }
}

/// The wire format of a provider's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFamily {
    /// OpenAI Chat Completions (and its siblings: completions, embeddings).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini `generateContent`.
    Gemini,
    /// AWS Bedrock Converse (JSON requests, `application/vnd.amazon.eventstream` streams).
    Bedrock,
}

/// The `anthropic-version` sent to Anthropic providers when the client sent none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// One upstream provider.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// Which API the provider speaks.
    pub kind: ProviderKind,
    /// The API's base URL, e.g. `https://api.openai.com/v1` or `https://RESOURCE.openai.azure.com`
    /// (required, except for `gemini`, which defaults to [`GEMINI_BASE_URL`], and `bedrock`:
    /// `https://bedrock-runtime.{aws.region}.amazonaws.com`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// The Envoy cluster that reaches this provider (defaults to the provider's name).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Where the provider credential comes from (never the YAML itself). For `vertex`: the
    /// service account's JSON key; omitted, the access token comes from the GCE/GKE metadata
    /// server (workload identity; host `metadata.google.internal` or `GCE_METADATA_HOST`).
    #[serde(default)]
    pub credential: Option<RawCredential>,
    /// Extra headers sent to this provider on every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Azure OpenAI `api-version` (required for `azure_openai`).
    #[serde(default)]
    pub api_version: Option<String>,
    /// Vertex AI project id (required for `vertex`).
    #[serde(default)]
    pub project: Option<String>,
    /// Vertex AI location, e.g. `us-central1` or `global` (required for `vertex`).
    #[serde(default)]
    pub location: Option<String>,
    /// AWS region and credentials (required for `bedrock`, refused for the others).
    #[serde(default)]
    pub aws: Option<RawAws>,
}

/// The `aws` section of a `bedrock` provider: what requests are signed with (SigV4).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAws {
    /// The AWS region, e.g. `us-east-1` (the signing region, and the default host).
    pub region: String,
    /// Where the access key id comes from. Omit it together with `secret_access_key` to use
    /// the standard AWS credential chain (environment, shared profile, web identity / IRSA,
    /// container credentials, instance metadata), refreshed before the credentials expire.
    #[serde(default)]
    pub access_key_id: Option<RawCredential>,
    /// Where the secret access key comes from (given with `access_key_id`).
    #[serde(default)]
    pub secret_access_key: Option<RawCredential>,
    /// Where the session token of temporary credentials comes from (sent as
    /// `x-amz-security-token`; only with `access_key_id`).
    #[serde(default)]
    pub session_token: Option<RawCredential>,
}

/// A secret's source: exactly one of `env` or `file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredential {
    /// Name of an environment variable holding the secret.
    #[serde(default)]
    pub env: Option<String>,
    /// Path of a file holding the secret (surrounding whitespace is trimmed).
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// A public model.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// The provider targets serving this model; one is picked per request by `strategy`.
    pub targets: Vec<RawTarget>,
    /// How a target is picked: `weighted` (default), `priority`, `round_robin`,
    /// `least_latency` or `least_cost`.
    #[serde(default)]
    pub strategy: Strategy,
    /// When consecutive failures take a target out of rotation, for every target of the
    /// model without its own `ejection` (default: 5 failures, 30 s growing to 300 s).
    #[serde(default)]
    pub ejection: Option<routing::RawEjection>,
    /// Per-attempt failover to the model's next target when one fails (unset or `off`: none;
    /// `{}` for the defaults): `max_attempts`, `per_try_timeout_ms`, `timeout_ms`, `on`,
    /// `retry_budget_percent`. Needs the failover clusters of `tollgate envoy-bootstrap`.
    #[serde(default)]
    pub failover: Option<failover::RawFailover>,
}

/// One provider target of a model.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    /// The provider's name (a key of `providers`).
    pub provider: String,
    /// The model id the provider knows (for Azure: the deployment name).
    pub model: String,
    /// Relative share of traffic (default 1; only under strategy `weighted`).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Requests this target may have in flight at once (unset: no limit); a target at its
    /// limit is skipped, and when every target is, the client gets a 503.
    #[serde(default)]
    pub max_requests_in_flight: Option<u32>,
    /// When consecutive failures take this target out of rotation (replaces the model's
    /// `ejection`).
    #[serde(default)]
    pub ejection: Option<routing::RawEjection>,
}

fn default_weight() -> u32 {
    1
}

/// A virtual key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// Stable id of the key, used in logs and metrics (never the key itself).
    pub id: String,
    /// `sha256:<hex>` of the key, as printed by `tollgate keys new`.
    pub hash: String,
    /// The tenant the key belongs to.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The team the key belongs to.
    #[serde(default)]
    pub team: Option<String>,
    /// Public model names the key may use; `"*"` allows every model.
    pub models: Vec<String>,
    /// When the key stops working (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// A disabled key is refused.
    #[serde(default)]
    pub disabled: bool,
    /// The guardrails policy of this key (a key of `guardrails.policies`); overrides its
    /// tenant's.
    #[serde(default)]
    pub guardrails: Option<String>,
    /// Requests per minute this key may make (a burst of that many, then an even rate);
    /// refused with 429 and `Retry-After` beyond it. No limit when absent.
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// What of this key's request and response bodies goes into its log events (`off`,
    /// `metadata`, `full`); overrides its tenant's. Needs `logging`.
    #[serde(default)]
    pub capture: Option<Capture>,
    /// Tokens (input + output) per minute this key may use: requests are admitted while
    /// there is room, and charged their real tokens when they end. No limit when absent.
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
    /// Which web pages may use this key from a browser (CORS); overrides its tenant's. A key
    /// with no policy (its own or its tenant's) is not checked and gets no CORS headers.
    #[serde(default)]
    pub cors: Option<RawCors>,
}

impl RawKey {
    /// The in-memory key this raw key becomes, for a file key and a control-plane bundle's
    /// alike: the guardrails policy and payload capture are the key's own, else its tenant's
    /// (`tenant`: that tenant's settings). Checks are the caller's.
    pub fn bundle(
        &self,
        hash: KeyHash,
        guardrails: &Guardrails,
        tenant: Option<&RawTenant>,
    ) -> KeyBundle {
        KeyBundle {
            id: self.id.clone(),
            hash,
            tenant: self.tenant.clone(),
            team: self.team.clone(),
            models: if self.models.iter().any(|m| m == "*") {
                ModelAccess::All
            } else {
                ModelAccess::Only(self.models.iter().cloned().collect())
            },
            expires_at: self.expires_at,
            disabled: self.disabled,
            guardrails: guardrails.resolve(self.guardrails.as_deref(), self.tenant.as_deref()),
            requests_per_minute: self.requests_per_minute,
            capture: self
                .capture
                .or_else(|| tenant.and_then(|t| t.capture))
                .unwrap_or_default(),
            tokens_per_minute: self.tokens_per_minute,
            tenant_requests_per_minute: tenant.and_then(|t| t.requests_per_minute),
            tenant_tokens_per_minute: tenant.and_then(|t| t.tokens_per_minute),
            extra_budgets: Vec::new(),
        }
    }
}

/// Limits and settings shared by every key of a tenant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// Requests per minute for all the tenant's keys together.
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// Payload capture of every key of the tenant that sets none itself (default `off`).
    #[serde(default)]
    pub capture: Option<Capture>,
    /// Tokens per minute for all the tenant's keys together.
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
    /// Which web pages may use the tenant's keys from a browser (CORS), for every key of the
    /// tenant that sets none itself.
    #[serde(default)]
    pub cors: Option<RawCors>,
}

/// How much of a request's payloads its log event carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capture {
    /// Nothing.
    #[default]
    Off,
    /// Sizes, content types, message, tool and tool-call counts; no content.
    Metadata,
    /// The metadata plus the request and response bodies (streams: the assembled text), with
    /// PII and secrets redacted and each capped at `logging.capture_max_bytes`.
    Full,
}

impl Capture {
    /// The name in config, metadata and log events.
    pub fn label(self) -> &'static str {
        match self {
            Capture::Off => "off",
            Capture::Metadata => "metadata",
            Capture::Full => "full",
        }
    }

    /// Parses [`Capture::label`]; anything else is `off`.
    pub fn from_label(s: &str) -> Capture {
        match s {
            "metadata" => Capture::Metadata,
            "full" => Capture::Full,
            _ => Capture::Off,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One problem in a config file, with the field path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the field, e.g. `providers.openai.base_url`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

struct Errors(Vec<ConfigError>);

impl Errors {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Validated config
// ---------------------------------------------------------------------------------------------

/// The endpoints Tollgate understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `GET /v1/models` (`/v1beta/models` for Gemini clients), answered by Tollgate itself.
    Models,
    /// `POST /v1/messages` (Anthropic Messages).
    Messages,
    /// `POST /v1beta/models/{model}:generateContent` or `:streamGenerateContent` (Gemini; the
    /// model and whether it streams come from the path, see [`gemini_call`]).
    GenerateContent,
    /// `POST /v1/feedback`, answered by Tollgate itself.
    Feedback,
    /// `POST /v1/messages/count_tokens` (Anthropic), answered by Tollgate itself with the
    /// count of the model's tokenizer (OpenAI-family models) or the documented estimate.
    CountTokens,
    /// `POST /v1/responses` (OpenAI Responses): natively to OpenAI and Azure, through the
    /// chat hub to every other provider.
    Responses,
    /// `POST /v1beta/models/{model}:embedContent` or `:batchEmbedContents` (Gemini; the model
    /// and the method come from the path, see [`gemini_method`]): natively to Gemini, through
    /// translation to OpenAI-family embedding models.
    EmbedContent,
    /// OpenAI's images, audio and moderations APIs (to OpenAI, Azure and OpenAI-compatible
    /// providers), priced in their own units.
    Media(MediaApi),
    /// `POST /v1/rerank` (or Cohere's `/v2/rerank`) in Cohere's shape, to the rerank provider
    /// kinds (`cohere`, `jina`, `voyage`, `tei`) and `openai_compatible` servers (vLLM).
    Rerank,
    /// `/passthrough/{provider}/{path}`, any method: the provider's own API, forwarded with
    /// the client's key swapped for the provider's credential (see [`passthrough_call`]).
    Passthrough,
}

/// A Gemini method other than `generateContent` that Tollgate routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeminiMethod {
    /// `:countTokens`.
    CountTokens,
    /// `:embedContent` (one content).
    EmbedContent,
    /// `:batchEmbedContents` (`requests[]`, each one `embedContent` request).
    BatchEmbedContents,
}

/// The model and method of a Gemini client path for `:countTokens`, `:embedContent` or
/// `:batchEmbedContents` (`/v1beta/models/…` or `/v1/models/…`), without its query.
pub fn gemini_method(path: &str) -> Option<(&str, GeminiMethod)> {
    let rest = path
        .strip_prefix("/v1beta/models/")
        .or_else(|| path.strip_prefix("/v1/models/"))?;
    let (model, method) = rest.rsplit_once(':')?;
    if model.is_empty() || model.contains('/') {
        return None;
    }
    match method {
        "countTokens" => Some((model, GeminiMethod::CountTokens)),
        "embedContent" => Some((model, GeminiMethod::EmbedContent)),
        "batchEmbedContents" => Some((model, GeminiMethod::BatchEmbedContents)),
        _ => None,
    }
}

/// The path prefix of passthrough routes.
pub const PASSTHROUGH_PREFIX: &str = "/passthrough/";

/// The provider name and the provider path (with its leading `/`, query kept) of a passthrough
/// request path `/passthrough/{provider}/{path}`; the path is `/` when none follows.
pub fn passthrough_call(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(PASSTHROUGH_PREFIX)?;
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (provider, tail) = rest.split_at(split);
    if provider.is_empty() {
        return None;
    }
    Some((provider, if tail.is_empty() { "/" } else { tail }))
}

/// The model and streaming flag of a Gemini client path (`/v1beta/models/{model}:generateContent`
/// or `:streamGenerateContent`, `/v1/…` too), without its query.
pub fn gemini_call(path: &str) -> Option<(&str, bool)> {
    let rest = path
        .strip_prefix("/v1beta/models/")
        .or_else(|| path.strip_prefix("/v1/models/"))?;
    let (model, method) = rest.rsplit_once(':')?;
    if model.is_empty() || model.contains('/') {
        return None;
    }
    match method {
        "generateContent" => Some((model, false)),
        "streamGenerateContent" => Some((model, true)),
        _ => None,
    }
}

impl Endpoint {
    /// Every endpoint that is forwarded to a provider.
    pub const FORWARDED: [Endpoint; 5] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Messages,
        Endpoint::GenerateContent,
    ];

    /// The endpoint of a client request (`path` without its query).
    pub fn from_request(method: &str, path: &str) -> Option<Endpoint> {
        match (method, path) {
            ("POST", "/v1/chat/completions") => Some(Endpoint::ChatCompletions),
            ("POST", "/v1/completions") => Some(Endpoint::Completions),
            ("POST", "/v1/embeddings") => Some(Endpoint::Embeddings),
            ("GET", "/v1/models" | "/v1beta/models") => Some(Endpoint::Models),
            ("POST", "/v1/messages") => Some(Endpoint::Messages),
            ("POST", p) if gemini_call(p).is_some() => Some(Endpoint::GenerateContent),
            ("POST", "/v1/feedback") => Some(Endpoint::Feedback),
            ("POST", "/v1/messages/count_tokens") => Some(Endpoint::CountTokens),
            ("POST", "/v1/responses") => Some(Endpoint::Responses),
            (_, p) if passthrough_call(p).is_some() => Some(Endpoint::Passthrough),
            ("POST", "/v1/rerank" | "/v2/rerank") => Some(Endpoint::Rerank),
            ("POST", p) if MediaApi::from_path(p).is_some() => {
                MediaApi::from_path(p).map(Endpoint::Media)
            }
            ("POST", p) => match gemini_method(p) {
                Some((_, GeminiMethod::CountTokens)) => Some(Endpoint::CountTokens),
                Some(_) => Some(Endpoint::EmbedContent),
                None => None,
            },
            _ => None,
        }
    }

    /// The path after the API's base, e.g. `chat/completions`.
    pub fn suffix(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Models => "models",
            Endpoint::Messages => "messages",
            Endpoint::GenerateContent => "generateContent",
            Endpoint::Feedback => "feedback",
            Endpoint::CountTokens => "messages/count_tokens",
            Endpoint::Responses => "responses",
            Endpoint::EmbedContent => "embedContent",
            Endpoint::Media(api) => api.suffix(),
            Endpoint::Rerank => "rerank",
            Endpoint::Passthrough => "passthrough",
        }
    }

    /// A short label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Models => "models",
            Endpoint::Messages => "messages",
            Endpoint::GenerateContent => "generate_content",
            Endpoint::Feedback => "feedback",
            Endpoint::CountTokens => "count_tokens",
            Endpoint::Responses => "responses",
            Endpoint::EmbedContent => "embed_content",
            Endpoint::Media(api) => api.label(),
            Endpoint::Rerank => "rerank",
            Endpoint::Passthrough => "passthrough",
        }
    }

    fn index(self) -> usize {
        match self {
            Endpoint::ChatCompletions => 0,
            Endpoint::Completions => 1,
            Endpoint::Embeddings => 2,
            Endpoint::Messages => 3,
            Endpoint::GenerateContent => 4,
            Endpoint::Models => 5,
            Endpoint::Feedback => 6,
            Endpoint::CountTokens => 7,
            Endpoint::Responses => 8,
            Endpoint::EmbedContent => 9,
            Endpoint::Media(_) => 11,
            // 9 is Gemini's `EmbedContent` (issue 15, item 5, merged in parallel).
            Endpoint::Rerank => 10,
            Endpoint::Passthrough => 12,
        }
    }
}

/// A string that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Self {
        Self(value)
    }
    /// The secret itself; call only where it goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where the gRPC server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix domain socket path.
    Unix(PathBuf),
}

impl fmt::Display for GrpcAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrpcAddr::Tcp(a) => write!(f, "{a}"),
            GrpcAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl GrpcAddr {
    /// Parses `host:port` or `unix:/path`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a socket path".into());
            }
            return Ok(GrpcAddr::Unix(PathBuf::from(path)));
        }
        s.parse()
            .map(GrpcAddr::Tcp)
            .map_err(|_| format!("`{s}` is neither `host:port` nor `unix:/path`"))
    }
}

/// Listen addresses.
#[derive(Debug, Clone)]
pub struct Listen {
    /// The gRPC services.
    pub grpc: GrpcAddr,
    /// The admin HTTP endpoint.
    pub admin: SocketAddr,
}

/// The URL scheme towards a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (local servers, the mock).
    Http,
    /// HTTPS.
    Https,
}

/// A validated provider.
#[derive(Debug)]
pub struct Provider {
    /// Its name in the config.
    pub name: String,
    /// The API it speaks.
    pub kind: ProviderKind,
    /// The Envoy cluster routing reaches it through.
    pub cluster: String,
    /// Scheme of its base URL.
    pub scheme: Scheme,
    /// Host of its base URL.
    pub host: String,
    /// Port of its base URL (explicit or the scheme's default).
    pub port: u16,
    /// `:authority` to send (`host` or `host:port` as written in the base URL).
    pub authority: String,
    /// The base URL's path without a trailing slash (`/v1`, or empty).
    pub base_path: String,
    /// Header name and value carrying the credential, when one is configured.
    pub credential_header: Option<(&'static str, Secret)>,
    /// Extra headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Azure `api-version`.
    pub api_version: Option<String>,
    /// Vertex AI project and location.
    pub vertex: Option<(String, String)>,
    /// The service account and its current access token (Vertex AI).
    pub google: Option<Arc<GoogleAuth>>,
    /// The SigV4 signer of a `bedrock` provider.
    pub aws: Option<Signer>,
    /// Where a `bedrock` provider without explicit keys gets its credentials (the AWS chain);
    /// for the sources that answer over HTTP, the service fetches them into `aws`.
    pub aws_source: Option<AwsSource>,
    /// The GCE/GKE metadata server and its current access token (a `vertex` provider without
    /// a service account key).
    pub gce_metadata: Option<Arc<GceMetadata>>,
}

/// One provider target of a model, with its upstream paths precomputed.
#[derive(Debug)]
pub struct Target {
    /// The provider.
    pub provider: Arc<Provider>,
    /// The provider's model id (Azure: deployment).
    pub upstream_model: String,
    /// Relative share of traffic.
    pub weight: u32,
    /// The API the provider speaks for this model.
    pub family: ApiFamily,
    /// Requests it may have in flight at once (`None`: no limit).
    pub max_requests_in_flight: Option<u32>,
    /// Live routing state (in-flight count, latency average), kept across reloads.
    pub stats: Arc<TargetStats>,
    paths: [String; 5],
    /// The streaming path where it differs: Gemini's `…:streamGenerateContent?alt=sse`,
    /// Bedrock's `converse-stream` (other providers stream on the same path).
    stream_path: Option<String>,
}

impl Target {
    /// The upstream `:path` (with query) for a forwarded endpoint.
    pub fn path(&self, endpoint: Endpoint) -> &str {
        self.paths
            .get(endpoint.index())
            .map(String::as_str)
            .unwrap_or("/")
    }

    /// The upstream `:path` of a request to `endpoint`, streaming or not.
    pub fn path_for(&self, endpoint: Endpoint, stream: bool) -> &str {
        match &self.stream_path {
            Some(p) if stream => p,
            _ => self.path(endpoint),
        }
    }
}

/// A public model.
#[derive(Debug)]
pub struct Model {
    /// The public name.
    pub name: String,
    /// Its targets (never empty).
    pub targets: Vec<Target>,
    total_weight: u64,
    strategy: Strategy,
    /// The `round_robin` cursor, kept across reloads.
    cursor: Arc<std::sync::atomic::AtomicU64>,
    /// Per-attempt failover (`None`: one attempt per request, today's path).
    pub failover: Option<failover::Failover>,
}

impl Model {
    /// The sum of the targets' weights.
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }

    /// The target owning the point `r` in `[0, total_weight)`.
    pub fn pick(&self, r: u64) -> Option<&Target> {
        let mut acc = 0u64;
        for t in &self.targets {
            acc += u64::from(t.weight);
            if r < acc {
                return Some(t);
            }
        }
        self.targets.last()
    }
}

/// Which models a key may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelAccess {
    /// Every configured model.
    All,
    /// Only these public names.
    Only(HashSet<String>),
}

impl ModelAccess {
    /// Whether `model` is allowed.
    pub fn allows(&self, model: &str) -> bool {
        match self {
            ModelAccess::All => true,
            ModelAccess::Only(set) => set.contains(model),
        }
    }
}

/// Everything known about a virtual key.
#[derive(Debug, Clone)]
pub struct KeyBundle {
    /// Stable id.
    pub id: String,
    /// SHA-256 of the key.
    pub hash: KeyHash,
    /// Tenant.
    pub tenant: Option<String>,
    /// Team.
    pub team: Option<String>,
    /// Allowed models.
    pub models: ModelAccess,
    /// Expiry.
    pub expires_at: Option<OffsetDateTime>,
    /// Disabled by an operator.
    pub disabled: bool,
    /// The guardrails policy that applies: the key's own, else its tenant's.
    pub guardrails: Option<String>,
    /// The key's own request-rate limit, per minute.
    pub requests_per_minute: Option<u32>,
    /// Payload capture: the key's own, else its tenant's, else off.
    pub capture: Capture,
    /// The key's own token-rate limit, per minute.
    pub tokens_per_minute: Option<u32>,
    /// Budgets that came with the key from outside the file (the control plane's bundle),
    /// applied besides `budgets.limits`; empty for file keys.
    pub extra_budgets: Vec<crate::budget::Budget>,
    /// The request-rate limit per minute of the key's tenant as the key came with it (a
    /// control-plane bundle's tenant); the file's `tenants` entry of that name wins.
    pub tenant_requests_per_minute: Option<u32>,
    /// The token-rate limit per minute of the key's tenant as the key came with it; the
    /// file's `tenants` entry of that name wins.
    pub tenant_tokens_per_minute: Option<u32>,
}

/// The validated `feedback` section.
#[derive(Debug, Clone)]
pub struct Feedback {
    /// The HS256 signing secret.
    pub secret: Secret,
    /// How long a token stays valid.
    pub token_ttl: std::time::Duration,
    /// The longest comment accepted, in bytes.
    pub max_comment_bytes: usize,
}

/// The longest feedback `label` accepted, in bytes.
pub const MAX_FEEDBACK_LABEL_BYTES: usize = 128;

fn validate_feedback(
    raw: &RawFeedback,
    logging: bool,
    env: &dyn EnvSource,
    errs: &mut Errors,
) -> Option<Feedback> {
    let before = errs.0.len();
    if !logging {
        errs.add(
            "feedback",
            "needs the `logging` section: feedback is recorded through the logger",
        );
    }
    let secret = read_secret(&raw.secret, "feedback.secret", env, errs);
    if secret.as_ref().is_some_and(|s| s.len() < 32) {
        errs.add("feedback.secret", "must be at least 32 bytes long");
    }
    if !(60..=30 * 24 * 60 * 60).contains(&raw.token_ttl_secs) {
        errs.add("feedback.token_ttl_secs", "must be between 60 and 2592000");
    }
    if !(1..=65_536).contains(&raw.max_comment_bytes) {
        errs.add("feedback.max_comment_bytes", "must be between 1 and 65536");
    }
    let secret = secret?;
    (errs.0.len() == before).then(|| Feedback {
        secret: Secret::new(secret),
        token_ttl: std::time::Duration::from_secs(raw.token_ttl_secs),
        max_comment_bytes: raw.max_comment_bytes,
    })
}

/// The secrets a config check let pass missing: `(field path, what is missing)`.
pub type MissingSecrets = Vec<(String, String)>;

/// What stands in for a secret the source let pass missing ([`EnvSource::allow_missing_secret`]):
/// long enough and plain enough to pass every check made on a real one.
pub const MISSING_SECRET_PLACEHOLDER: &str = "tollgate-check-missing-secret-placeholder-0123456789";

/// A missing secret: the placeholder when the source lets it pass, else an error naming `path`.
fn missing_secret(
    path: String,
    why: String,
    env: &dyn EnvSource,
    errs: &mut Errors,
) -> Result<String, ()> {
    if env.allow_missing_secret(&path, &why) {
        Ok(MISSING_SECRET_PLACEHOLDER.to_owned())
    } else {
        errs.add(path, why);
        Err(())
    }
}

/// Reads a secret from its source; an error names `path`.
fn read_secret(
    c: &RawCredential,
    path: &str,
    env: &dyn EnvSource,
    errs: &mut Errors,
) -> Option<String> {
    match (&c.env, &c.file) {
        (Some(var), None) => match env.var(var).filter(|v| !v.trim().is_empty()) {
            Some(v) => Ok(v),
            None => missing_secret(
                format!("{path}.env"),
                format!("environment variable `{var}` is not set"),
                env,
                errs,
            ),
        },
        (None, Some(file)) => match std::fs::read_to_string(file) {
            Ok(s) => Ok(s.trim().to_owned()),
            Err(e) => missing_secret(
                format!("{path}.file"),
                format!("cannot read {}: {e}", file.display()),
                env,
                errs,
            ),
        },
        _ => {
            errs.add(path, "give exactly one of `env` or `file`");
            Err(())
        }
    }
    .ok()
}

/// The validated `logging` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logging {
    /// The logger's `host:port`.
    pub address: String,
    /// The spool directory.
    pub spool_dir: PathBuf,
    /// The most events in one batch.
    pub batch_size: usize,
    /// The longest an event waits for its batch to fill.
    pub max_delay: std::time::Duration,
    /// The in-memory queue's capacity, in events.
    pub queue_capacity: usize,
    /// The spool's size cap in bytes.
    pub spool_max_bytes: u64,
    /// The most bytes captured of each body (`capture: full`).
    pub capture_max_bytes: usize,
}

/// The validated `xds` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xds {
    /// Whether `serve` answers ADS.
    pub enabled: bool,
    /// The CA bundle path on Envoy's filesystem, for `https` providers.
    pub ca_file: PathBuf,
}

fn validate_xds(raw: &RawXds, errs: &mut Errors) -> Xds {
    if !raw.ca_file.is_absolute() {
        errs.add(
            "xds.ca_file",
            format!(
                "`{}` must be an absolute path (Envoy resolves it on its own filesystem)",
                raw.ca_file.display()
            ),
        );
    }
    Xds {
        enabled: raw.enabled,
        ca_file: raw.ca_file.clone(),
    }
}

fn validate_logging(raw: &RawLogging, errs: &mut Errors) -> Option<Logging> {
    let before = errs.0.len();
    let authority = raw.address.parse::<http::uri::Authority>().ok();
    if raw.address.contains('/') || authority.as_ref().and_then(|a| a.port_u16()).is_none() {
        errs.add(
            "logging.address",
            format!("`{}` is not `host:port`", raw.address),
        );
    }
    if raw.spool_dir.as_os_str().is_empty() {
        errs.add("logging.spool_dir", "must not be empty");
    }
    if !(1..=10_000).contains(&raw.batch_size) {
        errs.add("logging.batch_size", "must be between 1 and 10000");
    }
    if !(1..=60_000).contains(&raw.max_delay_ms) {
        errs.add("logging.max_delay_ms", "must be between 1 and 60000");
    }
    if !(1..=1_000_000).contains(&raw.queue_capacity) {
        errs.add("logging.queue_capacity", "must be between 1 and 1000000");
    }
    if raw.spool_max_bytes < 1024 * 1024 {
        errs.add(
            "logging.spool_max_bytes",
            "must be at least 1048576 (1 MiB)",
        );
    }
    if !(256..=65_536).contains(&raw.capture_max_bytes) {
        errs.add("logging.capture_max_bytes", "must be between 256 and 65536");
    }
    (errs.0.len() == before).then(|| Logging {
        address: raw.address.clone(),
        spool_dir: raw.spool_dir.clone(),
        batch_size: raw.batch_size,
        max_delay: std::time::Duration::from_millis(raw.max_delay_ms),
        queue_capacity: raw.queue_capacity,
        spool_max_bytes: raw.spool_max_bytes,
        capture_max_bytes: raw.capture_max_bytes,
    })
}

/// The validated `traces` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Traces {
    /// Where spans go: the gRPC endpoint (`http://host:port`), or the full OTLP/HTTP URL
    /// (`/v1/traces` added when the configured URL had no path).
    pub endpoint: String,
    /// How they go there.
    pub protocol: TraceProtocol,
    /// The share of new traces recorded, 0.0 to 1.0.
    pub sample_ratio: f64,
    /// `service.name`.
    pub service_name: String,
    /// The in-memory queue's capacity, in spans.
    pub queue_capacity: usize,
    /// The most spans in one export.
    pub batch_size: usize,
    /// The longest a span waits for its batch to fill.
    pub max_delay: std::time::Duration,
    /// The longest one export may take.
    pub timeout: std::time::Duration,
}

fn validate_traces(raw: &RawTraces, errs: &mut Errors) -> Option<Traces> {
    let before = errs.0.len();
    let endpoint = match raw.otlp_endpoint.parse::<http::Uri>() {
        Ok(uri) => {
            let scheme = uri.scheme_str().unwrap_or("");
            let has_path = !matches!(uri.path(), "" | "/");
            match raw.protocol {
                // Not echoed: it may hold a password.
                _ if uri.authority().is_some_and(|a| a.as_str().contains('@')) => {
                    errs.add(
                        "traces.otlp_endpoint",
                        "must not carry credentials (user:password@); \
                         let a local OpenTelemetry Collector authenticate to your backend",
                    );
                    String::new()
                }
                _ if uri.host().is_none() || !matches!(scheme, "http" | "https") => {
                    errs.add(
                        "traces.otlp_endpoint",
                        format!("`{}` is not an http:// or https:// URL", raw.otlp_endpoint),
                    );
                    String::new()
                }
                TraceProtocol::Grpc if scheme == "https" => {
                    errs.add(
                        "traces.otlp_endpoint",
                        "OTLP/gRPC is sent over plain HTTP/2 only: use an http:// collector \
                         (e.g. a local OpenTelemetry Collector), or `protocol: http` for https",
                    );
                    String::new()
                }
                TraceProtocol::Grpc if has_path || uri.query().is_some() => {
                    errs.add(
                        "traces.otlp_endpoint",
                        "an OTLP/gRPC endpoint is `http://host:port`, without a path",
                    );
                    String::new()
                }
                TraceProtocol::Grpc => raw.otlp_endpoint.trim_end_matches('/').to_owned(),
                TraceProtocol::Http if has_path => raw.otlp_endpoint.clone(),
                TraceProtocol::Http => {
                    format!("{}/v1/traces", raw.otlp_endpoint.trim_end_matches('/'))
                }
            }
        }
        Err(_) => {
            errs.add(
                "traces.otlp_endpoint",
                format!("`{}` is not a URL", raw.otlp_endpoint),
            );
            String::new()
        }
    };
    if !(0.0..=1.0).contains(&raw.sample_ratio) {
        errs.add("traces.sample_ratio", "must be between 0.0 and 1.0");
    }
    if raw.service_name.trim().is_empty() {
        errs.add("traces.service_name", "must not be empty");
    }
    if !(1..=1_000_000).contains(&raw.queue_capacity) {
        errs.add("traces.queue_capacity", "must be between 1 and 1000000");
    }
    if !(1..=10_000).contains(&raw.batch_size) {
        errs.add("traces.batch_size", "must be between 1 and 10000");
    }
    if !(1..=60_000).contains(&raw.max_delay_ms) {
        errs.add("traces.max_delay_ms", "must be between 1 and 60000");
    }
    if !(1..=60_000).contains(&raw.timeout_ms) {
        errs.add("traces.timeout_ms", "must be between 1 and 60000");
    }
    (errs.0.len() == before).then(|| Traces {
        endpoint,
        protocol: raw.protocol,
        sample_ratio: raw.sample_ratio,
        service_name: raw.service_name.clone(),
        queue_capacity: raw.queue_capacity,
        batch_size: raw.batch_size,
        max_delay: std::time::Duration::from_millis(raw.max_delay_ms),
        timeout: std::time::Duration::from_millis(raw.timeout_ms),
    })
}

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Listen addresses.
    pub listen: Listen,
    /// Providers by name.
    pub providers: BTreeMap<String, Arc<Provider>>,
    /// Models by public name.
    pub models: BTreeMap<String, Model>,
    /// Keys by hash.
    pub keys: HashMap<KeyHash, Arc<KeyBundle>>,
    /// The issuers of self-contained JWT client keys (none: JWTs are not accepted).
    pub jwt_keys: JwtKeys,
    /// The largest request body accepted, in bytes.
    pub max_request_body_bytes: u64,
    /// The shape limits of request bodies, and where their handling leaves the async workers.
    pub body_limits: BodyLimits,
    /// Per-request log shipping; `None` when logging is off. Read once at start-up: a change
    /// takes effect on restart.
    pub logging: Option<Logging>,
    /// Model prices: the built-in catalog with the config's overrides.
    pub prices: PriceTable,
    /// Prices per rerank search unit by provider model id (`pricing.models.*.search_unit`).
    pub search_unit_prices: rerank::SearchUnitPrices,
    /// Compiled guardrail policies.
    pub guardrails: Guardrails,
    /// Request-rate limits per tenant, per minute.
    pub tenant_requests_per_minute: HashMap<String, u32>,
    /// Feedback tokens and `POST /v1/feedback`; `None` when off.
    pub feedback: Option<Feedback>,
    /// Token-rate limits per tenant, per minute.
    pub tenant_tokens_per_minute: HashMap<String, u32>,
    /// Spending budgets.
    pub budgets: Budgets,
    /// Which filter of the rendered bootstrap asks the key gate.
    pub envoy_auth: AuthAttach,
    /// Client headers the rendered bootstrap keeps besides its built-in allow-list, lowercase.
    pub envoy_client_headers: Vec<String>,
    /// The xDS server.
    pub xds: Xds,
    /// How `serve` drains on SIGTERM or Ctrl-C (read when the signal arrives).
    pub shutdown: Shutdown,
    /// Checks before `serve` reports ready (read at start-up).
    pub startup_check: StartupCheck,
    /// OpenTelemetry span export; `None` when traces are off. Read once at start-up: a change
    /// takes effect on restart.
    pub traces: Option<Traces>,
    /// Browser access (CORS) policies of keys and tenants.
    pub cors: Cors,
    /// The Responses API's store.
    pub responses: Responses,
    /// The control plane resolving keys the file does not list; `None` when off.
    pub control_plane: Option<ControlPlane>,
    /// The evaluators the logger runs (empty when the section is absent).
    pub evaluators: Evaluators,
    /// The response cache; `None` when off.
    pub cache: Option<Cache>,
    /// Who may use the passthrough routes, to which providers.
    pub passthrough: Passthrough,
}

/// The validated `budgets` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budgets {
    /// Every budget.
    pub limits: Vec<crate::budget::Budget>,
    /// Output tokens reserved for a request that sets no limit.
    pub default_max_tokens: u64,
    /// The end-user header, lowercase.
    pub end_user_header: String,
    /// Where to restore spend from at start-up.
    pub restore: Option<RestoreSource>,
    /// The shared Redis ledger, when configured.
    pub redis: Option<RedisLedgerConfig>,
    /// Admit requests unreserved when the ledger cannot answer.
    pub fail_open: bool,
    /// Output tokens one streamed request may receive.
    pub max_output_tokens_per_request: Option<u64>,
    /// What one streamed request may cost.
    pub max_cost_per_request: Option<crate::pricing::Picodollars>,
}

/// The validated Redis ledger settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisLedgerConfig {
    /// The URL (may hold a password: never printed).
    pub url: Secret,
    /// Key prefix.
    pub key_prefix: String,
    /// Per-call timeout.
    pub timeout: std::time::Duration,
    /// Where settlements that could not reach Redis wait for the next start (`None`: the
    /// logging spool's `ledger/`, or nowhere).
    pub pending_dir: Option<PathBuf>,
}

/// Whether `name` is a plain SQL identifier: letters, digits and `_`, not starting with a digit
/// (what a ClickHouse database or table name may be here, so it can go into SQL unquoted).
pub fn plain_identifier(name: &str) -> bool {
    name.bytes().next().is_some_and(|b| !b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn validate_restore(
    raw: &RawRestore,
    env: &dyn EnvSource,
    errs: &mut Errors,
) -> Option<RestoreSource> {
    match (&raw.ndjson_dir, &raw.clickhouse) {
        (Some(dir), None) => {
            if dir.as_os_str().is_empty() {
                errs.add("budgets.restore.ndjson_dir", "must not be empty");
                return None;
            }
            Some(RestoreSource::Ndjson(dir.clone()))
        }
        (None, Some(ch)) => {
            let before = errs.0.len();
            if !(ch.url.starts_with("http://") || ch.url.starts_with("https://")) {
                errs.add(
                    "budgets.restore.clickhouse.url",
                    "must start with http:// or https://",
                );
            }
            if ch.url.contains('@') {
                errs.add(
                    "budgets.restore.clickhouse.url",
                    "holds credentials: give the user in `user` and the password through `password_env`",
                );
            }
            for (field, name) in [("database", &ch.database), ("table", &ch.table)] {
                if !plain_identifier(name) {
                    errs.add(
                        format!("budgets.restore.clickhouse.{field}"),
                        "may use only letters, digits and `_`, and not start with a digit",
                    );
                }
            }
            if ch.user.trim().is_empty() {
                errs.add("budgets.restore.clickhouse.user", "must not be empty");
            }
            let password = match &ch.password_env {
                None => None,
                Some(var) => match env.var(var).filter(|v| !v.is_empty()) {
                    Some(p) => Some(Secret::new(p)),
                    None => missing_secret(
                        "budgets.restore.clickhouse.password_env".to_owned(),
                        format!("environment variable `{var}` is not set"),
                        env,
                        errs,
                    )
                    .ok()
                    .map(Secret::new),
                },
            };
            (errs.0.len() == before).then(|| {
                RestoreSource::ClickHouse(RestoreClickHouse {
                    url: ch.url.clone(),
                    database: ch.database.clone(),
                    table: ch.table.clone(),
                    user: ch.user.clone(),
                    password,
                })
            })
        }
        _ => {
            errs.add(
                "budgets.restore",
                "give exactly one of `ndjson_dir` or `clickhouse`",
            );
            None
        }
    }
}

fn validate_budgets(raw: &RawBudgets, env: &dyn EnvSource, errs: &mut Errors) -> Budgets {
    let mut limits = Vec::new();
    let mut ids = HashSet::new();
    for (i, b) in raw.limits.iter().enumerate() {
        let path = format!("budgets.limits[{i}]");
        if b.id.trim().is_empty() {
            errs.add(format!("{path}.id"), "must not be empty");
        } else if !ids.insert(b.id.as_str()) {
            errs.add(
                format!("{path}.id"),
                format!("duplicate budget id `{}`", b.id),
            );
        }
        if b.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            errs.add(
                format!("{path}.name"),
                "must not be empty (leave it out for every member)",
            );
        }
        match b.budget() {
            Ok(budget) => limits.push(budget),
            Err(m) => errs.add(format!("{path}.amount_usd"), m),
        }
    }
    if !(1..=1_000_000).contains(&raw.default_max_tokens) {
        errs.add(
            "budgets.default_max_tokens",
            "must be between 1 and 1000000",
        );
    }
    let header = raw.end_user_header.to_ascii_lowercase();
    if !valid_header_name(&header) {
        errs.add("budgets.end_user_header", "is not a valid header name");
    }
    let restore = raw
        .restore
        .as_ref()
        .and_then(|r| validate_restore(r, env, errs));
    let redis = raw.redis.as_ref().and_then(|r| {
        let url = match (&r.url, &r.url_env) {
            (Some(u), None) => Some(u.clone()),
            (None, Some(var)) => env.var(var).filter(|v| !v.trim().is_empty()).or_else(|| {
                missing_secret(
                    "budgets.redis.url_env".to_owned(),
                    format!("environment variable `{var}` is not set"),
                    env,
                    errs,
                )
                .ok()
                // A URL of the right form stands in for the missing one.
                .map(|_| "redis://missing-secret.invalid:6379".to_owned())
            }),
            _ => {
                errs.add("budgets.redis", "give exactly one of `url` or `url_env`");
                None
            }
        }?;
        if !url.starts_with("redis://") && !url.starts_with("redis+unix:///") {
            errs.add(
                if r.url.is_some() {
                    "budgets.redis.url"
                } else {
                    "budgets.redis.url_env"
                },
                "must start with redis:// (TCP) or redis+unix:/// (a Unix socket path)",
            );
        }
        // A Unix-socket URL carries its password as `?pass=`.
        let holds_credentials = |u: &str| {
            u.contains('@')
                || u.split_once('?')
                    .is_some_and(|(_, query)| query.split('&').any(|kv| kv.starts_with("pass=")))
        };
        if r.url.as_deref().is_some_and(holds_credentials) {
            errs.add(
                "budgets.redis.url",
                "holds credentials: give them through `url_env` instead",
            );
        }
        if !(1..=1000).contains(&r.timeout_ms) {
            errs.add("budgets.redis.timeout_ms", "must be between 1 and 1000");
        }
        let prefix_ok = !r.key_prefix.is_empty()
            && r.key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if !prefix_ok {
            errs.add(
                "budgets.redis.key_prefix",
                "may use only letters, digits, `-`, `_`, `.` and `:`",
            );
        }
        Some(RedisLedgerConfig {
            url: Secret::new(url),
            key_prefix: r.key_prefix.clone(),
            timeout: std::time::Duration::from_millis(r.timeout_ms),
            pending_dir: r.pending_dir.clone(),
        })
    });
    if redis.is_some() && raw.restore.is_some() {
        errs.add(
            "budgets.restore",
            "applies only to the in-memory ledger: Redis keeps spend across restarts itself",
        );
    }
    if raw.max_output_tokens_per_request == Some(0) {
        errs.add(
            "budgets.max_output_tokens_per_request",
            "must be at least 1",
        );
    }
    let max_cost_per_request = raw.max_cost_per_request_usd.as_deref().and_then(|v| {
        crate::pricing::parse_usd(v)
            .map_err(|m| errs.add("budgets.max_cost_per_request_usd", m))
            .ok()
    });
    Budgets {
        max_output_tokens_per_request: raw.max_output_tokens_per_request,
        max_cost_per_request,
        limits,
        default_max_tokens: raw.default_max_tokens,
        end_user_header: header,
        restore,
        redis,
        fail_open: raw.on_ledger_error == RawLedgerErrorPolicy::FailOpen,
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path, env: &dyn EnvSource) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                path: String::new(),
                message: format!("cannot read {}: {e}", path.display()),
            }]
        })?;
        Self::from_yaml(&text, env)
    }

    /// Loads `path` as `tollgate check` does: strictly, or, with `allow_missing_secrets`,
    /// letting secrets that are not there pass (everything else still validated). Returns the
    /// outcome and the secrets let pass, as `(field path, what is missing)`.
    pub fn check(
        path: &Path,
        env: &dyn EnvSource,
        allow_missing_secrets: bool,
    ) -> (Result<Config, Vec<ConfigError>>, MissingSecrets) {
        if !allow_missing_secrets {
            return (Self::load(path, env), Vec::new());
        }
        let lenient = crate::env::AllowMissingSecrets::new(env);
        let outcome = Self::load(path, &lenient);
        (outcome, lenient.missing())
    }

    /// Parses and validates YAML text. A file that is JSON (YAML's subset: a generated config
    /// with tens of thousands of keys, say) is read by the JSON parser: loading 20,000 keys
    /// takes about a quarter of the time (`tests/startup_scale.rs`). JSON that does not parse
    /// falls back to the YAML parser and its messages.
    pub fn from_yaml(text: &str, env: &dyn EnvSource) -> Result<Config, Vec<ConfigError>> {
        if text.trim_start().starts_with('{') {
            let mut de = serde_json::Deserializer::from_str(text);
            match serde_path_to_error::deserialize::<_, RawConfig>(&mut de) {
                Ok(raw) if de.end().is_ok() => return Self::validate(raw, env),
                Err(e) if e.inner().is_data() => {
                    let path = e.path().to_string();
                    return Err(vec![ConfigError {
                        path: if path == "." { String::new() } else { path },
                        message: e.into_inner().to_string(),
                    }]);
                }
                // Not JSON after all (YAML flow style, comments): the YAML parser decides.
                Ok(_) | Err(_) => {}
            }
        }
        let de = serde_yaml::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            vec![ConfigError {
                path: if path == "." { String::new() } else { path },
                message: e.into_inner().to_string(),
            }]
        })?;
        Self::validate(raw, env)
    }

    /// Validates a raw config, collecting every error.
    pub fn validate(raw: RawConfig, env: &dyn EnvSource) -> Result<Config, Vec<ConfigError>> {
        let mut errs = Errors(Vec::new());
        let listen = validate_listen(&raw.listen, &mut errs);

        let mut providers = BTreeMap::new();
        for (name, p) in &raw.providers {
            if let Some(p) = validate_provider(name, p, env, &mut errs) {
                providers.insert(name.clone(), Arc::new(p));
            }
        }

        let mut models = BTreeMap::new();
        for (name, m) in &raw.models {
            let path = format!("models.{name}");
            if name.trim().is_empty() {
                errs.add(&path, "model names must not be empty");
            }
            if m.targets.is_empty() {
                errs.add(format!("{path}.targets"), "needs at least one target");
                continue;
            }
            let model_ejection = m
                .ejection
                .map(|e| e.validate(&format!("{path}.ejection"), &mut errs))
                .unwrap_or_default();
            let mut targets = Vec::new();
            for (i, t) in m.targets.iter().enumerate() {
                let tpath = format!("{path}.targets[{i}]");
                let ejection = t
                    .ejection
                    .map(|e| e.validate(&format!("{tpath}.ejection"), &mut errs))
                    .unwrap_or(model_ejection);
                if t.weight == 0 {
                    errs.add(format!("{tpath}.weight"), "must be at least 1");
                } else if t.weight != 1 && m.strategy != Strategy::Weighted {
                    errs.add(
                        format!("{tpath}.weight"),
                        format!(
                            "only applies to strategy `weighted` (this model's is `{}`)",
                            m.strategy.label()
                        ),
                    );
                }
                if t.max_requests_in_flight == Some(0) {
                    errs.add(
                        format!("{tpath}.max_requests_in_flight"),
                        "must be at least 1 (leave it out for no limit)",
                    );
                }
                if t.model.trim().is_empty() {
                    errs.add(format!("{tpath}.model"), "must not be empty");
                }
                match providers.get(&t.provider) {
                    Some(p) => {
                        let mut target = target(Arc::clone(p), &t.model, t.weight);
                        target.max_requests_in_flight = t.max_requests_in_flight;
                        target.stats.set_ejection(ejection);
                        targets.push(target);
                    }
                    None if raw.providers.contains_key(&t.provider) => {} // reported already
                    None => errs.add(
                        format!("{tpath}.provider"),
                        format!("unknown provider `{}`", t.provider),
                    ),
                }
            }
            if m.targets.len() > MAX_TARGETS {
                errs.add(
                    format!("{path}.targets"),
                    format!("at most {MAX_TARGETS} targets per model"),
                );
            }
            let total_weight = targets.iter().map(|t| u64::from(t.weight)).sum();
            let failover = failover::Failover::validate(
                m.failover.as_ref(),
                m.targets.len(),
                &format!("{path}.failover"),
                &mut errs,
            );
            rerank::validate_model_targets(&path, &targets, failover.is_some(), &mut errs);
            models.insert(
                name.clone(),
                Model {
                    name: name.clone(),
                    targets,
                    total_weight,
                    strategy: m.strategy,
                    cursor: Arc::default(),
                    failover,
                },
            );
        }

        let guardrails = guardrails::validate(&raw.guardrails, &raw.models, &mut errs);

        let mut keys = HashMap::new();
        let mut ids = HashSet::new();
        for (i, k) in raw.keys.iter().enumerate() {
            // The field path, built only for an error (50,000 keys make 50,000 strings otherwise).
            let path = || format!("keys[{i}]");
            if k.tokens_per_minute == Some(0) {
                errs.add(
                    format!("{}.tokens_per_minute", path()),
                    "must be at least 1",
                );
            }
            if k.requests_per_minute == Some(0) {
                errs.add(
                    format!("{}.requests_per_minute", path()),
                    "must be at least 1 (set `disabled: true` to refuse everything)",
                );
            }
            if k.id.trim().is_empty() {
                errs.add(format!("{}.id", path()), "must not be empty");
            } else if !ids.insert(k.id.as_str()) {
                errs.add(
                    format!("{}.id", path()),
                    format!("duplicate key id `{}`", k.id),
                );
            }
            if !k.models.iter().any(|m| m == "*") {
                for (j, m) in k.models.iter().enumerate() {
                    if !raw.models.contains_key(m) {
                        errs.add(
                            format!("{}.models[{j}]", path()),
                            format!("unknown model `{m}`"),
                        );
                    }
                }
            }
            if k.capture.is_some_and(|c| c != Capture::Off) && raw.logging.is_none() {
                errs.add(
                    format!("{}.capture", path()),
                    "needs the `logging` section: captured payloads travel in log events",
                );
            }
            if let Some(g) = &k.guardrails {
                if !raw.guardrails.policies.contains_key(g) {
                    errs.add(
                        format!("{}.guardrails", path()),
                        format!("unknown guardrails policy `{g}`"),
                    );
                }
            }
            match keys::parse_hash(&k.hash) {
                Ok(hash) => {
                    let tenant = k.tenant.as_ref().and_then(|t| raw.tenants.get(t));
                    let bundle = k.bundle(hash, &guardrails, tenant);
                    if keys.insert(hash, Arc::new(bundle)).is_some() {
                        errs.add(
                            format!("{}.hash", path()),
                            "the same key hash appears twice",
                        );
                    }
                }
                Err(m) => errs.add(format!("{}.hash", path()), m),
            }
        }

        let jwt_keys = jwt::validate(&raw.jwt_keys, env, &mut errs);
        let max_body = raw.limits.max_request_body_bytes;
        if max_body == 0 || max_body > MAX_REQUEST_BODY_CEILING {
            errs.add(
                "limits.max_request_body_bytes",
                format!("must be between 1 and {MAX_REQUEST_BODY_CEILING}"),
            );
        }
        if !(1..=128).contains(&raw.limits.max_json_depth) {
            errs.add("limits.max_json_depth", "must be between 1 and 128");
        }
        if raw.limits.max_json_members < 16 {
            errs.add("limits.max_json_members", "must be at least 16");
        }
        let body_limits = BodyLimits {
            max_depth: raw.limits.max_json_depth,
            max_members: raw.limits.max_json_members,
            blocking_bytes: raw.limits.blocking_body_bytes,
        };

        let logging = raw
            .logging
            .as_ref()
            .and_then(|l| validate_logging(l, &mut errs));
        let prices = validate_pricing(&raw.pricing, &mut errs);
        let search_unit_prices = rerank::validate_search_unit_prices(&raw.pricing, &mut errs);
        for (name, m) in &raw.models {
            if m.strategy != Strategy::LeastCost {
                continue;
            }
            for (i, t) in m.targets.iter().enumerate() {
                if prices.get(&t.model).is_none() {
                    errs.add(
                        format!("models.{name}.targets[{i}].model"),
                        format!(
                            "strategy `least_cost` needs a price for `{}`: add it under pricing.models",
                            t.model
                        ),
                    );
                }
            }
        }
        let feedback = raw
            .feedback
            .as_ref()
            .and_then(|f| validate_feedback(f, raw.logging.is_some(), env, &mut errs));
        let budgets = validate_budgets(&raw.budgets, env, &mut errs);
        let xds = validate_xds(&raw.xds, &mut errs);
        let shutdown = lifecycle::validate_shutdown(&raw.shutdown, &mut errs);
        let envoy_client_headers: Vec<String> = raw
            .envoy
            .client_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        for (i, h) in envoy_client_headers.iter().enumerate() {
            if !valid_header_name(h) {
                errs.add(
                    format!("envoy.client_headers[{i}]"),
                    "is not a valid header name",
                );
            }
        }
        let startup_check = lifecycle::validate_startup_check(&raw.startup_check, &mut errs);
        let responses =
            responses::validate_responses(&raw.responses, budgets.redis.is_some(), &mut errs);
        let traces = raw
            .traces
            .as_ref()
            .and_then(|t| validate_traces(t, &mut errs));
        let cache = raw.cache.as_ref().map(|c| {
            cache::validate_cache(
                c,
                budgets.redis.is_some(),
                &|m| raw.models.contains_key(m),
                &|m| {
                    raw.models.get(m).is_some_and(|m| {
                        m.targets.iter().all(|t| {
                            raw.providers.get(&t.provider).is_some_and(|p| {
                                p.kind.family() == ApiFamily::OpenAi && !p.kind.rerank_only()
                            })
                        })
                    })
                },
                &mut errs,
            )
        });
        let control_plane = raw
            .control_plane
            .as_ref()
            .and_then(|c| control_plane::validate(c, env, &mut errs));
        let evaluators = raw
            .evaluators
            .as_ref()
            .map(|e| evaluators::validate(e, &mut errs))
            .unwrap_or_default();
        let mut tenant_requests_per_minute = HashMap::new();
        let mut tenant_tokens_per_minute = HashMap::new();
        for (name, t) in &raw.tenants {
            if t.capture.is_some_and(|c| c != Capture::Off) && raw.logging.is_none() {
                errs.add(
                    format!("tenants.{name}.capture"),
                    "needs the `logging` section: captured payloads travel in log events",
                );
            }
            for (field, value, map) in [
                (
                    "requests_per_minute",
                    t.requests_per_minute,
                    &mut tenant_requests_per_minute,
                ),
                (
                    "tokens_per_minute",
                    t.tokens_per_minute,
                    &mut tenant_tokens_per_minute,
                ),
            ] {
                if let Some(n) = value {
                    if n == 0 {
                        errs.add(
                            format!("tenants.{name}.{field}"),
                            "must be at least 1 (disable the keys to refuse everything)",
                        );
                    }
                    map.insert(name.clone(), n);
                }
            }
        }

        let passthrough = passthrough::validate(
            &raw.passthrough,
            &raw.providers.keys().map(String::as_str).collect(),
            &mut errs,
        );
        let cors = cors::validate(
            raw.keys
                .iter()
                .enumerate()
                .filter_map(|(i, k)| Some((i, k.id.as_str(), k.cors.as_ref()?))),
            raw.tenants
                .iter()
                .filter_map(|(n, t)| Some((n.as_str(), t.cors.as_ref()?))),
            &raw.budgets.end_user_header,
            &mut errs,
        );

        match listen {
            Some(listen) if errs.0.is_empty() => Ok(Config {
                listen,
                providers,
                models,
                keys,
                max_request_body_bytes: max_body,
                jwt_keys,
                body_limits,
                logging,
                prices,
                search_unit_prices,
                guardrails,
                tenant_requests_per_minute,
                feedback,
                tenant_tokens_per_minute,
                budgets,
                envoy_auth: raw.envoy.auth,
                envoy_client_headers,
                xds,
                shutdown,
                startup_check,
                traces,
                cors,
                responses,
                control_plane,
                evaluators,
                cache,
                passthrough,
            }),
            _ => Err(errs.0),
        }
    }

    /// The key with this hash, compared in constant time.
    pub fn key(&self, hash: &KeyHash) -> Option<&Arc<KeyBundle>> {
        self.keys
            .get(hash)
            .filter(|b| keys::hashes_equal(&b.hash, hash))
    }
}

fn validate_pricing(raw: &RawPricing, errs: &mut Errors) -> PriceTable {
    let mut table = PriceTable::builtin();
    for (model, p) in &raw.models {
        let path = format!("pricing.models.{model}");
        let mut field = |name: &str, v: &str| {
            PerToken::parse_usd_per_million(v).map_err(|m| errs.add(format!("{path}.{name}"), m))
        };
        let input = field("input", &p.input);
        let output = field("output", &p.output);
        let cache_read = p.cache_read.as_deref().map(|v| field("cache_read", v));
        let cache_write = p.cache_write.as_deref().map(|v| field("cache_write", v));
        let reasoning = p.reasoning.as_deref().map(|v| field("reasoning", v));
        let (Ok(input), Ok(output)) = (input, output) else {
            continue;
        };
        let (Ok(cache_read), Ok(cache_write), Ok(reasoning)) = (
            cache_read.unwrap_or(Ok(input)),
            cache_write.unwrap_or(Ok(input)),
            reasoning.transpose(),
        ) else {
            continue;
        };
        table.set(
            model,
            Price {
                input,
                output,
                cache_read,
                cache_write,
                reasoning,
                long_context: None,
            },
        );
    }
    media::validate_media_pricing(&raw.media, &mut table, errs);
    table
}

fn validate_listen(raw: &RawListen, errs: &mut Errors) -> Option<Listen> {
    let grpc = GrpcAddr::parse(&raw.grpc).map_err(|m| errs.add("listen.grpc", m));
    let admin = raw.admin.parse::<SocketAddr>().map_err(|_| {
        errs.add(
            "listen.admin",
            format!("`{}` is not `host:port`", raw.admin),
        )
    });
    Some(Listen {
        grpc: grpc.ok()?,
        admin: admin.ok()?,
    })
}

/// A provider's cluster name: what [`valid_cluster_name`] allows, and `|` for Istio's cluster
/// names (`outbound|443||api.openai.com`).
fn valid_route_cluster(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_alphanumeric())
        && s.split('|')
            .all(|part| part.is_empty() || valid_cluster_name(part))
}

fn valid_cluster_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn valid_header_name(s: &str) -> bool {
    !s.is_empty() && http::HeaderName::from_bytes(s.as_bytes()).is_ok() && !s.starts_with(':')
}

fn validate_provider(
    name: &str,
    p: &RawProvider,
    env: &dyn EnvSource,
    errs: &mut Errors,
) -> Option<Provider> {
    let path = format!("providers.{name}");
    let before = errs.0.len();
    let cluster = p.cluster.clone().unwrap_or_else(|| name.to_owned());
    if !valid_route_cluster(&cluster) {
        errs.add(
            if p.cluster.is_some() {
                format!("{path}.cluster")
            } else {
                path.clone()
            },
            "cluster names may use only letters, digits, `-`, `_`, `.` and `|` (as in Istio's `outbound|443||api.openai.com`)",
        );
    }
    let default_url = match (p.kind, &p.aws, &p.location) {
        (ProviderKind::Bedrock, Some(aws), _) => Some(format!(
            "https://bedrock-runtime.{}.amazonaws.com",
            aws.region
        )),
        (ProviderKind::Vertex, _, Some(l)) => Some(vertex_base_url(l)),
        _ => p.kind.default_base_url().map(str::to_owned),
    };
    let url = match p.base_url.as_ref().or(default_url.as_ref()) {
        Some(u) => parse_base_url(u).map_err(|m| errs.add(format!("{path}.base_url"), m)),
        None => {
            errs.add(format!("{path}.base_url"), "is required");
            Err(())
        }
    };
    let vertex = p.kind == ProviderKind::Vertex;
    for (field, value) in [("project", &p.project), ("location", &p.location)] {
        match value {
            None if vertex => errs.add(format!("{path}.{field}"), "is required for `vertex`"),
            Some(v) if vertex && !valid_cluster_name(v) => errs.add(
                format!("{path}.{field}"),
                "may use only letters, digits, `-`, `_` and `.`",
            ),
            Some(_) if !vertex => errs.add(format!("{path}.{field}"), "applies only to `vertex`"),
            _ => {}
        }
    }
    let mut google = None;

    let credential = p.credential.as_ref().and_then(|c| {
        let cpath = format!("{path}.credential");
        let secret = read_secret(c, &cpath, env, errs)?;
        let header = match p.kind {
            // A missing service account let pass (`tollgate check --allow-missing-secrets`)
            // has nothing to parse.
            ProviderKind::Vertex if secret == MISSING_SECRET_PLACEHOLDER => return None,
            ProviderKind::Vertex => {
                google = ServiceAccount::parse(&secret)
                    .map_err(|m| errs.add(&cpath, m))
                    .ok()
                    .map(|sa| Arc::new(GoogleAuth::new(sa)));
                return None;
            }
            ProviderKind::AzureOpenai => ("api-key", Secret::new(secret)),
            ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
                ("authorization", Secret::new(format!("Bearer {secret}")))
            }
            ProviderKind::Anthropic => ("x-api-key", Secret::new(secret)),
            ProviderKind::Gemini => ("x-goog-api-key", Secret::new(secret)),
            ProviderKind::Cohere
            | ProviderKind::Jina
            | ProviderKind::Voyage
            | ProviderKind::Tei => ("authorization", Secret::new(format!("Bearer {secret}"))),
            ProviderKind::Bedrock => {
                errs.add(
                    &cpath,
                    "does not apply to `bedrock`: give `aws` credentials instead",
                );
                return None;
            }
        };
        if http::HeaderValue::from_str(header.1.expose()).is_err() {
            errs.add(
                &cpath,
                "the secret contains characters not allowed in a header",
            );
            return None;
        }
        Some(header)
    });

    let mut headers = Vec::new();
    for (k, v) in &p.headers {
        let lower = k.to_ascii_lowercase();
        if !valid_header_name(&lower) {
            errs.add(format!("{path}.headers.{k}"), "is not a valid header name");
        } else if http::HeaderValue::from_str(v).is_err() {
            errs.add(format!("{path}.headers.{k}"), "is not a valid header value");
        } else {
            headers.push((lower, v.clone()));
        }
    }
    if p.kind == ProviderKind::AzureOpenai && p.api_version.is_none() {
        errs.add(
            format!("{path}.api_version"),
            "is required for `azure_openai`",
        );
    }
    if p.kind != ProviderKind::AzureOpenai && p.api_version.is_some() {
        errs.add(
            format!("{path}.api_version"),
            "applies only to `azure_openai`",
        );
    }
    // No key: workload identity through the metadata server.
    let gce_metadata = (vertex && p.credential.is_none())
        .then(|| GceMetadata::from_env(env).map_err(|m| errs.add(format!("{path}.credential"), m)))
        .and_then(Result::ok)
        .map(Arc::new);
    let mut aws_source = None;
    let aws = validate_aws(name, p, env, errs, &mut aws_source);
    let url = url.ok()?;
    (errs.0.len() == before).then(|| Provider {
        name: name.to_owned(),
        kind: p.kind,
        cluster,
        scheme: url.scheme,
        host: url.host,
        port: url.port,
        authority: url.authority,
        base_path: url.path,
        credential_header: credential,
        headers,
        api_version: p.api_version.clone(),
        vertex: p.project.clone().zip(p.location.clone()),
        google,
        aws,
        aws_source,
        gce_metadata,
    })
}

/// The SigV4 signer of a `bedrock` provider (`aws` is required there and refused elsewhere).
fn validate_aws(
    name: &str,
    p: &RawProvider,
    env: &dyn EnvSource,
    errs: &mut Errors,
    source: &mut Option<AwsSource>,
) -> Option<Signer> {
    let path = format!("providers.{name}.aws");
    let aws = match (p.kind, &p.aws) {
        (ProviderKind::Bedrock, Some(aws)) => aws,
        (ProviderKind::Bedrock, None) => {
            errs.add(&path, "is required for `bedrock`");
            return None;
        }
        (_, Some(_)) => {
            errs.add(&path, "applies only to `bedrock`");
            return None;
        }
        (_, None) => return None,
    };
    let region_ok = !aws.region.is_empty()
        && aws
            .region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !region_ok {
        errs.add(
            format!("{path}.region"),
            format!("`{}` is not an AWS region (e.g. `us-east-1`)", aws.region),
        );
    }
    let header_safe = |field: &str, v: String, errs: &mut Errors| {
        let bad_char = field == "access_key_id" && v.contains(['/', ',', ' ']);
        if http::HeaderValue::from_str(&v).is_ok() && !bad_char {
            Some(v)
        } else {
            errs.add(
                format!("{path}.{field}"),
                "the secret contains characters not allowed here",
            );
            None
        }
    };
    let (key_id_source, secret_source) = match (&aws.access_key_id, &aws.secret_access_key) {
        (Some(k), Some(s)) => (k, s),
        (None, None) => {
            if aws.session_token.is_some() {
                errs.add(
                    format!("{path}.session_token"),
                    "applies only with `access_key_id` and `secret_access_key`",
                );
                return None;
            }
            // The standard chain: the source is settled now, a fetched source's credentials
            // come from the service's refresh task.
            return match aws::resolve(env, &aws.region) {
                Ok((found, creds)) => {
                    let signer =
                        Signer::without_credentials(aws.region.clone(), sigv4::BEDROCK_SERVICE);
                    if let Some(c) = creds {
                        signer.store(c);
                    }
                    *source = Some(found);
                    Some(signer).filter(|_| region_ok)
                }
                Err(m) => {
                    errs.add(&path, format!("the AWS credential chain: {m}"));
                    None
                }
            };
        }
        (Some(_), None) => {
            errs.add(
                format!("{path}.secret_access_key"),
                "is required with `access_key_id` (omit both to use the AWS credential chain)",
            );
            return None;
        }
        (None, Some(_)) => {
            errs.add(
                format!("{path}.access_key_id"),
                "is required with `secret_access_key` (omit both to use the AWS credential chain)",
            );
            return None;
        }
    };
    let key_id = read_secret(key_id_source, &format!("{path}.access_key_id"), env, errs)
        .and_then(|v| header_safe("access_key_id", v, errs));
    let secret = read_secret(
        secret_source,
        &format!("{path}.secret_access_key"),
        env,
        errs,
    );
    let token = match &aws.session_token {
        Some(c) => Some(
            read_secret(c, &format!("{path}.session_token"), env, errs)
                .and_then(|v| header_safe("session_token", v, errs))?,
        ),
        None => None,
    };
    Some(Signer::new(
        key_id?,
        Secret::new(secret?),
        token.map(Secret::new),
        aws.region.clone(),
        sigv4::BEDROCK_SERVICE,
    ))
    .filter(|_| region_ok)
}

struct BaseUrl {
    scheme: Scheme,
    host: String,
    port: u16,
    authority: String,
    path: String,
}

fn parse_base_url(s: &str) -> Result<BaseUrl, String> {
    let uri: http::Uri = s.parse().map_err(|_| format!("`{s}` is not a URL"))?;
    let scheme = match uri.scheme_str() {
        Some("https") => Scheme::Https,
        Some("http") => Scheme::Http,
        _ => return Err(format!("`{s}` must start with http:// or https://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{s}` has no host"))?;
    if uri.query().is_some() {
        return Err(format!("`{s}` must not have a query"));
    }
    let port = authority.port_u16().unwrap_or(match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    });
    Ok(BaseUrl {
        scheme,
        host: authority.host().to_owned(),
        port,
        authority: authority.as_str().to_owned(),
        path: uri.path().trim_end_matches('/').to_owned(),
    })
}

fn target(provider: Arc<Provider>, model: &str, weight: u32) -> Target {
    let family = provider.kind.family_of(model);
    if let Some((project, location)) = &provider.vertex {
        let base = format!(
            "{}/projects/{project}/locations/{location}/publishers",
            provider.base_path
        );
        let (endpoint, path, stream_path) = match family {
            ApiFamily::Anthropic => (
                Endpoint::Messages,
                format!("{base}/anthropic/models/{model}:rawPredict"),
                format!("{base}/anthropic/models/{model}:streamRawPredict"),
            ),
            _ => (
                Endpoint::GenerateContent,
                format!("{base}/google/models/{model}:generateContent"),
                format!("{base}/google/models/{model}:streamGenerateContent?alt=sse"),
            ),
        };
        return Target {
            provider,
            upstream_model: model.to_owned(),
            weight,
            family,
            max_requests_in_flight: None,
            stats: Arc::default(),
            paths: Endpoint::FORWARDED.map(|e| {
                if e == endpoint {
                    path.clone()
                } else {
                    "/".to_owned()
                }
            }),
            stream_path: Some(stream_path),
        };
    }
    let paths = Endpoint::FORWARDED.map(|e| match provider.kind {
        ProviderKind::AzureOpenai => format!(
            "{}/openai/deployments/{}/{}?api-version={}",
            provider.base_path,
            model,
            e.suffix(),
            provider.api_version.as_deref().unwrap_or_default()
        ),
        ProviderKind::Gemini | ProviderKind::Vertex => {
            format!("{}/models/{model}:generateContent", provider.base_path)
        }
        ProviderKind::Openai | ProviderKind::OpenaiCompatible | ProviderKind::Anthropic => {
            format!("{}/{}", provider.base_path, e.suffix())
        }
        // Rerank only: its path is `{base_path}/rerank`, whatever the endpoint table says.
        ProviderKind::Cohere | ProviderKind::Jina | ProviderKind::Voyage | ProviderKind::Tei => {
            format!("{}/rerank", provider.base_path)
        }
        // One Converse path for every chat endpoint, the model id one encoded path segment.
        ProviderKind::Bedrock => format!(
            "{}/model/{}/converse",
            provider.base_path,
            sigv4::uri_encode(model)
        ),
    });
    let stream_path = match provider.kind {
        ProviderKind::Bedrock => Some(format!(
            "{}/model/{}/converse-stream",
            provider.base_path,
            sigv4::uri_encode(model)
        )),
        ProviderKind::Gemini | ProviderKind::Vertex => Some(format!(
            "{}/models/{model}:streamGenerateContent?alt=sse",
            provider.base_path
        )),
        ProviderKind::Openai
        | ProviderKind::OpenaiCompatible
        | ProviderKind::AzureOpenai
        | ProviderKind::Anthropic
        | ProviderKind::Cohere
        | ProviderKind::Jina
        | ProviderKind::Voyage
        | ProviderKind::Tei => None,
    };
    Target {
        provider,
        upstream_model: model.to_owned(),
        weight,
        family,
        max_requests_in_flight: None,
        stats: Arc::default(),
        paths,
        stream_path,
    }
}

pub mod failover;
mod google;
pub mod rerank;
pub mod routing;
pub use google::{AccessToken, GceMetadata, GoogleAuth, ServiceAccount};
pub use routing::{Ejection, Excluded, InFlight, Pick, Strategy, TargetStats, MAX_TARGETS};
pub mod aws;
pub use aws::AwsSource;

#[cfg(test)]
mod tests;
