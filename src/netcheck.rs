//! The opt-in start-up network check (`startup_check.network`): before `serve` reports ready,
//! every configured provider's host is resolved (DNS) and a TCP connection is opened to its
//! port, so that a mistyped base URL, a missing DNS record or a missing egress rule stops the
//! start with a message naming the provider, the step and the address, rather than failing
//! the first request sent there.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinSet;
use tollgate_core::Config;

/// The step of the check that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Resolving the provider's host name.
    Dns,
    /// Opening a TCP connection to a resolved address.
    Connect,
}

impl Step {
    /// `dns` or `connect`, as in the message.
    pub fn label(self) -> &'static str {
        match self {
            Step::Dns => "dns",
            Step::Connect => "connect",
        }
    }
}

/// One provider that did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The provider's name in the config.
    pub provider: String,
    /// The step that failed.
    pub step: Step,
    /// `host:port` from the provider's base URL, with the address tried when the name
    /// resolved to a different one.
    pub address: String,
    /// What went wrong.
    pub reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "provider `{}`: {} {} failed: {}",
            self.provider,
            self.step.label(),
            self.address,
            self.reason
        )
    }
}

/// Checks one `host:port`: resolve, then connect to each address in turn until one accepts.
async fn check_one(
    provider: String,
    host: String,
    port: u16,
    timeout: Duration,
) -> Result<(), Failure> {
    let target = format!("{host}:{port}");
    let fail = |step, address: String, reason: String| Failure {
        provider: provider.clone(),
        step,
        address,
        reason,
    };
    let lookup = tokio::time::timeout(
        timeout,
        tokio::net::lookup_host((host.trim_matches(['[', ']']), port)),
    )
    .await;
    let addrs: Vec<SocketAddr> = match lookup {
        Err(_) => {
            return Err(fail(
                Step::Dns,
                target,
                format!("no answer within {} ms", timeout.as_millis()),
            ))
        }
        Ok(Err(e)) => return Err(fail(Step::Dns, target, e.to_string())),
        Ok(Ok(addrs)) => addrs.collect(),
    };
    let mut last = None;
    for addr in &addrs {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => last = Some((*addr, e.to_string())),
            Err(_) => {
                last = Some((
                    *addr,
                    format!("no answer within {} ms", timeout.as_millis()),
                ))
            }
        }
    }
    let Some((addr, reason)) = last else {
        return Err(fail(
            Step::Dns,
            target,
            "the name has no address".to_owned(),
        ));
    };
    let address = if addr.to_string() == target {
        target
    } else {
        format!("{target} ({addr})")
    };
    Err(fail(Step::Connect, address, reason))
}

/// Checks every provider of `config` at once, each step bounded by `timeout`; every failure,
/// in provider-name order.
pub async fn check(config: &Config, timeout: Duration) -> Result<(), Vec<Failure>> {
    let mut set = JoinSet::new();
    for p in config.providers.values() {
        set.spawn(check_one(p.name.clone(), p.host.clone(), p.port, timeout));
    }
    let mut failures = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(f)) => failures.push(f),
            Err(e) => failures.push(Failure {
                provider: String::new(),
                step: Step::Connect,
                address: String::new(),
                reason: format!("the check task failed: {e}"),
            }),
        }
    }
    failures.sort_by(|a, b| a.provider.cmp(&b.provider));
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

/// Runs the check when `startup_check.network` asks for it: logs each failure and returns one
/// error listing them all.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let settings = config.startup_check;
    if !settings.network {
        return Ok(());
    }
    match check(config, settings.timeout).await {
        Ok(()) => {
            tracing::info!(
                providers = config.providers.len(),
                "Start-up network check passed"
            );
            Ok(())
        }
        Err(failures) => {
            for f in &failures {
                tracing::error!(provider = %f.provider, step = f.step.label(), address = %f.address, reason = %f.reason, "Start-up network check failed");
            }
            let lines: Vec<String> = failures.iter().map(|f| format!("  {f}")).collect();
            anyhow::bail!(
                "start-up network check failed (startup_check.network):\n{}",
                lines.join("\n")
            )
        }
    }
}
