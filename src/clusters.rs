//! The Envoy clusters that reach the configured providers, derived once from the config and
//! rendered two ways: as bootstrap YAML (`tollgate envoy-bootstrap`, static) and as
//! `envoy.config.cluster.v3.Cluster` protos (the xDS server in `xds/`). Both renderers sit side
//! by side here, and `tests/e2e_xds.rs` compares what Envoy makes of each, so the static and the
//! dynamic cluster of a provider cannot drift apart.

use std::fmt::Write as _;
use std::path::PathBuf;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, data_source, socket_address, transport_socket, Address, DataSource, SocketAddress,
    TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, subject_alt_name_matcher, CertificateValidationContext, CommonTlsContext,
    SubjectAltNameMatcher, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, StringMatcher};
use envoy_types::pb::google::protobuf::Duration;
use envoy_types::util::pack_any;
use tollgate_core::config::Scheme;
use tollgate_core::Config;

/// How long Envoy waits for a TCP connection to a provider.
const CONNECT_TIMEOUT_SECS: i64 = 5;

/// The name of Envoy's TLS transport socket.
const TLS_SOCKET: &str = "envoy.transport_sockets.tls";

/// One provider cluster: what both renderings are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderCluster {
    /// The cluster name (`providers.NAME.cluster`, else the provider's name): the value
    /// Tollgate puts in the routing header.
    pub name: String,
    /// The provider that defined it first (for messages).
    pub provider: String,
    /// Host name or IP address (IPv6 without brackets).
    pub address: String,
    /// TCP port.
    pub port: u16,
    /// `LOGICAL_DNS` for a host name, `STATIC` for an IP address.
    pub dns: bool,
    /// TLS towards the provider (`https` base URLs).
    pub tls: Option<ClusterTls>,
}

/// TLS settings of a provider cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    /// SNI, and the DNS name the certificate must carry.
    pub sni: String,
    /// The CA bundle on Envoy's filesystem.
    pub ca_file: PathBuf,
}

/// The provider clusters of `config`, one per distinct cluster name, in provider-name order
/// (providers sharing a cluster name share the first one's cluster). `ca_file` is the CA bundle
/// `https` clusters verify with, as a path on Envoy's filesystem.
pub fn provider_clusters(config: &Config, ca_file: &std::path::Path) -> Vec<ProviderCluster> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for p in config.providers.values() {
        if !seen.insert(p.cluster.as_str()) {
            continue;
        }
        let address = p.host.trim_matches(['[', ']']).to_owned();
        let dns = address.parse::<std::net::IpAddr>().is_err();
        out.push(ProviderCluster {
            name: p.cluster.clone(),
            provider: p.name.clone(),
            address,
            port: p.port,
            dns,
            tls: (p.scheme == Scheme::Https).then(|| ClusterTls {
                sni: p.host.clone(),
                ca_file: ca_file.to_owned(),
            }),
        });
    }
    out
}

impl ProviderCluster {
    /// The cluster as an entry of a bootstrap's `static_resources.clusters` list.
    pub fn yaml(&self) -> String {
        let mut y = String::new();
        // Quoted: Istio-style names (`outbound|443||host`) are not plain YAML scalars.
        let _ = writeln!(y, "  - name: \"{}\"", self.name);
        let _ = writeln!(
            y,
            "    type: {}",
            if self.dns { "LOGICAL_DNS" } else { "STATIC" }
        );
        if self.dns {
            let _ = writeln!(y, "    dns_lookup_family: V4_PREFERRED");
        }
        let _ = writeln!(y, "    connect_timeout: {CONNECT_TIMEOUT_SECS}s");
        let _ = writeln!(
            y,
            "    load_assignment:\n      cluster_name: \"{}\"",
            self.name
        );
        let _ = writeln!(
            y,
            "      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: \"{}\", port_value: {} }} }} }} }}] }}]",
            self.address, self.port
        );
        if let Some(tls) = &self.tls {
            let _ = write!(
                y,
                concat!(
                    "    transport_socket:\n",
                    "      name: {socket}\n",
                    "      typed_config:\n",
                    "        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n",
                    "        sni: \"{sni}\"\n",
                    "        common_tls_context:\n",
                    "          validation_context:\n",
                    "            trusted_ca: {{ filename: \"{ca}\" }}\n",
                    "            match_typed_subject_alt_names: [{{ san_type: DNS, matcher: {{ exact: \"{sni}\" }} }}]\n",
                ),
                socket = TLS_SOCKET,
                sni = tls.sni,
                ca = tls.ca_file.display()
            );
        }
        y
    }

    /// The same cluster as the protobuf message xDS delivers.
    pub fn proto(&self) -> Cluster {
        let discovery = if self.dns {
            cluster::DiscoveryType::LogicalDns
        } else {
            cluster::DiscoveryType::Static
        };
        let endpoint = LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: self.address.clone(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                            self.port,
                        ))),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        Cluster {
            name: self.name.clone(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery as i32)),
            dns_lookup_family: if self.dns {
                cluster::DnsLookupFamily::V4Preferred as i32
            } else {
                cluster::DnsLookupFamily::Auto as i32
            },
            connect_timeout: Some(Duration {
                seconds: CONNECT_TIMEOUT_SECS,
                nanos: 0,
            }),
            load_assignment: Some(ClusterLoadAssignment {
                cluster_name: self.name.clone(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![endpoint],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            transport_socket: self.tls.as_ref().map(|tls| TransportSocket {
                name: TLS_SOCKET.to_owned(),
                config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(
                    upstream_tls(tls),
                ))),
            }),
            ..Default::default()
        }
    }
}

fn upstream_tls(tls: &ClusterTls) -> UpstreamTlsContext {
    let validation = CertificateValidationContext {
        trusted_ca: Some(DataSource {
            specifier: Some(data_source::Specifier::Filename(
                tls.ca_file.display().to_string(),
            )),
            ..Default::default()
        }),
        match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
            san_type: subject_alt_name_matcher::SanType::Dns as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(tls.sni.clone())),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    UpstreamTlsContext {
        sni: tls.sni.clone(),
        common_tls_context: Some(CommonTlsContext {
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContext(validation),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The composite clusters of the config's failover chains, as bootstrap YAML: each walks its
/// provider clusters one Envoy retry attempt after the other (attempt 1 the first, retry 1
/// the second, ...), carries Tollgate's ext_proc as an upstream HTTP filter (so every attempt
/// is translated, addressed and signed for its own target) and a retry budget. Empty when no
/// model fails over.
pub fn failover_clusters_yaml(config: &Config) -> String {
    let mut y = String::new();
    for c in config.failover_clusters() {
        let _ = writeln!(y, "  - name: \"{}\"", c.name);
        let _ = writeln!(y, "    connect_timeout: {CONNECT_TIMEOUT_SECS}s");
        let _ = writeln!(y, "    lb_policy: CLUSTER_PROVIDED");
        let _ = writeln!(y, "    cluster_type:");
        let _ = writeln!(y, "      name: envoy.clusters.composite");
        let _ = writeln!(y, "      typed_config:");
        let _ = writeln!(
            y,
            "        \"@type\": type.googleapis.com/envoy.extensions.clusters.composite.v3.ClusterConfig"
        );
        let _ = writeln!(y, "        clusters:");
        for sub in &c.clusters {
            let _ = writeln!(y, "        - name: \"{sub}\"");
        }
        let _ = writeln!(y, "    circuit_breakers:");
        let _ = writeln!(
            y,
            "      thresholds: [{{ retry_budget: {{ budget_percent: {{ value: {} }}, min_retry_concurrency: 3 }} }}]",
            c.retry_budget_percent
        );
        y.push_str(UPSTREAM_EXT_PROC);
    }
    y
}

/// The upstream HTTP filters of a failover cluster, then the codec:
/// - Tollgate's ext_proc for attempts 2 and later (skipped on attempt 1, which the request's
///   own ext_proc already translated for the chain's first target): it sees each later
///   attempt's request headers, the buffered body (which Envoy replays as attempt 1 sent it;
///   the attempt translates the client's body, kept in-process, instead) and its response
///   headers;
/// - a response-only ext_proc for attempt 1 that runs only when its status is a 5xx or a
///   429 (so a first attempt that succeeds costs no exchange at all): it notes the failure
///   on the first target (`request.id` names the request).
const UPSTREAM_EXT_PROC: &str = r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http_protocol_options: {} }
        http_filters:
        - name: envoy.filters.http.match_delegate
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher
            extension_config:
              name: envoy.filters.http.ext_proc
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
                grpc_service: { envoy_grpc: { cluster_name: tollgate }, timeout: 2s }
                failure_mode_allow: false
                message_timeout: 2s
                processing_mode:
                  request_header_mode: SEND
                  response_header_mode: SEND
                  request_body_mode: BUFFERED
                  response_body_mode: NONE
                  request_trailer_mode: SKIP
                  response_trailer_mode: SKIP
                mutation_rules: { allow_all_routing: true, allow_envoy: true }
            xds_matcher:
              matcher_tree:
                input:
                  name: attempt
                  typed_config: { "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: x-envoy-attempt-count }
                exact_match_map:
                  map:
                    "1":
                      action:
                        name: skip
                        typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter }
        - name: envoy.filters.http.match_delegate
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher
            extension_config:
              name: envoy.filters.http.ext_proc
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
                grpc_service: { envoy_grpc: { cluster_name: tollgate }, timeout: 2s }
                failure_mode_allow: true
                message_timeout: 2s
                processing_mode:
                  request_header_mode: SKIP
                  response_header_mode: SEND
                  request_body_mode: NONE
                  response_body_mode: NONE
                  request_trailer_mode: SKIP
                  response_trailer_mode: SKIP
                response_attributes: [request.id]
            xds_matcher:
              matcher_list:
                matchers:
                - predicate:
                    not_matcher:
                      and_matcher:
                        predicate:
                        - single_predicate:
                            input: { name: attempt, typed_config: { "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: x-envoy-attempt-count } }
                            value_match: { exact: "1" }
                        - single_predicate:
                            input: { name: status, typed_config: { "@type": type.googleapis.com/envoy.type.matcher.v3.HttpResponseHeaderMatchInput, header_name: ":status" } }
                            value_match: { safe_regex: { google_re2: {}, regex: "5..|429" } }
                  on_match:
                    action:
                      name: skip
                      typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter }
        - name: envoy.filters.http.upstream_codec
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec
"#;

/// The composite clusters of the config's failover chains as the protobuf messages xDS
/// delivers: the same as [`failover_clusters_yaml`] writes into a static bootstrap.
pub fn failover_clusters_proto(config: &Config) -> Vec<Cluster> {
    use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::{thresholds, Thresholds};
    use envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers;
    use envoy_types::pb::envoy::config::common::mutation_rules::v3::HeaderMutationRules;
    use envoy_types::pb::envoy::config::core::v3::{grpc_service, GrpcService};
    use envoy_types::pb::envoy::extensions::clusters::composite::v3::{
        cluster_config::ClusterEntry, ClusterConfig,
    };
    use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::{
        processing_mode::{BodySendMode, HeaderSendMode},
        ExternalProcessor, ProcessingMode,
    };
    use envoy_types::pb::envoy::extensions::filters::http::upstream_codec::v3::UpstreamCodec;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        http_filter, HttpFilter,
    };
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
        http_protocol_options::{
            explicit_http_config, ExplicitHttpConfig, UpstreamProtocolOptions,
        },
        HttpProtocolOptions,
    };
    use envoy_types::pb::envoy::r#type::v3::Percent;
    use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
    use envoy_types::pb::xds::r#type::matcher::v3 as xds_matcher;

    let two_secs = Duration {
        seconds: 2,
        nanos: 0,
    };
    // Tollgate's gRPC service, for both upstream ext_procs.
    let tollgate = GrpcService {
        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
            grpc_service::EnvoyGrpc {
                cluster_name: "tollgate".to_owned(),
                ..Default::default()
            },
        )),
        timeout: Some(two_secs),
        ..Default::default()
    };
    let ext_proc = ExternalProcessor {
        grpc_service: Some(tollgate.clone()),
        failure_mode_allow: false,
        message_timeout: Some(two_secs),
        processing_mode: Some(ProcessingMode {
            request_header_mode: HeaderSendMode::Send as i32,
            response_header_mode: HeaderSendMode::Send as i32,
            request_body_mode: BodySendMode::Buffered as i32,
            response_body_mode: BodySendMode::None as i32,
            request_trailer_mode: HeaderSendMode::Skip as i32,
            response_trailer_mode: HeaderSendMode::Skip as i32,
        }),
        mutation_rules: Some(HeaderMutationRules {
            allow_all_routing: Some(BoolValue { value: true }),
            allow_envoy: Some(BoolValue { value: true }),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Later attempts only: attempt 1 was translated by the request's own ext_proc.
    let later_attempts = skip_filter(
        ext_proc,
        xds_matcher::Matcher {
            on_no_match: None,
            matcher_type: Some(xds_matcher::matcher::MatcherType::MatcherTree(
                xds_matcher::matcher::MatcherTree {
                    input: Some(attempt_input()),
                    tree_type: Some(xds_matcher::matcher::matcher_tree::TreeType::ExactMatchMap(
                        xds_matcher::matcher::matcher_tree::MatchMap {
                            map: [("1".to_owned(), skip_action())].into_iter().collect(),
                        },
                    )),
                },
            )),
        },
    );
    // A failed first attempt's response headers only.
    let first_failed = ExternalProcessor {
        grpc_service: Some(tollgate),
        failure_mode_allow: true,
        message_timeout: Some(two_secs),
        processing_mode: Some(ProcessingMode {
            request_header_mode: HeaderSendMode::Skip as i32,
            response_header_mode: HeaderSendMode::Send as i32,
            request_body_mode: BodySendMode::None as i32,
            response_body_mode: BodySendMode::None as i32,
            request_trailer_mode: HeaderSendMode::Skip as i32,
            response_trailer_mode: HeaderSendMode::Skip as i32,
        }),
        response_attributes: vec!["request.id".to_owned()],
        ..Default::default()
    };
    let first_failed = skip_filter(first_failed, first_failed_matcher());
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                    Default::default(),
                )),
            },
        )),
        http_filters: vec![
            HttpFilter {
                name: MATCH_DELEGATE.to_owned(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                    later_attempts,
                ))),
                ..Default::default()
            },
            HttpFilter {
                name: MATCH_DELEGATE.to_owned(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(first_failed))),
                ..Default::default()
            },
            HttpFilter {
                name: "envoy.filters.http.upstream_codec".to_owned(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                    UpstreamCodec {},
                ))),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let options = pack_any(options);
    config
        .failover_clusters()
        .into_iter()
        .map(|c| Cluster {
            name: c.name.clone(),
            connect_timeout: Some(Duration {
                seconds: CONNECT_TIMEOUT_SECS,
                nanos: 0,
            }),
            lb_policy: cluster::LbPolicy::ClusterProvided as i32,
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::ClusterType(
                cluster::CustomClusterType {
                    name: "envoy.clusters.composite".to_owned(),
                    typed_config: Some(pack_any(ClusterConfig {
                        clusters: c
                            .clusters
                            .iter()
                            .map(|name| ClusterEntry { name: name.clone() })
                            .collect(),
                    })),
                },
            )),
            circuit_breakers: Some(CircuitBreakers {
                thresholds: vec![Thresholds {
                    retry_budget: Some(thresholds::RetryBudget {
                        budget_percent: Some(Percent {
                            value: f64::from(c.retry_budget_percent),
                        }),
                        min_retry_concurrency: Some(UInt32Value { value: 3 }),
                        budget_interval: None,
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            typed_extension_protocol_options: [(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
                options.clone(),
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        })
        .collect()
}

/// The upstream filter that wraps another in a matcher (`ExtensionWithMatcher`).
const MATCH_DELEGATE: &str = "envoy.filters.http.match_delegate";

/// `ext_proc` behind `matcher`, which skips it where it matches.
fn skip_filter(
    ext_proc: envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ExternalProcessor,
    matcher: envoy_types::pb::xds::r#type::matcher::v3::Matcher,
) -> envoy_types::pb::envoy::extensions::common::matching::v3::ExtensionWithMatcher {
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
    #[allow(deprecated)]
    envoy_types::pb::envoy::extensions::common::matching::v3::ExtensionWithMatcher {
        matcher: None,
        xds_matcher: Some(matcher),
        extension_config: Some(TypedExtensionConfig {
            name: "envoy.filters.http.ext_proc".to_owned(),
            typed_config: Some(pack_any(ext_proc)),
        }),
    }
}

/// A request-header input of a matcher.
fn header_input(
    name: &str,
    header: &str,
    response: bool,
) -> envoy_types::pb::xds::core::v3::TypedExtensionConfig {
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        HttpRequestHeaderMatchInput, HttpResponseHeaderMatchInput,
    };
    envoy_types::pb::xds::core::v3::TypedExtensionConfig {
        name: name.to_owned(),
        typed_config: Some(if response {
            pack_any(HttpResponseHeaderMatchInput {
                header_name: header.to_owned(),
            })
        } else {
            pack_any(HttpRequestHeaderMatchInput {
                header_name: header.to_owned(),
            })
        }),
    }
}

/// Envoy's attempt count, as a matcher input.
fn attempt_input() -> envoy_types::pb::xds::core::v3::TypedExtensionConfig {
    header_input("attempt", "x-envoy-attempt-count", false)
}

/// The action that skips the wrapped filter.
fn skip_action() -> envoy_types::pb::xds::r#type::matcher::v3::matcher::OnMatch {
    use envoy_types::pb::envoy::extensions::filters::common::matcher::action::v3::SkipFilter;
    use envoy_types::pb::xds::r#type::matcher::v3::matcher::{on_match, OnMatch};
    OnMatch {
        keep_matching: false,
        on_match: Some(on_match::OnMatch::Action(
            envoy_types::pb::xds::core::v3::TypedExtensionConfig {
                name: "skip".to_owned(),
                typed_config: Some(pack_any(SkipFilter {})),
            },
        )),
    }
}

/// Skips unless the attempt is the first and its status a 5xx or a 429.
fn first_failed_matcher() -> envoy_types::pb::xds::r#type::matcher::v3::Matcher {
    use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_list::{
        predicate::{single_predicate, MatchType, PredicateList, SinglePredicate},
        FieldMatcher, Predicate,
    };
    use envoy_types::pb::xds::r#type::matcher::v3::matcher::{MatcherList, MatcherType};
    use envoy_types::pb::xds::r#type::matcher::v3::{
        regex_matcher, string_matcher, Matcher, RegexMatcher, StringMatcher,
    };
    let single = |input, pattern| Predicate {
        match_type: Some(MatchType::SinglePredicate(SinglePredicate {
            input: Some(input),
            matcher: Some(single_predicate::Matcher::ValueMatch(StringMatcher {
                ignore_case: false,
                match_pattern: Some(pattern),
            })),
        })),
    };
    let first_failed = Predicate {
        match_type: Some(MatchType::AndMatcher(PredicateList {
            predicate: vec![
                single(
                    attempt_input(),
                    string_matcher::MatchPattern::Exact("1".to_owned()),
                ),
                single(
                    header_input("status", ":status", true),
                    string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                        regex: "5..|429".to_owned(),
                        engine_type: Some(regex_matcher::EngineType::GoogleRe2(
                            regex_matcher::GoogleRe2 {},
                        )),
                    }),
                ),
            ],
        })),
    };
    Matcher {
        on_no_match: None,
        matcher_type: Some(MatcherType::MatcherList(MatcherList {
            matchers: vec![FieldMatcher {
                predicate: Some(Predicate {
                    match_type: Some(MatchType::NotMatcher(Box::new(first_failed))),
                }),
                on_match: Some(skip_action()),
            }],
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::env::MapEnv;

    fn config() -> Config {
        let yaml = r#"
providers:
  openai: { kind: openai, base_url: "https://api.openai.com/v1" }
  local: { kind: openai_compatible, base_url: "http://127.0.0.1:8000/v1", cluster: vllm }
  v6: { kind: openai_compatible, base_url: "http://[::1]:9000/v1" }
  again: { kind: openai_compatible, base_url: "http://10.0.0.9:1/v1", cluster: vllm }
"#;
        Config::from_yaml(yaml, &MapEnv::from_pairs([])).unwrap()
    }

    #[test]
    fn one_cluster_per_name_dns_for_host_names_tls_for_https() {
        let c = provider_clusters(&config(), std::path::Path::new("/ca.pem"));
        // Providers in name order; `local` shares `again`'s cluster name, which `again` defines.
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["vllm", "openai", "v6"]);
        assert_eq!(
            (c[0].address.as_str(), c[0].port, c[0].dns),
            ("10.0.0.9", 1, false)
        );
        assert_eq!(
            (c[1].address.as_str(), c[1].port, c[1].dns),
            ("api.openai.com", 443, true)
        );
        assert_eq!(
            c[1].tls,
            Some(ClusterTls {
                sni: "api.openai.com".into(),
                ca_file: "/ca.pem".into()
            })
        );
        assert_eq!(
            (c[2].address.as_str(), c[2].dns, c[2].tls.is_none()),
            ("::1", false, true)
        );
    }

    #[test]
    fn the_proto_says_what_the_yaml_says() {
        let c = provider_clusters(&config(), std::path::Path::new("/ca.pem"));
        let openai = c[1].proto();
        assert_eq!(openai.name, "openai");
        assert_eq!(
            openai.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::LogicalDns as i32
            ))
        );
        let socket = openai.transport_socket.unwrap();
        assert_eq!(socket.name, TLS_SOCKET);
        let Some(transport_socket::ConfigType::TypedConfig(any)) = socket.config_type else {
            panic!("no typed config");
        };
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
        );
        let yaml = c[1].yaml();
        assert!(yaml.contains("type: LOGICAL_DNS"), "{yaml}");
        assert!(yaml.contains("sni: \"api.openai.com\""), "{yaml}");
        assert!(yaml.contains("connect_timeout: 5s"), "{yaml}");
        let vllm = c[0].proto();
        assert!(vllm.transport_socket.is_none());
        assert_eq!(vllm.connect_timeout.unwrap().seconds, CONNECT_TIMEOUT_SECS);
        assert!(c[0].yaml().contains("type: STATIC"));
    }
}
