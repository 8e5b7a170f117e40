//! Search targets: what a candidate must compute, at which shapes, against
//! which baseline, starting from which naive seed.

pub mod op_problem;
pub mod problem;
pub mod registry;

use std::collections::BTreeMap;

use kiln_kernels::{DType, KernelBuild, KernelError};

use crate::candidate::{Param, ParamKind, ScalarKind, TargetSignature};
pub use op_problem::{OpProblem, Reference, TopkLayout};
pub use problem::{BufferSpec, Distribution, ElemKind, HostBuffer, Role};
pub use registry::{all, find};

/// Verification trials per verified shape, each with fresh inputs (the
/// worker runs them; the timeout budget counts them).
pub const TRIALS_PER_SHAPE: usize = 2;

/// One search space.
#[derive(Debug, Clone)]
pub struct Target {
    /// Unique name (`glm_rmsnorm`).
    pub name: String,
    /// The model whose semantics and dims it follows, if any.
    pub model: Option<&'static str>,
    /// One line for `kiln discover list`.
    pub description: String,
    /// The op, its static dims and dtype.
    pub problem: OpProblem,
    /// Row counts timed for the reward.
    pub timed_t: Vec<usize>,
    /// Row counts verified and shown to the proposer.
    pub visible_verify_t: Vec<usize>,
    /// Row counts verified but never shown to the proposer.
    pub hidden_verify_t: Vec<usize>,
    /// Whether one of kiln's models runs exactly this build at decode (so a
    /// winner can be proven in the model), pinned by kiln-candle's
    /// `tests/pack_roundtrip.rs`.
    pub model_use: ModelUse,
}

/// Whether a kiln model runs a target's exact build at decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelUse {
    /// A generic shape, no model's.
    Generic,
    /// The model runs this build: its winners can be validated in it.
    Runs,
    /// The model's configuration, but kiln's model runs other kernels for it (why).
    NotRun(&'static str),
}

impl ModelUse {
    /// One phrase for `kiln discover list`.
    pub fn describe(&self) -> String {
        match self {
            Self::Generic => "no model (generic shape)".into(),
            Self::Runs => "yes".into(),
            Self::NotRun(why) => format!("no: {why}"),
        }
    }
}

impl Target {
    /// The catalog kernel: the baseline every candidate must beat.
    pub fn baseline(&self) -> Result<KernelBuild, KernelError> {
        self.problem.build()
    }

    /// The family's naive seed kernel: the root of the search tree.
    pub fn seed_source(&self) -> Option<&'static str> {
        kiln_kernels::seeds::seed_source(self.problem.family())
    }

    /// The NVRTC defines (dtype and static dims) every candidate is compiled with.
    pub fn defines(&self) -> Result<Vec<(String, String)>, KernelError> {
        Ok(self.baseline()?.defines)
    }

    /// The storage dtype.
    pub fn dtype(&self) -> DType {
        match self.problem.buffers(1).first().map(|b| b.kind) {
            Some(ElemKind::Dtype(d)) => d,
            _ => DType::F32,
        }
    }

    /// Static shape variables with their values (`D` → 2048).
    pub fn static_dims(&self) -> BTreeMap<String, i64> {
        self.problem
            .static_vars()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    /// The entry point's signature every candidate must define.
    pub fn signature(&self) -> Result<TargetSignature, KernelError> {
        let entry = self.baseline()?.entry;
        let mut params: Vec<Param> = self
            .problem
            .buffers(1)
            .into_iter()
            .map(|b| {
                let scalar = match b.kind {
                    ElemKind::Dtype(_) => ScalarKind::Dtype,
                    ElemKind::F32 => ScalarKind::F32,
                    ElemKind::U32 => ScalarKind::U32,
                    ElemKind::I32 => ScalarKind::I32,
                };
                Param {
                    name: b.name,
                    kind: match b.role {
                        Role::Input => ParamKind::ConstPtr(scalar),
                        Role::Output | Role::InOut => ParamKind::MutPtr(scalar),
                    },
                }
            })
            .collect();
        params.push(Param {
            name: "T".into(),
            kind: ParamKind::Int,
        });
        params.extend(self.problem.scalar_names().iter().map(|n| Param {
            name: n.to_string(),
            kind: ParamKind::Int,
        }));
        Ok(TargetSignature {
            entry,
            params,
            dtype: self.dtype(),
        })
    }

    /// The `kiln models` preset of the model that runs this exact build at
    /// decode (`Qwen3-30B-A3B` → `qwen3-30b-a3b`), where one does; kiln-candle's
    /// `pack_roundtrip` pins that each is a preset and runs the build.
    pub fn model_preset(&self) -> Option<String> {
        match (self.model_use, self.model) {
            (ModelUse::Runs, Some(model)) => Some(model.to_lowercase()),
            _ => None,
        }
    }

    /// Every `kiln models` preset that runs this target's exact build: its own
    /// model's, and that of each other target declaring the same catalog build
    /// (GLM-4.7-Flash's and LFM2's hidden add-RMSNorm are one build). A winner
    /// is validated in each. Sorted, without repeats; empty when no model runs it.
    pub fn model_presets(&self) -> Vec<String> {
        let Some(own) = self.model_preset() else {
            return Vec::new();
        };
        let Ok(build) = self.baseline() else {
            return vec![own];
        };
        let mut presets: Vec<String> = all()
            .into_iter()
            .filter(|t| t.name != self.name)
            .filter_map(|t| {
                let preset = t.model_preset()?;
                (t.baseline().ok()? == build).then_some(preset)
            })
            .chain(std::iter::once(own))
            .collect();
        presets.sort();
        presets.dedup();
        presets
    }

    /// How many times the base per-candidate timeout an evaluation of this
    /// target may take. The worker draws, uploads and checks every input
    /// afresh for each verification trial, and builds the timing sets on a
    /// target's first candidate: for expert-stacked weights (hundreds of MB)
    /// or a large timed shape drawn once per row window (up to four, beyond
    /// L2) that host work is seconds, not the kernel. One more unit per
    /// 128 MiB of inputs at one row, or per 512 MiB of four windows of the
    /// largest timed shape, whichever is more; plus one per GiB that the
    /// verification trials draw in all (two per verified shape, each with
    /// fresh weights); at most 8. A hang is still caught.
    pub fn timeout_scale(&self) -> u32 {
        const UNIT: usize = 128 << 20;
        const TIMED_UNIT: usize = 512 << 20;
        const VERIFY_UNIT: usize = 1 << 30;
        const MOST_WINDOWS: usize = 4;
        let bytes = |t: usize| -> usize {
            self.problem
                .buffers(t)
                .iter()
                .map(|b| b.len * b.kind.size())
                .sum()
        };
        let largest = self.timed_t.iter().copied().max().unwrap_or(1);
        let verified: usize = self
            .verify_t()
            .iter()
            .map(|&t| bytes(t) * TRIALS_PER_SHAPE)
            .sum();
        let units = (bytes(1) / UNIT).max(bytes(largest) * MOST_WINDOWS / TIMED_UNIT)
            + verified / VERIFY_UNIT;
        (1 + units).min(8) as u32
    }

    /// Every verified row count, visible first.
    pub fn verify_t(&self) -> Vec<usize> {
        let mut all = self.visible_verify_t.clone();
        all.extend(&self.hidden_verify_t);
        all
    }

    /// The math, for prompts and reports: the catalog source's header comment.
    pub fn math(&self) -> String {
        let source = self.baseline().map(|b| b.source).unwrap_or_default();
        source
            .lines()
            .take_while(|l| l.starts_with("//"))
            .filter(|l| !l.trim_start_matches('/').trim_start().starts_with("kiln:"))
            .map(|l| l.trim_start_matches('/').trim_start())
            .collect::<Vec<_>>()
            .join("\n")
    }
}
