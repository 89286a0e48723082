//! `tollgate-bench`: the load benchmark harness. Measures plain Envoy against Envoy +
//! Tollgate (ext_authz + ext_proc) on the same mock upstream, in one run, over HTTP/1.1 on
//! 127.0.0.1: open-loop latency at fixed rates, closed-loop max throughput and streaming
//! time to first / last byte, reported as medians over interleaved rounds.

pub mod cachekey;
pub mod cli;
pub mod failover;
pub mod footprint;
pub mod loadgen;
pub mod report;
pub mod run;
pub mod stack;
pub mod stats;
