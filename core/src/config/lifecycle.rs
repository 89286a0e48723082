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
}

impl Default for RawShutdown {
    fn default() -> Self {
        Self {
            pre_drain_wait_ms: default_pre_drain_wait_ms(),
            drain_timeout_ms: default_drain_timeout_ms(),
        }
    }
}

fn default_pre_drain_wait_ms() -> u64 {
    5_000
}

fn default_drain_timeout_ms() -> u64 {
    30_000
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
    Shutdown {
        pre_drain_wait: Duration::from_millis(raw.pre_drain_wait_ms),
        drain_timeout: Duration::from_millis(raw.drain_timeout_ms),
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
