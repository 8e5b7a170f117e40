//! The command line: every subcommand and flag, with defaults shown in `--help`.

use clap::{Args, Parser, Subcommand};

/// kiln: LLM-guided search for fast CUDA kernels for MoE inference.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v info, -vv debug); KILN_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// The top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the GPU, driver, NVRTC and headers; measure bandwidth and launch floor.
    Doctor(DoctorArgs),
    /// Search for faster kernels (list, eval, search, autorun, compare, report, export).
    #[command(subcommand)]
    Discover(DiscoverCommand),
    /// The kernel catalog (list, bench).
    #[command(subcommand)]
    Kernels(KernelsCommand),
    /// Model checkpoints (synth).
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Prove kernels on a real MoE model: tokens/s and token identity.
    Validate(ValidateArgs),
    /// The isolated GPU worker the evaluator starts (internal; speaks JSON over
    /// the pipe fds named in KILN_WORKER_REQUEST_FD / KILN_WORKER_RESPONSE_FD).
    #[command(name = "__worker", hide = true)]
    Worker {
        /// GPU ordinal.
        #[arg(long, default_value_t = 0)]
        device: usize,
    },
    /// NVRTC for one candidate, in the bounded child the evaluator starts
    /// (internal; one JSON job on stdin, one JSON answer on stdout).
    #[command(name = "__compile", hide = true)]
    Compile,
}

/// `kiln doctor` flags.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `kiln discover …`
#[derive(Debug, Subcommand)]
pub enum DiscoverCommand {
    /// List the search targets.
    List,
    /// Evaluate one kernel file against a target and print the whole record.
    Eval(EvalArgs),
    /// Run every check that needs no GPU on one kernel file: static checks,
    /// the launch line, a bounded NVRTC compile and the compiled-PTX checks.
    /// Exit 0: passed; 1: rejected; 2: usage or setup error.
    Check(CheckArgs),
    /// Run a PUCT search on one target (resumable session file).
    Search(SearchArgs),
    /// Search every target with every backend; one session per (target, backend).
    Autorun(AutorunArgs),
    /// Compare the sessions in one or more folders (merged: the shards of a
    /// Slurm run, runs on several machines): best speedups and a USE /
    /// MARGINAL / KEEP verdict per target and backend.
    Compare {
        /// Folders of sessions (autorun's `--session-dir`).
        #[arg(required = true)]
        dirs: Vec<std::path::PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Render a session as Markdown with SVG plots.
    Report {
        /// Session file.
        session: std::path::PathBuf,
        /// How many top kernels to show.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Output folder (default: the session's folder).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Write an sbatch script that runs autorun as a Slurm array job: task I
    /// of N runs `autorun --shard I/N` with the autorun flags given after `--`.
    Slurm(SlurmArgs),
    /// Prove each USE winner in the kiln models that run its build (`kiln
    /// validate --pack`, interleaved runs, noise floor) and admit it into the
    /// discovered set only when a model decodes faster beyond the spread with
    /// fidelity intact. Every decision is logged with its reason. Exit 1 when
    /// a winner could not be judged (a pack that replaced nothing, failed
    /// fidelity, a validate run that did not finish).
    Promote(PromoteArgs),
    /// Export a session's winner as a kernel-pack entry (JSON) plus a standalone .cu.
    Export {
        /// Session file.
        session: std::path::PathBuf,
        /// Output JSON file; the .cu goes beside it.
        #[arg(short, long)]
        out: std::path::PathBuf,
    },
}

/// `kiln discover promote`.
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// Folders of sessions (autorun's `--session-dir`), merged as `compare` merges them.
    #[arg(required = true)]
    pub dirs: Vec<std::path::PathBuf>,
    /// Validate runs per model (configurations interleaved run by run).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Decoded tokens per run.
    #[arg(long, default_value_t = 100)]
    pub max_tokens: usize,
    /// The discovered set: a JSON array of pack entries (`kiln validate --pack` loads it).
    #[arg(long, default_value = "crates/kiln-kernels/discovered.json")]
    pub discovered: std::path::PathBuf,
    /// The decision log, one JSON object per winner judged.
    #[arg(long, default_value = "crates/kiln-kernels/discovered-log.jsonl")]
    pub log: std::path::PathBuf,
    /// The changelog that gets a line per admitted kernel.
    #[arg(long, default_value = "CHANGELOG.md")]
    pub changelog: std::path::PathBuf,
    /// Folder for the exported entries and validate results (default: a temporary one).
    #[arg(long)]
    pub work_dir: Option<std::path::PathBuf>,
    /// The models build that runs `kiln validate` (default: found as `kiln
    /// validate` finds it, after checking for the NVIDIA driver).
    #[arg(long)]
    pub models_bin: Option<std::path::PathBuf>,
    /// Judge and print, but write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// GPU ordinal of the re-judging worker.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Skip re-judging each winner on this GPU with a fresh secret seed; the
    /// gate then rests on the session's verdict, and the log says so.
    #[arg(long)]
    pub no_rejudge: bool,
}

/// Flags shared by `search` and `autorun`.
#[derive(Debug, Args, Clone)]
pub struct SearchFlags {
    /// Proposer's model (LLM backends; default per backend).
    #[arg(long)]
    pub model: Option<String>,
    /// PUCT exploration constant.
    #[arg(long, default_value_t = 1.0)]
    pub c_puct: f64,
    /// Seed of the search and the offline generator (same seed, same search).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Warm-up graph replays per timed shape.
    #[arg(long, default_value_t = 3)]
    pub warmup: u32,
    /// Most timed repetitions per shape (stops earlier once the spread is below 2%).
    #[arg(long, default_value_t = 100)]
    pub iters: u32,
    /// Seconds one candidate may run in the GPU worker before it is killed.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Use a session recorded on another GPU, or move an unusable one aside.
    #[arg(long)]
    pub force: bool,
    /// Who judges candidates: `gpu` (the GPU worker), or `replay:DIR`, which
    /// answers from the sessions recorded under DIR (no GPU; a source they
    /// never evaluated stops the search as "not recorded").
    #[arg(long, default_value = "gpu")]
    pub evaluator: String,
}

/// `kiln discover search` flags.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Target name (see `kiln discover list`).
    pub target: String,
    /// Proposer: offline, claude-code, anthropic, openai, mock.
    #[arg(long, default_value = "offline")]
    pub backend: String,
    /// Search steps.
    #[arg(long, default_value_t = 10)]
    pub steps: u32,
    /// Candidates proposed per step.
    #[arg(long, default_value_t = 8)]
    pub candidates_per_step: u32,
    /// Where the session file goes (`<dir>/<target>_<backend>/session.json`).
    #[arg(long, default_value = "discover_sessions")]
    pub session_dir: std::path::PathBuf,
    /// Continue an existing session (without it, an existing session is an error).
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub flags: SearchFlags,
}

/// `kiln discover autorun` flags.
#[derive(Debug, Args)]
pub struct AutorunArgs {
    /// Targets, comma separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Proposers, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "offline")]
    pub backends: Vec<String>,
    /// Search steps per session.
    #[arg(long, default_value_t = 10)]
    pub steps: u32,
    /// Candidates proposed per step.
    #[arg(long, default_value_t = 4)]
    pub candidates_per_step: u32,
    /// Folder of the sessions and `autorun_summary.json`.
    #[arg(long, default_value = "discover_sessions/autorun")]
    pub session_dir: std::path::PathBuf,
    /// Run only shard I of N (`I/N`, I from 0): the (backend, target) sessions
    /// whose position in the full list is I modulo N, so N processes (a Slurm
    /// array, one per GPU) share one folder and together run every session once.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,
    /// GPUs to spread the sessions over, one worker each (`0,1,…` or `all`);
    /// each session runs whole on one of them. Without it: the one `--device`.
    #[arg(long)]
    pub devices: Option<String>,
    /// Search finished sessions again from the start (each moved aside
    /// first). Without it they are skipped, so a cut-off autorun resumes
    /// where it stopped; `--force` alone (a session from another GPU) never
    /// reruns a finished one.
    #[arg(long)]
    pub rerun_finished: bool,
    /// Run the targets in order of the weights a candidate's verification
    /// draws, smallest first (a stable sort of the list): the expert targets,
    /// whose hundreds of MB of weights make each candidate many times
    /// dearer, come last, so a run cut off by a time limit has finished the
    /// most sessions.
    #[arg(long)]
    pub cheap_first: bool,
    #[command(flatten)]
    pub flags: SearchFlags,
}

/// `kiln discover slurm` flags.
#[derive(Debug, Args)]
pub struct SlurmArgs {
    /// Array tasks (shards); every task runs its own sessions.
    #[arg(long)]
    pub tasks: usize,
    /// GPUs per task; above 1 the task runs `--devices all` over them.
    #[arg(long, default_value_t = 1)]
    pub gpus_per_task: usize,
    /// Slurm partition.
    #[arg(long)]
    pub partition: Option<String>,
    /// Slurm account.
    #[arg(long)]
    pub account: Option<String>,
    /// Wall-clock limit per task (Slurm's form, e.g. 04:00:00).
    #[arg(long, default_value = "04:00:00")]
    pub time: String,
    /// Where the script goes.
    #[arg(short, long, default_value = "kiln-autorun.sbatch")]
    pub out: std::path::PathBuf,
    /// The autorun flags every task runs with (after `--`); `--session-dir`
    /// must be a folder every node sees. `--shard` is the script's to set.
    #[arg(last = true)]
    pub autorun: Vec<String>,
}

/// `I/N` with `N ≥ 1` and `I < N`.
fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("`{s}`: expected I/N with 0 <= I < N (e.g. 0/4)");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// `kiln discover eval` flags.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Target name (see `kiln discover list`).
    pub target: String,
    /// The candidate CUDA source.
    pub file: std::path::PathBuf,
    /// Secret seed of the verification inputs (default: fresh from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Warm-up graph replays per timed shape.
    #[arg(long, default_value_t = 3)]
    pub warmup: u32,
    /// Most timed repetitions per shape (stops earlier once the spread is below 2%).
    #[arg(long, default_value_t = 100)]
    pub iters: u32,
    /// Seconds one candidate may run in the worker before it is killed.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Wall-clock seconds the candidate's compile may take before it is killed.
    #[arg(long, default_value_t = 60)]
    pub compile_timeout_s: u64,
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Print only the JSON record.
    #[arg(long)]
    pub json: bool,
}

/// `kiln discover check` flags.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Target name (see `kiln discover list`).
    pub target: String,
    /// The candidate CUDA source.
    pub file: std::path::PathBuf,
    /// GPU architecture to compile for (`sm_90a`, `sm_90`, `sm_100a`, …).
    #[arg(long, default_value = "sm_90a")]
    pub arch: String,
    /// Wall-clock seconds the compile may take before it is killed.
    #[arg(long, default_value_t = 60)]
    pub compile_timeout_s: u64,
    /// Address-space limit of the compile, GiB.
    #[arg(long, default_value_t = 8)]
    pub compile_memory_gib: u64,
    /// Print one JSON object instead of text (same exit codes).
    #[arg(long)]
    pub json: bool,
}

/// `kiln kernels …`
#[derive(Debug, Subcommand)]
pub enum KernelsCommand {
    /// List the catalog's ops.
    List,
    /// Time every op at the three models' shapes (µs, GB/s, % of peak, × launch floor).
    Bench(BenchArgs),
}

/// `kiln kernels bench` flags.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Token counts (rows) to time, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = kiln_eval::catalog_bench::BENCH_T)]
    pub t: Vec<usize>,
    /// Only these ops, comma separated: an op whose name equals an item, or
    /// contains it when no op is named exactly that.
    #[arg(long, value_delimiter = ',')]
    pub op: Vec<String>,
    /// Warm-up graph replays per point.
    #[arg(long, default_value_t = 5)]
    pub warmup: u32,
    /// Most timed repetitions per point.
    #[arg(long, default_value_t = 200)]
    pub iters: u32,
    /// Also write the rows as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// A variant of the selected op's kernel (a `.cu` file with the catalog
    /// kernel's entry point and a launch line): timed interleaved with the
    /// catalog kernel at every point, its timed output checked too. `--op`
    /// must select exactly one op.
    #[arg(long)]
    pub candidate: Option<std::path::PathBuf>,
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
}

/// `kiln models …`
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List the model presets (the published configs kiln can synthesise).
    List,
    /// Write a checkpoint directory (config.json + model.safetensors) with seeded random weights.
    Synth {
        /// Preset: qwen3-30b-a3b or glm-4.7-flash (`kiln models list`).
        preset: String,
        /// Decoder layers (default: the preset's full depth).
        #[arg(long)]
        layers: Option<usize>,
        /// Weight seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output directory.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Run kiln-candle's own kernels (decode projections, the KV cache write, Qwen3's fused
    /// attention inputs, MLA keys, the shared expert's column) on the GPU against their CPU
    /// paths at the presets' shapes; exits non-zero when one departs.
    CheckKernels {
        /// Presets (default: every preset).
        presets: Vec<String>,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Run one MoE block at the model's real dims on the GPU, on kiln's kernels and on
    /// plain candle ops, each against the same block on the CPU (same bf16 weights and
    /// inputs); exits non-zero when a GPU path departs from its CPU twin.
    CheckMoe {
        /// Preset (`kiln models list`).
        preset: String,
        /// The layer (default: the first MoE layer).
        #[arg(long)]
        layer: Option<usize>,
        /// Rows of random input.
        #[arg(long, default_value_t = 16)]
        tokens: usize,
        /// Weight seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Compare the two CPU paths only (no GPU needed).
        #[arg(long)]
        cpu: bool,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
}

/// `kiln validate` flags.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Checkpoint directory (config.json + *.safetensors); omit with --synthetic.
    pub model: Option<std::path::PathBuf>,
    /// Build a preset's seeded weights straight in GPU memory instead of reading a checkpoint.
    #[arg(long, conflicts_with = "model")]
    pub synthetic: Option<String>,
    /// Decoder layers of the synthetic model (default: full depth).
    #[arg(long, requires = "synthetic")]
    pub layers: Option<usize>,
    /// Weight seed of the synthetic model.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Greedy tokens to decode per run.
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Timed runs per configuration (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Prompt length in tokens (seeded ids; see --prompt).
    #[arg(long, default_value_t = 32)]
    pub prompt_len: usize,
    /// Prompt token ids, comma-separated (overrides --prompt-len).
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt_text")]
    pub prompt: Vec<u32>,
    /// The prompt as text, encoded with the checkpoint's tokenizer.json (each
    /// configuration's output is then printed as text too).
    #[arg(long, requires = "model")]
    pub prompt_text: Option<String>,
    /// Run only the baseline (no kiln kernels).
    #[arg(long)]
    pub no_patch: bool,
    /// A kernel pack from `kiln discover export` to try as a third configuration.
    #[arg(long)]
    pub pack: Option<std::path::PathBuf>,
    /// Where benchmark_results.json and the detailed report go.
    #[arg(long, default_value = "validate-results")]
    pub out: std::path::PathBuf,
    /// Run on the CPU (tiny models only; for checking, not timing).
    #[arg(long)]
    pub cpu: bool,
    /// Also write every configuration's teacher-forced logits (logits.safetensors) for bench/hf_crosscheck.py.
    #[arg(long)]
    pub dump_logits: bool,
    /// Skip the noise floor (the baseline on its synthetic weights rounded toward zero,
    /// which shows how far bf16 rounding alone moves the model).
    #[arg(long)]
    pub no_noise_floor: bool,
    /// Decode kiln's configurations op by op only: no CUDA graph (by default each
    /// decode step is one graph replay, checked bit for bit against eager decode).
    #[arg(long)]
    pub eager: bool,
    /// Skip the baseline: kiln's configurations only (the first is the reference; graph
    /// against eager is still checked bit for bit). For contexts the baseline cannot prefill.
    #[arg(long)]
    pub no_baseline: bool,
}
