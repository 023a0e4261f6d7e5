//! Compiles the project's protos with a vendored `protoc`, so a fresh machine
//! needs nothing outside cargo.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let include = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let proto_root = PathBuf::from("../proto");
    let protos = [proto_root.join("referrals/v1/referrals.proto")];
    tonic_build::configure()
        .file_descriptor_set_path(out_dir.join("referrals_descriptor.bin"))
        .compile_protos(&protos, &[proto_root.clone(), include.clone()])?;
    // EventStoreDB's protocol, for the compatible node.
    let esdb = proto_root.join("esdb");
    tonic_build::configure()
        .file_descriptor_set_path(out_dir.join("esdb_descriptor.bin"))
        .compile_protos(&[esdb.join("streams.proto"), esdb.join("serverfeatures.proto")], &[esdb.clone(), include])?;
    println!("cargo:rerun-if-changed=../proto");
    Ok(())
}
