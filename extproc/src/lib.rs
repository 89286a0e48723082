//! The ext_proc service (Envoy `envoy.service.ext_proc.v3.ExternalProcessor`, gRPC): reads and
//! rewrites LLM requests and their (streamed) responses.
//!
//! Three layers: the [`server`] owns the gRPC stream loop; a [`processor::Processor`] per
//! stream has one method per ext_proc phase; [`translator`]s are pure functions over bodies
//! and chunks. Header and body mutations are built by the pure functions in [`mutation`].

pub mod attempts;
pub mod audio;
pub mod aws;
pub mod budget;
pub mod cache;
pub mod capture;
pub mod cooldown;
pub mod feedback;
pub mod google;
pub mod guard;
pub mod log;
pub mod media;
pub mod multipart;
pub mod mutation;
pub mod passthrough;
pub mod processor;
pub mod rerank;
pub mod responses;
pub mod selfservice;
pub mod server;
pub mod shape;
pub mod stream;
pub mod streamcap;
pub mod trace;
pub mod translator;
pub mod webhook;

pub use server::ExtProcService;

#[cfg(test)]
mod fuzz;
