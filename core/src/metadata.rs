//! Names shared by ext_authz and ext_proc: the dynamic-metadata namespace and its fields,
//! and the headers Tollgate sets.

/// The dynamic-metadata namespace ext_authz writes into and ext_proc reads.
pub const NAMESPACE: &str = "envoy.filters.http.ext_authz";
/// Metadata field: the virtual key's id.
pub const KEY_ID: &str = "key_id";
/// Metadata field: the key's tenant.
pub const TENANT: &str = "tenant";
/// Metadata field: the key's team.
pub const TEAM: &str = "team";
/// Metadata field: the models the key may use (a list of strings; `*` means all).
pub const MODELS: &str = "models";
/// Metadata field: the name of the guardrails policy that applies to the key (absent: none).
pub const GUARDRAILS: &str = "guardrails";
/// Metadata field: the key's payload capture (`metadata` or `full`; absent: off).
pub const CAPTURE: &str = "capture";
/// Metadata field: the key's token-rate limit per minute, as a decimal string (absent: none).
pub const TOKENS_PER_MINUTE: &str = "tokens_per_minute";
/// The token-rate limit per minute of the key's tenant as the key came with it (a
/// control-plane bundle's tenant; the file's `tenants` entry wins).
pub const TENANT_TOKENS_PER_MINUTE: &str = "tenant_tokens_per_minute";
/// Metadata field: the budgets that came with the key from the control plane, as JSON
/// ([`crate::budget::budgets_to_json`]; absent: none).
pub const BUDGETS: &str = "budgets";
/// Metadata field: the request's `:path`.
pub const PATH: &str = "path";
/// Metadata field: the request's `:method`.
pub const METHOD: &str = "method";
/// Metadata field: the request id Tollgate assigned.
pub const REQUEST_ID: &str = "request_id";

/// Response header carrying Tollgate's request id on every response.
pub const REQUEST_ID_HEADER: &str = "x-tollgate-request-id";
/// Request header whose value names the Envoy cluster to route to.
pub const ROUTE_HEADER: &str = "x-tollgate-cluster";
/// Response header naming the provider (config name) of the target that answered.
pub const PROVIDER_HEADER: &str = "x-tollgate-provider";

/// The failover chain of a request (`<model>/<first target index>`), set by the request's
/// ext_proc for the upstream ext_proc of each attempt; never reaches a provider.
pub const CHAIN_HEADER: &str = "x-tollgate-chain";

/// On an attempt's response: which target answered and how its body is read
/// (`<target index>;<attempt>;<strip usage chunk 0|1>;<include usage 0|1>`), set by the
/// upstream ext_proc for the request's; never reaches the client.
pub const ANSWER_HEADER: &str = "x-tollgate-answer";
