//! `kiln models …` and `kiln validate`: thin shells over kiln-candle, which
//! is built only with the `models` feature (`scripts/build-models.sh`). A
//! kiln built without it hands these commands to the models build, after
//! checking that the NVIDIA driver it links is there.

use std::process::ExitCode;

use crate::cli::{ModelsCommand, ValidateArgs};

#[cfg(not(feature = "models"))]
const NOT_BUILT: &str = "this kiln was built without its candle models, and no models build was \
    found (KILN_MODELS_BIN, or KILN_MODELS_TARGET/release/kiln): build one with \
    `scripts/build-models.sh` (installs nvcc from pinned wheels and builds with `--features models-cuda`)";

/// `kiln models …`: handed to the models build.
#[cfg(not(feature = "models"))]
pub fn models(_: ModelsCommand) -> anyhow::Result<ExitCode> {
    hand_over()
}

/// `kiln validate`: handed to the models build, once the pack it names
/// (if any) reads as a pack: a broken file is an error before any GPU work.
#[cfg(not(feature = "models"))]
pub fn validate(a: &ValidateArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    if let Some(p) = &a.pack {
        kiln_kernels::pack::read_pack(p)
            .with_context(|| format!("--pack {} is not a kernel pack kiln can run", p.display()))?;
    }
    hand_over()
}

/// The models build `scripts/build-models.sh` makes: `KILN_MODELS_BIN`, else
/// `$KILN_MODELS_TARGET/release/kiln` (default `~/.cache/kiln/target-models`).
#[cfg(not(feature = "models"))]
fn models_binary() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    if let Some(p) = std::env::var_os("KILN_MODELS_BIN") {
        return Some(PathBuf::from(p));
    }
    let target = std::env::var_os("KILN_MODELS_TARGET")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kiln/target-models"))
        })?;
    Some(target.join("release/kiln")).filter(|p| p.is_file())
}

/// Set in the environment of a models build this kiln starts: a plain kiln
/// that finds it set was started as the "models build" by mistake, and says so
/// instead of handing over again.
pub(crate) const HANDOFF_MARK: &str = "KILN_MODELS_HANDOFF";

/// The program that runs `kiln validate` with the candle models: the models
/// build, once the driver it links is known to load.
#[cfg(not(feature = "models"))]
pub(crate) fn models_program() -> anyhow::Result<std::path::PathBuf> {
    use anyhow::{bail, Context};
    let Some(bin) = models_binary() else {
        bail!("{NOT_BUILT}");
    };
    if !bin.is_file() {
        bail!(
            "the models build {} (KILN_MODELS_BIN) does not exist; build it with \
             `scripts/build-models.sh`",
            bin.display()
        );
    }
    kiln_cuda::toolkit::require_driver().context(
        "kiln's models run on an NVIDIA GPU and its models build needs the driver's \
         libcuda.so.1 to start",
    )?;
    Ok(bin)
}

/// This kiln has the candle models: it runs `kiln validate` itself.
#[cfg(feature = "models")]
pub(crate) fn models_program() -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    std::env::current_exe().context("cannot find this kiln's own executable")
}

/// Runs this command line in the models build. That build links the CUDA
/// libraries (candle's CUDA backend does), so on a machine without the NVIDIA
/// driver it could not even start: this kiln, which loads them only when
/// asked, checks for the driver first and says what is missing.
#[cfg(not(feature = "models"))]
fn hand_over() -> anyhow::Result<ExitCode> {
    use anyhow::{bail, Context};
    if std::env::var_os(HANDOFF_MARK).is_some() {
        bail!(
            "KILN_MODELS_BIN names a kiln built without its candle models; point it at the \
             binary `scripts/build-models.sh` builds"
        );
    }
    let bin = models_program()?;
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(std::env::args_os().skip(1)).env(HANDOFF_MARK, "1");
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // exec only returns on failure.
        let err = cmd.exec();
        Err(err).with_context(|| format!("cannot run the models build {}", bin.display()))
    }
    #[cfg(not(unix))]
    {
        let status = cmd
            .status()
            .with_context(|| format!("cannot run the models build {}", bin.display()))?;
        Ok(ExitCode::from(
            status.code().unwrap_or(1).clamp(0, 255) as u8
        ))
    }
}

/// `kiln models …`
#[cfg(feature = "models")]
pub fn models(cmd: ModelsCommand) -> anyhow::Result<ExitCode> {
    use kiln_candle::models::config::{preset, PRESETS};
    match cmd {
        ModelsCommand::List => {
            for (name, _) in PRESETS {
                let v = preset(name, None)?;
                println!(
                    "{name:<16} model_type {:<14} {} layers, hidden {}",
                    v["model_type"].as_str().unwrap_or("?"),
                    v["num_hidden_layers"],
                    v["hidden_size"]
                );
            }
        }
        ModelsCommand::Synth {
            preset: name,
            layers,
            seed,
            out,
        } => {
            let cfg = preset(&name, layers)?;
            eprintln!(
                "kiln: writing {name} ({} layers, seed {seed}) to {}",
                cfg["num_hidden_layers"],
                out.display()
            );
            let n = kiln_candle::synth::write_checkpoint(&cfg, seed, &out)?;
            println!("wrote {n} tensors and config.json to {}", out.display());
        }
        ModelsCommand::CheckMoe {
            preset: name,
            layer,
            tokens,
            seed,
            cpu,
            json,
        } => return check_moe(&name, layer, tokens, seed, cpu, json.as_deref()),
        ModelsCommand::CheckKernels { presets, json } => {
            return check_kernels(&presets, json.as_deref())
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln models check-kernels`
#[cfg(feature = "models")]
fn check_kernels(names: &[String], json: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    use kiln_candle::models::config::{preset, PRESETS};
    let names: Vec<String> = if names.is_empty() {
        PRESETS.iter().map(|(n, _)| n.to_string()).collect()
    } else {
        names.to_vec()
    };
    let presets = names
        .iter()
        .map(|n| preset(n, Some(1)))
        .collect::<Result<Vec<_>, _>>()?;
    let gpu = kiln_candle::candle_core::Device::new_cuda(0).context(
        "check-kernels compares GPU kernels with their CPU paths: it needs an NVIDIA GPU",
    )?;
    let report = kiln_candle::check_kernels::check_kernels(&gpu, &presets)?;
    print!("{}", report.table());
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `kiln validate`
#[cfg(feature = "models")]
pub fn validate(a: &ValidateArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    use kiln_candle::validate::{run, Options, Weights};

    let weights = match (&a.model, &a.synthetic) {
        (Some(dir), None) => Weights::Checkpoint(dir.clone()),
        (None, Some(p)) => Weights::Synthetic {
            config: kiln_candle::models::config::preset(p, a.layers)?,
            seed: a.seed,
        },
        _ => anyhow::bail!(
            "give a checkpoint directory or --synthetic PRESET (see `kiln models list`)"
        ),
    };
    let dev = if a.cpu {
        candle_core_device_cpu()
    } else {
        kiln_candle::candle_core::Device::new_cuda(0).context(
            "no CUDA device for candle (use --cpu for a tiny model, or run on an NVIDIA GPU)",
        )?
    };
    // The catalog configurations run the discovered set too: say which kernels it holds.
    let discovered = kiln_candle::ops::pack::discovered();
    if !discovered.kernels.is_empty() {
        let targets: Vec<&str> = discovered
            .kernels
            .iter()
            .map(|k| k.target.as_str())
            .collect();
        eprintln!(
            "kiln: the default kernels include the discovered set: {} (KILN_NO_DISCOVERED=1 for the catalog alone)",
            targets.join(", ")
        );
    }
    let vocab = match &weights {
        Weights::Synthetic { config, .. } => config["vocab_size"].as_u64(),
        Weights::Checkpoint(dir) => std::fs::read_to_string(dir.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["vocab_size"].as_u64()),
    }
    .unwrap_or(1000) as u32;
    // A checkpoint's own tokenizer: the prompt may be text, and every
    // configuration's tokens are shown as text.
    let tokenizer = match (&a.model, &a.prompt_text) {
        (Some(dir), Some(_)) => Some(kiln_candle::text::Tokenizer::from_checkpoint(dir)?),
        (None, Some(_)) => anyhow::bail!(
            "--prompt-text needs a checkpoint with a tokenizer.json; synthetic weights have no text (use --prompt or --prompt-len)"
        ),
        (Some(dir), None) if dir.join(kiln_candle::text::Tokenizer::FILE).is_file() => {
            Some(kiln_candle::text::Tokenizer::from_checkpoint(dir)?)
        }
        _ => None,
    };
    let prompt = match (&a.prompt_text, &tokenizer) {
        (Some(text), Some(t)) => t.encode(text)?,
        _ if a.prompt.is_empty() => seeded_prompt(a.prompt_len, vocab, a.seed),
        _ => a.prompt.clone(),
    };
    let opts = Options {
        weights,
        max_tokens: a.max_tokens,
        prompt,
        runs: a.runs,
        no_patch: a.no_patch,
        pack: a.pack.clone(),
        keep_logits: a.dump_logits,
        noise_floor: !a.no_noise_floor,
        eager: a.eager || a.cpu,
        no_baseline: a.no_baseline,
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let report = run(&opts, &dev, &mut |msg: &str| {
        bar.set_message(msg.to_string())
    })?;
    bar.finish_and_clear();
    let mut report = report;
    if let Some(t) = &tokenizer {
        report.decode_texts(t)?;
    }
    println!("{}", report.table());
    write_results(&a.out, &report)?;
    let failed = report.failures();
    if !failed.is_empty() {
        for c in failed {
            eprintln!("kiln: FAIL {}: {}", c.name, c.verdict_reason);
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln models check-moe`
#[cfg(feature = "models")]
fn check_moe(
    name: &str,
    layer: Option<usize>,
    tokens: usize,
    seed: u64,
    cpu: bool,
    json: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    use kiln_candle::check::{check_moe, MoeCheckOptions};
    let config = kiln_candle::models::config::preset(name, None)?;
    let gpu = if cpu {
        None
    } else {
        Some(
            kiln_candle::candle_core::Device::new_cuda(0)
                .context("no CUDA device for candle (use --cpu to compare the CPU paths only)")?,
        )
    };
    let opts = MoeCheckOptions {
        config,
        seed,
        tokens,
        layer,
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let report = check_moe(&opts, gpu.as_ref(), &mut |msg: &str| {
        bar.set_message(msg.to_string())
    })?;
    bar.finish_and_clear();
    print!("{}", report.table());
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(feature = "models")]
fn candle_core_device_cpu() -> kiln_candle::candle_core::Device {
    kiln_candle::candle_core::Device::Cpu
}

/// Prompt ids from a seed (uniform over the vocabulary; random weights have no text).
#[cfg(feature = "models")]
fn seeded_prompt(n: usize, vocab: u32, seed: u64) -> Vec<u32> {
    let mut z = seed ^ 0x6b69_6c6e;
    (0..n)
        .map(|_| {
            z = z
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((z >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// Writes `benchmark_results.json` (one row per model, replacing an earlier
/// row of the same model), the detailed report, and the logits if kept.
#[cfg(feature = "models")]
fn write_results(
    out: &std::path::Path,
    report: &kiln_candle::validate::Report,
) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let bench = out.join("benchmark_results.json");
    let mut rows: Vec<serde_json::Value> = std::fs::read_to_string(&bench)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let row = serde_json::to_value(report.benchmark_row())?;
    rows.retain(|r| r["model"] != row["model"]);
    rows.push(row);
    std::fs::write(&bench, serde_json::to_string_pretty(&rows)?)
        .with_context(|| format!("writing {}", bench.display()))?;
    let slug: String = report
        .model
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let detail = out.join(format!("validate_{slug}.json"));
    std::fs::write(&detail, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", detail.display()))?;
    if !report.logits.is_empty() {
        let path = out.join(format!("logits_{slug}.safetensors"));
        kiln_candle::validate::save_logits(report, &path)?;
        eprintln!("kiln: logits in {}", path.display());
    }
    eprintln!(
        "kiln: results in {} and {}",
        bench.display(),
        detail.display()
    );
    Ok(())
}
