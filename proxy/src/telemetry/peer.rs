//! Peer metadata exchange (Istio `x-envoy-peer-metadata`), so metrics can name the workload on the other side.
