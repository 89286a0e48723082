//! One version of the resources the ADS server hands out: the provider clusters of a config,
//! as `Cluster` protos packed into `Any`, versioned by a hash of exactly those bytes (a reload
//! that changes no cluster keeps the version, so nothing is pushed).

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use prost::Name as _;
use sha2::{Digest, Sha256};
use tollgate_core::Config;

use crate::clusters::provider_clusters;

/// The type URL of the clusters (CDS) resource type.
pub fn cluster_type() -> String {
    Cluster::type_url()
}

/// The provider clusters of one config.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The version Envoy reports back in its ACK: 16 hex digits of SHA-256 over the
    /// clusters' names and encodings.
    pub version: String,
    /// By cluster name, sorted.
    clusters: Vec<(String, Any)>,
}

impl Snapshot {
    /// The clusters `config` derives (provider clusters and failover chains), the same ones
    /// `tollgate envoy-bootstrap` writes in statically.
    pub fn from_config(config: &Config) -> Snapshot {
        let mut clusters: Vec<(String, Any)> = provider_clusters(config, &config.xds.ca_file)
            .iter()
            .map(|c| (c.name.clone(), pack_any(c.proto())))
            .collect();
        // The failover chains' composite clusters, as the static bootstrap has them.
        clusters.extend(
            crate::clusters::failover_clusters_proto(config)
                .into_iter()
                .map(|c| (c.name.clone(), pack_any(c))),
        );
        clusters.sort_by(|a, b| a.0.cmp(&b.0));
        Snapshot::new(clusters)
    }

    /// A snapshot of these clusters (any order).
    pub fn new(mut clusters: Vec<(String, Any)>) -> Snapshot {
        clusters.sort_by(|a, b| a.0.cmp(&b.0));
        let mut hash = Sha256::new();
        for (name, any) in &clusters {
            for part in [name.as_bytes(), any.type_url.as_bytes(), &any.value] {
                hash.update((part.len() as u64).to_be_bytes());
                hash.update(part);
            }
        }
        let mut version = hex::encode(hash.finalize());
        version.truncate(16);
        Snapshot { version, clusters }
    }

    /// How many clusters it holds.
    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    /// Whether it holds no cluster.
    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }

    /// The clusters named in `names` (every cluster for `None`, a wildcard subscription).
    pub fn resources(&self, names: Option<&BTreeSet<String>>) -> Vec<Any> {
        self.clusters
            .iter()
            .filter(|(n, _)| names.is_none_or(|names| names.contains(n)))
            .map(|(_, a)| a.clone())
            .collect()
    }
}
