//! With the `cuda` feature, points the linker at the folder that
//! `scripts/setup.sh --models` makes: static cudart and link stubs for the
//! CUDA libraries candle links (the real ones are loaded by SONAME at run time).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=KILN_CUDA_LINK_DIR");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let dir = match std::env::var_os("KILN_CUDA_LINK_DIR") {
        Some(dir) => PathBuf::from(dir),
        // Cargo's run-time value, not env!(): the models' target folder is shared
        // between checkouts, and a build script compiled in one of them would
        // otherwise point every other checkout at the first one's folder.
        None => PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default())
            .join("../../.cache/cuda-build/link"),
    };
    if !dir.join("libcuda.so").is_file() {
        panic!(
            "kiln-candle's `cuda` feature links against {}, which has no libcuda.so: \
             run `scripts/setup.sh --models` (or set KILN_CUDA_LINK_DIR)",
            dir.display()
        );
    }
    println!("cargo:rerun-if-changed={}", dir.display());
    println!("cargo:rustc-link-search=native={}", dir.display());
}
