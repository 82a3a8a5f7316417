//! Istio's `istio.v1.auth.IstioCertificateService` wire types, client and server traits.
#![allow(missing_docs, clippy::all)]

tonic::include_proto!("istio.v1.auth");
