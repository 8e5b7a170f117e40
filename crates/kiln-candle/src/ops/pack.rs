//! Kernel packs: discovered kernels (`kiln discover export`) that replace the
//! catalog's source for the configurations they were found for.
//!
//! A pack entry applies to a launch when its entry point and its NVRTC
//! defines equal the catalog build's exactly, so a kernel found for Qwen3's
//! rmsnorm (D=2048, eps 1e-6) never runs with another eps or width. An entry
//! written by hand without `defines` applies to every configuration of its
//! entry point: a whole other version of a catalog kernel (a JSON array of
//! such entries puts an older catalog against the current one in one
//! `kiln validate` run). Exported entries always carry their defines.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use kiln_kernels::KernelBuild;

use crate::error::{Error, Result};

/// A pack entry (the format is kiln-kernels').
pub use kiln_kernels::pack::PackEntry as PackKernel;

/// A loaded pack.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KernelPack {
    /// Its kernels.
    pub kernels: Vec<PackKernel>,
}

impl KernelPack {
    /// Reads a pack: one exported entry, or a JSON array of entries.
    pub fn load(path: &Path) -> Result<Self> {
        let kernels = kiln_kernels::pack::read_pack(path).map_err(|e| match e {
            kiln_kernels::pack::PackError::Read { path, source } => Error::Io { path, source },
            e => Error::Config(format!("{}: {e}", path.display())),
        })?;
        Ok(Self { kernels })
    }

    /// The pack kernel that replaces `build`, if any.
    pub fn replacement(&self, build: &KernelBuild) -> Option<&PackKernel> {
        self.replacement_index(build).map(|i| &self.kernels[i])
    }

    /// The index of the pack kernel that replaces `build`, if any.
    fn replacement_index(&self, build: &KernelBuild) -> Option<usize> {
        self.kernels.iter().position(|k| match &k.defines {
            Some(d) => {
                k.entry_point.as_deref().unwrap_or(&build.entry) == build.entry
                    && kiln_kernels::pack::same_defines(d, &build.defines)
            }
            // A whole-op replacement must name its entry point.
            None => k.entry_point.as_deref() == Some(build.entry.as_str()),
        })
    }
}

static ACTIVE: RwLock<Option<KernelPack>> = RwLock::new(None);
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// Every pack made active so far: a pack's generation is 1 + its index, so
/// switching back and forth (validate interleaves configurations) reuses the
/// kernels and decode graphs already made for it.
static SEEN: std::sync::Mutex<Vec<KernelPack>> = std::sync::Mutex::new(Vec::new());

/// Makes `pack` the one every op consults (None: the catalog only).
pub fn set_active(pack: Option<KernelPack>) {
    let generation = match &pack {
        None => 0,
        Some(p) => match SEEN.lock() {
            Ok(mut seen) => match seen.iter().position(|q| q == p) {
                Some(i) => i as u64 + 1,
                None => {
                    seen.push(p.clone());
                    seen.len() as u64
                }
            },
            // A poisoned list: a fresh generation every time is still correct.
            Err(_) => GENERATION.load(Ordering::SeqCst) + 1_000_000,
        },
    };
    if let Ok(mut g) = ACTIVE.write() {
        *g = pack;
        GENERATION.store(generation, Ordering::SeqCst);
    }
}

/// Changes whenever the active pack does, so cached kernels are not reused across packs.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::SeqCst)
}

/// One replacement made: a pack entry's kernel compiled in place of a catalog build.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Replacement {
    /// The pack entry's index in its pack.
    pub entry: usize,
    /// The pack entry's target.
    pub target: String,
    /// The catalog build it replaced (`rmsnorm_bf16_D2048.cu`).
    pub build: String,
}

/// Replacements made since the last [`take_replacements`].
static MADE: std::sync::Mutex<Vec<Replacement>> = std::sync::Mutex::new(Vec::new());

/// The replacements made since the last call (each configuration is
/// resolved once per pack, when its kernel is first compiled).
pub fn take_replacements() -> Vec<Replacement> {
    match MADE.lock() {
        Ok(mut m) => {
            let mut v = std::mem::take(&mut *m);
            v.sort();
            v.dedup();
            v
        }
        Err(_) => Vec::new(),
    }
}

/// `build` with the active pack's source swapped in where one applies, else
/// the discovered set's ([`discovered`]).
pub fn resolve(build: KernelBuild) -> KernelBuild {
    if let Some((k, entry)) = active_replacement(&build) {
        if let Ok(mut m) = MADE.lock() {
            m.push(Replacement {
                entry,
                target: k.target.clone(),
                build: build.name.clone(),
            });
        }
        return swapped("pack", &k, build);
    }
    swap_in(discovered(), build)
}

/// Whether [`resolve`] would swap another source in for `build` (the active
/// pack's or the discovered set's): a fused path that bypasses `build`'s
/// launch must not run then, or the replacement would silently not apply.
pub fn replaced(build: &KernelBuild) -> bool {
    active_replacement(build).is_some() || discovered().replacement(build).is_some()
}

/// The active pack's entry for `build` (a copy: the pack sits behind a
/// lock) and its index in the pack.
fn active_replacement(build: &KernelBuild) -> Option<(PackKernel, usize)> {
    let g = ACTIVE.read().ok()?;
    let pack = g.as_ref()?;
    let entry = pack.replacement_index(build)?;
    Some((pack.kernels[entry].clone(), entry))
}

/// `build` with the source of the set's entry for it, if there is one.
fn swap_in(set: &KernelPack, build: KernelBuild) -> KernelBuild {
    match set.replacement(&build) {
        Some(k) => swapped("discovered", k, build),
        None => build,
    }
}

/// `build` compiled from `k`'s source, named apart (`<origin>_<target>_<build>`)
/// so its kernels and graphs are never mistaken for the catalog's.
fn swapped(origin: &str, k: &PackKernel, build: KernelBuild) -> KernelBuild {
    KernelBuild {
        name: format!("{origin}_{}_{}", k.target, build.name),
        source: k.source.clone(),
        ..build
    }
}

/// The discovered set kiln's models run by default (kiln-kernels'
/// `discovered.json`, admitted by `kiln discover promote`); empty with
/// `KILN_NO_DISCOVERED=1`, to measure the catalog alone.
pub fn discovered() -> &'static KernelPack {
    static SET: std::sync::OnceLock<KernelPack> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        if std::env::var_os("KILN_NO_DISCOVERED").is_some_and(|v| v == "1") {
            eprintln!("kiln: KILN_NO_DISCOVERED=1: the discovered kernels are off");
            return KernelPack::default();
        }
        match kiln_kernels::discovered::discovered() {
            Ok(kernels) => KernelPack { kernels },
            // kiln-kernels' tests pin that the shipped set parses; say it loudly if not.
            Err(e) => {
                eprintln!("kiln: WARNING: the discovered set does not parse ({e}); running the catalog alone");
                KernelPack::default()
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build() -> KernelBuild {
        KernelBuild {
            name: "rmsnorm_bf16_D2048.cu".into(),
            entry: "rmsnorm".into(),
            source: "// kiln: block=128 grid=T smem=0\n".into(),
            defines: vec![
                ("KILN_D".into(), "2048".into()),
                ("KILN_EPS".into(), "1e-6f".into()),
            ],
        }
    }

    /// One exported entry for Qwen3's rmsnorm (D 2048, eps 1e-6).
    fn qwen3_rmsnorm_pack() -> KernelPack {
        KernelPack {
            kernels: vec![PackKernel {
                target: "qwen3_rmsnorm".into(),
                entry_point: Some("rmsnorm".into()),
                source: "// kiln: block=256 grid=T smem=0\n".into(),
                defines: Some(vec!["KILN_EPS=1e-6f".into(), "KILN_D=2048".into()]),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn a_discovered_kernel_replaces_only_its_build() {
        let set = qwen3_rmsnorm_pack();
        let swapped = swap_in(&set, build());
        assert_eq!(swapped.source, set.kernels[0].source);
        assert!(swapped.name.starts_with("discovered_qwen3_rmsnorm_"));
        let mut other = build();
        other.defines[1].1 = "1e-5f".into();
        assert_eq!(swap_in(&set, other.clone()), other);
    }

    #[test]
    fn a_pack_kernel_applies_only_to_its_exact_configuration() {
        let pack = qwen3_rmsnorm_pack();
        assert!(pack.replacement(&build()).is_some());
        let mut other = build();
        other.defines[1].1 = "1e-5f".into();
        assert!(pack.replacement(&other).is_none());
        // A pack exported as compiler flags (before the grammar was shared) matches too.
        let mut flags = pack.clone();
        flags.kernels[0].defines = Some(vec!["-DKILN_EPS=1e-6f".into(), "-DKILN_D=2048".into()]);
        assert!(flags.replacement(&build()).is_some());
    }

    #[test]
    fn resolving_records_which_entry_replaced_which_build_and_switching_keeps_generations() {
        let pack = qwen3_rmsnorm_pack();
        set_active(Some(pack.clone()));
        let g = generation();
        let _ = take_replacements();
        let b = resolve(build());
        assert!(b.name.starts_with("pack_qwen3_rmsnorm_"));
        let made = take_replacements();
        assert_eq!(made.len(), 1);
        assert_eq!(
            (made[0].entry, made[0].build.as_str()),
            (0, "rmsnorm_bf16_D2048.cu")
        );
        set_active(None);
        assert_eq!(generation(), 0);
        set_active(Some(pack));
        assert_eq!(generation(), g, "the same pack keeps its generation");
        set_active(None);
    }

    #[test]
    fn an_entry_without_defines_replaces_every_configuration_of_its_entry_point() {
        let whole = |entry: Option<&str>| KernelPack {
            kernels: vec![PackKernel {
                target: "rmsnorm v1".into(),
                entry_point: entry.map(str::to_string),
                source: "// kiln: block=256 grid=T smem=0\n".into(),
                defines: None,
                ..Default::default()
            }],
        };
        let mut other = build();
        other.defines[1].1 = "1e-5f".into();
        let pack = whole(Some("rmsnorm"));
        assert!(pack.replacement(&build()).is_some());
        assert!(pack.replacement(&other).is_some());
        let mut swiglu = build();
        swiglu.entry = "swiglu".into();
        assert!(pack.replacement(&swiglu).is_none());
        // Without defines the entry point is required.
        assert!(whole(None).replacement(&build()).is_none());
    }
}
