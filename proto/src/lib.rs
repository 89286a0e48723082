//! Tollgate's own protobuf APIs and their generated code (prost messages, tonic client and
//! server). Envoy's APIs come from the `envoy-types` crate instead.
//!
//! - [`logger::v1`]: `tollgate.logger.v1`, the log ingest API between `tollgate serve` and
//!   `tollgate logger`.

/// The `tollgate.logger` package.
pub mod logger {
    /// `tollgate.logger.v1`: [`LogEvent`](v1::LogEvent), [`LogBatch`](v1::LogBatch) and the
    /// acknowledged [`LogIngest`](v1::log_ingest_server::LogIngest) service.
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("tollgate.logger.v1");
    }
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
