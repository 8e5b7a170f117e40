//! Finding the CUDA pieces kiln loads at run time: the driver, NVRTC and the
//! headers NVRTC needs.
//!
//! cudarc loads libraries lazily and panics when one is absent, so kiln looks
//! first and returns a typed error naming every place it searched. NVRTC is
//! taken, in order, from `KILN_NVRTC_LIB`, the system loader path, `CUDA_HOME`,
//! `/usr/local/cuda`, the pinned wheels that `scripts/setup.sh` installs into
//! `.cache/cuda-wheels`, and Python `nvidia/cu13` wheels. When it is found by
//! path, kiln loads it by that path once; the loader then hands cudarc the
//! same library when it asks for `libnvrtc.so.13` by name (matching SONAME).

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::error::{CudaError, Result};

/// The header NVRTC needs for kiln's kernels; its folder is an include dir.
const MARKER_HEADER: &str = "cuda_bf16.h";
#[cfg(not(feature = "dynamic-linking"))]
const NVRTC_FILE: &str = "libnvrtc.so.13";
#[cfg(not(feature = "dynamic-linking"))]
const NVRTC_BUILTINS_FILE: &str = "libnvrtc-builtins.so.13.0";

/// Where the pinned wheels live relative to the repository root.
const WHEEL_CACHE: &str = ".cache/cuda-wheels";

/// Fails with [`CudaError::DriverMissing`] unless libcuda can be loaded.
///
/// In a build linked against the CUDA libraries (the `dynamic-linking`
/// feature, which candle's CUDA backend needs) the loader has already found
/// them before `main`, so there is nothing left to look for.
#[cfg(feature = "dynamic-linking")]
pub fn require_driver() -> Result<()> {
    Ok(())
}

/// Fails with [`CudaError::DriverMissing`] unless libcuda can be loaded.
#[cfg(not(feature = "dynamic-linking"))]
pub fn require_driver() -> Result<()> {
    // SAFETY: only probes dlopen with the candidate names.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        Ok(())
    } else {
        let mut tried = cudarc::get_lib_name_candidates("cuda");
        let mut seen = std::collections::HashSet::new();
        tried.retain(|name| seen.insert(name.clone()));
        Err(CudaError::DriverMissing {
            tried: tried.join(", "),
        })
    }
}

/// Makes NVRTC loadable; in a linked build the loader already did.
#[cfg(feature = "dynamic-linking")]
pub fn require_nvrtc() -> Result<()> {
    Ok(())
}

/// Makes NVRTC loadable, searching the usual places; idempotent.
#[cfg(not(feature = "dynamic-linking"))]
pub fn require_nvrtc() -> Result<()> {
    static FOUND: OnceLock<std::result::Result<(), Vec<PathBuf>>> = OnceLock::new();
    FOUND
        .get_or_init(locate_and_preload_nvrtc)
        .clone()
        .map_err(|searched| CudaError::NvrtcMissing { searched })
}

#[cfg(not(feature = "dynamic-linking"))]
fn locate_and_preload_nvrtc() -> std::result::Result<(), Vec<PathBuf>> {
    let mut searched = Vec::new();
    if let Some(path) = std::env::var_os("KILN_NVRTC_LIB").map(PathBuf::from) {
        if preload(&path) {
            return Ok(());
        }
        searched.push(path);
    }
    // SAFETY: only probes dlopen with the candidate names.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Ok(());
    }
    searched.push(PathBuf::from(
        "system loader path (LD_LIBRARY_PATH, ld.so.cache)",
    ));
    for dir in library_dirs() {
        let candidate = dir.join(NVRTC_FILE);
        if candidate.is_file() {
            // NVRTC dlopens its builtins by name; load them from the same folder first.
            let builtins = dir.join(NVRTC_BUILTINS_FILE);
            if builtins.is_file() {
                preload(&builtins);
            }
            if preload(&candidate) {
                return Ok(());
            }
        }
        searched.push(candidate);
    }
    // Name the usual places too when they do not exist, so the message says
    // where kiln looked.
    for hint in [
        "$CUDA_HOME/lib64 (CUDA_HOME unset or without NVRTC)",
        "/usr/local/cuda/lib64",
        "<repo>/.cache/cuda-wheels/nvidia/cu13/lib (KILN_CUDA_WHEELS)",
        "python site-packages nvidia/cu13/lib",
    ] {
        let hint = PathBuf::from(hint);
        if !searched.iter().any(|s| s.starts_with(&hint)) {
            searched.push(hint);
        }
    }
    Err(searched)
}

/// Loads a library by absolute path and keeps it loaded for the process.
#[cfg(not(feature = "dynamic-linking"))]
fn preload(path: &std::path::Path) -> bool {
    // SAFETY: loading NVIDIA's NVRTC runs only its ordinary initialisers.
    match unsafe { libloading::Library::new(path) } {
        Ok(lib) => {
            std::mem::forget(lib);
            true
        }
        Err(err) => {
            tracing::debug!("could not load {}: {err}", path.display());
            false
        }
    }
}

/// Folders that may hold `libnvrtc.so.13`, in search order.
#[cfg(not(feature = "dynamic-linking"))]
fn library_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for root in toolkit_roots() {
        dirs.push(root.join("lib64"));
        dirs.push(root.join("lib"));
        dirs.push(root.join("targets/x86_64-linux/lib"));
    }
    for wheel in wheel_roots() {
        dirs.push(wheel.join("lib"));
    }
    dirs
}

/// Include folders for NVRTC: the one with `cuda_bf16.h` and its `cccl` folder.
pub fn include_dirs() -> Result<Vec<PathBuf>> {
    static FOUND: OnceLock<std::result::Result<Vec<PathBuf>, Vec<PathBuf>>> = OnceLock::new();
    FOUND
        .get_or_init(locate_includes)
        .clone()
        .map_err(|searched| CudaError::HeadersMissing { searched })
}

fn locate_includes() -> std::result::Result<Vec<PathBuf>, Vec<PathBuf>> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("KILN_CUDA_INCLUDE") {
        candidates.push(PathBuf::from(dir));
    }
    for root in toolkit_roots() {
        candidates.push(root.join("include"));
        candidates.push(root.join("targets/x86_64-linux/include"));
    }
    for wheel in wheel_roots() {
        candidates.push(wheel.join("include"));
    }
    for dir in &candidates {
        if dir.join(MARKER_HEADER).is_file() {
            let mut found = vec![dir.clone()];
            let cccl = dir.join("cccl");
            if cccl.is_dir() {
                found.push(cccl);
            }
            return Ok(found);
        }
    }
    Err(candidates)
}

/// `CUDA_HOME`, `CUDA_PATH` and `/usr/local/cuda`, those that exist.
fn toolkit_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .collect();
    roots.push(PathBuf::from("/usr/local/cuda"));
    dedup_existing(roots)
}

/// `nvidia/cu13` folders of pip-installed CUDA wheels.
fn wheel_roots() -> Vec<PathBuf> {
    let mut bases: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("KILN_CUDA_WHEELS") {
        bases.push(PathBuf::from(dir));
    }
    // The project's own pinned wheels, found from the working directory, the
    // executable, or (for tests) the source tree.
    let mut anchors: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        anchors.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        anchors.push(exe);
    }
    anchors.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for anchor in anchors {
        for dir in anchor.ancestors() {
            bases.push(dir.join(WHEEL_CACHE));
        }
    }
    // Python site-packages.
    for prefix in ["/usr/local/lib", "/usr/lib", "/opt/torch/.venv/lib"] {
        if let Ok(entries) = std::fs::read_dir(prefix) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                if name.to_string_lossy().starts_with("python3") {
                    bases.push(entry.path().join("site-packages"));
                    bases.push(entry.path().join("dist-packages"));
                }
            }
        }
    }
    let roots = bases.into_iter().map(|b| b.join("nvidia/cu13")).collect();
    dedup_existing(roots)
}

fn dedup_existing(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in paths {
        if p.is_dir() && !out.contains(&p) {
            out.push(p);
        }
    }
    out
}
