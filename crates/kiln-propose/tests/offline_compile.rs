//! Every source the offline generator can produce compiles with NVRTC for
//! every target, declares a launch that is valid at decode and prefill
//! shapes, and passes the evaluator's static checks and its check of the
//! compiled PTX. The seeds also compile in f32, f16 and bf16.
//!
//! Some families also compile at dims of their own ([`OWN_DIMS`]), beyond
//! the targets' widths: short_conv at the LFM2 width (D = 2048, L = 3) in
//! every dtype, and at small and odd widths and L from 2 to 8 in bf16;
//! decode_attention at a small GQA shape in every dtype, then at an odd
//! cache (S_MAX = 37) with DQK != DV, tiny heads with a one-position cache,
//! and the largest heads and cache, in bf16; qk_norm_rope_cache at a
//! GQA shape in every dtype, then with odd head counts at D = 64 and 256.
//!
//! This test needs NVRTC (`scripts/setup.sh` installs pinned wheels into
//! `.cache/cuda-wheels`); it fails, never skips, when NVRTC is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use kiln_cuda::{CompileRequest, Compiler, CudaError};
use kiln_eval::candidate::{Candidate, TargetSignature};
use kiln_eval::targets;
use kiln_kernels::launch::LaunchLine;
use kiln_kernels::seeds;
use kiln_kernels::DType;
use kiln_propose::offline::generate::single_moves;
use kiln_propose::offline::{propose_offline, Dims, Family, History};
use kiln_search::search::dedup::source_hash;
use rayon::prelude::*;

/// Parents expanded per level after the first, and children asked of each.
const WALK: [(usize, usize); 2] = [(4, 8), (4, 5)];

/// Extra dims per family, compiled besides the targets' own: `(family, [(dim, value)])`.
/// 1030 and 1031 are not multiples of 4 and 2 (narrower vectors only), 40 is
/// under one 128-thread block, and L spans 2..=8.
const OWN_DIMS: &[(&str, &[(&str, i64)])] = &[
    ("short_conv", &[("D", 2048), ("L", 3)]),
    ("short_conv", &[("D", 1030), ("L", 4)]),
    ("short_conv", &[("D", 1031), ("L", 2)]),
    ("short_conv", &[("D", 40), ("L", 8)]),
    (
        "decode_attention",
        &[
            ("QH", 8),
            ("KVH", 2),
            ("DQK", 64),
            ("DV", 64),
            ("S_MAX", 100),
        ],
    ),
    (
        "decode_attention",
        &[
            ("QH", 4),
            ("KVH", 4),
            ("DQK", 192),
            ("DV", 128),
            ("S_MAX", 37),
        ],
    ),
    (
        "decode_attention",
        &[("QH", 3), ("KVH", 1), ("DQK", 8), ("DV", 16), ("S_MAX", 1)],
    ),
    (
        "decode_attention",
        &[
            ("QH", 2),
            ("KVH", 1),
            ("DQK", 1024),
            ("DV", 2048),
            ("S_MAX", 49_152),
        ],
    ),
    ("qk_norm_rope_cache", &[("QH", 16), ("KVH", 2), ("D", 128)]),
    ("qk_norm_rope_cache", &[("QH", 3), ("KVH", 1), ("D", 64)]),
    ("qk_norm_rope_cache", &[("QH", 5), ("KVH", 5), ("D", 256)]),
];

/// Defines a family needs besides `KILN_<dim>` of its integer dims: attention's
/// softmax scale is a float literal (DQK^-0.5, as the catalog's configs use), and
/// the attention inputs' RMSNorm epsilon.
fn float_defines(family: &str, dims: &BTreeMap<String, i64>) -> Vec<(String, String)> {
    match (family, dims.get("DQK")) {
        ("decode_attention", Some(&dqk)) => vec![(
            "KILN_SCALE".to_string(),
            kiln_kernels::catalog::float_literal((dqk as f64).powf(-0.5)),
        )],
        ("qk_norm_rope_cache", _) => vec![(
            "KILN_EPS".to_string(),
            kiln_kernels::catalog::float_literal(1e-6),
        )],
        _ => Vec::new(),
    }
}

/// One compile job.
struct Job {
    target: String,
    label: String,
    source: String,
    defines: Vec<(String, String)>,
}

/// The distinct sources of a walk three levels deep from the seed.
fn walk(family: &str, dims: &BTreeMap<String, i64>, seed_src: &str) -> Vec<(String, String)> {
    let fam = Family::from_name(family).expect("family");
    let d = Dims::from_static(fam, dims).expect("dims");
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut push = |label: String, src: String, out: &mut Vec<(String, String)>| {
        if seen.insert(source_hash(&src)) {
            out.push((label, src));
        }
    };
    push("seed".into(), seed_src.to_string(), &mut out);
    // Level 1: every single rewrite of the seed.
    let naive = fam.naive(&d);
    push("naive".into(), fam.render(&naive, &d), &mut out);
    let level1: Vec<(String, String)> = single_moves(fam, &d, &naive, &History::new())
        .into_iter()
        .map(|m| (m.name, fam.render(&m.knobs, &d)))
        .collect();
    for (l, s) in &level1 {
        push(l.clone(), s.clone(), &mut out);
    }
    // Deeper levels: the generator's own proposals from recipe children, then theirs.
    let mut frontier: Vec<(String, String)> = level1
        .iter()
        .filter(|(l, _)| l.starts_with("recipe-"))
        .cloned()
        .collect();
    frontier.extend(
        level1
            .iter()
            .filter(|(l, _)| !l.starts_with("recipe-"))
            .cloned(),
    );
    for (depth, (parents, per)) in WALK.iter().enumerate() {
        let mut next = Vec::new();
        for (pl, ps) in frontier.iter().take(*parents) {
            let props = propose_offline(family, dims, ps, *per, depth as u64 + 11, &History::new())
                .expect("proposals");
            for p in props {
                let label = format!("{pl} > {}", p.rewrite);
                push(label.clone(), p.source.clone(), &mut out);
                next.push((label, p.source));
            }
        }
        frontier = next;
    }
    out
}

fn with_dtype(defines: &[(String, String)], dtype: &str) -> Vec<(String, String)> {
    defines
        .iter()
        .map(|(k, v)| {
            if k == "KILN_DTYPE" {
                (k.clone(), dtype.to_string())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect()
}

fn check_launch(job: &Job, dims: &BTreeMap<String, i64>) -> Result<(), String> {
    let line = LaunchLine::parse_source(&job.source).map_err(|e| e.to_string())?;
    for t in [1i64, 3, 37, 4096] {
        let mut vars = dims.clone();
        vars.insert("T".into(), t);
        vars.insert("SMS".into(), 132);
        let dims = line.evaluate(&vars).map_err(|e| format!("T={t}: {e}"))?;
        if dims.block.0 > 1024 || dims.grid.0 < 1 || dims.smem > 227 * 1024 {
            return Err(format!("T={t}: bad launch {dims:?}"));
        }
    }
    Ok(())
}

fn signature_for(sig: &TargetSignature, dtype: DType) -> TargetSignature {
    TargetSignature {
        dtype,
        ..sig.clone()
    }
}

/// Compiles every job in parallel; one message per job that fails to compile or whose PTX fails the check.
fn compile_all(compiler: &Compiler, jobs: &[Job]) -> Vec<String> {
    jobs.par_iter()
        .filter_map(|job| {
            let mut req = CompileRequest::new(
                format!("{}_{}.cu", job.target, job.label.replace([' ', '>'], "_")),
                job.source.clone(),
            );
            for (k, v) in &job.defines {
                req = req.define(k.clone(), v.clone());
            }
            match compiler.compile(&req) {
                // A cubin compile carries its PTX: the evaluator checks that text.
                Ok(c) => match &c.ptx {
                    Some(ptx) => kiln_eval::ptx_check::check_ptx(ptx).err().map(|e| {
                        format!("{} / {}: PTX check: {}", job.target, job.label, e.reason)
                    }),
                    None => Some(format!("{} / {}: no PTX came back", job.target, job.label)),
                },
                Err(CudaError::Compile { log, .. }) => Some(format!(
                    "{} / {}:\n{}",
                    job.target,
                    job.label,
                    log.lines().take(12).collect::<Vec<_>>().join("\n")
                )),
                Err(e) => Some(format!("{} / {}: {e}", job.target, job.label)),
            }
        })
        .collect()
}

/// The entry signature of a family compiled at [`OWN_DIMS`]: that of a
/// registry target of the family (a signature does not depend on the dims).
fn own_signature(family: &str, dtype: DType) -> TargetSignature {
    let target = targets::all()
        .into_iter()
        .find(|t| t.problem.family() == family)
        .unwrap_or_else(|| panic!("{family}: no registry target"));
    signature_for(&target.signature().expect("signature"), dtype)
}

#[test]
fn every_offline_source_compiles_for_every_target() {
    let start = Instant::now();
    let compiler = Compiler::new().expect("NVRTC must be available: run scripts/setup.sh");
    let mut jobs: Vec<Job> = Vec::new();
    let mut per_target: BTreeMap<String, usize> = BTreeMap::new();
    let mut problems: Vec<String> = Vec::new();
    let mut no_space: BTreeSet<&str> = BTreeSet::new();
    for target in targets::all() {
        let family = target.problem.family();
        let dims = target.static_dims();
        let defines = target.defines().expect("defines");
        let sig = target.signature().expect("signature");
        let seed_src = seeds::seed_source(family).unwrap_or_else(|| panic!("{family}: no seed"));
        // The seed in every dtype.
        for (dt, cname) in [
            (DType::F32, "float"),
            (DType::F16, "__half"),
            (DType::BF16, "__nv_bfloat16"),
        ] {
            if let Err(e) = Candidate::new(seed_src).check(&signature_for(&sig, dt)) {
                problems.push(format!("{}: seed static check ({cname}): {e}", target.name));
            }
            jobs.push(Job {
                target: target.name.clone(),
                label: format!("seed[{cname}]"),
                source: seed_src.to_string(),
                defines: with_dtype(&defines, cname),
            });
        }
        if Family::from_name(family).is_err() {
            // Said loudly, and pinned below: a family without knob space is a
            // decision, not an accident.
            eprintln!(
                "NOTE: {}: the offline generator has no knob space for `{family}`; only its seed is compiled",
                target.name
            );
            no_space.insert(family);
            continue;
        }
        let sources = walk(family, &dims, seed_src);
        per_target.insert(target.name.clone(), sources.len());
        for (label, source) in sources {
            let job = Job {
                target: target.name.clone(),
                label,
                source,
                defines: defines.clone(),
            };
            queue(job, &dims, &sig, &mut jobs, &mut problems);
        }
    }
    assert_eq!(
        no_space.into_iter().collect::<Vec<_>>(),
        Vec::<&str>::new(),
        "families the offline generator cannot search"
    );
    compile_and_report("per target", &compiler, &jobs, &per_target, problems, start);
}

/// Checks `job`'s launch line at several T and its source against `sig`,
/// noting what fails, and queues it for compilation.
fn queue(
    job: Job,
    dims: &BTreeMap<String, i64>,
    sig: &TargetSignature,
    jobs: &mut Vec<Job>,
    problems: &mut Vec<String>,
) {
    if let Err(e) = check_launch(&job, dims) {
        problems.push(format!("{} / {}: launch: {e}", job.target, job.label));
    }
    if let Err(e) = Candidate::new(job.source.clone()).check(sig) {
        problems.push(format!("{} / {}: static check: {e}", job.target, job.label));
    }
    jobs.push(job);
}

/// Compiles every queued job, prints the counts, and fails on a shallow
/// walk (fewer than 40 distinct sources for any case) or any problem.
fn compile_and_report(
    what: &str,
    compiler: &Compiler,
    jobs: &[Job],
    per_case: &BTreeMap<String, usize>,
    mut problems: Vec<String>,
    start: Instant,
) {
    problems.extend(compile_all(compiler, jobs));
    eprintln!(
        "offline_compile: {} compiles in {:.1} s; distinct generated sources {what}: {per_case:?}",
        jobs.len(),
        start.elapsed().as_secs_f64()
    );
    assert!(
        per_case.values().all(|n| *n >= 40),
        "walks too shallow: {per_case:?}"
    );
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

#[test]
fn families_compile_at_their_own_dims() {
    let start = Instant::now();
    let compiler = Compiler::new().expect("NVRTC must be available: run scripts/setup.sh");
    let mut jobs: Vec<Job> = Vec::new();
    let mut per_case: BTreeMap<String, usize> = BTreeMap::new();
    let mut problems: Vec<String> = Vec::new();
    for (i, (family, pairs)) in OWN_DIMS.iter().enumerate() {
        let dims: BTreeMap<String, i64> = pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let case = format!(
            "{family}[{}]",
            pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let seed_src = seeds::seed_source(family).unwrap_or_else(|| panic!("{family}: no seed"));
        let sources = walk(family, &dims, seed_src);
        per_case.insert(case.clone(), sources.len());
        // The first case of a family is its production shape: every dtype; the others bf16.
        let first = OWN_DIMS.iter().position(|(f, _)| f == family) == Some(i);
        let dtypes: &[(DType, &str)] = if first {
            &[
                (DType::F32, "float"),
                (DType::F16, "__half"),
                (DType::BF16, "__nv_bfloat16"),
            ]
        } else {
            &[(DType::BF16, "__nv_bfloat16")]
        };
        for (dt, cname) in dtypes {
            let sig = own_signature(family, *dt);
            let mut defines = vec![("KILN_DTYPE".to_string(), cname.to_string())];
            defines.extend(
                dims.iter()
                    .map(|(k, v)| (format!("KILN_{k}"), v.to_string())),
            );
            defines.extend(float_defines(family, &dims));
            for (label, source) in &sources {
                let job = Job {
                    target: case.clone(),
                    label: format!("{label}[{cname}]"),
                    source: source.clone(),
                    defines: defines.clone(),
                };
                queue(job, &dims, &sig, &mut jobs, &mut problems);
            }
        }
    }
    compile_and_report(
        "per own-dims case",
        &compiler,
        &jobs,
        &per_case,
        problems,
        start,
    );
}
