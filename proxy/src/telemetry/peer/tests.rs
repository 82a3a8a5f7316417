use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use http::HeaderValue;
use pbjson_types::value::Kind;
use pbjson_types::{Struct, Value};
use prost::Message;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

fn node(fields: &[(&str, Value)]) -> Struct {
    fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn header_of(node: &Struct) -> HeaderValue {
    HeaderValue::try_from(base64_encode(&node.encode_to_vec())).unwrap()
}

fn meta(fields: [&str; 6]) -> WorkloadMeta {
    WorkloadMeta::new(fields)
}

#[test]
fn base64_rfc4648_vectors() {
    let vectors: [(&str, &str); 7] = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];
    for (plain, encoded) in vectors {
        assert_eq!(base64_encode(plain.as_bytes()), encoded);
        assert_eq!(
            base64_decode(encoded.as_bytes()).as_deref(),
            Some(plain.as_bytes())
        );
    }
    let all: Vec<u8> = (0..=255).collect();
    let encoded = base64_encode(&all);
    assert!(encoded.ends_with("+/w=="), "{encoded}");
    assert_eq!(base64_decode(encoded.as_bytes()), Some(all));
    // Envoy's reader accepts missing padding; so do we.
    assert_eq!(base64_decode(b"Zm9vYg").as_deref(), Some(&b"foob"[..]));
    assert_eq!(base64_decode(b"Zm9vYmE").as_deref(), Some(&b"fooba"[..]));
}

#[test]
fn base64_rejects_bad_input() {
    for bad in [
        &b"Z"[..],
        b"Zm9vY",
        b"Zg=",
        b"Zg===",
        b"====",
        b"Z===",
        b"Zm=v",
        b"=Zm9",
        b"Zm9v====",
        b"Zm9v\n",
        b" Zm9v",
        b"Zm-v",
        b"Zm_v",
        b"Zh==", // non-zero spare bits
        b"Zm9=", // non-zero spare bits
        b"Zm\xc3\xa9",
    ] {
        assert_eq!(
            base64_decode(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn from_labels_follows_istio_precedence() {
    let m = WorkloadMeta::from_labels(
        "reviews-v1",
        "default",
        &labels(&[("app", "reviews"), ("version", "v1")]),
    );
    assert_eq!(
        m,
        meta(["reviews-v1", "default", "reviews", "v1", "reviews", "v1"])
    );

    let m = WorkloadMeta::from_labels(
        "reviews-v1",
        "default",
        &labels(&[
            ("app", "reviews"),
            ("version", "v1"),
            ("app.kubernetes.io/name", "reviews-k8s"),
            ("app.kubernetes.io/version", "1.2"),
            ("service.istio.io/canonical-name", "reviews-canon"),
            ("service.istio.io/canonical-revision", "r7"),
        ]),
    );
    assert_eq!(
        m,
        meta([
            "reviews-v1",
            "default",
            "reviews",
            "v1",
            "reviews-canon",
            "r7"
        ])
    );

    let m = WorkloadMeta::from_labels(
        "w",
        "ns",
        &labels(&[
            ("app.kubernetes.io/name", "k8sname"),
            ("app.kubernetes.io/version", "k8sver"),
            ("app", "a"),
            ("version", "v"),
        ]),
    );
    assert_eq!(m, meta(["w", "ns", "a", "v", "k8sname", "k8sver"]));

    let m = WorkloadMeta::from_labels(
        "w",
        "ns",
        &labels(&[
            ("app.kubernetes.io/name", "k8sname"),
            ("app.kubernetes.io/version", "k8sver"),
        ]),
    );
    assert_eq!(
        m,
        meta(["w", "ns", "k8sname", "k8sver", "k8sname", "k8sver"])
    );

    let m = WorkloadMeta::from_labels("w", "ns", &labels(&[("app", ""), ("version", "")]));
    assert_eq!(m, meta(["w", "ns", "unknown", "unknown", "w", "latest"]));

    let m = WorkloadMeta::from_labels("", "", &HashMap::new());
    assert_eq!(m, WorkloadMeta::unknown());
    assert_eq!(
        WorkloadMeta::unknown(),
        meta(["unknown", "unknown", "unknown", "unknown", "unknown", "latest"])
    );
}

#[test]
fn round_trip() {
    let l = labels(&[
        ("app", "ratings"),
        ("version", "v2"),
        ("pod-template-hash", "abc123"),
        ("app.kubernetes.io/name", "ratings-k8s"),
    ]);
    let m = WorkloadMeta::from_labels("ratings-v2", "bookinfo", &l);
    let ip = Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
    let h = PeerHeaders::with_cluster(&m, &l, ip, "Kubernetes", "cluster.local");
    assert_eq!(decode(&h.metadata), Some(m.clone()));
    assert_eq!(
        h.id.to_str().unwrap(),
        "sidecar~10.1.2.3~ratings-v2.bookinfo~bookinfo.svc.cluster.local"
    );

    // What a peer's Envoy reads: the Struct, with Istio's keys.
    let raw = base64_decode(h.metadata.as_bytes()).unwrap();
    let s = Struct::decode(raw.as_slice()).unwrap();
    let get = |s: &Struct, k: &str| match s.fields.get(k).and_then(|v| v.kind.clone()) {
        Some(Kind::StringValue(v)) => v,
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(get(&s, "NAME"), "ratings-v2");
    assert_eq!(get(&s, "WORKLOAD_NAME"), "ratings-v2");
    assert_eq!(get(&s, "NAMESPACE"), "bookinfo");
    assert_eq!(get(&s, "CLUSTER_ID"), "Kubernetes");
    assert_eq!(get(&s, "MESH_ID"), "cluster.local");
    assert_eq!(get(&s, "INSTANCE_IPS"), "10.1.2.3");
    let Some(Kind::StructValue(ls)) = s.fields.get("LABELS").and_then(|v| v.kind.clone()) else {
        panic!("LABELS is not a Struct");
    };
    assert_eq!(get(&ls, "app"), "ratings");
    assert_eq!(get(&ls, "version"), "v2");
    assert_eq!(get(&ls, "service.istio.io/canonical-name"), "ratings-k8s");
    assert_eq!(get(&ls, "service.istio.io/canonical-revision"), "v2");
    assert_eq!(get(&ls, "app.kubernetes.io/name"), "ratings-k8s");
    assert!(!ls.fields.contains_key("pod-template-hash"));

    // Deterministic: the same input gives the same bytes (peers cache on them).
    let again = PeerHeaders::with_cluster(&m, &l, ip, "Kubernetes", "cluster.local");
    assert_eq!(again.metadata, h.metadata);

    // Without cluster, mesh or address.
    let h = PeerHeaders::new(&m, &l, None);
    assert_eq!(decode(&h.metadata), Some(m));
    assert_eq!(
        h.id.to_str().unwrap(),
        "sidecar~~ratings-v2.bookinfo~bookinfo.svc.cluster.local"
    );
    let unknown = PeerHeaders::new(&WorkloadMeta::unknown(), &HashMap::new(), None);
    assert_eq!(decode(&unknown.metadata), Some(WorkloadMeta::unknown()));
}

#[test]
fn decodes_a_struct_built_as_istio_would() {
    let labels = node(&[
        ("app", string("productpage")),
        ("version", string("v1")),
        ("security.istio.io/tlsMode", string("istio")),
        ("service.istio.io/canonical-name", string("productpage")),
        ("service.istio.io/canonical-revision", string("v1")),
    ]);
    let n = node(&[
        ("NAME", string("productpage-v1-6b746f74dc-9stvs")),
        ("NAMESPACE", string("default")),
        ("WORKLOAD_NAME", string("productpage-v1")),
        ("CLUSTER_ID", string("Kubernetes")),
        ("MESH_ID", string("cluster.local")),
        (
            "OWNER",
            string("kubernetes://apis/apps/v1/namespaces/default/deployments/productpage-v1"),
        ),
        ("ISTIO_VERSION", string("1.22.0")),
        (
            "PLATFORM_METADATA",
            Value {
                kind: Some(Kind::StructValue(Struct::default())),
            },
        ),
        (
            "APP_CONTAINERS",
            Value {
                kind: Some(Kind::ListValue(pbjson_types::ListValue {
                    values: vec![string("productpage")],
                })),
            },
        ),
        (
            "LABELS",
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        ),
    ]);
    assert_eq!(
        decode(&header_of(&n)),
        Some(meta([
            "productpage-v1",
            "default",
            "productpage",
            "v1",
            "productpage",
            "v1"
        ]))
    );

    // Only a workload name: the rest is unknown, the canonical service falls back to it.
    let n = node(&[("WORKLOAD_NAME", string("details-v1"))]);
    assert_eq!(
        decode(&header_of(&n)),
        Some(meta([
            "details-v1",
            "unknown",
            "unknown",
            "unknown",
            "details-v1",
            "latest"
        ]))
    );
}

#[test]
fn rejects_malformed_headers() {
    let good = node(&[
        ("WORKLOAD_NAME", string("reviews-v1")),
        ("NAMESPACE", string("default")),
    ]);
    let bytes = good.encode_to_vec();
    let b64 = base64_encode(&bytes);
    assert!(decode(&HeaderValue::try_from(b64.as_str()).unwrap()).is_some());

    // Not base64.
    for bad in ["not base64!", "Zm9v Zm9v", "Zg=", "@@@@"] {
        assert_eq!(decode(&HeaderValue::from_static(bad)), None, "{bad}");
    }
    // Base64 with one character cut off (invalid length or padding).
    assert_eq!(
        decode(&HeaderValue::try_from(&b64[..b64.len() - 1]).unwrap()),
        None
    );
    // Truncated protobuf: the last entry claims more bytes than are there.
    for cut in 1..bytes.len() {
        let h = HeaderValue::try_from(base64_encode(&bytes[..bytes.len() - cut])).unwrap();
        let got = decode(&h);
        // Cutting at an entry boundary leaves a valid, shorter Struct; anything else fails.
        if got.is_some() {
            let prefix = Struct::decode(&bytes[..bytes.len() - cut]).unwrap();
            assert!(prefix.fields.len() < good.fields.len());
        }
    }
    let truncated = HeaderValue::try_from(base64_encode(&bytes[..bytes.len() - 1])).unwrap();
    assert_eq!(decode(&truncated), None);
    // Valid base64 of bytes that are not a Struct.
    let garbage = HeaderValue::try_from(base64_encode(b"\xff\xff\xff\xff\xff")).unwrap();
    assert_eq!(decode(&garbage), None);
    // Empty header; a Struct without any of Istio's keys.
    assert_eq!(decode(&HeaderValue::from_static("")), None);
    assert_eq!(decode(&header_of(&node(&[("FOO", string("bar"))]))), None);
    // Oversized.
    let mut big = node(&[("WORKLOAD_NAME", string("w"))]);
    big.fields
        .insert("PADDING".into(), string(&"x".repeat(7000)));
    let h = header_of(&big);
    assert!(h.len() > MAX_METADATA_LEN);
    assert_eq!(decode(&h), None);
    // Just under the limit is fine.
    let mut fits = node(&[("WORKLOAD_NAME", string("w"))]);
    fits.fields
        .insert("PADDING".into(), string(&"x".repeat(6000)));
    let h = header_of(&fits);
    assert!(h.len() <= MAX_METADATA_LEN);
    assert!(decode(&h).is_some());
}

#[test]
fn hostile_values_become_unknown() {
    let long = "a".repeat(254);
    let longest = "a".repeat(253);
    let labels = node(&[
        ("app", string("evil\"} 1\n# HELP injected")),
        ("version", string(&long)),
        ("service.istio.io/canonical-name", string("naïve")),
        ("service.istio.io/canonical-revision", string(&longest)),
        (
            "app.kubernetes.io/name",
            Value {
                kind: Some(Kind::NumberValue(1.0)),
            },
        ),
    ]);
    let n = node(&[
        ("WORKLOAD_NAME", string("bad workload")),
        ("NAMESPACE", string("team-a/sub_ns.x")),
        (
            "LABELS",
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        ),
    ]);
    let got = decode(&header_of(&n)).unwrap();
    assert_eq!(
        got,
        meta([
            "unknown",
            "team-a/sub_ns.x",
            "unknown",
            "unknown",
            "unknown",
            &longest
        ])
    );

    // LABELS of the wrong type is ignored.
    let n = node(&[("WORKLOAD_NAME", string("w")), ("LABELS", string("app=x"))]);
    assert_eq!(
        decode(&header_of(&n)),
        Some(meta(["w", "unknown", "unknown", "unknown", "w", "latest"]))
    );
}

#[test]
fn cache_is_bounded_and_consistent() {
    let first = header_of(&node(&[("WORKLOAD_NAME", string("w0"))]));
    let expected = decode(&first);
    assert!(expected.is_some());
    for i in 0..(3 * DECODE_CACHE_MAX) {
        let h = header_of(&node(&[("WORKLOAD_NAME", string(&format!("w{i}")))]));
        assert_eq!(decode(&h).unwrap().workload(), format!("w{i}"));
        DECODED.with(|c| assert!(c.borrow().len() <= DECODE_CACHE_MAX));
    }
    assert_eq!(decode(&first), expected);
    // A negative result is cached too and stays negative.
    let bad = HeaderValue::from_static("!!!!");
    assert_eq!(decode(&bad), None);
    assert_eq!(decode(&bad), None);
}

#[test]
fn header_names() {
    assert_eq!(PEER_METADATA.as_str(), "x-envoy-peer-metadata");
    assert_eq!(PEER_METADATA_ID.as_str(), "x-envoy-peer-metadata-id");
}
