//! The on-disk NVRTC cache: a compiled image (or a compile failure) keyed by
//! everything that decides NVRTC's output, so a rerun never recompiles.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{CudaError, Result};

/// A cache folder of compiled images; safe to share between processes.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
}

/// What a cache entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedOutcome {
    /// The compiled image and NVRTC's log.
    Image {
        /// PTX text or cubin bytes.
        image: Vec<u8>,
        /// The PTX of the same compilation when `image` is a cubin.
        ptx: Option<String>,
        /// NVRTC's log (warnings).
        log: String,
    },
    /// NVRTC rejected the source with this log.
    Failed {
        /// NVRTC's log.
        log: String,
    },
}

impl CompileCache {
    /// A cache in `dir`, created on first write.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The default folder: `KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else
    /// `~/.cache/kiln`, each with `nvrtc/` below it.
    pub fn default_dir() -> PathBuf {
        let base = std::env::var_os("KILN_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("kiln")))
            .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/kiln")))
            .unwrap_or_else(|| std::env::temp_dir().join("kiln-cache"));
        base.join("nvrtc")
    }

    /// The folder this cache writes to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cache key of one compilation.
    pub fn key(nvrtc_version: &str, arch: &str, options: &[String], source: &str) -> String {
        let mut h = Sha256::new();
        // v2: cubin entries carry their PTX (`.ptx`); v1 entries lack it and must
        // not be used, so the version is part of every key.
        h.update(b"kiln-nvrtc-cache-v2\0");
        h.update(nvrtc_version.as_bytes());
        h.update(b"\0");
        h.update(arch.as_bytes());
        h.update(b"\0");
        for opt in options {
            h.update(opt.as_bytes());
            h.update(b"\0");
        }
        h.update(b"\0");
        h.update(source.as_bytes());
        hex::encode(h.finalize())
    }

    /// Looks a key up; `None` when absent or unreadable (a miss recompiles).
    pub fn get(&self, key: &str) -> Option<CachedOutcome> {
        if let Ok(image) = fs::read(self.path(key, "img")) {
            let log = fs::read_to_string(self.path(key, "log")).unwrap_or_default();
            let ptx = fs::read_to_string(self.path(key, "ptx")).ok();
            return Some(CachedOutcome::Image { image, ptx, log });
        }
        fs::read_to_string(self.path(key, "err"))
            .ok()
            .map(|log| CachedOutcome::Failed { log })
    }

    /// Stores an outcome; each file is written atomically (temp + rename).
    pub fn put(&self, key: &str, outcome: &CachedOutcome) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|source| CudaError::Cache {
            path: self.dir.clone(),
            source,
        })?;
        match outcome {
            CachedOutcome::Image { image, ptx, log } => {
                // The log and PTX first: an image present means they are too.
                self.write_atomic(&self.path(key, "log"), log.as_bytes())?;
                if let Some(ptx) = ptx {
                    self.write_atomic(&self.path(key, "ptx"), ptx.as_bytes())?;
                }
                self.write_atomic(&self.path(key, "img"), image)
            }
            CachedOutcome::Failed { log } => {
                self.write_atomic(&self.path(key, "err"), log.as_bytes())
            }
        }
    }

    fn path(&self, key: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{key}.{ext}"))
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let io_err = |source| CudaError::Cache {
            path: path.to_path_buf(),
            source,
        };
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut file = fs::File::create(&tmp).map_err(io_err)?;
        file.write_all(bytes).map_err(io_err)?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_every_input() {
        let opts = vec!["-DX=1".to_string()];
        let base = CompileCache::key("13.0", "sm_90", &opts, "src");
        assert_ne!(base, CompileCache::key("13.1", "sm_90", &opts, "src"));
        assert_ne!(base, CompileCache::key("13.0", "sm_90a", &opts, "src"));
        assert_ne!(base, CompileCache::key("13.0", "sm_90", &[], "src"));
        assert_ne!(base, CompileCache::key("13.0", "sm_90", &opts, "src "));
        assert_eq!(base, CompileCache::key("13.0", "sm_90", &opts, "src"));
    }

    #[test]
    fn round_trips_images_and_failures() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = CompileCache::new(dir.path().join("c"));
        assert_eq!(cache.get("k1"), None);
        let img = CachedOutcome::Image {
            image: vec![1, 2, 3],
            ptx: Some(".version 8.0".into()),
            log: "warn".into(),
        };
        cache.put("k1", &img).expect("put image");
        assert_eq!(cache.get("k1"), Some(img));
        let ptx_only = CachedOutcome::Image {
            image: b".version 8.0".to_vec(),
            ptx: None,
            log: String::new(),
        };
        cache.put("k3", &ptx_only).expect("put ptx image");
        assert_eq!(cache.get("k3"), Some(ptx_only));
        let failed = CachedOutcome::Failed {
            log: "error: x".into(),
        };
        cache.put("k2", &failed).expect("put failure");
        assert_eq!(cache.get("k2"), Some(failed));
    }
}
