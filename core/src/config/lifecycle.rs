//! The `shutdown` and `startup_check` sections: how `serve` drains when it is told to stop
//! (SIGTERM, Ctrl-C), and the opt-in network check it runs before it reports ready.

use std::time::Duration;

use serde::Deserialize;

use super::Errors;

/// The `shutdown` section. Read when the signal arrives, so a reloaded config applies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    /// After SIGTERM (or Ctrl-C), how long `serve` goes on serving new requests while
    /// `/readyz` answers 503 and `tollgate_draining` is 1, so that load balancers and Envoy's
    /// health checks take it out of rotation first; in milliseconds (0 to 300000).
    #[serde(default = "default_pre_drain_wait_ms")]
    pub pre_drain_wait_ms: u64,
    /// Then no new gRPC stream is accepted, and the streams in flight (requests in progress,
    /// LLM streams included) get this long to finish; those still open after it are cut. In
    /// milliseconds (0 to 3600000).
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Then the last budget settlements go to the ledger and the log queue to the logger, in
    /// parallel, for at most this long; what has not gone by then is written to disk for the
    /// next start (settlements to `budgets.redis.pending_dir`, log events to the spool), so a
    /// Redis or logger that is away cannot hold the exit. In milliseconds (100 to 60000).
    #[serde(default = "default_flush_timeout_ms")]
    pub flush_timeout_ms: u64,
}

impl Default for RawShutdown {
    fn default() -> Self {
        Self {
            pre_drain_wait_ms: default_pre_drain_wait_ms(),
            drain_timeout_ms: default_drain_timeout_ms(),
            flush_timeout_ms: default_flush_timeout_ms(),
        }
    }
}

fn default_pre_drain_wait_ms() -> u64 {
    5_000
}

fn default_drain_timeout_ms() -> u64 {
    30_000
}

fn default_flush_timeout_ms() -> u64 {
    5_000
}

/// The `startup_check` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStartupCheck {
    /// Before it reports ready, resolve every provider's host (DNS) and open a TCP connection
    /// to its port; a failure stops the start with a message naming the provider, the step
    /// (`dns` or `connect`) and the address. Off by default.
    #[serde(default)]
    pub network: bool,
    /// The longest each step may take per provider, in milliseconds (10 to 60000).
    #[serde(default = "default_check_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for RawStartupCheck {
    fn default() -> Self {
        Self {
            network: false,
            timeout_ms: default_check_timeout_ms(),
        }
    }
}

fn default_check_timeout_ms() -> u64 {
    3_000
}

/// The validated `shutdown` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shutdown {
    /// How long to keep serving, not ready, before the drain.
    pub pre_drain_wait: Duration,
    /// How long streams in flight may take to finish.
    pub drain_timeout: Duration,
    /// How long the settlements and the log queue may take to go out after the streams.
    pub flush_timeout: Duration,
}

/// The validated `startup_check` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupCheck {
    /// Check every provider's DNS and TCP reachability before reporting ready.
    pub network: bool,
    /// The longest each step may take per provider.
    pub timeout: Duration,
}

pub(super) fn validate_shutdown(raw: &RawShutdown, errs: &mut Errors) -> Shutdown {
    if raw.pre_drain_wait_ms > 300_000 {
        errs.add("shutdown.pre_drain_wait_ms", "must be between 0 and 300000");
    }
    if raw.drain_timeout_ms > 3_600_000 {
        errs.add("shutdown.drain_timeout_ms", "must be between 0 and 3600000");
    }
    if !(100..=60_000).contains(&raw.flush_timeout_ms) {
        errs.add("shutdown.flush_timeout_ms", "must be between 100 and 60000");
    }
    Shutdown {
        pre_drain_wait: Duration::from_millis(raw.pre_drain_wait_ms),
        drain_timeout: Duration::from_millis(raw.drain_timeout_ms),
        flush_timeout: Duration::from_millis(raw.flush_timeout_ms),
    }
}

pub(super) fn validate_startup_check(raw: &RawStartupCheck, errs: &mut Errors) -> StartupCheck {
    if !(10..=60_000).contains(&raw.timeout_ms) {
        errs.add("startup_check.timeout_ms", "must be between 10 and 60000");
    }
    StartupCheck {
        network: raw.network,
        timeout: Duration::from_millis(raw.timeout_ms),
    }
}
