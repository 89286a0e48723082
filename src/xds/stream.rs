//! The protocol state of one ADS stream (xDS state of the world), without I/O: what to answer
//! to each `DiscoveryRequest` Envoy sends and to each new snapshot, and what each request
//! means (a subscription, an ACK, a NACK, a stale answer to an older push).
//!
//! The rules, from the xDS protocol: every response carries a fresh nonce; a request whose
//! `response_nonce` is not the latest one sent for its type answers an older push and is
//! ignored; a request with the latest nonce and an `error_detail` is a NACK (Envoy keeps the
//! version it had, named in `version_info`), without one an ACK. A NACKed version is not sent
//! again: the next push is the next config change.

use std::collections::{BTreeSet, HashSet};

use envoy_types::pb::envoy::config::core::v3::{ControlPlane, Node};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::snapshot::{cluster_type, Snapshot};

/// What a request meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The first request for clusters on this stream: Envoy subscribes, naming the version it
    /// already runs (empty on its first connection, the last applied one on a reconnect).
    Subscribed {
        /// The version Envoy has.
        has_version: String,
    },
    /// Envoy applied the push with this version.
    Ack {
        /// The applied version.
        version: String,
    },
    /// Envoy rejected a push and keeps running the version it had.
    Nack {
        /// The version it rejected.
        rejected: String,
        /// The version it keeps (empty when it never accepted one).
        kept: String,
        /// `error_detail.code` (a gRPC status code).
        code: i32,
        /// `error_detail.message`: Envoy's reason.
        message: String,
    },
    /// The answer to a push older than the latest one: ignored.
    Stale {
        /// Its nonce.
        nonce: String,
    },
    /// A resource type Tollgate does not serve (only clusters are served); `first` is true the
    /// first time this stream asks for it.
    Unsupported {
        /// The type asked for.
        type_url: String,
        /// Whether this stream asked for it before.
        first: bool,
    },
}

/// The outcome of one request: what it meant and what to send back, if anything.
#[derive(Debug)]
pub struct Step {
    /// What the request meant.
    pub event: Event,
    /// The response to send.
    pub response: Option<DiscoveryResponse>,
}

/// What was last sent for clusters.
#[derive(Debug, Clone)]
struct Sent {
    version: String,
    nonce: String,
}

/// The clusters subscription of a stream.
#[derive(Debug, Default)]
struct Subscription {
    /// The names asked for; `None` for every cluster (a wildcard subscription).
    names: Option<BTreeSet<String>>,
    /// The latest push.
    sent: Option<Sent>,
}

/// One ADS stream.
#[derive(Debug, Default)]
pub struct AdsStream {
    node: Option<Node>,
    clusters: Option<Subscription>,
    nonces: u64,
    unsupported: HashSet<String>,
}

/// The control plane's name in every response (shown in Envoy's config dump).
fn control_plane() -> ControlPlane {
    ControlPlane {
        identifier: format!("tollgate/{}", env!("CARGO_PKG_VERSION")),
    }
}

/// Names asked for: `None` for a wildcard (no names, or `*`).
fn requested_names(req: &DiscoveryRequest) -> Option<BTreeSet<String>> {
    if req.resource_names.is_empty() || req.resource_names.iter().any(|n| n == "*") {
        None
    } else {
        Some(req.resource_names.iter().cloned().collect())
    }
}

impl AdsStream {
    /// The node that opened the stream (Envoy sends it on the first request).
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// The node id, for logs (empty until known).
    pub fn node_id(&self) -> &str {
        self.node.as_ref().map(|n| n.id.as_str()).unwrap_or("")
    }

    /// The version of the latest push, if any.
    pub fn sent_version(&self) -> Option<&str> {
        self.clusters
            .as_ref()
            .and_then(|s| s.sent.as_ref())
            .map(|s| s.version.as_str())
    }

    /// Handles one request from Envoy, with `snapshot` the current clusters.
    pub fn on_request(&mut self, req: &DiscoveryRequest, snapshot: &Snapshot) -> Step {
        if self.node.is_none() {
            self.node = req.node.clone();
        }
        if req.type_url != cluster_type() {
            let first = self.unsupported.insert(req.type_url.clone());
            return Step {
                event: Event::Unsupported {
                    type_url: req.type_url.clone(),
                    first,
                },
                response: None,
            };
        }
        let names = requested_names(req);
        if req.response_nonce.is_empty() {
            // A new subscription (or Envoy starting over): always answer with the current set.
            self.clusters = Some(Subscription { names, sent: None });
            return Step {
                event: Event::Subscribed {
                    has_version: req.version_info.clone(),
                },
                response: Some(self.respond(snapshot)),
            };
        }
        let latest = self
            .clusters
            .as_ref()
            .and_then(|s| s.sent.as_ref())
            .filter(|s| s.nonce == req.response_nonce)
            .cloned();
        let Some(sent) = latest else {
            return Step {
                event: Event::Stale {
                    nonce: req.response_nonce.clone(),
                },
                response: None,
            };
        };
        if let Some(err) = &req.error_detail {
            return Step {
                event: Event::Nack {
                    rejected: sent.version,
                    kept: req.version_info.clone(),
                    code: err.code,
                    message: err.message.clone(),
                },
                response: None,
            };
        }
        // An ACK. If it also changes the names asked for, answer with the new set.
        let renamed = match self.clusters.as_mut() {
            Some(sub) if sub.names != names => {
                sub.names = names;
                true
            }
            _ => false,
        };
        Step {
            event: Event::Ack {
                version: req.version_info.clone(),
            },
            response: renamed.then(|| self.respond(snapshot)),
        }
    }

    /// A new snapshot: the push to send, when Envoy subscribed and the version differs from
    /// the latest push (which may be one Envoy rejected: then this is the config change that
    /// may fix it).
    pub fn on_snapshot(&mut self, snapshot: &Snapshot) -> Option<DiscoveryResponse> {
        let sub = self.clusters.as_ref()?;
        if sub
            .sent
            .as_ref()
            .is_some_and(|s| s.version == snapshot.version)
        {
            return None;
        }
        Some(self.respond(snapshot))
    }

    fn respond(&mut self, snapshot: &Snapshot) -> DiscoveryResponse {
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let names = self.clusters.as_ref().and_then(|s| s.names.as_ref());
        let resources = snapshot.resources(names);
        if let Some(sub) = self.clusters.as_mut() {
            sub.sent = Some(Sent {
                version: snapshot.version.clone(),
                nonce: nonce.clone(),
            });
        }
        DiscoveryResponse {
            version_info: snapshot.version.clone(),
            resources,
            type_url: cluster_type(),
            nonce,
            control_plane: Some(control_plane()),
            ..Default::default()
        }
    }
}
