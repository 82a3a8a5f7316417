//! Istio AuthorizationPolicy evaluation.
