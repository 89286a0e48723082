//! The `tollgate` command's library: every subcommand is a function here, so tests call the
//! same code the binary runs.

pub mod bootstrap;
pub mod envoy_admin;
pub mod ready;
pub mod serve;
pub mod up;
