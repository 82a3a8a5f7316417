//! Halyard's ADS server spoken to by a client this project did not write: Python grpcio with
//! Envoy's own discovery protos (the `xds-protos` package, generated from Envoy's
//! data-plane-api), in `peers/xds_peer.py`, against the `ads_demo_server` example of the xds
//! crate. The peer drives the server's resources over its stdin and checks versions, nonces,
//! ACK/NACK (with `error_detail`), stale nonces, explicit subscriptions and resumption on both
//! the state-of-the-world and the delta stream.

use std::time::Duration;

use halyard_tests::*;

#[test]
fn envoy_protos_speak_sotw_and_delta_ads_to_halyard() {
    let server = example_bin("ads_demo_server");
    assert!(
        server.exists(),
        "{} is missing: build it with `cargo build -p halyard-xds --examples`",
        server.display()
    );
    let r = run_peer(
        "xds peer",
        peer_command("xds_peer.py").arg("--server").arg(&server),
        Duration::from_secs(120),
    );

    let sotw = &r["sotw"];
    assert_eq!(sotw["no_node"], "INVALID_ARGUMENT", "{r}");
    assert_eq!(sotw["initial"], serde_json::json!(["a", "b"]), "{r}");
    assert_eq!(sotw["ack_recorded"], true, "{r}");
    assert_eq!(sotw["after_change"], serde_json::json!(["a", "b"]), "{r}");
    assert_eq!(sotw["nack_message"], "py-sotw rejects b", "{r}");
    // The stale request's narrower subscription was ignored; the NACKed version not resent.
    assert_eq!(
        sotw["after_stale"],
        serde_json::json!(["a", "b", "c"]),
        "{r}"
    );
    assert_eq!(sotw["narrowed"], serde_json::json!(["a"]), "{r}");
    // After reconnecting with the version it held, the first response was the next change.
    assert_eq!(sotw["resumed_first"], serde_json::json!(["a"]), "{r}");
    assert_eq!(sotw["resumed_responses"], 1, "{r}");

    let delta = &r["delta"];
    assert_eq!(delta["initial"], serde_json::json!(["a", "b"]), "{r}");
    // Only the changed resource, at the version the server reported for it.
    assert_eq!(delta["changed"], serde_json::json!([["b", true]]), "{r}");
    assert_eq!(delta["changed_removed"], serde_json::json!([]), "{r}");
    assert_eq!(
        delta["removal"],
        serde_json::json!({"resources": 0, "removed": ["a"]}),
        "{r}"
    );
    assert_eq!(delta["nack_message"], "py-delta rejects c", "{r}");
    // initial_resource_versions: nothing the client holds is resent; the removed one is named.
    assert_eq!(
        delta["resumed"],
        serde_json::json!({"resources": [], "removed": ["a"]}),
        "{r}"
    );
    assert_eq!(
        delta["resumed_change"],
        serde_json::json!([["c", true]]),
        "{r}"
    );
    assert_eq!(delta["explicit"], serde_json::json!(["vh1"]), "{r}");

    assert_eq!(
        r["nacks_metric"],
        serde_json::json!(["halyard_xds_nacks_total{type=\"Service\"} 2"]),
        "{r}"
    );
}
