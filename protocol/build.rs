//! Generates the agent API (protobuf messages and async ttrpc services) from
//! protos/husk/agent/v1/agent.proto when the `agent-api` feature is on. The pure-Rust protobuf
//! parser is used, so no `protoc` is needed.

use std::path::{Path, PathBuf};

const PROTO: &str = "protos/husk/agent/v1/agent.proto";

fn main() {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_AGENT_API").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("agent");
    std::fs::create_dir_all(&out).expect("creating OUT_DIR/agent");
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .input(PROTO)
        .include("protos")
        .rust_protobuf()
        .rust_protobuf_customize(
            ttrpc_codegen::ProtobufCustomize::default()
                .gen_mod_rs(false)
                .generate_accessors(true),
        )
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .run()
        .expect("generating the agent API from agent.proto");
    strip_inner_attributes(&out);
}

/// `include!` cannot take files with inner attributes (`#![...]`) or inner doc comments, which
/// the generators emit at the top of each file; drop those lines.
fn strip_inner_attributes(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("reading the generated files") {
        let path = entry.expect("a generated file").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("reading a generated file");
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
                .collect();
            std::fs::write(&path, kept.join("\n")).expect("rewriting a generated file");
        }
    }
}
