//! NVRTC compilation with no GPU: CI runs these, and they fail (never skip)
//! when NVRTC is missing — run `scripts/setup.sh` first.

use kiln_cuda::{Arch, CompileCache, CompileRequest, Compiler, CudaError, OutputKind};

fn compiler_with_temp_cache() -> (Compiler, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let compiler = Compiler::with_cache(Some(CompileCache::new(dir.path())))
        .unwrap_or_else(|e| panic!("NVRTC is required for this test: {e}"));
    (compiler, dir)
}

#[test]
fn probe_kernels_compile_to_sm90_cubin_and_ptx() {
    let (compiler, _dir) = compiler_with_temp_cache();
    let cubin = compiler
        .compile(&CompileRequest::new(
            "probe.cu",
            kiln_cuda::probe::PROBE_SOURCE,
        ))
        .expect("probe kernels compile");
    // An ELF image: the cubin magic.
    assert_eq!(&cubin.image[..4], b"\x7fELF", "cubin is an ELF file");
    assert!(!cubin.from_cache);

    let ptx = compiler
        .compile(
            &CompileRequest::new("probe.cu", kiln_cuda::probe::PROBE_SOURCE)
                .output(OutputKind::Ptx),
        )
        .expect("probe kernels compile to PTX");
    let text = String::from_utf8(ptx.image).expect("PTX is text");
    assert!(text.contains(".target sm_90"), "PTX targets sm_90");
    assert!(text.contains(".entry kiln_stream_read"));
}

#[test]
fn second_compile_comes_from_the_cache() {
    let (compiler, _dir) = compiler_with_temp_cache();
    let req = CompileRequest::new("axpy.cu", kiln_cuda::probe::PROBE_SOURCE).define("UNUSED", 1);
    let first = compiler.compile(&req).expect("compiles");
    let second = compiler.compile(&req).expect("compiles again");
    assert!(!first.from_cache);
    assert!(second.from_cache);
    assert_eq!(first.image, second.image);
    // A different define is a different key.
    let third = compiler
        .compile(&req.clone().define("UNUSED2", 2))
        .expect("compiles");
    assert!(!third.from_cache);
}

#[test]
fn syntax_error_returns_the_log_as_a_typed_error() {
    let (compiler, _dir) = compiler_with_temp_cache();
    let src = "extern \"C\" __global__ void broken(float* x) { x[0] = ; }";
    for attempt in 0..2 {
        match compiler.compile(&CompileRequest::new("broken.cu", src)) {
            Err(CudaError::Compile { name, log }) => {
                assert_eq!(name, "broken.cu");
                assert!(log.contains("error"), "attempt {attempt}: log was {log:?}");
                assert!(log.contains("broken.cu"), "log names the program: {log:?}");
            }
            other => panic!("attempt {attempt}: expected a compile error, got {other:?}"),
        }
    }
}

#[test]
fn defines_reach_the_source_and_bf16_headers_are_found() {
    let (compiler, _dir) = compiler_with_temp_cache();
    let src = r#"
#include <cuda_bf16.h>
#include <cuda/std/limits>
#if KILN_D != 2048
#error "KILN_D did not arrive"
#endif
extern "C" __global__ void k(__nv_bfloat16* x) {
    x[threadIdx.x] = __float2bfloat16(cuda::std::numeric_limits<float>::max());
}"#;
    compiler
        .compile(&CompileRequest::new("defines.cu", src).define("KILN_D", 2048))
        .expect("bf16 and CCCL headers found, define passed");
    let err = compiler
        .compile(&CompileRequest::new("defines.cu", src).define("KILN_D", 7))
        .expect_err("wrong define must fail");
    assert!(err.to_string().contains("KILN_D did not arrive"), "{err}");
}

#[test]
fn sm90a_target_accepts_arch_specific_code() {
    let (compiler, _dir) = compiler_with_temp_cache();
    let src = r#"extern "C" __global__ void k(int* x) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    x[0] = 1;
#else
#error "not sm_90a"
#endif
}"#;
    compiler
        .compile(&CompileRequest::new("a.cu", src).arch(Arch::SM90.specific()))
        .expect("sm_90a compiles");
    assert!(compiler.compile(&CompileRequest::new("a.cu", src)).is_err());
}
