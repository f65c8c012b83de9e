//! Generates Rust code for Shoal's gRPC contracts with a vendored protoc (no system package).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "shoal/registry.proto",
        "shoal/data.proto",
        "shoal/agent.proto",
        "csi/csi.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Payload fields become `bytes::Bytes`: received data is sliced, not copied again.
    config.bytes([".shoal"]);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(
            config,
            &protos,
            &[
                ".",
                protoc_bin_vendored::include_path()?.to_str().ok_or("include path")?,
            ],
        )?;
    Ok(())
}
