//! Compiles every `.proto` file under the workspace's `proto/` directory with
//! protox (pure Rust, no system `protoc`) and generates prost messages, plus
//! tonic clients and servers when the `grpc` feature is on. The encoded
//! descriptor set, with custom options such as `safety_heartbeat_monitored`
//! preserved, is written next to the generated code for reflection and for
//! the safety-monitoring lookup.

use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let root = root.canonicalize()?;
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root, &mut files)?;
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let relative: Vec<PathBuf> =
        files.iter().map(|f| f.strip_prefix(&root).map(Path::to_path_buf)).collect::<Result<_, _>>()?;

    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_imports(true).include_source_info(false);
    compiler.open_files(&relative)?;
    let encoded = compiler.encode_file_descriptor_set();
    let fds = compiler.file_descriptor_set();
    let packages: std::collections::BTreeSet<String> = fds.file.iter().map(|f| f.package().to_owned()).collect();

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("tether_descriptor.bin"), &encoded)?;

    // Without `grpc` only the messages are generated, so the crate needs no
    // tonic at all. With it, the stubs are generated without the
    // `tonic::transport` conveniences (`connect`): clients are built over a
    // channel the caller supplies.
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure().build_client(grpc).build_server(grpc).build_transport(false).compile_fds(fds)?;
    // A package with services but no messages (viam.component.generic.v1)
    // yields no file without the stubs; src/lib.rs includes every package.
    for package in packages {
        let file = out.join(format!("{package}.rs"));
        if !package.is_empty() && !file.exists() {
            std::fs::write(file, "")?;
        }
    }
    Ok(())
}
