//! `triad compare` over run folders laid out as `triad run` writes them: a sweep of two
//! `ppo.kl.target` points by two seeds, with metrics streamed through the real metrics writer and
//! final metrics in each stage's `stage.json`. Expected numbers are computed here, independently
//! of the library.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use polars::prelude::*;
use triad::runs::compare::{
    CompareError, CompareOptions, TableOptions, compare, default_metrics, default_plot_metric, figure, final_table,
    step_table,
};
use triad::runs::metrics::{MetricRow, MetricsWriter, read_rows};
use triad::runs::table::{find_runs, read_frame, read_metrics_parquet, write_metrics_parquet};

const KL_TARGETS: [f64; 2] = [3.0, 6.0];
const SEEDS: [u64; 2] = [1, 2];
const STEPS: u64 = 20;

/// A fresh, empty folder for one test.
fn scratch(name: &str) -> PathBuf {
    support::scratch(&format!("compare-{name}"))
}

/// The pretraining loss curve of a run: decays with the step, offset by seed and KL target so
/// every run differs.
fn train_loss(kl: f64, seed: u64, step: u64) -> f64 {
    2.0 + 3.0 * (-0.15 * step as f64).exp() + 0.013 * seed as f64 + 0.0007 * kl
}

/// A run's final metrics, by stage: chosen so that the smaller KL target earns the larger reward
/// (the sort must then reverse the parameter order).
fn final_metrics(kl: f64, seed: u64) -> BTreeMap<&'static str, BTreeMap<&'static str, f64>> {
    let s = seed as f64;
    BTreeMap::from([
        (
            "base",
            BTreeMap::from([
                ("eval/loss", 1.9 + 0.021 * s + 0.002 * kl),
                ("train/loss", train_loss(kl, seed, STEPS - 1)),
            ]),
        ),
        ("ppo", BTreeMap::from([("eval/reward", 0.9 - 0.07 * kl + 0.031 * s * s), ("train/kl", kl * (1.0 + 0.1 * s))])),
    ])
}

fn write_json(path: &Path, value: &serde_json::Value) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("folder");
    std::fs::write(path, serde_json::to_string_pretty(value).expect("json")).expect("write json");
}

/// Lay out one run: manifest, and per stage its metrics stream (through `MetricsWriter`), its
/// `metrics.parquet`, and its `stage.json`. `stages` lists the stages the run reached.
fn write_run(experiment_dir: &Path, kl: Option<f64>, seed: u64, stages: &[&str]) -> PathBuf {
    let (name, sweep) = match kl {
        Some(kl) => (format!("ppo.kl.target={kl}-seed{seed}"), serde_json::json!({"ppo.kl.target": kl})),
        None => (format!("seed{seed}"), serde_json::json!({})),
    };
    let run = experiment_dir.join(&name);
    let experiment = experiment_dir.file_name().expect("named").to_string_lossy().into_owned();
    write_json(
        &run.join("manifest.json"),
        &serde_json::json!({
            "experiment": experiment, "run": name, "seed": seed, "sweep": sweep,
            "triad_version": "0.1.0", "git_revision": null, "device": "cpu",
            "data": {"reviews": "00"}, "plugins": {}, "stages": ["base", "ppo"],
        }),
    );
    let kl_value = kl.unwrap_or(0.0);
    let finals = final_metrics(kl_value, seed);
    for stage in stages {
        let dir = run.join(stage);
        let jsonl = dir.join("metrics.jsonl");
        let mut writer = MetricsWriter::open(&jsonl, stage, None).expect("metrics writer");
        for step in 0..STEPS {
            if *stage == "base" {
                writer.write(step, "train/loss", train_loss(kl_value, seed, step)).expect("write metric");
                writer.write(step, "train/lr", 1e-3).expect("write metric");
            } else {
                writer.write(step, "train/reward", 0.01 * step as f64 * seed as f64 - kl_value).expect("write metric");
            }
        }
        write_metrics_parquet(&jsonl, &dir.join("metrics.parquet")).expect("metrics.parquet");
        write_json(
            &dir.join("stage.json"),
            &serde_json::json!({"key": format!("{stage}-{name}"), "complete": true, "metrics": finals[stage]}),
        );
    }
    run
}

/// `runs/<experiment>/` with the 2 x 2 sweep, every run complete.
fn sweep_runs(root: &Path) -> PathBuf {
    let dir = root.join("runs").join("kl-sweep");
    for kl in KL_TARGETS {
        for seed in SEEDS {
            write_run(&dir, Some(kl), seed, &["base", "ppo"]);
        }
    }
    dir
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn sample_std(values: &[f64]) -> f64 {
    let m = mean(values);
    (values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (values.len() - 1) as f64).sqrt()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * (1.0 + a.abs().max(b.abs()))
}

fn f64s(frame: &DataFrame, column: &str) -> Vec<Option<f64>> {
    let values = frame.column(column).unwrap_or_else(|e| panic!("{column}: {e}")).f64().expect("f64 column");
    (0..values.len()).map(|i| values.get(i)).collect()
}

fn options(paths: Vec<PathBuf>) -> CompareOptions {
    CompareOptions { paths, ..CompareOptions::default() }
}

#[test]
fn a_sweep_gives_one_row_per_point_with_mean_and_std_over_seeds() {
    let root = scratch("points");
    let runs = find_runs(&[sweep_runs(&root)]).expect("runs");
    assert_eq!(runs.len(), 4);
    let table = final_table(&runs, &TableOptions::default()).expect("table");
    assert_eq!(table.frame.height(), 2);
    assert_eq!(
        table.metrics,
        ["base/eval/loss", "base/train/loss", "ppo/eval/reward", "ppo/train/kl"],
        "stage order, then name"
    );
    assert_eq!(f64s(&table.frame, "ppo.kl.target"), [Some(3.0), Some(6.0)]);
    let seeds = table.frame.column("seeds").expect("seeds").u64().expect("u64");
    let seeds: Vec<Option<u64>> = (0..seeds.len()).map(|i| seeds.get(i)).collect();
    assert_eq!(seeds, [Some(2), Some(2)]);
    for (row, kl) in KL_TARGETS.iter().enumerate() {
        for (stage, metrics) in final_metrics(*kl, 1) {
            for metric in metrics.keys() {
                let values: Vec<f64> = SEEDS.iter().map(|s| final_metrics(*kl, *s)[stage][metric]).collect();
                let name = format!("{stage}/{metric}");
                let got_mean = f64s(&table.frame, &format!("{name} mean"))[row].expect("mean");
                let got_std = f64s(&table.frame, &format!("{name} std"))[row].expect("std");
                assert!(close(got_mean, mean(&values)), "{name} at kl {kl}: mean {got_mean} vs {}", mean(&values));
                assert!(
                    close(got_std, sample_std(&values)),
                    "{name} at kl {kl}: std {got_std} vs {}",
                    sample_std(&values)
                );
            }
        }
    }
    let markdown = table.to_markdown();
    let lines: Vec<&str> = markdown.lines().collect();
    assert_eq!(lines.len(), 4, "{markdown}");
    assert_eq!(
        lines[0],
        "| ppo.kl.target | seeds | base/eval/loss | base/train/loss | ppo/eval/reward | ppo/train/kl |"
    );
    // kl 3: eval/loss over seeds 1.927 and 1.948, at four significant digits: 1.938 ± 0.01485.
    let values = SEEDS.map(|s| final_metrics(3.0, s)["base"]["eval/loss"]);
    let cell = format!("{:.3} ± {:.5}", mean(&values), sample_std(&values));
    assert!(lines[2].starts_with(&format!("| 3 | 2 | {cell} |")), "{cell}\n{markdown}");
}

#[test]
fn without_metrics_named_the_table_shows_the_experiments_summary() {
    let root = scratch("summary");
    let dir = sweep_runs(&root);
    for entry in std::fs::read_dir(&dir).expect("runs").flatten() {
        let path = entry.path().join("manifest.json");
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("manifest")).expect("JSON");
        // A summary metric no run has is left out rather than refused.
        manifest["summary"] = serde_json::json!(["ppo/train/kl", "base/eval/loss", "eval/win_rate"]);
        write_json(&path, &manifest);
    }
    let output = compare(&options(vec![dir])).expect("compare");
    let header = output.markdown.lines().next().expect("a header");
    assert_eq!(header, "| ppo.kl.target | seeds | ppo/train/kl | base/eval/loss |", "{}", output.markdown);
    assert!(output.note.as_deref().is_some_and(|n| n.starts_with("2 of 4 metrics shown")), "{:?}", output.note);
}

#[test]
fn csv_and_parquet_outputs_read_back_with_the_same_numbers() {
    let root = scratch("files");
    let dir = sweep_runs(&root);
    let runs = find_runs(std::slice::from_ref(&dir)).expect("runs");
    // Without --metrics, and with no summary in the manifests: the last stage's metrics.
    let shown = default_metrics(&runs);
    assert_eq!(shown, ["ppo/eval/reward", "ppo/train/kl"]);
    let table = final_table(&runs, &TableOptions { metrics: Some(shown), ..TableOptions::default() }).expect("table");
    for name in ["table.csv", "table.parquet"] {
        let out = root.join(name);
        let output =
            compare(&CompareOptions { out: Some(out.clone()), ..options(vec![dir.clone()]) }).expect("compare");
        assert_eq!(output.written, std::slice::from_ref(&out));
        let back = read_frame(&out).expect("read back");
        let names: Vec<String> = back.get_column_names().iter().map(|n| n.to_string()).collect();
        let expected: Vec<String> = table.frame.get_column_names().iter().map(|n| n.to_string()).collect();
        assert_eq!(names, expected, "{name}");
        for column in names.iter().filter(|n| n.ends_with(" mean") || n.ends_with(" std") || *n == "ppo.kl.target") {
            let (a, b) = (f64s(&back, column), f64s(&table.frame, column));
            let bits = |v: &[Option<f64>]| v.iter().map(|x| x.map(f64::to_bits)).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "{name}: {column}");
        }
    }
    let markdown_out = root.join("table.md");
    let output = compare(&CompareOptions { out: Some(markdown_out.clone()), ..options(vec![dir]) }).expect("compare");
    assert_eq!(std::fs::read_to_string(&markdown_out).expect("table.md"), output.markdown);
}

#[test]
fn by_run_gives_a_row_per_run_with_its_own_values() {
    let root = scratch("by-run");
    let runs = find_runs(&[sweep_runs(&root)]).expect("runs");
    let table = final_table(&runs, &TableOptions { by_run: true, ..TableOptions::default() }).expect("table");
    assert_eq!(table.frame.height(), 4);
    let runs_column = table.frame.column("run").expect("run").str().expect("str");
    let names: Vec<String> = (0..runs_column.len()).map(|i| runs_column.get(i).expect("name").to_string()).collect();
    assert_eq!(
        names,
        ["ppo.kl.target=3-seed1", "ppo.kl.target=3-seed2", "ppo.kl.target=6-seed1", "ppo.kl.target=6-seed2"]
    );
    let rewards = f64s(&table.frame, "ppo/eval/reward");
    for (i, (kl, seed)) in KL_TARGETS.iter().flat_map(|k| SEEDS.iter().map(move |s| (*k, *s))).enumerate() {
        assert_eq!(rewards[i], Some(final_metrics(kl, seed)["ppo"]["eval/reward"]));
    }
    assert_eq!(table.to_markdown().lines().count(), 6);
}

#[test]
fn sort_orders_rows_by_a_metric_mean() {
    let root = scratch("sort");
    let runs = find_runs(&[sweep_runs(&root)]).expect("runs");
    let sorted = |sort: &str, descending: bool, metrics: Option<Vec<String>>| {
        let options = TableOptions { sort: Some(sort.into()), descending, metrics, by_run: false };
        f64s(&final_table(&runs, &options).expect("table").frame, "ppo.kl.target")
    };
    // Reward falls with the KL target; the KL rises with it.
    assert_eq!(sorted("ppo/eval/reward", false, None), [Some(6.0), Some(3.0)]);
    assert_eq!(sorted("ppo/eval/reward", true, None), [Some(3.0), Some(6.0)]);
    assert_eq!(sorted("ppo/train/kl", false, None), [Some(3.0), Some(6.0)]);
    // Sorting by a metric that is not shown still sorts, and does not add its columns.
    let shown = Some(vec!["base/eval/loss".to_string()]);
    let options =
        TableOptions { sort: Some("ppo/eval/reward".into()), descending: false, metrics: shown.clone(), by_run: false };
    let table = final_table(&runs, &options).expect("table");
    assert_eq!(f64s(&table.frame, "ppo.kl.target"), [Some(6.0), Some(3.0)]);
    assert!(table.frame.column("ppo/eval/reward mean").is_err());
    assert_eq!(table.metrics, ["base/eval/loss"]);
}

#[test]
fn a_misspelt_metric_is_an_error_that_suggests_the_right_one() {
    let root = scratch("misspelt");
    let runs = find_runs(&[sweep_runs(&root)]).expect("runs");
    let error =
        final_table(&runs, &TableOptions { metrics: Some(vec!["ppo/eval/rewrad".into()]), ..TableOptions::default() })
            .expect_err("unknown metric");
    assert!(matches!(error, CompareError::UnknownMetric { .. }));
    let message = error.to_string();
    assert!(message.contains("`ppo/eval/rewrad`") && message.contains("did you mean `ppo/eval/reward`?"), "{message}");
    assert!(message.contains("base/eval/loss, base/train/loss, ppo/eval/reward, ppo/train/kl"), "{message}");
    // The stage prefix left out: the full name is suggested.
    let error = final_table(&runs, &TableOptions { sort: Some("eval/reward".into()), ..TableOptions::default() })
        .expect_err("unknown");
    assert!(error.to_string().contains("did you mean `ppo/eval/reward`?"), "{error}");
    let error = step_table(&runs, "base/train/los", false).expect_err("unknown step metric");
    assert!(error.to_string().contains("did you mean `base/train/loss`?"), "{error}");
}

#[test]
fn a_run_that_did_not_reach_a_stage_leaves_its_cells_empty() {
    let root = scratch("missing");
    let dir = root.join("runs").join("partial");
    write_run(&dir, None, 1, &["base", "ppo"]);
    write_run(&dir, None, 2, &["base"]);
    // A third run whose ppo stage started but did not finish: its numbers are not final.
    let unfinished = write_run(&dir, None, 3, &["base", "ppo"]);
    let stage_json = unfinished.join("ppo/stage.json");
    let text =
        std::fs::read_to_string(&stage_json).expect("stage.json").replace("\"complete\": true", "\"complete\": false");
    std::fs::write(&stage_json, text).expect("rewrite stage.json");

    let runs = find_runs(std::slice::from_ref(&dir)).expect("runs");
    let by_run = final_table(&runs, &TableOptions { by_run: true, ..TableOptions::default() }).expect("table");
    assert_eq!(f64s(&by_run.frame, "ppo/eval/reward"), [Some(final_metrics(0.0, 1)["ppo"]["eval/reward"]), None, None]);
    let markdown = by_run.to_markdown();
    assert!(markdown.lines().nth(3).expect("seed2 row").ends_with("|  |  |"), "{markdown}");
    // Pooled: the one seed that finished ppo gives the mean, no std.
    let pooled = final_table(&runs, &TableOptions::default()).expect("table");
    assert_eq!(f64s(&pooled.frame, "ppo/eval/reward mean"), [Some(final_metrics(0.0, 1)["ppo"]["eval/reward"])]);
    assert_eq!(f64s(&pooled.frame, "ppo/eval/reward std"), [None]);
    assert!(pooled.to_markdown().contains("| partial | 3 |"), "{}", pooled.to_markdown());
}

#[test]
fn the_step_view_has_a_column_per_point_or_run() {
    let root = scratch("steps");
    let runs = find_runs(&[sweep_runs(&root)]).expect("runs");
    let table = step_table(&runs, "base/train/loss", false).expect("step table");
    let names: Vec<String> = table.frame.get_column_names().iter().map(|n| n.to_string()).collect();
    assert_eq!(names, ["step", "ppo.kl.target=3", "ppo.kl.target=6"]);
    assert_eq!(table.frame.height(), STEPS as usize);
    for (column, kl) in names[1..].iter().zip(KL_TARGETS) {
        let values = f64s(&table.frame, column);
        for step in 0..STEPS {
            let expected = mean(&SEEDS.map(|s| train_loss(kl, s, step)));
            assert!(close(values[step as usize].expect("value"), expected), "{column} step {step}");
        }
    }
    let per_run = step_table(&runs, "ppo/train/reward", true).expect("per-run step table");
    assert_eq!(per_run.frame.width(), 5);
    let values = f64s(&per_run.frame, "ppo.kl.target=6-seed2");
    assert_eq!(values[7], Some(0.01 * 7.0 * 2.0 - 6.0));
}

#[test]
fn a_plot_has_a_line_per_sweep_point_with_its_seeds_band() {
    let root = scratch("figure");
    let dir = sweep_runs(&root);
    let runs = find_runs(std::slice::from_ref(&dir)).expect("runs");
    // Every stage differs between points here (each run has its own stage keys): the first.
    assert_eq!(default_plot_metric(&runs).expect("default"), "base/train/loss");
    let reward = figure(&runs, "ppo/train/reward", 1).expect("figure");
    assert_eq!(reward.title, "kl-sweep: ppo/train/reward");
    assert_eq!(reward.legend_title, "ppo.kl.target");
    assert_eq!(reward.legend_notes, ["line: mean of 2 seeds", "band: lowest to highest seed"]);
    let labels: Vec<&str> = reward.series.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(labels, ["3", "6"]);
    for (series, kl) in reward.series.iter().zip(KL_TARGETS) {
        let at_7 = SEEDS.map(|s| 0.01 * 7.0 * s as f64 - kl);
        assert_eq!(series.mean.len(), STEPS as usize);
        assert_eq!(series.mean[7].0, 7.0);
        assert!(close(series.mean[7].1, mean(&at_7)), "{kl}: {:?}", series.mean[7]);
        assert_eq!(series.band[7], (7.0, at_7[0], at_7[1]));
        assert!(!series.shared);
    }

    // A sweep over PPO shares the stages before it (one key per seed): the base curves of every
    // point are one line, and PPO is what the plot shows by default.
    for entry in std::fs::read_dir(&dir).expect("runs").flatten() {
        let stage_json = entry.path().join("base").join("stage.json");
        let mut record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&stage_json).expect("stage.json")).expect("JSON");
        let seed = if entry.file_name().to_string_lossy().ends_with("seed1") { 1 } else { 2 };
        record["key"] = serde_json::json!(format!("base-seed{seed}"));
        write_json(&stage_json, &record);
    }
    let runs = find_runs(std::slice::from_ref(&dir)).expect("runs");
    assert_eq!(default_plot_metric(&runs).expect("default"), "ppo/train/reward");
    let shared = figure(&runs, "base/train/loss", 1).expect("figure");
    assert_eq!(shared.series.len(), 1);
    assert_eq!(shared.series[0].label, "every point (one base stage)");
    assert!(shared.series[0].shared);

    let error = figure(&runs, "ppo/train/rewrad", 1).expect_err("a misspelt metric");
    assert!(error.to_string().contains("did you mean `ppo/train/reward`?"), "{error}");
}

#[test]
fn plots_are_written_as_valid_png_and_svg() {
    let root = scratch("plots");
    let dir = sweep_runs(&root);
    let png_path = root.join("curves.png");
    compare(&CompareOptions { plot: Some(png_path.clone()), ..options(vec![dir.clone()]) }).expect("png plot");
    let bytes = std::fs::read(&png_path).expect("png written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
    let mut reader = decoder.read_info().expect("png header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut pixels).expect("png decodes");
    assert_eq!((info.width, info.height), (1024, 600));
    let row_bytes = info.line_size;
    let dark = pixels[..36 * row_bytes].chunks(3).filter(|p| p.iter().all(|c| *c < 100)).count();
    assert!(dark > 100, "title text not drawn: {dark} dark pixels");
    // The two points' lines in their own colours (tab10 blue and orange), each also in the
    // legend column at the right, which no line reaches.
    let width = info.width as usize;
    for colour in [[0x1f, 0x77, 0xb4], [0xff, 0x7f, 0x0e]] {
        let columns: Vec<usize> =
            pixels.chunks(3).enumerate().filter(|(_, p)| *p == colour).map(|(i, _)| i % width).collect();
        assert!(columns.len() > 60, "{colour:?} drawn {} times", columns.len());
        let (leftmost, rightmost) = (columns.iter().min().expect("some"), columns.iter().max().expect("some"));
        assert!(*leftmost < width / 4 && *rightmost > width * 3 / 4, "{colour:?} spans {leftmost}..{rightmost}");
    }

    let svg_path = root.join("curves.svg");
    let output = compare(&CompareOptions {
        plot: Some(svg_path.clone()),
        step_metric: Some("ppo/train/reward".into()),
        ..options(vec![dir])
    })
    .expect("svg plot");
    assert_eq!(output.written, std::slice::from_ref(&svg_path));
    let svg = std::fs::read_to_string(&svg_path).expect("svg written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{}", &svg[..200.min(svg.len())]);
    assert!(svg.contains("\nppo.kl.target\n"), "legend heading missing");
    assert!(svg.contains("\nline: mean of 2 seeds\n"), "legend note missing");
    assert!(!svg.contains("seed1"), "runs are not legend entries");
    assert!(svg.contains("kl-sweep: ppo/train/reward"), "title missing");
}

#[test]
fn metrics_parquet_round_trips_the_jsonl_rows() {
    let root = scratch("parquet");
    let jsonl = root.join("metrics.jsonl");
    let mut writer = MetricsWriter::open(&jsonl, "sft", None).expect("writer");
    let values = [1.875, -0.0, 1e-300, -3.25e12, f64::MIN_POSITIVE, 0.1 + 0.2];
    for (i, value) in values.iter().enumerate() {
        writer
            .write(i as u64 * 1000 + u64::from(i == 5) * (u64::MAX - 10_000), &format!("eval/m{i}"), *value)
            .expect("write");
    }
    drop(writer);
    let parquet = root.join("metrics.parquet");
    assert_eq!(write_metrics_parquet(&jsonl, &parquet).expect("to parquet"), values.len());
    let rows: Vec<MetricRow> = read_rows(&jsonl).expect("jsonl rows");
    let back = read_metrics_parquet(&parquet).expect("parquet rows");
    assert_eq!(back, rows);
    assert_eq!(back[5].step, u64::MAX - 10_000 + 5000);
    assert_eq!(back[2].value.to_bits(), 1e-300_f64.to_bits());
    let frame = read_frame(&parquet).expect("frame");
    let dtypes: Vec<DataType> = frame.dtypes();
    assert_eq!(dtypes, [DataType::String, DataType::UInt64, DataType::String, DataType::Float64]);
    // No temporary file is left beside it.
    let leftovers: Vec<_> = std::fs::read_dir(&root)
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn an_experiment_file_finds_its_runs_under_the_runs_root() {
    let root = scratch("ron");
    let runs_root = root.join("runs");
    let experiment = support::workspace().join("experiments/shakespeare-char.ron");
    let compare = || {
        Command::new(env!("CARGO_BIN_EXE_triad"))
            .args([
                "compare",
                experiment.to_str().expect("utf-8"),
                "--by-run",
                "--runs",
                runs_root.to_str().expect("utf-8"),
            ])
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("running triad")
    };
    let none = compare();
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("experiment `shakespeare-char`"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
    let dir = runs_root.join("shakespeare-char");
    write_run(&dir, None, 1337, &["base"]);
    // A stage folder shared through a symlink is followed.
    std::fs::create_dir_all(dir.join("seed7")).expect("run folder");
    std::fs::copy(dir.join("seed1337/manifest.json"), dir.join("seed7/manifest.json")).expect("manifest");
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.join("seed1337/base"), dir.join("seed7/base")).expect("symlink");
    let runs = find_runs(&[dir]).expect("runs");
    assert_eq!(runs.len(), 2);
    #[cfg(unix)]
    assert_eq!(runs[1].final_metrics(), runs[0].final_metrics());
    let found = compare();
    assert!(found.status.success(), "{}", String::from_utf8_lossy(&found.stderr));
    assert_eq!(String::from_utf8_lossy(&found.stdout).lines().count(), 4, "a header, a rule and two runs");
}

#[test]
fn the_triad_binary_prints_the_markdown_table() {
    let root = scratch("cli");
    let dir = sweep_runs(&root);
    let out = Command::new(env!("CARGO_BIN_EXE_triad"))
        .args([
            "compare",
            "kl-sweep",
            "--metrics",
            "ppo/eval/reward,base/eval/loss",
            "--sort",
            "ppo/eval/reward",
            "--desc",
        ])
        .current_dir(dir.parent().expect("runs/"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running triad");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "| ppo.kl.target | seeds | ppo/eval/reward | base/eval/loss |", "{stdout}");
    assert_eq!(lines[1], "|---|---|---|---|");
    let rewards = SEEDS.map(|s| final_metrics(3.0, s)["ppo"]["eval/reward"]);
    assert!(lines[2].starts_with("| 3 | 2 | "), "{stdout}");
    // 0.721 and 0.814: mean 0.7675, std 0.06576
    assert!(lines[2].contains(&format!("{:.4} ± ", mean(&rewards))), "{stdout}");
    assert!(lines[3].starts_with("| 6 | 2 | "), "{stdout}");

    let bad = Command::new(env!("CARGO_BIN_EXE_triad"))
        .args(["compare", dir.to_str().expect("utf-8"), "--metrics", "ppo/eval/rewrad"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running triad");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("did you mean `ppo/eval/reward`?"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn polars_reads_the_pyarrow_parquet_that_the_data_sources_read() {
    // Evidence for the dependency question: the same file through polars and through the
    // `parquet` crate's record API (the Parquet data source) gives the same rows.
    let dir = support::workspace().join("tests/fixtures/parquet");
    let frame = read_frame(&dir.join("review-snippets.parquet")).expect("polars reads pyarrow's file");
    assert_eq!(frame.height(), 200);
    let spec: triad::data::SourceSpec = ron::from_str(r#"Parquet(path: "review-snippets.parquet")"#).expect("parses");
    let source = spec.load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let texts = frame.column("text").expect("text").str().expect("str");
    let ids = frame.column("id").expect("id").str().expect("str");
    let ratings = frame.column("rating").expect("rating").f64().expect("f64");
    for (i, record) in source.records.iter().enumerate() {
        assert_eq!(texts.get(i), Some(record.text.as_str()), "row {}", i + 1);
        assert_eq!(ids.get(i), Some(record.fields["id"].as_str()), "row {}", i + 1);
        assert_eq!(
            ratings.get(i).map(|r| format!("{r:?}")).as_deref(),
            Some(record.fields["rating"].as_str()),
            "row {}",
            i + 1
        );
    }
}
