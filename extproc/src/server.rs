//! The ext_proc gRPC server (`envoy.service.ext_proc.v3.ExternalProcessor`): owns the
//! bidirectional stream loop and hands each message to the stream's [`Processor`].

use std::pin::Pin;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use futures::Stream;
use tollgate_core::metrics::Metrics;
use tollgate_core::SharedConfig;
use tonic::{Request, Response, Status, Streaming};

use crate::processor::Processor;

/// The ext_proc gRPC service.
pub struct ExtProcService {
    config: SharedConfig,
    metrics: Metrics,
}

impl ExtProcService {
    /// A service reading the live config (each stream keeps the snapshot it started with).
    pub fn new(config: SharedConfig, metrics: Metrics) -> Self {
        Self { config, metrics }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = ResponseStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let inbound = request.into_inner();
        let processor = Processor::new(self.config.load_full(), self.metrics.clone());
        let stream = futures::stream::unfold(
            (inbound, processor),
            |(mut inbound, mut processor)| async move {
                loop {
                    match inbound.message().await {
                        Ok(Some(msg)) => {
                            if let Some(resp) = processor.handle(msg) {
                                return Some((Ok(resp), (inbound, processor)));
                            }
                        }
                        Ok(None) => return None,
                        Err(status) => {
                            // Envoy often ends a finished stream with a reset: not an error.
                            tracing::debug!(code = ?status.code(), "ext_proc stream closed by Envoy");
                            return None;
                        }
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
