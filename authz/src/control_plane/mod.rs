//! The key gate's control-plane source: a key hash the config file does not list is resolved
//! through `tollgate control-plane` (HTTP `POST /v1/resolve-key`, every call HMAC-signed),
//! whose HS256 bundle is verified against the current and the previous secret and becomes the
//! same in-memory key a file key becomes. Bundles are cached in memory (moka, bounded): fresh
//! until `soft_ttl` or the bundle's `exp` (then refreshed in the background on use), served
//! until `hard_ttl` (so a control plane that is down does not stop keys already seen), unknown
//! keys cached negatively for `negative_ttl`. One call per key at a time: concurrent requests
//! for the same key wait on the same call. The change feed (`GET /v1/changes`, long-poll,
//! [`ControlPlaneClient::run_feed`]) drops the bundles a change names within seconds.

pub mod bundle;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{watch, Semaphore};
use tollgate_core::config::{ControlPlane, KeyBundle};
use tollgate_core::keys::{self, KeyHash};
use tollgate_core::metrics::{KindLabel, Metrics, ResultLabel};
use tollgate_core::SharedConfig;

use bundle::{BundleError, SIGNATURE_HEADER};

/// The resolve-key path.
pub const RESOLVE_PATH: &str = "/v1/resolve-key";
/// The change-feed path.
pub const CHANGES_PATH: &str = "/v1/changes";

/// Background refreshes (soft expiry) in flight at once; more wait for a later use.
const MAX_REFRESHES: usize = 16;
/// After a failed background refresh, the next one waits this long.
const REFRESH_RETRY: Duration = Duration::from_secs(5);
/// The most bytes read from one control-plane answer.
const MAX_ANSWER_BYTES: usize = 2 * 1024 * 1024;
/// Key changes remembered for fetches in flight (far more than can overlap one fetch).
const RECENT_KEY_CHANGES: u64 = 100_000;
/// How long a key change is remembered: longer than any fetch can take.
const RECENT_KEY_CHANGES_TTL: Duration = Duration::from_secs(60);
/// The feed's first retry delay, doubled up to [`FEED_BACKOFF_MAX`].
const FEED_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// The feed's longest retry delay.
const FEED_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why a key could not be resolved. The gate answers every one with 503 `key_unverifiable`:
/// the key may well be valid, so it is not refused as unknown, and nothing is cached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    /// No connection, no answer within the timeout, or a 5xx.
    #[error("the control plane is unavailable: {0}")]
    Unavailable(String),
    /// An answer that is not a bundle, or a bundle that does not verify.
    #[error("the control plane's answer was refused: {0}")]
    Refused(String),
}

impl ResolveError {
    /// The `result` label of `tollgate_control_plane_resolutions_total`.
    fn label(&self) -> &'static str {
        match self {
            ResolveError::Unavailable(_) => "unavailable",
            ResolveError::Refused(_) => "refused",
        }
    }
}

impl From<BundleError> for ResolveError {
    fn from(e: BundleError) -> Self {
        ResolveError::Refused(e.to_string())
    }
}

/// A cached bundle.
#[derive(Debug)]
struct Entry {
    bundle: Arc<KeyBundle>,
    /// Served until then (`hard_ttl` after the fetch).
    hard_at: Instant,
    /// Milliseconds since the client's epoch at which the next background refresh may start
    /// (at first the soft expiry); moved forward atomically by whoever starts one.
    refresh_at_ms: AtomicU64,
    /// The fingerprint of the secret that signed it: refused once that secret is no longer
    /// accepted (a rotation's overlap ended).
    signed_with: [u8; 32],
    /// [`ControlPlaneClient::broad_changes`] when its fetch started: a tenant, team or budget
    /// change applied while the fetch was out may concern it.
    broad_epoch: u64,
    /// The change-feed sequence number the bundle reflects: a change of its key with a
    /// higher one is not in it.
    seq: u64,
    /// The ids of its budgets (a `budget` change drops the bundles that carry it).
    budget_ids: Vec<String>,
}

/// A cache entry: a bundle, or a key the control plane does not know.
#[derive(Debug, Clone)]
enum Cached {
    Found(Arc<Entry>),
    Unknown,
}

/// Per-entry lifetimes: a bundle until its hard expiry, an unknown key for `negative_ttl`.
struct Lifetimes {
    negative: Duration,
}

impl moka::Expiry<KeyHash, Cached> for Lifetimes {
    fn expire_after_create(
        &self,
        _key: &KeyHash,
        value: &Cached,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(match value {
            Cached::Found(e) => e.hard_at.saturating_duration_since(created_at),
            Cached::Unknown => self.negative,
        })
    }

    fn expire_after_update(
        &self,
        key: &KeyHash,
        value: &Cached,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated_at)
    }
}

/// The control-plane client, its bundle cache and its change feed. Shared (`Arc`) by the key
/// gate and the feed task.
pub struct ControlPlaneClient {
    http: reqwest::Client,
    /// Read at start-up: URL, lifetimes, capacity, timeouts.
    settings: ControlPlane,
    /// The live config: its `control_plane` secrets (they follow reloads) and guardrails.
    config: SharedConfig,
    cache: moka::future::Cache<KeyHash, Cached>,
    refreshes: Arc<Semaphore>,
    metrics: Metrics,
    epoch: Instant,
    /// Tenant, team, budget and reset changes the feed has applied so far: a fetch that
    /// overlapped one is not kept, so a change that raced with a resolution is not undone.
    broad_changes: AtomicU64,
    /// The sequence number of the last change applied to each recently changed key: a bundle
    /// of that key with a lower `seq` predates the change and is not kept. (Bundles' `seq`
    /// is compared only per key: the control plane caches resolutions, so a bundle's `seq`
    /// can be older than unrelated changes and still current.)
    recent_key_changes: moka::future::Cache<KeyHash, u64>,
}

/// One page of the change feed.
#[derive(Debug, Deserialize)]
struct ChangePage {
    seq: u64,
    #[serde(default)]
    reset: bool,
    #[serde(default)]
    changes: Vec<Change>,
}

/// One change.
#[derive(Debug, Deserialize)]
struct Change {
    #[serde(default)]
    seq: u64,
    kind: String,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

impl ControlPlaneClient {
    /// A client for `settings` (the validated `control_plane` section at start-up), reading
    /// the live secrets from `config`.
    pub fn new(
        settings: ControlPlane,
        config: SharedConfig,
        metrics: Metrics,
    ) -> Result<Arc<Self>, ResolveError> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ResolveError::Unavailable(format!("cannot build the HTTP client: {e}")))?;
        let cache = moka::future::Cache::builder()
            .max_capacity(settings.max_cached_keys)
            .expire_after(Lifetimes {
                negative: settings.negative_ttl,
            })
            .build();
        Ok(Arc::new(Self {
            http,
            settings,
            config,
            cache,
            refreshes: Arc::new(Semaphore::new(MAX_REFRESHES)),
            metrics,
            epoch: Instant::now(),
            broad_changes: AtomicU64::new(0),
            recent_key_changes: moka::future::Cache::builder()
                .max_capacity(RECENT_KEY_CHANGES)
                .time_to_live(RECENT_KEY_CHANGES_TTL)
                .build(),
        }))
    }

    /// The accepted secrets now: the live config's (they follow reloads), else the start-up
    /// ones.
    fn secrets(&self) -> Vec<tollgate_core::config::SigningSecret> {
        let config = self.config.load();
        let cp = config.control_plane.as_ref().unwrap_or(&self.settings);
        cp.secrets().cloned().collect()
    }

    fn accepted(&self, fingerprint: &[u8; 32]) -> bool {
        let config = self.config.load();
        let cp = config.control_plane.as_ref().unwrap_or(&self.settings);
        let accepted = cp
            .secrets()
            .any(|s| constant_time_eq::constant_time_eq_32(&s.fingerprint, fingerprint));
        accepted
    }

    fn cache_result(&self, result: &'static str) {
        self.metrics
            .cp_cache
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// The key with this hash: `Ok(None)` when the control plane does not know it (answered
    /// from the negative cache when it said so lately), `Err` when it cannot be asked and no
    /// usable bundle is cached.
    pub async fn resolve(
        self: &Arc<Self>,
        hash: KeyHash,
    ) -> Result<Option<Arc<KeyBundle>>, ResolveError> {
        let now = Instant::now();
        match self.cache.get(&hash).await {
            Some(Cached::Unknown) => {
                self.cache_result("negative");
                return Ok(None);
            }
            Some(Cached::Found(e)) if e.hard_at > now && self.accepted(&e.signed_with) => {
                let now_ms = self.millis(now);
                let due = e.refresh_at_ms.load(Ordering::Acquire);
                if now_ms >= due {
                    self.cache_result("stale");
                    let next = self.millis(now + REFRESH_RETRY);
                    if e.refresh_at_ms
                        .compare_exchange(due, next, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        self.refresh_in_background(hash);
                    }
                } else {
                    self.cache_result("hit");
                }
                return Ok(Some(Arc::clone(&e.bundle)));
            }
            // Past its hard expiry, or signed with a secret no longer accepted.
            Some(Cached::Found(_)) => self.cache.invalidate(&hash).await,
            None => {}
        }
        self.cache_result("miss");
        let this = Arc::clone(self);
        let cached = self
            .cache
            .try_get_with(hash, async move { this.fetch(hash).await })
            .await
            .map_err(|e| (*e).clone())?;
        Ok(match cached {
            Cached::Found(e) => {
                // A change applied while this call was out may have concerned the key: keep
                // the answer for this request only.
                if self.overlapped(hash, &e).await {
                    self.cache.invalidate(&hash).await;
                }
                Some(Arc::clone(&e.bundle))
            }
            Cached::Unknown => None,
        })
    }

    /// Starts one background refresh of a bundle past its soft expiry, when fewer than
    /// [`MAX_REFRESHES`] run; a failure keeps the cached bundle (until its hard expiry) and
    /// lets a later use try again after [`REFRESH_RETRY`].
    fn refresh_in_background(self: &Arc<Self>, hash: KeyHash) {
        let Ok(permit) = Arc::clone(&self.refreshes).try_acquire_owned() else {
            return;
        };
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _permit = permit;
            match this.fetch(hash).await {
                Ok(Cached::Found(e)) if this.overlapped(hash, &e).await => {}
                Ok(cached) => this.cache.insert(hash, cached).await,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot refresh a cached key bundle; it serves on until its hard expiry")
                }
            }
        });
    }

    /// Whether `e` (of `hash`) may miss a change the feed applied: a tenant, team or budget
    /// change while it was being fetched, or a change of its key after its `seq`.
    async fn overlapped(&self, hash: KeyHash, e: &Entry) -> bool {
        e.broad_epoch < self.broad_changes.load(Ordering::Acquire)
            || self
                .recent_key_changes
                .get(&hash)
                .await
                .is_some_and(|changed| changed > e.seq)
    }

    /// One signed `POST /v1/resolve-key`, its answer verified and turned into a cache entry.
    async fn fetch(&self, hash: KeyHash) -> Result<Cached, ResolveError> {
        let outcome = self.fetch_inner(hash).await;
        let label = match &outcome {
            Ok(Cached::Found(_)) => "found",
            Ok(Cached::Unknown) => "unknown",
            Err(e) => e.label(),
        };
        self.metrics
            .cp_resolutions
            .get_or_create(&ResultLabel { result: label })
            .inc();
        match &outcome {
            Ok(Cached::Found(e)) => {
                tracing::debug!(key_id = %e.bundle.id, "Resolved a key through the control plane")
            }
            Ok(Cached::Unknown) => {}
            Err(e) => tracing::warn!(error = %e, "Cannot resolve a key through the control plane"),
        }
        outcome
    }

    async fn fetch_inner(&self, hash: KeyHash) -> Result<Cached, ResolveError> {
        let broad_epoch = self.broad_changes.load(Ordering::Acquire);
        let body = serde_json::to_vec(&serde_json::json!({ "hash": keys::format_hash(&hash) }))
            .map_err(|e| ResolveError::Refused(e.to_string()))?;
        let (status, answer) = self
            .call("POST", RESOLVE_PATH, body, self.settings.timeout)
            .await?;
        match status {
            200 => {}
            404 => return Ok(Cached::Unknown),
            s if s >= 500 => return Err(ResolveError::Unavailable(format!("HTTP {s}"))),
            s => return Err(ResolveError::Refused(format!("HTTP {s}"))),
        }
        #[derive(Deserialize)]
        struct Answer {
            bundle: String,
        }
        let answer: Answer = serde_json::from_slice(&answer)
            .map_err(|e| ResolveError::Refused(format!("not a resolve-key answer: {e}")))?;
        let now = time::OffsetDateTime::now_utc();
        let secrets = self.secrets();
        let verified = bundle::verify(&answer.bundle, &secrets, now.unix_timestamp())?;
        let claims = verified.claims;
        let named = keys::parse_hash(&claims.key.hash)
            .map_err(|m| ResolveError::Refused(format!("key.hash {m}")))?;
        if !keys::hashes_equal(&named, &hash) {
            return Err(ResolveError::Refused(
                "the bundle is for another key".to_owned(),
            ));
        }
        let config = self.config.load();
        let mut key = claims
            .key
            .bundle(hash, &config.guardrails, claims.tenant.as_ref());
        key.extra_budgets = claims
            .budgets
            .iter()
            .map(|b| {
                b.budget()
                    .map_err(|m| ResolveError::Refused(format!("budget `{}`: {m}", b.id)))
            })
            .collect::<Result<_, _>>()?;
        let fetched = Instant::now();
        let left = Duration::from_secs(
            u64::try_from(claims.exp.saturating_sub(now.unix_timestamp())).unwrap_or(0),
        );
        // `exp` is checked on arrival (no stale or replayed answer is taken); from then on the
        // sidecar's own lifetimes govern: refreshed by the bundle's `exp` at the latest, served
        // until `hard_ttl` while the control plane cannot be asked.
        let hard_at = fetched + self.settings.hard_ttl;
        let soft_at = fetched + self.settings.soft_ttl.min(left);
        Ok(Cached::Found(Arc::new(Entry {
            budget_ids: key.extra_budgets.iter().map(|b| b.id.clone()).collect(),
            bundle: Arc::new(key),
            hard_at,
            refresh_at_ms: AtomicU64::new(self.millis(soft_at)),
            signed_with: verified.signed_with,
            broad_epoch,
            seq: claims.seq,
        })))
    }

    /// One signed call: the status and the body (at most [`MAX_ANSWER_BYTES`]).
    async fn call(
        &self,
        method: &str,
        path_and_query: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), ResolveError> {
        let t = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = bundle::signature(
            self.settings_secret().expose().as_bytes(),
            t,
            method,
            path_and_query,
            &body,
        );
        let url = format!("{}{path_and_query}", self.settings.url);
        let request = match method {
            "POST" => self
                .http
                .post(url)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body),
            _ => self.http.get(url),
        };
        let exchange = async {
            let mut response = request
                .header(SIGNATURE_HEADER, signature)
                .send()
                .await
                .map_err(|e| ResolveError::Unavailable(without_url(&e)))?;
            let status = response.status().as_u16();
            let mut out = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| ResolveError::Unavailable(without_url(&e)))?
            {
                if out.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(ResolveError::Refused(format!(
                        "the answer is larger than {MAX_ANSWER_BYTES} bytes"
                    )));
                }
                out.extend_from_slice(&chunk);
            }
            Ok((status, out))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(ResolveError::Unavailable(format!(
                    "no answer within {} ms",
                    timeout.as_millis()
                )))
            })
    }

    /// The secret that signs calls: the live config's current one.
    fn settings_secret(&self) -> tollgate_core::config::Secret {
        let config = self.config.load();
        let cp = config.control_plane.as_ref().unwrap_or(&self.settings);
        cp.secret.value.clone()
    }

    /// Long-polls the change feed until `stop` turns true: every change drops the cached
    /// bundles it names (a key by its hash; a tenant, team or budget: every bundle of it); a
    /// `reset` (or a sequence number going back: a control plane with a new history) drops
    /// them all. A failed poll is counted and retried with backoff; the cache keeps serving.
    pub async fn run_feed(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut since: u64 = 0;
        let mut backoff = FEED_BACKOFF_MIN;
        let wait = self.settings.feed_wait;
        loop {
            let path = format!("{CHANGES_PATH}?since={since}&wait_secs={}", wait.as_secs());
            let poll = self.call("GET", &path, Vec::new(), wait + self.settings.timeout);
            let outcome = tokio::select! {
                outcome = poll => outcome,
                _ = stop.changed() => return,
            };
            let page = outcome.and_then(|(status, body)| match status {
                200 => serde_json::from_slice::<ChangePage>(&body)
                    .map_err(|e| ResolveError::Refused(format!("not a change page: {e}"))),
                s if s >= 500 => Err(ResolveError::Unavailable(format!("HTTP {s}"))),
                s => Err(ResolveError::Refused(format!("HTTP {s}"))),
            });
            match page {
                Ok(page) => {
                    if backoff > FEED_BACKOFF_MIN {
                        tracing::info!(seq = page.seq, "Control-plane change feed connected again");
                    }
                    backoff = FEED_BACKOFF_MIN;
                    since = self.apply(page, since).await;
                }
                Err(e) => {
                    self.metrics.cp_feed_reconnects.inc();
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "Control-plane change feed failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(FEED_BACKOFF_MAX);
                }
            }
        }
    }

    /// Applies one page of changes; returns the sequence number to ask from next.
    async fn apply(&self, page: ChangePage, since: u64) -> u64 {
        let count = |kind: &'static str| {
            self.metrics
                .cp_feed_changes
                .get_or_create(&KindLabel { kind })
                .inc();
        };
        if page.reset || page.seq < since {
            count("reset");
            tracing::info!(
                seq = page.seq,
                "Control-plane change feed reset: dropping every cached key bundle"
            );
            self.broad_changes.fetch_add(1, Ordering::AcqRel);
            self.cache.invalidate_all();
            return page.seq;
        }
        for change in &page.changes {
            // Each change is counted before the cache is touched: a fetch in flight that it
            // may concern is not kept.
            if change.kind != "key" {
                self.broad_changes.fetch_add(1, Ordering::AcqRel);
            }
            match (change.kind.as_str(), &change.hash, &change.name) {
                ("key", Some(h), _) => {
                    count("key");
                    if let Ok(hash) = keys::parse_hash(h) {
                        self.recent_key_changes.insert(hash, change.seq).await;
                        self.cache.invalidate(&hash).await;
                    }
                }
                ("tenant", _, Some(name)) => {
                    count("tenant");
                    self.drop_where(|b, _| b.tenant.as_deref() == Some(name.as_str()))
                        .await;
                }
                ("team", _, Some(name)) => {
                    count("team");
                    self.drop_where(|b, _| b.team.as_deref() == Some(name.as_str()))
                        .await;
                }
                ("budget", _, Some(name)) => {
                    count("budget");
                    // The bundles carrying it are dropped (a lowered budget holds from the
                    // next request); a budget may also newly apply to any other key, so the
                    // rest are refreshed in the background on their next use.
                    self.drop_where(|_, ids| ids.iter().any(|id| id == name))
                        .await;
                    for (_, cached) in self.cache.iter() {
                        if let Cached::Found(e) = cached {
                            e.refresh_at_ms.store(0, Ordering::Release);
                        }
                    }
                }
                (kind, _, _) => {
                    tracing::debug!(kind = %kind, "Ignored a control-plane change of an unknown kind")
                }
            }
        }
        page.seq
    }

    /// Drops every cached bundle for which `matches(bundle, budget ids)` holds.
    async fn drop_where(&self, matches: impl Fn(&KeyBundle, &[String]) -> bool) {
        let doomed: Vec<KeyHash> = self
            .cache
            .iter()
            .filter_map(|(hash, cached)| match cached {
                Cached::Found(e) if matches(&e.bundle, &e.budget_ids) => Some(*hash),
                Cached::Found(_) | Cached::Unknown => None,
            })
            .collect();
        for hash in doomed {
            self.cache.invalidate(&hash).await;
        }
    }

    /// Keys (found or unknown) in the cache now; for tests and diagnostics.
    pub async fn cached_keys(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }
}

/// A transport error's text, with what failed first.
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    };
    format!("{kind}: {e}")
}

#[cfg(test)]
mod tests;
