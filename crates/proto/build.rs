//! Generates the gRPC code with protox (pure Rust), so building needs no
//! system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());

    let fds = protox::compile(
        [
            "converge/context/v1/context.proto",
            "converge/ledger/v1/ledger.proto",
            "converge/ledger/v1/worldline.proto",
        ],
        [&root],
    )?;
    // The descriptors, for gRPC server reflection (grpcurl needs no proto
    // files).
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::LedgerCodec")
        // Entry records reach the client as a slice of the received
        // message, not a copy of it.
        .bytes(".converge.ledger.v1.ReadResponse.records")
        .compile_fds(fds)?;

    if std::env::var_os("CARGO_FEATURE_CONTRACT").is_some() {
        let out = PathBuf::from(std::env::var("OUT_DIR")?).join("contract");
        std::fs::create_dir_all(&out)?;
        let fds = protox::compile(["context_v1.proto"], [root.join("contract")])?;
        tonic_prost_build::configure()
            .build_server(false)
            .out_dir(out)
            .compile_fds(fds)?;
    }
    Ok(())
}
