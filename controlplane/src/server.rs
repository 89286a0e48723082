//! The HTTP server: the admin REST API under `/admin/v1` (bearer tokens), the sidecar
//! endpoints `POST /v1/resolve-key` and `GET /v1/changes` (HMAC-signed), `/metrics` and
//! `/healthz`; the read cache in front of storage and the task that follows the change feed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{self, MethodRouter};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{watch, Notify};

use crate::config::{Config, MAX_ROTATION_GRACE_SECS};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model::{BudgetSpec, KeySpec, Spec, TeamSpec, TenantSpec};
use crate::ops::{self, Resolved, Written};
use crate::sign;
use crate::store::{now, Change, Store};

/// The OpenAPI document of every route, served at `/admin/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// The most entries the resolve cache holds before it starts over.
const CACHE_MAX_ENTRIES: usize = 200_000;
/// The most change-feed entries in one `/v1/changes` answer.
const CHANGES_PAGE: i64 = 1000;
/// The longest `wait_secs` of a long poll.
const MAX_WAIT_SECS: u64 = 30;

/// A cached resolution: found (with when it stops resolving) or unknown.
#[derive(Clone)]
enum Cached {
    Found(Arc<Resolved>),
    Unknown,
}

/// The read cache in front of storage, invalidated by the change feed.
#[derive(Default)]
struct Cache {
    /// An answer read at a seq below this may be stale: it is not cached.
    guard_seq: i64,
    entries: HashMap<String, Cached>,
}

impl Cache {
    fn invalidate(&mut self, changes: &[Change]) {
        for c in changes {
            self.guard_seq = self.guard_seq.max(c.seq);
            if c.kind == "key" {
                self.entries.remove(&c.name);
            } else {
                // Tenants and budgets are part of many bundles.
                self.entries.clear();
            }
        }
    }
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    store: Store,
    config: Arc<Config>,
    cache: Arc<Mutex<Cache>>,
    feed: watch::Sender<i64>,
    kick: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl AppState {
    fn secrets(&self) -> Vec<&[u8]> {
        let mut v: Vec<&[u8]> = vec![&self.config.secret];
        if let Some(p) = &self.config.previous_secret {
            v.push(p);
        }
        v
    }

    fn keep(&self) -> i64 {
        i64::try_from(self.config.change_history).unwrap_or(i64::MAX)
    }

    /// After a local write: drop what it changed from the cache now (read-your-writes), then
    /// wake the feed follower so long polls answer at once.
    fn after_write(&self, w: &Written) {
        self.metrics.admin_writes.inc();
        lock(&self.cache).invalidate(&w.changes);
        self.kick.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A running control plane.
pub struct Running {
    /// The address bound.
    pub addr: SocketAddr,
    /// Ends when the server stops.
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Opens storage, binds, and serves until `shutdown` resolves.
pub async fn start(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    let store = match &config.storage {
        crate::config::Storage::Sqlite { path } => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || Store::open_sqlite(&path)).await??
        }
        crate::config::Storage::Postgres { url, pool_size } => {
            let (url, n) = (url.clone(), *pool_size);
            tokio::task::spawn_blocking(move || Store::open_postgres(&url, n)).await??
        }
    };
    let latest = store.read(|tx| tx.latest_seq()).await?;
    let (feed, _) = watch::channel(latest);
    if config.previous_secret.is_some() {
        tracing::warn!(
            "A previous signing secret is set: sidecar calls signed with it are accepted; remove it once every sidecar has the new secret"
        );
    }
    let state = AppState {
        store,
        config: Arc::new(config),
        cache: Arc::new(Mutex::new(Cache::default())),
        feed,
        kick: Arc::new(Notify::new()),
        metrics: Arc::new(Metrics::new()),
    };
    let listener = tokio::net::TcpListener::bind(state.config.listen).await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let follower = tokio::spawn(follow_feed(state.clone(), latest, stop_rx.clone()));
    let app = router(state);
    tracing::info!(%addr, "Control plane listening");
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            })
            .await;
        let _ = follower.await;
        served?;
        Ok(())
    });
    Ok(Running { addr, task })
}

/// Reads the change feed back from storage (other replicas' writes), invalidates the cache
/// and publishes the latest sequence number to long polls.
async fn follow_feed(state: AppState, mut applied: i64, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(state.config.feed_poll_ms);
    loop {
        tokio::select! {
            _ = state.kick.notified() => {}
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let since = applied;
        let read = state
            .store
            .read(move |tx| ops::changes(tx, since, 10_000))
            .await;
        match read {
            Ok((latest, reset, entries)) => {
                {
                    let mut cache = lock(&state.cache);
                    if reset {
                        cache.entries.clear();
                        cache.guard_seq = cache.guard_seq.max(latest);
                    } else {
                        cache.invalidate(&entries);
                    }
                    state.metrics.cache_entries.set(cache.entries.len() as i64);
                }
                applied = latest;
                state.feed.send_if_modified(|v| {
                    let modified = *v != latest;
                    *v = latest;
                    modified
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read the change feed; retrying");
            }
        }
    }
}

/// Routes and the (method, path) list the OpenAPI test compares with the document.
pub struct Routes {
    router: Router<AppState>,
    list: Vec<(String, String)>,
}

impl Routes {
    fn new() -> Self {
        Routes {
            router: Router::new(),
            list: Vec::new(),
        }
    }

    fn add(mut self, methods: &[&str], path: &str, mr: MethodRouter<AppState>) -> Self {
        for m in methods {
            self.list.push(((*m).to_lowercase(), path.to_owned()));
        }
        self.router = self.router.route(path, mr);
        self
    }

    /// Every (lowercase method, path) routed.
    pub fn list(&self) -> &[(String, String)] {
        &self.list
    }
}

fn admin_routes() -> Routes {
    use routing::{get, post};
    Routes::new()
        .add(
            &["GET", "POST"],
            "/admin/v1/keys",
            get(list_keys).post(create_key),
        )
        .add(
            &["GET", "PATCH"],
            "/admin/v1/keys/{id}",
            get(get_key).patch(patch_key),
        )
        .add(&["POST"], "/admin/v1/keys/{id}/rotate", post(rotate_key))
        .add(&["POST"], "/admin/v1/keys/{id}/revoke", post(revoke_key))
        .add(
            &["GET", "POST"],
            "/admin/v1/tenants",
            get(list_objects::<TenantSpec>).post(create_object::<TenantSpec>),
        )
        .add(
            &["GET", "PATCH", "DELETE"],
            "/admin/v1/tenants/{name}",
            get(get_object::<TenantSpec>)
                .patch(patch_object::<TenantSpec>)
                .delete(delete_object::<TenantSpec>),
        )
        .add(
            &["GET", "POST"],
            "/admin/v1/teams",
            get(list_objects::<TeamSpec>).post(create_object::<TeamSpec>),
        )
        .add(
            &["GET", "PATCH", "DELETE"],
            "/admin/v1/teams/{name}",
            get(get_object::<TeamSpec>)
                .patch(patch_object::<TeamSpec>)
                .delete(delete_object::<TeamSpec>),
        )
        .add(
            &["GET", "POST"],
            "/admin/v1/budgets",
            get(list_objects::<BudgetSpec>).post(create_object::<BudgetSpec>),
        )
        .add(
            &["GET", "PATCH", "DELETE"],
            "/admin/v1/budgets/{id}",
            get(get_object::<BudgetSpec>)
                .patch(patch_object::<BudgetSpec>)
                .delete(delete_object::<BudgetSpec>),
        )
}

fn open_routes() -> Routes {
    use routing::{get, post};
    Routes::new()
        .add(&["GET"], "/healthz", get(healthz))
        .add(&["GET"], "/metrics", get(metrics))
        .add(&["POST"], "/v1/resolve-key", post(resolve_key))
        .add(&["GET"], "/v1/changes", get(changes))
        .add(&["GET"], "/admin/v1/openapi.json", get(openapi))
}

/// Every (lowercase method, path) the server routes.
pub fn route_list() -> Vec<(String, String)> {
    let mut v = admin_routes().list;
    v.extend(open_routes().list);
    v
}

/// The whole router: admin routes behind the token check, the rest open or signed.
pub fn router(state: AppState) -> Router {
    let admin = admin_routes()
        .router
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_admin,
        ));
    open_routes()
        .router
        .merge(admin)
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

/// The admin token check, in front of every admin route: constant-time against every token.
async fn require_admin(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        state.metrics.admin_refused.inc();
        return Err(ApiError::Unauthorized);
    };
    let mut ok = false;
    for t in &state.config.admin_tokens {
        ok |= constant_time_eq::constant_time_eq(t.as_bytes(), presented.as_bytes());
    }
    if !ok {
        state.metrics.admin_refused.inc();
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(req).await)
}

/// Reads a JSON body: malformed JSON is 400, a wrong field 422 naming its path.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let out: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => ApiError::Invalid(format!("{path}: {inner}")),
            _ => ApiError::BadRequest(format!("the body is not valid JSON: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?;
    Ok(out)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

fn verify(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
    uri: &Uri,
    body: &[u8],
) -> Result<(), ApiError> {
    let header = headers
        .get(sign::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let pq = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    sign::verify_request(header, &state.secrets(), now(), method.as_str(), pq, body).map_err(|e| {
        tracing::warn!(reason = %e, path = uri.path(), "Refused a sidecar call");
        ApiError::BadSignature(e.to_string())
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    hash: String,
}

async fn resolve_key(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if let Err(e) = verify(&state, &headers, &method, &uri, &body) {
        state.metrics.resolve("refused");
        return Err(e);
    }
    let req: ResolveBody = parse_json(&body)?;
    if let Err(why) = tollgate_core::keys::parse_hash(&req.hash) {
        return Err(ApiError::Invalid(format!("hash: {why}")));
    }
    let cached = lock(&state.cache).entries.get(&req.hash).cloned();
    let found = match cached {
        Some(c) => c,
        None => {
            let hash = req.hash.clone();
            let (found, seq) = state.store.read(move |tx| ops::resolve(tx, &hash)).await?;
            let c = match found {
                Some(r) => Cached::Found(Arc::new(r)),
                None => Cached::Unknown,
            };
            let mut cache = lock(&state.cache);
            if seq >= cache.guard_seq {
                if cache.entries.len() >= CACHE_MAX_ENTRIES {
                    cache.entries.clear();
                }
                cache.entries.insert(req.hash.clone(), c.clone());
            }
            c
        }
    };
    let t = now();
    match found {
        Cached::Found(r) if r.valid_until.is_none_or(|u| u > t) => {
            let exp = t.saturating_add(i64::try_from(state.config.bundle_ttl_secs).unwrap_or(0));
            let claims = format!("{},\"iat\":{t},\"exp\":{exp}}}", r.claims_prefix);
            let Some(bundle) = sign::jws(&state.config.secret, &claims) else {
                return Err(ApiError::Storage("cannot sign the bundle".to_owned()));
            };
            state.metrics.resolve("found");
            Ok(Json(serde_json::json!({ "bundle": bundle })).into_response())
        }
        _ => {
            state.metrics.resolve("unknown");
            Err(ApiError::UnknownKey)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesQuery {
    #[serde(default)]
    since: i64,
    #[serde(default)]
    wait_secs: u64,
}

async fn changes(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Err(e) = verify(&state, &headers, &method, &uri, b"") {
        state.metrics.changes("refused");
        return Err(e);
    }
    let q: ChangesQuery = serde_urlencoded_query(&uri)?;
    if q.wait_secs > MAX_WAIT_SECS {
        return Err(ApiError::BadRequest(format!(
            "wait_secs: {} is more than {MAX_WAIT_SECS}",
            q.wait_secs
        )));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait_secs);
    let mut rx = state.feed.subscribe();
    loop {
        rx.borrow_and_update();
        let since = q.since;
        let (seq, reset, entries) = state
            .store
            .read(move |tx| ops::changes(tx, since, CHANGES_PAGE))
            .await?;
        let waited_out = tokio::time::Instant::now() >= deadline;
        if reset || !entries.is_empty() || waited_out {
            state.metrics.changes(if reset {
                "reset"
            } else if entries.is_empty() {
                "empty"
            } else {
                "changes"
            });
            let changes: Vec<Value> = entries.iter().map(change_json).collect();
            return Ok(Json(serde_json::json!({
                "seq": seq, "reset": reset, "changes": changes
            }))
            .into_response());
        }
        // Woken by the feed follower, or at the deadline for one last look.
        let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
    }
}

fn serde_urlencoded_query<T: DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::BadRequest(format!("bad query string: {}", e.body_text())))
}

fn change_json(c: &Change) -> Value {
    let field = if c.kind == "key" { "hash" } else { "name" };
    serde_json::json!({"seq": c.seq, "kind": c.kind, field: c.name})
}

// ---- admin: keys ----

async fn list_keys(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let t = now();
    Ok(Json(
        state.store.read(move |tx| ops::list_keys(tx, t)).await?,
    ))
}

async fn get_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let t = now();
    Ok(Json(
        state.store.read(move |tx| ops::get_key(tx, &id, t)).await?,
    ))
}

async fn create_key(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let spec: KeySpec = parse_json(&body)?;
    let secret = tollgate_core::keys::generate_key();
    let hash = tollgate_core::keys::format_hash(&tollgate_core::keys::hash_key(&secret));
    let (t, keep) = (now(), state.keep());
    let w = state
        .store
        .write(move |tx| ops::create_key(tx, spec, &hash, t, keep))
        .await?;
    state.after_write(&w);
    tracing::info!(key_id = %w.value["id"].as_str().unwrap_or_default(), "Created a key");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"key": secret, "record": w.value})),
    ))
}

async fn patch_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let patch: Value = parse_json(&body)?;
    let (t, keep) = (now(), state.keep());
    let w = state
        .store
        .write(move |tx| ops::patch_key(tx, &id, patch, t, keep))
        .await?;
    state.after_write(&w);
    Ok(Json(w.value))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// How long the old secret keeps resolving, in seconds.
    #[serde(default)]
    grace_secs: Option<u64>,
}

async fn rotate_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: RotateBody = if body.is_empty() {
        RotateBody::default()
    } else {
        parse_json(&body)?
    };
    let grace = req
        .grace_secs
        .unwrap_or(state.config.default_rotation_grace_secs);
    if grace > MAX_ROTATION_GRACE_SECS {
        return Err(ApiError::Invalid(format!(
            "grace_secs: {grace} is more than {MAX_ROTATION_GRACE_SECS}"
        )));
    }
    let secret = tollgate_core::keys::generate_key();
    let hash = tollgate_core::keys::format_hash(&tollgate_core::keys::hash_key(&secret));
    let (t, keep) = (now(), state.keep());
    let grace = i64::try_from(grace).unwrap_or(0);
    let w = state
        .store
        .write(move |tx| ops::rotate_key(tx, &id, &hash, grace, t, keep))
        .await?;
    state.after_write(&w);
    tracing::info!(key_id = %w.value["id"].as_str().unwrap_or_default(), grace_secs = grace, "Rotated a key");
    Ok(Json(serde_json::json!({"key": secret, "record": w.value})))
}

async fn revoke_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (t, keep) = (now(), state.keep());
    let w = state
        .store
        .write(move |tx| ops::revoke_key(tx, &id, t, keep))
        .await?;
    state.after_write(&w);
    tracing::info!(key_id = %w.value["id"].as_str().unwrap_or_default(), "Revoked a key");
    Ok(Json(w.value))
}

// ---- admin: tenants, teams, budgets ----

async fn list_objects<S: Spec>(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.store.read(ops::list::<S>).await?))
}

async fn get_object<S: Spec>(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        state.store.read(move |tx| ops::get::<S>(tx, &name)).await?,
    ))
}

async fn create_object<S: Spec>(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let spec: S = parse_json(&body)?;
    let (t, keep) = (now(), state.keep());
    let w = state
        .store
        .write(move |tx| ops::create(tx, spec, t, keep))
        .await?;
    state.after_write(&w);
    Ok((StatusCode::CREATED, Json(w.value)))
}

async fn patch_object<S: Spec>(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let patch: Value = parse_json(&body)?;
    let (t, keep) = (now(), state.keep());
    let w = state
        .store
        .write(move |tx| ops::patch::<S>(tx, &name, patch, t, keep))
        .await?;
    state.after_write(&w);
    Ok(Json(w.value))
}

async fn delete_object<S: Spec>(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (t, keep) = (now(), state.keep());
    let w = state
        .store
        .write(move |tx| ops::delete::<S>(tx, &name, t, keep))
        .await?;
    state.after_write(&w);
    Ok(Json(w.value))
}
