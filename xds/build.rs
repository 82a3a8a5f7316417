//! Compiles the protobuf definitions with protox (no system protoc): Halyard's configuration
//! resources with serde support following the proto3 JSON mapping via pbjson, and the xDS
//! transport (Envoy's aggregated discovery service) with tonic.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    let protos = ["proto/halyard/config/v1/config.proto"];
    let fds = protox::compile(protos, ["proto"])?;
    let descriptor_path = out.join("halyard_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;

    let mut config = prost_build::Config::new();
    config
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types");
    config.compile_fds(fds)?;

    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .build(&[".halyard"])?;

    // The xDS transport: Envoy's envoy.service.discovery.v3 messages and service, with the
    // same well-known types (pbjson_types) as the configuration resources they carry.
    let ads = protox::compile(["envoy/service/discovery/v3/ads.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(ads)?;
    Ok(())
}
