//! NVRTC compilation of CUDA C++ source to a cubin (or PTX) for one GPU
//! architecture, with `-D` defines, automatic include paths and the on-disk
//! cache. Needs no GPU and no driver: CI compiles every kernel this way.

use std::ffi::{c_char, CString};
use std::path::PathBuf;

use cudarc::nvrtc::sys as nvrtc_sys;

use crate::compile_cache::{CachedOutcome, CompileCache};
use crate::error::{CudaError, Result};
use crate::toolkit;

/// A GPU architecture NVRTC targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Arch {
    /// Compute capability major, e.g. 9.
    pub major: u32,
    /// Compute capability minor, e.g. 0.
    pub minor: u32,
    /// The architecture-specific variant (`sm_90a`: wgmma, setmaxnreg).
    pub specific: bool,
}

impl Arch {
    /// The H100's architecture, `sm_90`.
    pub const SM90: Arch = Arch {
        major: 9,
        minor: 0,
        specific: false,
    };

    /// `sm_90` style name.
    pub fn sm_name(&self) -> String {
        format!(
            "sm_{}{}{}",
            self.major,
            self.minor,
            if self.specific { "a" } else { "" }
        )
    }

    /// The same arch with the `a` variant, for sources that use wgmma and the like.
    pub fn specific(self) -> Arch {
        Arch {
            specific: true,
            ..self
        }
    }
}

/// What NVRTC should produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// Machine code for exactly this arch: no JIT at load time.
    Cubin,
    /// PTX, JIT-compiled by the driver at load time.
    Ptx,
}

/// One compilation: a named source with its defines.
#[derive(Debug, Clone)]
pub struct CompileRequest {
    /// Program name shown in NVRTC's log (e.g. `rmsnorm.cu`).
    pub name: String,
    /// CUDA C++ source text.
    pub source: String,
    /// `-D NAME=VALUE` defines, in order.
    pub defines: Vec<(String, String)>,
    /// Target architecture.
    pub arch: Arch,
    /// Cubin or PTX.
    pub output: OutputKind,
    /// Further NVRTC options (e.g. `--use_fast_math`).
    pub extra_options: Vec<String>,
}

impl CompileRequest {
    /// A cubin for `sm_90` with no defines.
    pub fn new(name: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            source: source.into(),
            defines: Vec::new(),
            arch: Arch::SM90,
            output: OutputKind::Cubin,
            extra_options: Vec::new(),
        }
    }

    /// Adds `-D name=value`.
    pub fn define(mut self, name: impl Into<String>, value: impl ToString) -> Self {
        self.defines.push((name.into(), value.to_string()));
        self
    }

    /// Sets the target architecture.
    pub fn arch(mut self, arch: Arch) -> Self {
        self.arch = arch;
        self
    }

    /// Sets the output kind.
    pub fn output(mut self, output: OutputKind) -> Self {
        self.output = output;
        self
    }

    /// Options as NVRTC sees them, includes excluded (they do not change the
    /// meaning of a source, only where headers are found).
    fn semantic_options(&self) -> Vec<String> {
        let arch = match self.output {
            OutputKind::Cubin => format!("-arch={}", self.arch.sm_name()),
            OutputKind::Ptx => format!("-arch={}", self.arch.sm_name().replace("sm_", "compute_")),
        };
        let mut opts = vec![
            arch,
            "-std=c++17".to_string(),
            "-default-device".to_string(),
        ];
        opts.extend(self.defines.iter().map(|(k, v)| format!("-D{k}={v}")));
        opts.extend(self.extra_options.iter().cloned());
        opts
    }
}

/// The result of a successful compilation.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The program name.
    pub name: String,
    /// Cubin bytes or PTX text (without a trailing NUL).
    pub image: Vec<u8>,
    /// Which of the two `image` holds.
    pub output: OutputKind,
    /// The PTX text of the same compilation when `image` is a cubin (one NVRTC
    /// run for a real arch yields both; the judge checks the PTX and loads the
    /// cubin). `None` for PTX output, where `image` is the PTX.
    pub ptx: Option<String>,
    /// NVRTC's log (warnings); empty when clean.
    pub log: String,
    /// True when the image came from the on-disk cache.
    pub from_cache: bool,
}

/// An NVRTC front end with include paths and a cache; cheap to share across threads.
#[derive(Debug, Clone)]
pub struct Compiler {
    include_dirs: Vec<PathBuf>,
    cache: Option<CompileCache>,
    version: String,
}

impl Compiler {
    /// Finds NVRTC and the CUDA headers, with the default on-disk cache.
    pub fn new() -> Result<Self> {
        Self::with_cache(Some(CompileCache::new(CompileCache::default_dir())))
    }

    /// Finds NVRTC and the headers, with the given cache (or none).
    pub fn with_cache(cache: Option<CompileCache>) -> Result<Self> {
        toolkit::require_nvrtc()?;
        let include_dirs = toolkit::include_dirs()?;
        let version = nvrtc_version()?;
        Ok(Self {
            include_dirs,
            cache,
            version,
        })
    }

    /// NVRTC's version, e.g. `13.0`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The include folders passed to NVRTC.
    pub fn include_dirs(&self) -> &[PathBuf] {
        &self.include_dirs
    }

    /// The cache, if any.
    pub fn cache(&self) -> Option<&CompileCache> {
        self.cache.as_ref()
    }

    /// Compiles one source; a rejected source is [`CudaError::Compile`] with NVRTC's log.
    pub fn compile(&self, req: &CompileRequest) -> Result<Compiled> {
        let options = req.semantic_options();
        let arch_tag = format!("{}:{:?}", req.arch.sm_name(), req.output);
        let key = CompileCache::key(&self.version, &arch_tag, &options, &req.source);
        if let Some(cache) = &self.cache {
            match cache.get(&key) {
                Some(CachedOutcome::Image { image, ptx, log }) => {
                    return Ok(Compiled {
                        name: req.name.clone(),
                        image,
                        output: req.output,
                        ptx,
                        log,
                        from_cache: true,
                    })
                }
                Some(CachedOutcome::Failed { log }) => {
                    return Err(CudaError::Compile {
                        name: req.name.clone(),
                        log,
                    })
                }
                None => {}
            }
        }
        let mut all_options = options;
        all_options.extend(
            self.include_dirs
                .iter()
                .map(|d| format!("-I{}", d.display())),
        );
        let outcome = run_nvrtc(req, &all_options)?;
        // NVRTC reports running out of memory (e.g. under the judge's
        // RLIMIT_AS) as a compile error: that depends on the limit, not only
        // on the source, so it is not cached.
        let resource_failure =
            matches!(&outcome, CachedOutcome::Failed { log } if log.contains("out of memory"));
        if let Some(cache) = self.cache.as_ref().filter(|_| !resource_failure) {
            // A cache that cannot be written only costs a recompile later.
            if let Err(err) = cache.put(&key, &outcome) {
                tracing::warn!("{err}");
            }
        }
        match outcome {
            CachedOutcome::Image { image, ptx, log } => Ok(Compiled {
                name: req.name.clone(),
                image,
                output: req.output,
                ptx,
                log,
                from_cache: false,
            }),
            CachedOutcome::Failed { log } => Err(CudaError::Compile {
                name: req.name.clone(),
                log,
            }),
        }
    }
}

/// NVRTC's version as `major.minor`.
pub fn nvrtc_version() -> Result<String> {
    toolkit::require_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (checked above); both pointers are valid.
    let status = unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) };
    check(status, "nvrtcVersion")?;
    Ok(format!("{major}.{minor}"))
}

fn check(status: nvrtc_sys::nvrtcResult, call: &'static str) -> Result<()> {
    if status == nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Nvrtc {
            call,
            status: format!("{status:?}"),
        })
    }
}

fn c_string(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| CudaError::InteriorNul {
        what: what.to_string(),
    })
}

/// Owns an `nvrtcProgram` so every exit path destroys it.
struct Program(nvrtc_sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed once.
        unsafe {
            nvrtc_sys::nvrtcDestroyProgram(&mut self.0);
        }
    }
}

fn run_nvrtc(req: &CompileRequest, options: &[String]) -> Result<CachedOutcome> {
    let src = c_string("source", &req.source)?;
    let name = c_string("program name", &req.name)?;
    let c_opts = options
        .iter()
        .map(|o| c_string("option", o))
        .collect::<Result<Vec<_>>>()?;
    let opt_ptrs: Vec<*const c_char> = c_opts.iter().map(|o| o.as_ptr()).collect();

    let mut raw = std::ptr::null_mut();
    // SAFETY: valid NUL-terminated strings; no headers passed.
    let status = unsafe {
        nvrtc_sys::nvrtcCreateProgram(
            &mut raw,
            src.as_ptr(),
            name.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    check(status, "nvrtcCreateProgram")?;
    let prog = Program(raw);

    // SAFETY: `prog` is live; the option pointers outlive the call.
    let compile_status =
        unsafe { nvrtc_sys::nvrtcCompileProgram(prog.0, opt_ptrs.len() as i32, opt_ptrs.as_ptr()) };
    let log = program_log(&prog)?;
    if compile_status == nvrtc_sys::nvrtcResult::NVRTC_ERROR_COMPILATION {
        return Ok(CachedOutcome::Failed { log });
    }
    check(compile_status, "nvrtcCompileProgram")?;

    // A compilation for a real arch (`sm_XX`) also keeps its PTX: the judge
    // checks what actually runs without a second NVRTC run.
    let mut ptx = read_output(
        &prog,
        nvrtc_sys::nvrtcGetPTXSize,
        nvrtc_sys::nvrtcGetPTX,
        "nvrtcGetPTX",
    )?;
    // The driver wants the NUL; kiln keeps text without it and adds it at load.
    while ptx.last() == Some(&0) {
        ptx.pop();
    }
    let (image, ptx) = match req.output {
        OutputKind::Cubin => {
            let cubin = read_output(
                &prog,
                nvrtc_sys::nvrtcGetCUBINSize,
                nvrtc_sys::nvrtcGetCUBIN,
                "nvrtcGetCUBIN",
            )?;
            (cubin, Some(String::from_utf8_lossy(&ptx).into_owned()))
        }
        OutputKind::Ptx => (ptx, None),
    };
    Ok(CachedOutcome::Image { image, ptx, log })
}

type SizeFn = unsafe fn(nvrtc_sys::nvrtcProgram, *mut usize) -> nvrtc_sys::nvrtcResult;
type ReadFn = unsafe fn(nvrtc_sys::nvrtcProgram, *mut c_char) -> nvrtc_sys::nvrtcResult;

fn read_output(prog: &Program, size: SizeFn, read: ReadFn, call: &'static str) -> Result<Vec<u8>> {
    let mut n = 0usize;
    // SAFETY: `prog` compiled successfully; `n` is a valid out-pointer.
    check(unsafe { size(prog.0, &mut n) }, call)?;
    let mut buf = vec![0u8; n];
    // SAFETY: `buf` holds exactly the size NVRTC reported.
    check(
        unsafe { read(prog.0, buf.as_mut_ptr() as *mut c_char) },
        call,
    )?;
    Ok(buf)
}

fn program_log(prog: &Program) -> Result<String> {
    let mut bytes = read_output(
        prog,
        nvrtc_sys::nvrtcGetProgramLogSize,
        nvrtc_sys::nvrtcGetProgramLog,
        "nvrtcGetProgramLog",
    )?;
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    Ok(String::from_utf8_lossy(&bytes).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = r#"extern "C" __global__ void twice(float* x, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) x[i] *= 2.0f; }"#;

    #[test]
    fn a_cubin_compile_keeps_its_ptx_and_the_cache_returns_both() {
        let dir = tempfile::tempdir().expect("temp dir");
        let compiler = Compiler::with_cache(Some(CompileCache::new(dir.path())))
            .unwrap_or_else(|e| panic!("NVRTC is required for this test: {e}"));
        let req = CompileRequest::new("twice.cu", SRC).arch(Arch::SM90.specific());
        let first = compiler.compile(&req).expect("compiles");
        assert_eq!(&first.image[..4], b"\x7fELF");
        let ptx = first.ptx.clone().expect("a cubin compile carries its PTX");
        assert!(ptx.contains(".entry twice"), "{ptx}");
        assert!(!ptx.ends_with('\0'));
        let second = compiler.compile(&req).expect("compiles again");
        assert!(second.from_cache);
        assert_eq!(second.ptx.as_deref(), Some(ptx.as_str()));
        assert_eq!(second.image, first.image);

        let text = compiler
            .compile(&req.clone().output(OutputKind::Ptx))
            .expect("compiles to PTX");
        assert_eq!(text.ptx, None, "PTX output is the image itself");
    }
}
