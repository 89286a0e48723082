//! Tollgate's xDS server: Envoy's Aggregated Discovery Service
//! (`envoy.service.discovery.v3.AggregatedDiscoveryService`, state of the world) on the same
//! gRPC server as ext_authz and ext_proc, serving the provider clusters (CDS) derived from the
//! config. A reload that changes a cluster is pushed to every connected Envoy; Envoy's ACKs and
//! NACKs are logged and counted (`tollgate_xds_*` in `core/src/metrics.rs`).
//!
//! Only clusters are served. Routes and listeners stay static in the bootstrap: the route
//! forwards to the cluster named in the routing header Tollgate sets, so adding a provider
//! changes no route.

mod snapshot;
mod stream;
#[cfg(test)]
mod tests;

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::Stream;
use tokio::sync::watch;
use tollgate_core::metrics::{Metrics, ResultLabel};
use tollgate_core::Config;

pub use snapshot::{cluster_type, Snapshot};
pub use stream::{AdsStream, Event, Step};

/// The current provider clusters, published on every config (re)load, and the ADS service
/// that hands them out.
#[derive(Clone)]
pub struct Xds {
    snapshots: Arc<watch::Sender<Arc<Snapshot>>>,
    metrics: Metrics,
}

impl Xds {
    /// Starts with the clusters of `config`.
    pub fn new(config: &Config, metrics: Metrics) -> Xds {
        let first = Snapshot::from_config(config);
        tracing::info!(version = %first.version, clusters = first.len(), "Serving provider clusters over xDS");
        Xds {
            snapshots: Arc::new(watch::channel(Arc::new(first)).0),
            metrics,
        }
    }

    /// Publishes the clusters of a newly loaded `config`; connected Envoys get them when they
    /// differ from the current ones.
    pub fn publish(&self, config: &Config) {
        self.publish_snapshot(Snapshot::from_config(config));
    }

    fn publish_snapshot(&self, next: Snapshot) {
        let (version, clusters) = (next.version.clone(), next.len());
        let mut next = Some(next);
        let changed = self.snapshots.send_if_modified(|current| {
            match next.take().filter(|n| n.version != current.version) {
                Some(n) => {
                    *current = Arc::new(n);
                    true
                }
                None => false,
            }
        });
        if changed {
            tracing::info!(version = %version, clusters, "Provider clusters changed; pushing them to connected Envoys");
        }
    }

    /// The current clusters.
    pub fn current(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshots.borrow())
    }

    /// The gRPC service; its streams end when `stop` turns true (Envoy then reconnects, to
    /// this or another replica, and keeps its clusters meanwhile).
    pub fn service(&self, stop: watch::Receiver<bool>) -> AggregatedDiscoveryServiceServer<Ads> {
        AggregatedDiscoveryServiceServer::new(Ads {
            snapshots: self.snapshots.subscribe(),
            metrics: self.metrics.clone(),
            stop,
        })
    }
}

/// The ADS gRPC service.
pub struct Ads {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, tonic::Status>> + Send>>;
type DeltaStream =
    Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<ResponseStream>, tonic::Status> {
        let mut snapshots = self.snapshots.clone();
        snapshots.mark_unchanged();
        let conn = Connection {
            inbound: request.into_inner(),
            snapshots,
            stop: self.stop.clone(),
            state: AdsStream::default(),
            pending: None,
            open: OpenStream::new(&self.metrics),
            metrics: self.metrics.clone(),
        };
        let out = futures::stream::unfold(conn, |mut conn| async move {
            conn.next().await.map(|r| (Ok(r), conn))
        });
        Ok(tonic::Response::new(Box::pin(out)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<DeltaStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "Tollgate's ADS serves the state-of-the-world protocol only: set ads_config.api_type to GRPC",
        ))
    }
}

/// Counts an open stream in `tollgate_xds_streams` for as long as it lives.
struct OpenStream(prometheus_client::metrics::gauge::Gauge);

impl OpenStream {
    fn new(metrics: &Metrics) -> OpenStream {
        metrics.xds_streams.inc();
        OpenStream(metrics.xds_streams.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One Envoy's ADS stream: its requests, the snapshots, and the protocol state between them.
struct Connection {
    inbound: tonic::Streaming<DiscoveryRequest>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    stop: watch::Receiver<bool>,
    state: AdsStream,
    pending: Option<DiscoveryResponse>,
    open: OpenStream,
    metrics: Metrics,
}

impl Connection {
    /// The next response to send; `None` ends the stream.
    async fn next(&mut self) -> Option<DiscoveryResponse> {
        loop {
            if let Some(r) = self.pending.take() {
                self.metrics.xds_pushes.inc();
                tracing::info!(node = %self.state.node_id(), version = %r.version_info, clusters = r.resources.len(), nonce = %r.nonce, "Pushing provider clusters");
                return Some(r);
            }
            if *self.stop.borrow() {
                tracing::info!(node = %self.state.node_id(), "Closing the ADS stream: shutting down");
                return None;
            }
            tokio::select! {
                changed = self.stop.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                msg = self.inbound.message() => match msg {
                    Ok(Some(req)) => {
                        let snapshot = Arc::clone(&self.snapshots.borrow_and_update());
                        let step = self.state.on_request(&req, &snapshot);
                        self.record(&step.event);
                        self.pending = step.response;
                    }
                    Ok(None) => {
                        tracing::info!(node = %self.state.node_id(), "Envoy closed its ADS stream");
                        return None;
                    }
                    Err(status) => {
                        tracing::info!(node = %self.state.node_id(), code = ?status.code(), error = %status.message(), "ADS stream ended");
                        return None;
                    }
                },
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    let snapshot = Arc::clone(&self.snapshots.borrow_and_update());
                    self.pending = self.state.on_snapshot(&snapshot);
                }
            }
        }
    }

    /// Logs and counts what a request meant.
    fn record(&self, event: &Event) {
        let node = self.state.node_id();
        match event {
            Event::Subscribed { has_version } => {
                let (cluster, agent) = self
                    .state
                    .node()
                    .map(|n| (n.cluster.as_str(), n.user_agent_name.as_str()))
                    .unwrap_or_default();
                tracing::info!(node = %node, node_cluster = %cluster, agent = %agent, has_version = %has_version, streams = self.open.0.get(), "Envoy subscribed to the provider clusters");
            }
            Event::Ack { version } => {
                self.metrics
                    .xds_acks
                    .get_or_create(&ResultLabel { result: "ack" })
                    .inc();
                tracing::info!(node = %node, version = %version, "Envoy applied the provider clusters");
            }
            Event::Nack {
                rejected,
                kept,
                code,
                message,
            } => {
                self.metrics
                    .xds_acks
                    .get_or_create(&ResultLabel { result: "nack" })
                    .inc();
                tracing::error!(node = %node, rejected_version = %rejected, kept_version = %kept, code, error = %message, "Envoy rejected the provider clusters (NACK); it keeps the clusters it had, and the next config change is pushed again");
            }
            Event::Stale { nonce } => {
                tracing::debug!(node = %node, nonce = %nonce, "Ignoring the answer to an older ADS push");
            }
            Event::Unsupported { type_url, first } => {
                if *first {
                    tracing::warn!(node = %node, type_url = %type_url, "Envoy asked Tollgate's ADS for a resource type it does not serve (only clusters): take it from the bootstrap");
                }
            }
        }
    }
}
