//! Builds the kernel programs (`rst-trace-ebpf`) with the nightly toolchain and bpf-linker, so
//! that `include_bytes_aligned!` can embed them in the binary.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    // `cargo xtask` pins the nightly toolchain it installed; a plain `cargo build` uses `nightly`.
    println!("cargo:rerun-if-env-changed=RST_TRACE_EBPF_TOOLCHAIN");
    let toolchain_name = std::env::var("RST_TRACE_EBPF_TOOLCHAIN").ok();
    let toolchain = match toolchain_name.as_deref() {
        None | Some("") | Some("nightly") => Toolchain::Nightly,
        Some(name) => Toolchain::Custom(name),
    };
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|package| package.name.as_str() == "rst-trace-ebpf")
        .ok_or_else(|| anyhow!("rst-trace-ebpf package not found"))?;
    let root_dir = ebpf_package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf_package.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf_package.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], toolchain)
}
