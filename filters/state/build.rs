//! Generates the gRPC code from `proto/` with the protoc that `protoc-bin-vendored` ships inside
//! its crate: no system protoc is needed on a developer's machine or in CI.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build runs the protoc named by PROTOC.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &[
                "proto/envoy/service/ratelimit/v3/rls.proto",
                "proto/portico/state/v1/state.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
