//! Tollgate's own protobuf APIs and their generated code (prost messages, tonic client and
//! server). Envoy's APIs come from the `envoy-types` crate instead.
//!
//! - [`logger::v1`]: `tollgate.logger.v1`, the log ingest API between `tollgate serve` and
//!   `tollgate logger`.
//! - [`otlp`]: the OpenTelemetry Protocol's trace export API (`opentelemetry.proto.*`, vendored
//!   from opentelemetry-proto v1.9.0 under `proto/opentelemetry/`), which `tollgate serve`
//!   speaks to an OTLP collector (gRPC, or the same messages over HTTP).

/// The `tollgate.logger` package.
pub mod logger {
    /// `tollgate.logger.v1`: [`LogEvent`](v1::LogEvent), [`LogBatch`](v1::LogBatch) and the
    /// acknowledged [`LogIngest`](v1::log_ingest_server::LogIngest) service.
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("tollgate.logger.v1");
    }
}

/// The OTLP trace protos, in their package hierarchy (`opentelemetry.proto.*`): generated code
/// refers to its neighbours by relative paths, so the nesting must follow the packages.
pub mod otlp {
    /// `opentelemetry.proto`.
    #[allow(clippy::all, missing_docs)]
    pub mod proto {
        /// `opentelemetry.proto.common`.
        pub mod common {
            /// `AnyValue`, `KeyValue`, `InstrumentationScope`.
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.common.v1");
            }
        }
        /// `opentelemetry.proto.resource`.
        pub mod resource {
            /// `Resource`.
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.resource.v1");
            }
        }
        /// `opentelemetry.proto.trace`.
        pub mod trace {
            /// `Span`, `ResourceSpans`, `ScopeSpans`, `Status`.
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.trace.v1");
            }
        }
        /// `opentelemetry.proto.collector`.
        pub mod collector {
            /// `opentelemetry.proto.collector.trace`.
            pub mod trace {
                /// The `TraceService` (client and server) and its export request.
                pub mod v1 {
                    tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
                }
            }
        }
    }

    pub use proto::collector::trace::v1 as collector;
    pub use proto::common::v1 as common;
    pub use proto::resource::v1 as resource;
    pub use proto::trace::v1 as trace;
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::logger::v1::{LogBatch, LogEvent, Usage, UsageSource};

    #[test]
    fn a_batch_round_trips_through_the_wire_format() {
        let batch = LogBatch {
            events: vec![LogEvent {
                request_id: "0123456789abcdef0123456789abcdef".to_owned(),
                start_time_unix_nanos: 1_700_000_000_000_000_000,
                end_time_unix_nanos: 1_700_000_000_500_000_000,
                key_id: "k1".to_owned(),
                requested_model: "gpt".to_owned(),
                stream: true,
                http_status: 200,
                usage: Some(Usage {
                    input_tokens: 12,
                    output_tokens: 34,
                    source: UsageSource::Provider.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        };
        let bytes = batch.encode_to_vec();
        let back = LogBatch::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, batch);
        assert_eq!(
            back.events[0].usage.unwrap().source(),
            UsageSource::Provider
        );
    }
}
