fn main() {
    // Rebuild when a different bpf-linker is installed (it is not a declared dependency).
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let linker = dir.join("bpf-linker");
            if linker.exists() {
                println!("cargo:rerun-if-changed={}", linker.display());
                break;
            }
        }
    }
}
