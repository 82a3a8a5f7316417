//! Generated wire types of Envoy's aggregated discovery service (`envoy.service.discovery.v3`),
//! the `envoy.config.core.v3` messages it uses and `google.rpc.Status`. The module tree mirrors
//! the protobuf packages so the generated cross-package paths resolve.
#![allow(missing_docs, clippy::all)]

/// `envoy.*` packages.
pub mod envoy {
    /// `envoy.service.*`
    pub mod service {
        /// `envoy.service.discovery.*`
        pub mod discovery {
            /// `envoy.service.discovery.v3`: the ADS messages, client and server.
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
            }
        }
    }
    /// `envoy.config.*`
    pub mod config {
        /// `envoy.config.core.*`
        pub mod core {
            /// `envoy.config.core.v3`: `Node` and friends.
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }
}

/// `google.*` packages.
pub mod google {
    /// `google.rpc`: `Status`, the NACK's `error_detail`.
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}
