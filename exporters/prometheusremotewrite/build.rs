//! Generates the prompb types from Prometheus's remote-write protos (vendored in proto/).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/types.proto");
    println!("cargo:rerun-if-changed=proto/remote.proto");
    let files = protox::compile(["proto/remote.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(files)?;
    Ok(())
}
