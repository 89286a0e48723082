//! Targets out of rotation, seen across the fleet: every 250 ms a background task counts the
//! cooling targets of each model (`tollgate_targets_cooling`) and, where `budgets.redis` is
//! set, shares the cool-downs and ejections this replica set (`SET {<prefix>}:cool:<provider>:
//! <model> <until_ms> PX <ms>`, only when later than the one stored, and `PUBLISH
//! {<prefix>}:cool`), while a second task subscribes to that channel and applies the later
//! deadline to its own targets (catching up with `MGET` on every (re)connect). Nothing here
//! runs on the request path: requests only set and read their targets' atomics.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tollgate_core::config::{Config, Target};
use tollgate_core::metrics::{Metrics, ModelLabel};
use tollgate_core::SharedConfig;

/// How often cooling targets are counted and new cool-downs shared.
pub const TICK: Duration = Duration::from_millis(250);
/// The longest one Redis call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// The first and the longest pause before reconnecting the subscription.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The most cool-downs shared per tick (a fleet-wide storm is shared over a few ticks).
const MAX_SHARED_PER_TICK: usize = 64;

/// Sets the key and publishes only when the new deadline is later than the stored one.
const SHARE: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 1
end
return 0
";

/// Where cool-downs are shared.
#[derive(Clone)]
pub struct Sharing {
    /// The Redis URL (may hold a password: never logged).
    pub url: String,
    /// `budgets.redis.key_prefix`.
    pub prefix: String,
}

impl std::fmt::Debug for Sharing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("Sharing")
            .field("url", &"<redacted>")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// One cool-down on the channel.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Message {
    provider: String,
    model: String,
    until_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn key(prefix: &str, provider: &str, model: &str) -> String {
    format!("{{{prefix}}}:cool:{provider}:{model}")
}

fn channel(prefix: &str) -> String {
    format!("{{{prefix}}}:cool")
}

/// Every target of every model, with its model's name.
fn targets(config: &Config) -> impl Iterator<Item = (&str, &Target)> {
    config
        .models
        .values()
        .flat_map(|m| m.targets.iter().map(move |t| (m.name.as_str(), t)))
}

/// Runs until `stop`: the gauge and, with `sharing`, the publisher and the subscriber.
pub async fn run(
    config: SharedConfig,
    metrics: Metrics,
    sharing: Option<Sharing>,
    stop: watch::Receiver<bool>,
) {
    let subscriber = sharing
        .clone()
        .map(|s| tokio::spawn(subscribe(s, config.clone(), stop.clone())));
    tick(config, metrics, sharing, stop).await;
    if let Some(task) = subscriber {
        let _ = task.await;
    }
}

/// Counts cooling targets per model and shares new cool-downs, every [`TICK`].
async fn tick(
    config: SharedConfig,
    metrics: Metrics,
    sharing: Option<Sharing>,
    mut stop: watch::Receiver<bool>,
) {
    let mut publisher = sharing.map(Publisher::new);
    let mut models: HashSet<String> = HashSet::new();
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let current = config.load_full();
        let now = now_ms();
        let mut seen = HashSet::with_capacity(current.models.len());
        for m in current.models.values() {
            let cooling = m.targets.iter().filter(|t| t.stats.cooling(now)).count();
            metrics
                .targets_cooling
                .get_or_create(&ModelLabel {
                    model: m.name.clone(),
                })
                .set(i64::try_from(cooling).unwrap_or(i64::MAX));
            seen.insert(m.name.clone());
        }
        for gone in models.difference(&seen) {
            metrics.targets_cooling.remove(&ModelLabel {
                model: gone.clone(),
            });
        }
        models = seen;
        if let Some(p) = &mut publisher {
            // A Redis that hangs does not hold up the shutdown.
            tokio::select! {
                _ = p.share(&current, now) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// Shares this replica's new cool-downs through Redis.
struct Publisher {
    sharing: Sharing,
    script: Script,
    con: Option<ConnectionManager>,
    /// When the last failed connection attempt was (no attempt more often than every
    /// [`BACKOFF_MAX`]).
    failed_at: Option<tokio::time::Instant>,
}

impl Publisher {
    fn new(sharing: Sharing) -> Self {
        Self {
            sharing,
            script: Script::new(SHARE),
            con: None,
            failed_at: None,
        }
    }

    async fn connection(&mut self) -> Option<ConnectionManager> {
        if let Some(c) = &self.con {
            return Some(c.clone());
        }
        if self.failed_at.is_some_and(|t| t.elapsed() < BACKOFF_MAX) {
            return None;
        }
        let connected = async {
            let client = Client::open(self.sharing.url.as_str())?;
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(CALL_TIMEOUT))
                .set_connection_timeout(Some(CALL_TIMEOUT))
                .set_number_of_retries(1);
            ConnectionManager::new_with_config(client, config).await
        };
        match tokio::time::timeout(CALL_TIMEOUT * 2, connected).await {
            Ok(Ok(c)) => {
                self.failed_at = None;
                self.con = Some(c.clone());
                Some(c)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Cannot connect to Redis to share cool-downs; retrying");
                self.failed_at = Some(tokio::time::Instant::now());
                None
            }
            Err(_) => {
                tracing::warn!("Connecting to Redis to share cool-downs timed out; retrying");
                self.failed_at = Some(tokio::time::Instant::now());
                None
            }
        }
    }

    /// Publishes every target whose deadline is later than what was last shared.
    async fn share(&mut self, config: &Config, now: u64) {
        let news: Vec<(&Target, u64)> = targets(config)
            .map(|(_, t)| (t, t.stats.cool_until_ms()))
            .filter(|(t, until)| *until > now && t.stats.shared_until_ms() < *until)
            .take(MAX_SHARED_PER_TICK)
            .collect();
        if news.is_empty() {
            return;
        }
        let Some(mut con) = self.connection().await else {
            return;
        };
        let channel = channel(&self.sharing.prefix);
        for (t, until) in news {
            let message = Message {
                provider: t.provider.name.clone(),
                model: t.upstream_model.clone(),
                until_ms: until,
            };
            let Ok(payload) = serde_json::to_string(&message) else {
                continue;
            };
            let mut invocation = self.script.prepare_invoke();
            invocation
                .key(key(&self.sharing.prefix, &message.provider, &message.model))
                .arg(until)
                .arg(until.saturating_sub(now).max(1))
                .arg(&channel)
                .arg(payload);
            let call = invocation.invoke_async::<i64>(&mut con);
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(_)) => {
                    t.stats.mark_shared(until);
                    tracing::debug!(
                        provider = %message.provider,
                        model = %message.model,
                        until_ms = until,
                        "Shared a cool-down"
                    );
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, provider = %message.provider, "Cannot share a cool-down through Redis; retrying next tick");
                    return;
                }
                Err(_) => {
                    tracing::warn!(provider = %message.provider, "Sharing a cool-down through Redis timed out; retrying next tick");
                    return;
                }
            }
        }
    }
}

/// Applies a cool-down another replica shared to every target of this provider and model.
fn apply(config: &Config, message: &Message) -> usize {
    let mut applied = 0;
    for (_, t) in targets(config) {
        if t.provider.name == message.provider && t.upstream_model == message.model {
            // Marked first, so the publisher does not share it back.
            t.stats.mark_shared(message.until_ms);
            t.stats.cool_down_until(message.until_ms);
            applied += 1;
        }
    }
    applied
}

/// Subscribes to the cool-down channel until `stop`, reconnecting with a bounded backoff.
async fn subscribe(sharing: Sharing, config: SharedConfig, mut stop: watch::Receiver<bool>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if *stop.borrow() {
            return;
        }
        let result = tokio::select! {
            r = listen(&sharing, &config, &mut backoff) => r,
            _ = stop.changed() => return,
        };
        match result {
            Ok(()) => tracing::warn!("The Redis cool-down subscription ended; reconnecting"),
            Err(e) => {
                tracing::warn!(error = %e, "The Redis cool-down subscription failed; reconnecting")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One subscription: subscribe, catch up on the deadlines stored meanwhile, then apply every
/// message until the connection ends.
async fn listen(
    sharing: &Sharing,
    config: &SharedConfig,
    backoff: &mut Duration,
) -> redis::RedisResult<()> {
    let client = Client::open(sharing.url.as_str())?;
    let timed_out = || redis::RedisError::from((redis::ErrorKind::Io, "timed out"));
    let mut pubsub = tokio::time::timeout(CALL_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| timed_out())??;
    tokio::time::timeout(CALL_TIMEOUT, pubsub.subscribe(channel(&sharing.prefix)))
        .await
        .map_err(|_| timed_out())??;
    // What other replicas stored while this one was not listening.
    let current = config.load_full();
    let wanted: Vec<(String, String)> = targets(&current)
        .map(|(_, t)| (t.provider.name.clone(), t.upstream_model.clone()))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if !wanted.is_empty() {
        let mut con = tokio::time::timeout(CALL_TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| timed_out())??;
        let keys: Vec<String> = wanted
            .iter()
            .map(|(p, m)| key(&sharing.prefix, p, m))
            .collect();
        let stored: Vec<Option<String>> = tokio::time::timeout(
            CALL_TIMEOUT,
            redis::cmd("MGET").arg(&keys).query_async(&mut con),
        )
        .await
        .map_err(|_| timed_out())??;
        for ((provider, model), until) in wanted.into_iter().zip(stored) {
            // A value that is not a deadline (written by something else) is left alone.
            if let Some(until_ms) = until.and_then(|u| u.parse::<u64>().ok()) {
                apply(
                    &current,
                    &Message {
                        provider,
                        model,
                        until_ms,
                    },
                );
            }
        }
    }
    tracing::info!("Subscribed to cool-downs shared through Redis");
    *backoff = BACKOFF_MIN;
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        match serde_json::from_slice::<Message>(msg.get_payload_bytes()) {
            Ok(m) => {
                let applied = apply(&config.load(), &m);
                tracing::debug!(
                    provider = %m.provider,
                    model = %m.model,
                    until_ms = m.until_ms,
                    targets = applied,
                    "Applied a cool-down another replica shared"
                );
            }
            Err(e) => tracing::warn!(error = %e, "Ignored a malformed cool-down message"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_messages_have_the_documented_shape() {
        assert_eq!(
            key("tollgate", "openai", "gpt-4o"),
            "{tollgate}:cool:openai:gpt-4o"
        );
        assert_eq!(channel("tg"), "{tg}:cool");
        let m = Message {
            provider: "p".into(),
            model: "m/x".into(),
            until_ms: 42,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(text, r#"{"provider":"p","model":"m/x","until_ms":42}"#);
        assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), m);
    }
}
