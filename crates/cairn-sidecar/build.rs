//! Compiles the Durable Task protocol with protox (pure Rust: no protoc, no downloads).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/orchestrator_service.proto");
    let descriptors = protox::compile(["orchestrator_service.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
