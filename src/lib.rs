//! The `tollgate` command's library: every subcommand is a function here, so tests call the
//! same code the binary runs.

pub mod bootstrap;
pub mod budget_metrics;
pub mod clusters;
pub mod drain;
pub mod envoy_admin;
pub mod netcheck;
pub mod ready;
pub mod serve;
pub mod up;
pub mod xds;
