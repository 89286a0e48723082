//! The ADS state machine request by request (subscribe, ACK, NACK, stale nonces, pushes), then
//! the gRPC service end to end with tonic's own client: a reload pushes, a NACK is counted and
//! not answered, and the stream ends on shutdown.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::rpc;
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tollgate_core::env::MapEnv;

use super::*;

fn config(providers: &str) -> Config {
    Config::from_yaml(
        &format!("providers:\n{providers}xds: {{ enabled: true }}\n"),
        &MapEnv::from_pairs([]),
    )
    .unwrap()
}

fn one() -> Config {
    config("  a: { kind: openai, base_url: \"http://127.0.0.1:1/v1\" }\n")
}

fn two() -> Config {
    config(
        "  a: { kind: openai, base_url: \"http://127.0.0.1:1/v1\" }\n  b: { kind: openai, base_url: \"https://b.example/v1\" }\n",
    )
}

fn request(version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        type_url: cluster_type(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

fn nack(version: &str, nonce: &str, message: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        error_detail: Some(rpc::Status {
            code: 3,
            message: message.to_owned(),
            details: vec![],
        }),
        ..request(version, nonce)
    }
}

fn names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| {
            assert_eq!(a.type_url, cluster_type());
            Cluster::decode(a.value.as_slice()).unwrap().name
        })
        .collect()
}

/// The snapshots of [`one`] and [`two`].
fn snapshots() -> (Snapshot, Snapshot) {
    (Snapshot::from_config(&one()), Snapshot::from_config(&two()))
}

/// Envoy ACKs `pushed`: an ACK of its version, with nothing to answer.
fn ack(s: &mut AdsStream, pushed: &DiscoveryResponse, current: &Snapshot) {
    let step = s.on_request(&request(&pushed.version_info, &pushed.nonce), current);
    assert_eq!(
        step.event,
        Event::Ack {
            version: pushed.version_info.clone()
        }
    );
    assert!(step.response.is_none());
}

#[test]
fn versions_follow_the_clusters_not_the_rest_of_the_config() {
    let a = Snapshot::from_config(&one());
    let b = Snapshot::from_config(&two());
    assert_ne!(a.version, b.version);
    assert_eq!(a.version.len(), 16);
    // A config change outside the providers (a model, a key) keeps the version.
    let with_model = Config::from_yaml(
        "providers:\n  a: { kind: openai, base_url: \"http://127.0.0.1:1/v1\" }\nmodels:\n  m: { targets: [{ provider: a, model: x }] }\n",
        &MapEnv::from_pairs([]),
    )
    .unwrap();
    assert_eq!(Snapshot::from_config(&with_model).version, a.version);
    // The CA path is part of a TLS cluster, so part of the version.
    let mut other_ca = two();
    other_ca.xds.ca_file = "/other/ca.pem".into();
    assert_ne!(Snapshot::from_config(&other_ca).version, b.version);
}

#[test]
fn subscribe_ack_push_ack() {
    let (v1, v2) = snapshots();
    let mut s = AdsStream::default();
    let first = DiscoveryRequest {
        node: Some(Node {
            id: "envoy-1".into(),
            cluster: "gw".into(),
            ..Default::default()
        }),
        ..request("", "")
    };
    let step = s.on_request(&first, &v1);
    assert_eq!(
        step.event,
        Event::Subscribed {
            has_version: String::new()
        }
    );
    assert_eq!(s.node_id(), "envoy-1");
    let r1 = step.response.unwrap();
    assert_eq!(
        (r1.version_info.as_str(), r1.type_url.as_str()),
        (v1.version.as_str(), cluster_type().as_str())
    );
    assert_eq!(names(&r1), ["a"]);
    assert!(!r1.nonce.is_empty());

    ack(&mut s, &r1, &v1);
    // The same snapshot again: nothing to push.
    assert!(s.on_snapshot(&v1).is_none());
    // A new one: pushed with a fresh nonce.
    let r2 = s.on_snapshot(&v2).unwrap();
    assert_eq!(r2.version_info, v2.version);
    assert_ne!(r2.nonce, r1.nonce);
    assert_eq!(names(&r2), ["a", "b"]);
    ack(&mut s, &r2, &v2);
}

#[test]
fn a_nack_is_reported_and_the_rejected_version_is_not_sent_again() {
    let (v1, v2) = snapshots();
    let mut s = AdsStream::default();
    let r1 = s.on_request(&request("", ""), &v1).response.unwrap();
    ack(&mut s, &r1, &v1);
    let r2 = s.on_snapshot(&v2).unwrap();
    let step = s.on_request(&nack(&v1.version, &r2.nonce, "bad CA file"), &v2);
    assert_eq!(
        step.event,
        Event::Nack {
            rejected: v2.version.clone(),
            kept: v1.version.clone(),
            code: 3,
            message: "bad CA file".into()
        }
    );
    assert!(step.response.is_none(), "no answer to a NACK");
    // The rejected version is not pushed again ...
    assert!(s.on_snapshot(&v2).is_none());
    assert_eq!(s.sent_version(), Some(v2.version.as_str()));
    // ... but the next config change is, even back to the version Envoy runs.
    let r3 = s.on_snapshot(&v1).unwrap();
    assert_eq!(r3.version_info, v1.version);
    ack(&mut s, &r3, &v1);
}

#[test]
fn answers_to_older_pushes_are_stale_and_ignored() {
    let (v1, v2) = snapshots();
    let mut s = AdsStream::default();
    let r1 = s.on_request(&request("", ""), &v1).response.unwrap();
    // v2 is pushed before Envoy answered v1.
    let r2 = s.on_snapshot(&v2).unwrap();
    // Envoy's answer to v1 (even a NACK) is stale now.
    for req in [request(&v1.version, &r1.nonce), nack("", &r1.nonce, "old")] {
        let step = s.on_request(&req, &v2);
        assert_eq!(
            step.event,
            Event::Stale {
                nonce: r1.nonce.clone()
            }
        );
        assert!(step.response.is_none());
    }
    // An unknown nonce too (e.g. from before a restart).
    let step = s.on_request(&request(&v1.version, "no-such-nonce"), &v2);
    assert!(matches!(step.event, Event::Stale { .. }));
    ack(&mut s, &r2, &v2);
}

#[test]
fn a_reconnecting_envoy_gets_the_current_set_and_named_subscriptions_get_their_names() {
    let v2 = Snapshot::from_config(&two());
    let mut s = AdsStream::default();
    // Nothing is pushed before Envoy subscribes.
    assert!(s.on_snapshot(&v2).is_none());
    // A reconnect names the version Envoy runs, without a nonce: it gets the current set.
    let step = s.on_request(&request("0123456789abcdef", ""), &v2);
    assert_eq!(
        step.event,
        Event::Subscribed {
            has_version: "0123456789abcdef".into()
        }
    );
    let r = step.response.unwrap();
    assert_eq!(names(&r), ["a", "b"]);
    // An ACK that narrows the names gets the narrower set.
    let narrowed = DiscoveryRequest {
        resource_names: vec!["b".into()],
        ..request(&v2.version, &r.nonce)
    };
    let step = s.on_request(&narrowed, &v2);
    assert!(matches!(step.event, Event::Ack { .. }));
    assert_eq!(names(&step.response.unwrap()), ["b"]);
}

#[test]
fn other_resource_types_are_not_served() {
    let v1 = Snapshot::from_config(&one());
    let mut s = AdsStream::default();
    let lds = DiscoveryRequest {
        type_url: "type.googleapis.com/envoy.config.listener.v3.Listener".into(),
        ..request("", "")
    };
    let step = s.on_request(&lds, &v1);
    assert_eq!(
        step.event,
        Event::Unsupported {
            type_url: lds.type_url.clone(),
            first: true
        }
    );
    assert!(step.response.is_none());
    assert!(matches!(
        s.on_request(&lds, &v1).event,
        Event::Unsupported { first: false, .. }
    ));
    // Not a clusters subscription either.
    assert!(s.on_snapshot(&v1).is_none());
}

/// The service on a loopback port, a client stream into it, and the server's stop switch.
async fn serve_ads(
    xds: &Xds,
) -> (
    mpsc::Sender<DiscoveryRequest>,
    tonic::Streaming<DiscoveryResponse>,
    watch::Sender<bool>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = xds.service(stop_rx.clone());
    let mut server_stop = stop_rx;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    let _ = server_stop.changed().await;
                },
            ),
    );
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    let responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, responses, stop_tx)
}

async fn next(responses: &mut tonic::Streaming<DiscoveryResponse>) -> Option<DiscoveryResponse> {
    tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .expect("no response within 5 s")
        .unwrap()
}

/// Waits (up to 1 s) until `cond` holds.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen within 1 s");
}

#[tokio::test]
async fn over_grpc_a_reload_is_pushed_a_nack_is_counted_and_shutdown_ends_the_stream() {
    let metrics = Metrics::default();
    let xds = Xds::new(&one(), metrics.clone());
    let (tx, mut responses, stop) = serve_ads(&xds).await;
    let count = |result| {
        metrics
            .xds_acks
            .get_or_create(&ResultLabel { result })
            .get()
    };

    tx.send(request("", "")).await.unwrap();
    let r1 = next(&mut responses).await.unwrap();
    assert_eq!(names(&r1), ["a"]);
    assert_eq!(metrics.xds_streams.get(), 1);
    tx.send(request(&r1.version_info, &r1.nonce)).await.unwrap();
    eventually("the ACK", || count("ack") == 1).await;

    // A reload that changes nothing pushes nothing; one that adds a provider pushes it.
    xds.publish(&one());
    xds.publish(&two());
    let r2 = next(&mut responses).await.unwrap();
    assert_eq!(names(&r2), ["a", "b"]);
    assert_eq!(r2.version_info, xds.current().version);
    assert_eq!(metrics.xds_pushes.get(), 2);

    // Envoy rejects it: counted, not answered (the next message is the shutdown's end).
    tx.send(nack(&r1.version_info, &r2.nonce, "no such CA file"))
        .await
        .unwrap();
    eventually("the NACK", || count("nack") == 1).await;
    assert_eq!(metrics.xds_pushes.get(), 2);

    stop.send(true).unwrap();
    assert!(
        next(&mut responses).await.is_none(),
        "the stream ends on shutdown"
    );
    drop(tx);
    eventually("the stream's end", || metrics.xds_streams.get() == 0).await;
}

#[tokio::test]
async fn delta_xds_is_refused_with_a_reason() {
    let xds = Xds::new(&one(), Metrics::default());
    let (_stop_tx, stop_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(xds.service(stop_rx))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let err = client
        .delta_aggregated_resources(tokio_stream::iter(Vec::<
            envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest,
        >::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert!(err.message().contains("GRPC"), "{}", err.message());
}
