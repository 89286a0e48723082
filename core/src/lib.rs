//! Tollgate's domain model, shared by every service: the config schema and its validation,
//! virtual keys, normalised usage, and errors in each client API's own dialect.

pub mod bound;
pub mod budget;
pub mod config;
pub mod env;
pub mod error;
pub mod evaluation_metrics;
pub mod feedback;
pub mod keys;
pub mod metadata;
pub mod metrics;
pub mod pricing;
pub mod ratelimit;
pub mod sigv4;
pub mod usage;

/// The live config, swapped whole on reload.
pub type SharedConfig = std::sync::Arc<arc_swap::ArcSwap<Config>>;

pub use config::{Config, ConfigError, Endpoint};
pub use error::{ApiError, Dialect};
pub use usage::{Usage, UsageSource};
