//! The `triad` command line: parses arguments and calls the library. Nothing else lives here.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use triad::experiment::{StageSpec, stage_order};
use triad::plugins::{Limits, Plugin, PluginSpec, Sandbox, build, load, records};
use triad::stages::pipeline::{self, StageStatus};
use triad::stages::winrate::read_labels;
use triad::stages::{RunOptions, load_experiment, run_experiment};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "triad", version, about = "Declared, reproducible LLM training pipelines with sandboxed WASM plugins")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an experiment: every stage in order, skipping those already done, resuming one that
    /// was interrupted.
    Run {
        /// The experiment file (RON).
        experiment: PathBuf,
        /// Where run folders go.
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// Train this stage again even if its output exists (repeatable); stages that read it
        /// train again too.
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
        /// Print the plan (every run's stages in order, and which are cached) and stop.
        #[arg(long)]
        dry_run: bool,
        /// Print every final metric of every stage (each stage's `stage.json` holds them).
        #[arg(long)]
        all_metrics: bool,
        /// Show the detailed log on the terminal too (it always goes to
        /// `runs/<experiment>/triad.log`; `TRIAD_LOG` sets the level: `debug`, `warn`, ...).
        #[arg(long, short)]
        verbose: bool,
    },
    /// Evaluate one model without writing an experiment file: the perplexity of a text file,
    /// and/or answers to the prompts of a JSONL file scored by metric plugins. It trains
    /// nothing and writes no checkpoint; the run lands in `runs/eval/` with its experiment.
    Eval(EvalArgs),
    /// Check an experiment file without running it: its settings, and every plugin it names
    /// (built, loaded in the sandbox and configured with its config block).
    Validate { experiment: PathBuf },
    /// Win-rate from human labels: the blinded `human-labels.jsonl` an Eval stage wrote, once a
    /// person has set "preferred" (1, 2 or "tie") on its lines.
    Labels {
        /// The Eval stage's folder (holding human-labels.jsonl and human-key.json).
        dir: PathBuf,
    },
    /// Build, inspect and run plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Compare runs: a table of final metrics per sweep point (mean ± std over seeds) or per
    /// run, a metric per step, and training-curve plots.
    Compare {
        /// Run folders, folders of runs (runs/<experiment>, runs/<experiment>/history for the runs
        /// a changed experiment replaced), or experiment .ron files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Where experiments' runs live, for .ron paths.
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// Final metrics to show, as <stage>/<metric>, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        metrics: Option<Vec<String>>,
        /// Sort rows by this metric's mean (ascending unless --desc).
        #[arg(long)]
        sort: Option<String>,
        /// Sort descending.
        #[arg(long)]
        desc: bool,
        /// A row per run instead of per sweep point.
        #[arg(long)]
        by_run: bool,
        /// Also write the table to FILE.csv, FILE.parquet or FILE.md.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Show this metric per step (<stage>/<metric>, e.g. pretrain/train/loss).
        #[arg(long)]
        step_metric: Option<String>,
        /// Plot the step metric to FILE.png or FILE.svg: a line per sweep point, the mean over its
        /// seeds in a band over them (default metric: the loss, else the reward, of the first
        /// stage the sweep changes).
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Plot each seed's curve as the mean of its last N recorded steps (a trailing moving
        /// average; 1 plots the values as recorded).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..), requires = "plot")]
        smooth: u32,
    },
    /// Benchmarks that print ratios against a reference measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(clap::Args)]
struct EvalArgs {
    /// A pretrained model's name (smollm2-135m-instruct), a Hugging Face model folder (also
    /// a stage's `model` folder) or a `.gguf` file.
    #[arg(long)]
    model: String,
    /// A UTF-8 text file whose perplexity to measure.
    #[arg(long, required_unless_present = "prompts")]
    text: Option<PathBuf>,
    /// How the text file becomes passages, each measured on its own: whole, lines or
    /// paragraphs.
    #[arg(long, default_value = "whole", value_parser = parse_split)]
    split: triad::data::source::TextSplit,
    /// Tokens per window (default: the model's context).
    #[arg(long)]
    window: Option<usize>,
    /// What goes in front of each passage: model (what its tokenizer does), always, never.
    #[arg(long, default_value = "model", value_parser = parse_bos)]
    bos: triad::stages::perplexity::Bos,
    /// Measure at most this many tokens.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// A JSONL file of prompts with reference answers.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// The prompt's and the reference's keys in the JSONL file.
    #[arg(long, num_args = 2, value_names = ["PROMPT", "REFERENCE"], default_values = ["prompt", "reference"])]
    fields: Vec<String>,
    /// A metric plugin folder that scores the answers (repeatable).
    #[arg(long, requires = "prompts")]
    metric: Vec<PathBuf>,
    /// Lay the prompts out in the model's chat template (else as plain text).
    #[arg(long, requires = "prompts")]
    chat: bool,
    /// Prompts answered at most.
    #[arg(long, default_value_t = 200)]
    max_prompts: usize,
    /// Tokens per answer at most (greedy decoding).
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Where run folders go.
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Training tokens/s and MFU on the reference workload, against PyTorch (bench/train_reference.py).
    Train {
        /// Python with torch installed (default: the venv bench/setup.sh makes in the cache).
        #[arg(long)]
        python: Option<PathBuf>,
        /// Timed steps on each side (after 3 warm-up steps).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// The machine's peak f32 GFLOP/s, for MFU (default: measured with an FMA loop on the
        /// benchmark's threads before the run).
        #[arg(long)]
        peak_gflops: Option<f64>,
        /// Threads on each side (PyTorch's intra-op threads, candle's pool).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Instead of the comparison, print where triad's step spends its time (forward,
        /// backward, optimizer, and the forward's parts); TRIAD_KERNELS=plain for the unfused ops.
        #[arg(long)]
        profile: bool,
        /// Train this pretrained model (`smollm2-135m-instruct`: 4 rows of 128 tokens) instead of
        /// the reference workload, PyTorch running the same weights on the same batches
        /// (bench/train_pretrained_reference.py).
        #[arg(long, conflicts_with = "profile")]
        pretrained: Option<String>,
        /// `t5`: train a T5 v1.1 (width 256, 4 + 4 blocks, source and target of 128 tokens, batch
        /// 8) against transformers' T5ForConditionalGeneration on the same weights and batches
        /// (bench/train_t5_reference.py).
        #[arg(long, conflicts_with_all = ["profile", "pretrained"], value_parser = ["t5"])]
        model: Option<String>,
    },
    /// Generation tokens/s (batched, greedy, KV cache) on the reference model, against PyTorch
    /// (bench/generate_reference.py).
    Generate {
        /// Python with torch installed (default: the venv bench/setup.sh makes in the cache).
        #[arg(long)]
        python: Option<PathBuf>,
        /// Timed generate calls on each side (after one warm-up call).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Threads on each side (PyTorch's intra-op threads, candle's pool).
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Records/s of the same lexicon reward written natively, as a Rust, a Python and a
    /// JavaScript plugin (bench/plugins/lexicon-*), on the review snippets, with load times.
    Plugins {
        /// Timed passes over the snippets for each implementation (after one untimed pass).
        #[arg(long, default_value_t = 5)]
        passes: usize,
    },
    /// GRPO steps/s and generated tokens/s of SmolLM2-135M-Instruct on arithmetic problems,
    /// against TRL's GRPOTrainer on the same weights, prompts and reward (bench/grpo_reference.py).
    Grpo {
        /// Python with torch and trl installed (default: the venv bench/setup.sh makes in the cache).
        #[arg(long)]
        python: Option<PathBuf>,
        /// Timed steps on each side (after one warm-up step).
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Threads on each side (PyTorch's intra-op threads, candle's pool).
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Write a new plugin that builds anywhere on the machine: a Rust crate (the SDK comes from
    /// triad's cache; crates outside this repository share one build folder there), or a folder
    /// with plugin.py or plugin.js.
    New {
        /// reward, filter, metric or loss.
        #[arg(value_parser = parse_kind)]
        kind: triad::plugins::PluginKind,
        /// The new plugin's folder; its name is the plugin's name.
        dir: PathBuf,
        /// The plugin's language: rust, python or js.
        #[arg(long, default_value = "rust")]
        lang: String,
    },
    /// Build plugins (Rust crates, Python and JavaScript folders) and print where each .wasm is.
    Build {
        /// Plugin folders.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// List plugins: kind, version, sha256. Default: the bundled plugins (this
    /// workspace's plugins/ folder, else the one triad was built from).
    List {
        /// A folder of plugins (one per subfolder).
        dir: Option<PathBuf>,
    },
    /// Load a plugin (crate, module or component) in the sandbox and report what it is.
    Check {
        path: PathBuf,
        /// The plugin's config as JSON.
        #[arg(long, default_value = "{}")]
        config: String,
    },
    /// Run a plugin on JSON Lines records and print its outputs: the plugin author's inner loop.
    ///
    /// Filters read {"text": ...}; rewards {"prompt", "response", "reference"?}; metrics
    /// {"prediction", "references": [...]}; losses {"sequence_offsets", "features": {...}}.
    Run {
        /// Plugin folder (Rust crate, Python or JavaScript), .wasm module or component.
        plugin: PathBuf,
        /// JSON Lines input ("-" for standard input).
        #[arg(long)]
        input: PathBuf,
        /// The plugin's config as JSON.
        #[arg(long, default_value = "{}")]
        config: String,
        /// Per-call deadline in milliseconds.
        #[arg(long)]
        deadline_ms: Option<u64>,
        /// Memory cap per instance in MiB.
        #[arg(long)]
        memory_mib: Option<usize>,
    },
}

/// mimalloc's `mi_option_purge_delay` (mimalloc.h, v2): milliseconds before freed memory goes
/// back to the OS, -1 for never.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {}", said_once(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: most errors already include their cause's text,
/// and a cause whose text is already there is left out.
fn said_once(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str("\n  caused by: ");
            text.push_str(&cause);
        }
    }
    text
}

fn run() -> Result<()> {
    // candle frees and reallocates the same large tensors every step; by default mimalloc hands
    // freed memory back to the OS after 10 ms, and the next step faults it in again (the kernel
    // zeroing pages was 19% of a training step's profile). Keeping it measured 1.3-1.8x training
    // throughput on `bench train`, with no higher peak.
    // SAFETY: sets an option before any other thread exists; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Bench(
            BenchCommand::Generate { threads, .. }
            | BenchCommand::Train { threads, .. }
            | BenchCommand::Grpo { threads, .. },
        ) => Some(*threads),
        _ => None,
    };
    fix_thread_count(threads);
    // `triad run` keeps the terminal to progress bars, warnings and its tables; its detailed log
    // goes to a file in the runs folder (`--verbose` shows it too). Other commands log at info.
    let quiet = matches!(cli.command, Command::Run { verbose: false, .. } | Command::Eval(_));
    init_logging(quiet);
    match cli.command {
        Command::Run { experiment, runs, force, dry_run, all_metrics, verbose: _ } => {
            run_command(&experiment, &RunOptions { runs_root: runs, force }, dry_run, all_metrics)
        }
        Command::Eval(args) => {
            let runs = args.runs.clone();
            eval_command(&args.question(), runs)
        }
        Command::Validate { experiment } => {
            let loaded = load_experiment(&experiment)?;
            pipeline::preflight(&loaded, &experiment)?;
            println!("{}: valid\n{}", experiment.display(), pipeline::describe(&loaded));
            Ok(())
        }
        Command::Labels { dir } => {
            // One file per comparison: `human-labels.jsonl`, or `human-labels-<a>-vs-<b>.jsonl`.
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .flatten()
                .map(|entry| entry.path())
                .filter(|p| {
                    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    name.starts_with("human-labels") && name.ends_with(".jsonl")
                })
                .collect();
            files.sort();
            if files.is_empty() {
                bail!("{}: no human-labels*.jsonl here: name an evaluation stage's folder", dir.display());
            }
            for labels in files {
                let name = labels.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let key = dir.join(name.replacen("human-labels", "human-key", 1).replace(".jsonl", ".json"));
                let (key, rate) = read_labels(&labels, &key)?;
                if rate.total() == 0 {
                    bail!("{}: no line is labelled yet: set \"preferred\" to 1, 2 or \"tie\"", labels.display());
                }
                println!("human win-rate of `{}` over `{}`: {}", key.model_a, key.model_b, rate.describe());
            }
            Ok(())
        }
        Command::Plugin(command) => plugin_command(command),
        Command::Compare { paths, runs, metrics, sort, desc, by_run, out, step_metric, plot, smooth } => {
            let options = triad::runs::compare::CompareOptions {
                paths: run_folders(paths, runs)?,
                metrics,
                sort,
                descending: desc,
                by_run,
                out,
                step_metric,
                plot,
                smooth: smooth as usize,
            };
            let output = triad::runs::compare::compare(&options)?;
            print!("{}", output.markdown);
            if let Some(note) = &output.note {
                eprintln!("{note}");
            }
            for path in &output.written {
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Train { python, steps, threads, model: Some(_), .. }) => {
            bench_train_t5(python, steps, threads)
        }
        Command::Bench(BenchCommand::Train {
            python,
            steps,
            peak_gflops,
            threads,
            profile: _,
            pretrained: Some(name),
            model: None,
        }) => bench_train_pretrained(python, &name, steps, peak_gflops, threads),
        Command::Bench(BenchCommand::Train {
            python,
            steps,
            peak_gflops,
            threads,
            profile,
            pretrained: None,
            model: None,
        }) => bench_train(python, steps, peak_gflops, threads, profile),
        Command::Bench(BenchCommand::Generate { python, repeats, threads }) => bench_generate(python, repeats, threads),
        Command::Bench(BenchCommand::Grpo { python, steps, threads }) => bench_grpo(python, steps, threads),
        Command::Bench(BenchCommand::Plugins { passes }) => bench_plugins(passes),
    }
}

/// The Python that runs a PyTorch reference (default: the venv bench/setup.sh makes in the cache)
/// and the path of reference script `name` in bench/.
fn reference_script(python: Option<PathBuf>, name: &str) -> Result<(PathBuf, PathBuf)> {
    let python = python.unwrap_or_else(|| triad::util::packages::cache_dir().join("torch-venv/bin/python"));
    Ok((python, find_workspace()?.join("bench").join(name)))
}

/// What to say when the PyTorch side fails.
fn reference_help(python: &Path) -> String {
    format!("the PyTorch side (run bench/setup.sh to create {})", python.display())
}

fn bench_generate(python: Option<PathBuf>, repeats: usize, threads: usize) -> Result<()> {
    use triad::bench::{GenerateBenchConfig, bench_generate_pytorch, bench_generate_triad};
    let config = GenerateBenchConfig { repeats, threads, ..GenerateBenchConfig::default() };
    let (python, script) = reference_script(python, "generate_reference.py")?;
    println!(
        "workload: GPT vocab {} context {} layers {} heads {} width {}, random init; batch {}, prompt {}, {} new \
         tokens, greedy, KV cache; {threads} threads; median of {repeats} calls",
        config.vocab,
        config.context,
        config.layers,
        config.heads,
        config.width,
        config.batch,
        config.prompt,
        config.new_tokens
    );
    // PyTorch first: its process then starts from a small parent, not from ours at its peak.
    let reference = bench_generate_pytorch(&config, &python, &script).with_context(|| reference_help(&python))?;
    let ours = bench_generate_triad(&config, &candle_core::Device::Cpu)?;
    println!("| implementation | new tokens/s | peak RSS MiB |\n|---|---|---|");
    for r in [&ours, &reference] {
        println!("| {} | {:.0} | {:.0} |", r.implementation, r.tokens_per_s, r.peak_rss_mib);
    }
    println!("\ntriad / PyTorch = {:.2}x tokens/s", ours.tokens_per_s / reference.tokens_per_s);
    Ok(())
}

fn bench_plugins(passes: usize) -> Result<()> {
    use triad::bench::plugins::bench_plugins;
    let path = triad::util::packages::MOVIE_REVIEW_SNIPPETS.fetch()?;
    let text = String::from_utf8_lossy(&std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)
        .into_owned();
    let episodes: Vec<triad::plugins::Episode> = text
        .lines()
        .filter_map(|line| line.splitn(3, '\t').nth(2))
        .map(|snippet| triad::plugins::Episode {
            prompt: String::new(),
            response: snippet.trim().into(),
            reference: None,
        })
        .collect();
    println!(
        "workload: the lexicon reward (bench/plugins/lexicon-*) on {} movie-review snippets, one batch per pass as a \
         stage sends it (one instance per core, {} cores); median of {passes} passes after one",
        episodes.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let results = bench_plugins(&find_workspace()?, &episodes, passes)?;
    let native = results[0].records_per_s;
    println!(
        "| implementation | records/s | native / this | first load s | cached load s | wasm MB | scores differing |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &results {
        println!(
            "| {} | {:.0} | {:.1}x | {:.2} | {:.3} | {:.1} | {} |",
            r.implementation,
            r.records_per_s,
            native / r.records_per_s,
            r.first_load_s,
            r.cached_load_s,
            r.wasm_bytes as f64 / 1e6,
            r.mismatches
        );
    }
    Ok(())
}

fn bench_grpo(python: Option<PathBuf>, steps: usize, threads: usize) -> Result<()> {
    use triad::bench::grpo::{self, GrpoBenchConfig};
    let config = GrpoBenchConfig::smollm2(steps, threads);
    println!(
        "workload: GRPO of smollm2-135m-instruct on arithmetic problems in its chat template, {} prompts x {} \
         responses of at most {} tokens a step (temperature {}), math-answer reward, KL {} (k3), one AdamW step a \
         batch; mean of {steps} steps after {} warm-up; {threads} threads",
        config.prompts, config.group, config.max_new_tokens, config.temperature, config.kl_coef, config.warmup
    );
    let (python, script) = reference_script(python, "grpo_reference.py")?;
    let (ours, reference) =
        grpo::bench_grpo(&config, &python, &script, &find_workspace()?).with_context(|| reference_help(&python))?;
    println!(
        "| implementation | s/step | generated tokens/s | mean response tokens | reward share | peak RSS MiB |\n\
         |---|---|---|---|---|---|"
    );
    for r in [&ours, &reference] {
        println!(
            "| {} | {:.2} | {:.1} | {:.1} | {:.3}% | {:.0} |",
            r.implementation,
            r.seconds_per_step,
            r.tokens_per_s,
            r.response_length,
            100.0 * r.reward_share,
            r.peak_rss_mib
        );
    }
    println!(
        "\ntriad / TRL = {:.2}x steps/s, {:.2}x generated tokens/s",
        reference.seconds_per_step / ours.seconds_per_step,
        ours.tokens_per_s / reference.tokens_per_s
    );
    Ok(())
}

/// One pool of worker threads: rayon's.
///
/// candle 0.11 asks for its thread count on every CPU matmul, and on Linux that reads
/// /proc/cpuinfo each time unless `RAYON_NUM_THREADS` is set: about 5% of decoding time in a
/// profile. Pin it once: to `threads` if given, else to the count candle would pick.
///
/// candle 0.11 also runs element-wise ops of 64K elements or more on a second pool of its own
/// (`CANDLE_NUM_THREADS`, spinning workers behind a lock). Beside rayon's workers (the fused
/// kernels, gemm, the trainer's data-parallel parts) the two pools take turns spinning on the
/// same cores: a training step of the reference workload at 2 threads took 810-1,029 ms with
/// it and 642-665 ms without it (`bench train --profile`). So candle's pool is turned off
/// unless the user sets `CANDLE_NUM_THREADS`.
fn fix_thread_count(threads: Option<usize>) {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: main calls this before anything has started a thread.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    let threads = match threads {
        Some(n) => n.max(1),
        None if std::env::var_os("RAYON_NUM_THREADS").is_some() => return,
        None => candle_core::utils::get_num_threads(),
    };
    // SAFETY: main calls this before anything has started a thread.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
}

fn bench_train_pretrained(
    python: Option<PathBuf>,
    name: &str,
    steps: usize,
    peak_gflops: Option<f64>,
    threads: usize,
) -> Result<()> {
    use triad::bench::{PretrainedBenchConfig, bench_pretrained};
    let peak_gflops = machine_peak(peak_gflops, threads);
    let config =
        PretrainedBenchConfig { name: name.to_string(), ..PretrainedBenchConfig::smollm2(steps, peak_gflops, threads) };
    println!(
        "workload: {name} training, batch {} x {} tokens, f32, AdamW; median of {steps} steps; {threads} threads",
        config.batch, config.context
    );
    let (python, script) = reference_script(python, "train_pretrained_reference.py")?;
    let (ours, reference) = bench_pretrained(&config, &python, &script, &candle_core::Device::Cpu)
        .with_context(|| reference_help(&python))?;
    print_train_results(&ours, &reference);
    if let (Some(a), Some(b)) = (ours.first_loss, reference.first_loss) {
        println!("first-step loss on the same batch: triad {a:.5}, PyTorch {b:.5} (difference {:.1e})", (a - b).abs());
    }
    Ok(())
}

/// The peak MFU is read against: the one given, else measured here.
fn machine_peak(given: Option<f64>, threads: usize) -> f64 {
    if let Some(peak) = given {
        return peak;
    }
    let (peak, isa) = triad::bench::peak::measure_peak_gflops(threads);
    let plural = if threads == 1 { "" } else { "s" };
    println!("peak: {peak:.0} GFLOP/s f32, measured (an {isa} loop on {threads} thread{plural})");
    peak
}

fn bench_train_t5(python: Option<PathBuf>, steps: usize, threads: usize) -> Result<()> {
    use triad::bench::t5::{T5BenchConfig, bench_t5};
    let config = T5BenchConfig::reference(steps, threads);
    let m = &config.model;
    println!(
        "workload: T5 v1.1 (gated GELU, untied head) vocab {} width {} heads {} x {} ff {} blocks {} + {}, source {} and \
         target {} tokens, batch {}, AdamW, clipping 1.0, same weights and batches on both sides; median of {steps} \
         steps after {}; {threads} threads",
        m.vocab_size,
        m.d_model,
        m.num_heads,
        m.d_kv,
        m.d_ff,
        m.num_layers,
        m.num_decoder_layers,
        config.source,
        config.target,
        config.batch,
        config.warmup
    );
    let (python, script) = reference_script(python, "train_t5_reference.py")?;
    let (ours, reference) =
        bench_t5(&config, &python, &script, &candle_core::Device::Cpu).with_context(|| reference_help(&python))?;
    println!("| implementation | tokens/s | first-step loss | peak RSS MiB |\n|---|---|---|---|");
    for r in [&ours, &reference] {
        println!(
            "| {} | {:.0} | {:.6} | {:.0} |",
            r.implementation,
            r.tokens_per_s,
            r.first_loss.unwrap_or(f64::NAN),
            r.peak_rss_mib
        );
    }
    println!("\ntriad / PyTorch = {:.2}x tokens/s", ours.tokens_per_s / reference.tokens_per_s);
    Ok(())
}

fn print_train_results(ours: &triad::bench::BenchResult, reference: &triad::bench::BenchResult) {
    println!("| implementation | tokens/s | MFU | peak RSS MiB |\n|---|---|---|---|");
    for r in [ours, reference] {
        println!("| {} | {:.0} | {:.1}% | {:.0} |", r.implementation, r.tokens_per_s, 100.0 * r.mfu, r.peak_rss_mib);
    }
    println!("\ntriad / PyTorch = {:.2}x tokens/s", ours.tokens_per_s / reference.tokens_per_s);
}

fn bench_train(
    python: Option<PathBuf>,
    steps: usize,
    peak_gflops: Option<f64>,
    threads: usize,
    profile: bool,
) -> Result<()> {
    use triad::bench::{BenchConfig, bench_pytorch, bench_triad};
    let peak_gflops = if profile { 0.0 } else { machine_peak(peak_gflops, threads) };
    let config = BenchConfig { steps, peak_gflops, threads, ..BenchConfig::default() };
    println!(
        "workload: GPT vocab {} context {} layers {} heads {} width {} batch {}, f32, AdamW; median of {steps} steps; {threads} threads",
        config.vocab, config.context, config.layers, config.heads, config.width, config.batch
    );
    if profile {
        println!("{}", triad::bench::profile::profile_train(&config, &candle_core::Device::Cpu)?);
        return Ok(());
    }
    let (python, script) = reference_script(python, "train_reference.py")?;
    // PyTorch first: its process then starts from a small parent, not from ours at its peak.
    let reference = bench_pytorch(&config, &python, &script).with_context(|| reference_help(&python))?;
    let ours = bench_triad(&config, &candle_core::Device::Cpu)?;
    print_train_results(&ours, &reference);
    Ok(())
}

/// The detailed log's file, once `triad run` knows its runs folder.
static LOG_FILE: std::sync::Mutex<Option<std::fs::File>> = std::sync::Mutex::new(None);

/// Writes log lines to [`LOG_FILE`] when one is open, else nowhere.
struct LogFile;

impl std::io::Write for LogFile {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match LOG_FILE.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_mut() {
            Some(file) => file.write(bytes),
            None => Ok(bytes.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The terminal gets `TRIAD_LOG`'s level, else warnings only when `quiet`, else info; the log
/// file (opened later by `triad run`) gets `TRIAD_LOG`'s level, else info.
fn init_logging(quiet: bool) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level = |default: &str| {
        tracing_subscriber::EnvFilter::try_from_env("TRIAD_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
    };
    let terminal = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(level(if quiet { "warn" } else { "info" }));
    let file = tracing_subscriber::fmt::layer().with_writer(|| LogFile).with_ansi(false).with_filter(level("info"));
    tracing_subscriber::registry().with(terminal).with(file).init();
}

/// Send the detailed log to `path` (appended), from now on.
fn open_log_file(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    *LOG_FILE.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(file);
    Ok(())
}

fn run_command(path: &Path, options: &RunOptions, dry_run: bool, all_metrics: bool) -> Result<()> {
    let experiment = load_experiment(path)?;
    for stage in &options.force {
        if !experiment.stages.iter().any(|s| s.name() == stage) {
            let names: Vec<&str> = experiment.stages.iter().map(|s| s.name()).collect();
            bail!("--force {stage}: the experiment has no such stage (stages: {})", names.join(", "));
        }
    }
    if dry_run {
        for (run, stages) in pipeline::plan(&experiment, path, options)? {
            println!("run {run}");
            for (i, (stage, status)) in stages.iter().enumerate() {
                let status = match status {
                    StageStatus::Cached => "cached",
                    StageStatus::Resume => "resume from its last checkpoint",
                    StageStatus::Train => "train",
                    StageStatus::Shared => "computed once by an earlier run above, then shared",
                };
                println!("  {}. {stage}: {status}", i + 1);
            }
        }
        return Ok(());
    }
    let experiment_runs = options.runs_root.join(&experiment.name);
    let log = experiment_runs.join("triad.log");
    open_log_file(&log)?;
    tracing::info!(experiment = %path.display(), "triad run");
    let runs = run_experiment(&experiment, path, options)?;
    let status = |outcome: &pipeline::StageOutcome| {
        if outcome.cached {
            "cached".to_string()
        } else if outcome.resumed_from > 0 {
            format!("resumed at step {}", outcome.resumed_from)
        } else {
            "trained".to_string()
        }
    };
    if all_metrics {
        println!("\n| run | stage | status | metric | value |\n|---|---|---|---|---|");
        for run in &runs {
            for outcome in &run.stages {
                for (metric, value) in &outcome.metrics {
                    println!("| {} | {} | {} | {metric} | {value:.4} |", run.run, outcome.stage, status(outcome));
                }
            }
        }
    } else {
        println!("\n| run | stage | status | seconds |\n|---|---|---|---|");
        for run in &runs {
            for outcome in &run.stages {
                // A cached stage's time is the one it took when it ran.
                let seconds = outcome.metrics.get("time/seconds").map_or("".to_string(), |s| format!("{s:.1}"));
                println!("| {} | {} | {} | {seconds} |", run.run, outcome.stage, status(outcome));
            }
        }
    }
    let last_stage = stage_order(&experiment.stages).ok().and_then(|order| order.last().map(|s| s.name().to_string()));
    // This invocation's runs only: a folder left by an earlier sweep is not part of this table.
    let run_dirs: Vec<PathBuf> = runs.iter().map(|run| run.dir.clone()).collect();
    match triad::runs::compare::run_summary(&run_dirs, &experiment.summary, last_stage.as_deref().unwrap_or_default()) {
        Ok(table) => println!("\n{table}"),
        // The runs are done and saved: a summary that cannot be made is a warning, not a failure.
        Err(e) => eprintln!("warning: no summary table: {e}"),
    }
    println!(
        "\noutputs: {} (compare them with `triad compare {}`; every metric: --all-metrics; the log: {})",
        experiment_runs.display(),
        experiment_runs.display(),
        log.display()
    );
    Ok(())
}

impl EvalArgs {
    /// The library's form of the question.
    fn question(self) -> triad::stages::eval::Question {
        let [prompt_field, reference_field]: [String; 2] =
            self.fields.try_into().unwrap_or_else(|_| ["prompt".into(), "reference".into()]);
        triad::stages::eval::Question {
            model: self.model,
            text: self.text,
            split: self.split,
            window: self.window,
            bos: self.bos,
            max_tokens: self.max_tokens,
            prompts: self.prompts.map(|p| (p, prompt_field, reference_field)),
            metrics: self.metric,
            chat: self.chat,
            max_prompts: self.max_prompts,
            max_new_tokens: self.max_new_tokens,
        }
    }
}

/// `text` as one of `choices`, by name; else an error listing the names.
fn one_of<T: Clone>(text: &str, choices: &[(&str, T)]) -> Result<T, String> {
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    let found = choices.iter().find(|(name, _)| *name == text).map(|(_, value)| value.clone());
    found.ok_or_else(|| format!("`{text}`: expected {}", names.join(", ")))
}

fn parse_kind(text: &str) -> Result<triad::plugins::PluginKind, String> {
    use triad::plugins::PluginKind;
    one_of(
        text,
        &[
            ("reward", PluginKind::Reward),
            ("filter", PluginKind::DataFilter),
            ("metric", PluginKind::Metric),
            ("loss", PluginKind::Loss),
        ],
    )
}

fn parse_split(text: &str) -> Result<triad::data::source::TextSplit, String> {
    use triad::data::source::TextSplit;
    one_of(text, &[("whole", TextSplit::Whole), ("lines", TextSplit::Lines), ("paragraphs", TextSplit::Paragraphs)])
}

fn parse_bos(text: &str) -> Result<triad::stages::perplexity::Bos, String> {
    use triad::stages::perplexity::Bos;
    one_of(text, &[("model", Bos::Model), ("always", Bos::Always), ("never", Bos::Never)])
}

/// `triad eval`: the question as an experiment with one Eval stage, run like any other, then
/// its report.
fn eval_command(question: &triad::stages::eval::Question, runs_root: PathBuf) -> Result<()> {
    let text = question.experiment_text();
    // Paths in the text are absolute; the name only appears in messages.
    let path = Path::new("triad-eval.ron");
    let experiment: triad::stages::Experiment = triad::experiment::parse_experiment(path, &text)?;
    let options = RunOptions { runs_root, force: Vec::new() };
    open_log_file(&options.runs_root.join(&experiment.name).join("triad.log"))?;
    let runs = run_experiment(&experiment, path, &options)?;
    for run in &runs {
        for outcome in &run.stages {
            let report = outcome.dir.join("report.md");
            let text = std::fs::read_to_string(&report).with_context(|| format!("reading {}", report.display()))?;
            println!(
                "{}\n(report: {}; the experiment: {})",
                text.trim_end(),
                report.display(),
                run.dir.join("experiment.ron").display()
            );
        }
    }
    Ok(())
}

fn plugin_command(command: PluginCommand) -> Result<()> {
    match command {
        PluginCommand::New { kind, dir, lang } => {
            let file = triad::plugins::scaffold::new_plugin(kind, &lang, &dir)?;
            let test = if lang == "rust" { " (and `cargo test` in it)" } else { "" };
            println!(
                "{kind} plugin written to {d}: edit {f}, then `triad plugin check {d}`{test}",
                d = dir.display(),
                f = file.display()
            );
            Ok(())
        }
        PluginCommand::Build { dirs } => {
            let outputs = build::build_plugins(&dirs).map_err(|p| anyhow::anyhow!("{p}"))?;
            for (dir, wasm) in dirs.iter().zip(outputs) {
                let size = std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0);
                println!("{}\t{}\t{} KB", dir.display(), wasm.display(), size / 1024);
            }
            Ok(())
        }
        PluginCommand::List { dir } => {
            let folder = match dir {
                Some(dir) => dir,
                None => bundled_plugins()?,
            };
            let dirs = load::plugin_dirs(&folder).with_context(|| format!("reading {}", folder.display()))?;
            if dirs.is_empty() {
                bail!(
                    "{}: no plugins here (a plugin is a folder with a Cargo.toml, a plugin.py or a plugin.js)",
                    folder.display()
                );
            }
            let built = build::build_plugins(&dirs).map_err(|p| anyhow::anyhow!("{p}"))?;
            let sandbox = Sandbox::shared();
            println!("| name | kind | version | stateful | sha256 | description |");
            println!("|---|---|---|---|---|---|");
            for wasm in built {
                let (info, sha256) = Plugin::inspect(&sandbox, &wasm)?;
                println!(
                    "| {} | {} | {} | {} | {} | {} |",
                    info.name, info.kind, info.version, info.stateful, sha256, info.description
                );
            }
            Ok(())
        }
        PluginCommand::Check { path, config } => {
            let started = Instant::now();
            let plugin = Plugin::load(&Sandbox::shared(), &PluginSpec::at(&path).with_config(config))?;
            let info = plugin.info();
            println!("name:        {}", info.name);
            println!("kind:        {}", info.kind);
            println!("version:     {}", info.version);
            println!("stateful:    {}", info.stateful);
            println!("description: {}", info.description);
            println!("sha256:      {}", plugin.sha256());
            if let Plugin::Loss(loss) = &plugin {
                let names: Vec<_> = loss.features().iter().map(|f| records::feature_name(*f)).collect();
                println!("features:    {}", names.join(", "));
            }
            println!("imports:     triad:plugin/host only (checked)");
            if path.is_dir() {
                println!("build:       {}", triad::plugins::isolate::isolation().describe());
            }
            println!(
                "loaded in:   {:.0} ms (build, componentize, compile, instantiate, configure)",
                started.elapsed().as_secs_f64() * 1e3
            );
            Ok(())
        }
        PluginCommand::Run { plugin, input, config, deadline_ms, memory_mib } => {
            let mut limits = Limits::default();
            if let Some(ms) = deadline_ms {
                limits.deadline = std::time::Duration::from_millis(ms);
            }
            if let Some(mib) = memory_mib {
                limits.memory_bytes = mib << 20;
            }
            let text = read_input(&input)?;
            let spec = PluginSpec::at(&plugin).with_config(config).with_limits(limits);
            let plugin = Plugin::load(&Sandbox::shared(), &spec)?;
            let context = || format!("reading {}", input.display());
            match plugin {
                Plugin::Filter(filter) => {
                    let samples = records::samples(&text).with_context(context)?;
                    for decision in filter.filter(&samples)? {
                        println!("{}", records::decision_json(&decision));
                    }
                }
                Plugin::Reward(reward) => {
                    let episodes = records::episodes(&text).with_context(context)?;
                    for score in reward.score(&episodes)? {
                        println!("{}", serde_json::json!({ "score": score }));
                    }
                }
                Plugin::Metric(metric) => {
                    let records = records::metric_records(&text).with_context(context)?;
                    println!("{}", records::named_values_json(&metric.evaluate(&records)?));
                }
                Plugin::Loss(loss) => {
                    for batch in records::loss_batches(&text).with_context(context)? {
                        println!("{}", records::loss_output_json(&loss.compute(&batch)?));
                    }
                }
            }
            Ok(())
        }
    }
}

/// The folders to compare: an experiment `.ron` file stands for its runs under `runs_root`.
fn run_folders(paths: Vec<PathBuf>, runs_root: PathBuf) -> Result<Vec<PathBuf>> {
    let mut folders = Vec::new();
    for path in paths {
        if path.is_file() && path.extension().is_some_and(|e| e == "ron") {
            let experiment = load_experiment(&path)?;
            let dir = triad::runs::layout::ExperimentDir::new(&runs_root, &experiment.name)?;
            if !dir.root().is_dir() {
                bail!(
                    "experiment `{}` ({}) has no runs under {}: run `triad run {}` first, or pass --runs",
                    experiment.name,
                    path.display(),
                    dir.root().display(),
                    path.display()
                );
            }
            folders.push(dir.root().to_path_buf());
        } else {
            folders.push(path);
        }
    }
    Ok(folders)
}

fn read_input(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        return std::io::read_to_string(std::io::stdin()).context("reading standard input");
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The triad workspace: the nearest folder upwards from here with a `plugins/` folder and a
/// workspace `Cargo.toml`.
/// The bundled plugins: this workspace's plugins/ folder, else the one this binary was built
/// from, when it is still there.
fn bundled_plugins() -> Result<PathBuf> {
    if let Ok(workspace) = find_workspace() {
        return Ok(workspace.join("plugins"));
    }
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("plugins");
    if built_from.is_dir() {
        return Ok(built_from.canonicalize().unwrap_or(built_from));
    }
    bail!(
        "no triad workspace above {} and the plugins triad was built from ({}) are gone: name a folder of plugin crates",
        std::env::current_dir().unwrap_or_default().display(),
        built_from.display()
    )
}

fn find_workspace() -> Result<PathBuf> {
    let start = std::env::current_dir()?;
    for dir in start.ancestors() {
        let manifest = dir.join("Cargo.toml");
        if dir.join("plugins").is_dir()
            && std::fs::read_to_string(&manifest).is_ok_and(|text| text.contains("[workspace]"))
        {
            return Ok(dir.to_path_buf());
        }
    }
    bail!("no triad workspace (a folder with Cargo.toml and plugins/) above {}", start.display())
}
