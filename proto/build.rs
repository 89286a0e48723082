//! Generates the Rust code of Tollgate's own protos, and of the vendored OTLP trace protos,
//! with a vendored `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through PROTOC; a build script is single-threaded.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/tollgate/logger/v1/logger.proto"], &["proto"])?;
    // OTLP's comments hold indented examples that rustdoc would run as doctests.
    let mut otlp = tonic_prost_build::Config::new();
    otlp.disable_comments(["."]);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .disable_comments(["."])
        .compile_with_config(
            otlp,
            &["proto/opentelemetry/proto/collector/trace/v1/trace_service.proto"],
            &["proto"],
        )?;
    Ok(())
}
