//! Istio-compatible request and TCP metrics with bounded label sets.
