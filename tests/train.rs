//! End to end on lavapipe with real images: training overfits a handful of
//! chest X-rays, an interrupted and resumed run ends with the same weights
//! as an uninterrupted one, and bad inputs stop with clear errors.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use dilaseg::data::ValSplit;
use dilaseg::gpu::Gpu;
use dilaseg::model::checkpoint;
use dilaseg::model::config::ModelConfig;
use dilaseg::model::graph::{Graph, Optimizer};
use dilaseg::model::output::foreground_scores;
use dilaseg::model::params::ParamSet;
use dilaseg::nn;
use dilaseg::train::{self, Outcome, Quiet, TrainOptions};
use dilaseg::{metrics, Shape};

/// `n` chest X-rays with their lung masks, in the paired layout.
fn cxr_folder(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = common::data_dir().join("lung-cxr");
    for sub in ["images", "masks"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        let mut names: Vec<PathBuf> = std::fs::read_dir(src.join(sub)).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names.into_iter().take(n) {
            std::fs::copy(&p, dir.path().join(sub).join(p.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// A narrow lungnet that trains in seconds on a software adapter.
fn small_lungnet(dropout: f32) -> ModelConfig {
    ModelConfig { width: 4, head: vec![16], dropout, ..ModelConfig::lungnet() }
}

fn options(data: &Path, out: &Path, cfg: ModelConfig) -> TrainOptions {
    let mut o = TrainOptions::new(data.to_path_buf(), cfg, out.to_path_buf());
    o.size = Some((64, 64));
    o.seed = 5;
    o
}

/// Mean Dice of `params` on every labelled image of `data` at 64x64.
fn dice_on(gpu: &Gpu, params: &ParamSet, cfg: &ModelConfig, data: &Path) -> f64 {
    let arch = dilaseg::model::Architecture::new(cfg);
    let graph = Graph::new(gpu, &arch, params, Shape::new(1, 1, 64, 64), None).unwrap();
    let samples = dilaseg::data::Dataset::scan(data).unwrap().labelled().unwrap();
    let decode =
        dilaseg::data::loader::DecodeOptions { channels: 1, size: Some((64, 64)), skip_bad: false, labels: None };
    let mut total = 0.0;
    for s in &samples {
        let (image, mask) = dilaseg::data::loader::load_sample(s, 0, &decode).unwrap();
        graph.set_input(gpu, &image.data).unwrap();
        graph.forward(gpu).unwrap();
        let scores = foreground_scores(cfg, &graph.read_logits(gpu).unwrap(), 64 * 64);
        let pred: Vec<bool> = scores.iter().map(|&s| s >= 0.5).collect();
        let truth: Vec<bool> = mask.data.iter().map(|&v| v > 0.5).collect();
        total += metrics::dice(&pred, &truth);
    }
    total / samples.len() as f64
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("loss.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn training_overfits_a_handful_of_real_chest_xrays() {
    let gpu = gpu_or_skip!();
    let data = cxr_folder(4);
    let out = tempfile::tempdir().unwrap();
    let cfg = small_lungnet(0.0);
    let mut opts = options(data.path(), out.path(), cfg.clone());
    opts.val = ValSplit::Fraction(0.0);
    opts.epochs = 15;
    opts.batch = 2;
    opts.optimizer = Optimizer::Adam(nn::Adam::with_lr(1e-2));
    let before = dice_on(gpu, &ParamSet::init(&dilaseg::model::Architecture::new(&cfg), 5), &cfg, data.path());
    let outcome = train::train(gpu, &opts, &AtomicBool::new(false), &mut Quiet).unwrap();
    assert_eq!(outcome, Outcome::Finished { steps: 30, best_dice: None });
    let l = losses(out.path());
    let (first, last) = (l[..3].iter().sum::<f64>() / 3.0, l[l.len() - 3..].iter().sum::<f64>() / 3.0);
    assert!(last < first / 3.0, "the loss fell only from {first:.4} to {last:.4}");
    let trained = checkpoint::load(&train::last_path(out.path())).unwrap();
    assert_eq!(trained.meta.train_size, Some((64, 64)));
    let after = dice_on(gpu, &trained.params, &cfg, data.path());
    assert!(after > before + 0.2 && after > 0.6, "training Dice went from {before:.3} to {after:.3}");
    let metrics = std::fs::read_to_string(out.path().join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 16, "a header and a row per epoch:\n{metrics}");
}

#[test]
fn an_interrupted_and_resumed_run_ends_with_the_same_weights() {
    let gpu = gpu_or_skip!();
    let data = cxr_folder(4);
    // Dropout on, so the mask counter must resume too; one validation image.
    let cfg = small_lungnet(0.5);
    let whole = tempfile::tempdir().unwrap();
    let mut opts = options(data.path(), whole.path(), cfg.clone());
    opts.epochs = 2;
    opts.val = ValSplit::Fraction(0.25);
    opts.augment = true;
    let stop = AtomicBool::new(false);
    let outcome = train::train(gpu, &opts, &stop, &mut Quiet).unwrap();
    assert!(matches!(outcome, Outcome::Finished { steps: 6, .. }), "{outcome:?}");

    let parts = tempfile::tempdir().unwrap();
    opts.out = parts.path().to_path_buf();
    opts.max_steps = Some(4);
    assert_eq!(train::train(gpu, &opts, &stop, &mut Quiet).unwrap(), Outcome::Stopped { steps: 4 });
    opts.max_steps = None;
    opts.resume = true;
    train::train(gpu, &opts, &stop, &mut Quiet).unwrap();

    let a = checkpoint::load(&train::last_path(whole.path())).unwrap();
    let b = checkpoint::load(&train::last_path(parts.path())).unwrap();
    assert_eq!(a.params, b.params, "resumed weights differ from the uninterrupted run's");
    assert_eq!(losses(whole.path()), losses(parts.path()));
}

#[test]
fn a_bad_config_file_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.json");
    let mut v = ModelConfig::lungnet().to_json();
    v["dropout"] = 1.5.into();
    std::fs::write(&config, v.to_string()).unwrap();
    let data = common::data_dir().join("lung-cxr");
    let (code, _, stderr) = common::dilaseg(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--out",
        dir.path().join("run").to_str().unwrap(),
    ]);
    assert_eq!(code, 4, "bad input: {stderr}");
    assert!(stderr.contains("bad.json") && stderr.contains("`dropout`") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_corrupt_image_stops_training_naming_it_unless_skipped() {
    let gpu = gpu_or_skip!();
    let data = cxr_folder(3);
    let victim = std::fs::read_dir(data.path().join("images")).unwrap().next().unwrap().unwrap().path();
    std::fs::write(&victim, b"\x89PNG truncated").unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut opts = options(data.path(), out.path(), small_lungnet(0.0));
    opts.val = ValSplit::Fraction(0.0);
    let err =
        train::train(gpu, &opts, &AtomicBool::new(false), &mut Quiet).expect_err("corrupt image accepted").to_string();
    assert!(err.contains(victim.file_name().unwrap().to_str().unwrap()), "{err}");
    opts.skip_bad = true;
    assert!(matches!(
        train::train(gpu, &opts, &AtomicBool::new(false), &mut Quiet),
        Ok(Outcome::Finished { steps: 2, .. })
    ));
}

#[test]
fn a_diverging_loss_stops_with_a_clear_message() {
    let gpu = gpu_or_skip!();
    let data = cxr_folder(2);
    let out = tempfile::tempdir().unwrap();
    let mut opts = options(data.path(), out.path(), small_lungnet(0.0));
    opts.val = ValSplit::Fraction(0.0);
    opts.epochs = 20;
    opts.optimizer = Optimizer::Sgd(nn::Sgd { lr: 1e12, momentum: 0.9, weight_decay: 0.0 });
    let err = train::train(gpu, &opts, &AtomicBool::new(false), &mut Quiet).expect_err("a diverging run finished");
    assert!(matches!(err, train::TrainError::NonFinite { .. }), "{err}");
    assert!(err.to_string().contains("lower --lr"), "{err}");
}

#[test]
fn the_command_line_stops_at_max_steps_and_resumes_from_the_run_folder() {
    if common::gpu().is_none() {
        return;
    }
    let data = cxr_folder(3);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small.json");
    std::fs::write(&config, small_lungnet(0.0).to_json().to_string()).unwrap();
    let run = dir.path().join("run");
    let (d, c, r) = (data.path().to_str().unwrap(), config.to_str().unwrap(), run.to_str().unwrap());
    let args = [
        "train",
        "--data",
        d,
        "--config",
        c,
        "--out",
        r,
        "--size",
        "48x48",
        "--epochs",
        "2",
        "--val-fraction",
        "0.34",
        "--max-steps",
        "1",
    ];
    let (code, _, stderr) = common::dilaseg(&args);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(losses(&run).len(), 1);
    let (code, _, stderr) = common::dilaseg(&["train", "--resume", r]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(losses(&run).len(), 4, "two epochs of two images");
    assert!(train::best_path(&run).is_file());
    // A fresh run into the same folder is refused; the run is left as it was.
    let (code, _, stderr) = common::dilaseg(&args);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("already holds a training run") && stderr.contains("--resume"), "{stderr}");
    assert_eq!(losses(&run).len(), 4);
    assert_eq!(std::fs::read_to_string(run.join("metrics.csv")).unwrap().lines().count(), 3);
}

/// Keeps the warnings a run reports.
#[derive(Default)]
struct Warnings(Vec<String>);

impl train::Observer for Warnings {
    fn warn(&mut self, message: &str) {
        self.0.push(message.to_string());
    }
}

#[test]
fn auto_threshold_is_chosen_on_validation_and_empty_predictions_are_warned_about() {
    let gpu = gpu_or_skip!();
    let data = cxr_folder(3);
    let out = tempfile::tempdir().unwrap();
    // The blog variant's linear output starts near 0: at threshold 0.5
    // every prediction is empty, which the run must say.
    let cfg = ModelConfig { width: 2, head: vec![2], ..ModelConfig::seo2018() };
    let mut opts = options(data.path(), out.path(), cfg);
    opts.batch = 2;
    opts.val = ValSplit::Fraction(0.34);
    let mut warnings = Warnings::default();
    train::train(gpu, &opts, &AtomicBool::new(false), &mut warnings).unwrap();
    assert!(warnings.0.iter().any(|w| w.contains("every validation prediction is empty")), "{:?}", warnings.0);

    opts.threshold = train::ThresholdChoice::Auto;
    opts.out = out.path().join("auto");
    train::train(gpu, &opts, &AtomicBool::new(false), &mut Quiet).unwrap();
    let best = checkpoint::load(&train::best_path(&opts.out)).unwrap();
    let t = best.meta.threshold.expect("the chosen threshold is recorded");
    assert!((0.05..=0.95).contains(&t) && t != 0.5, "threshold {t}");
}

#[test]
fn a_stop_request_ends_the_step_and_leaves_a_resumable_checkpoint() {
    let gpu = gpu_or_skip!();
    let data = cxr_folder(3);
    let out = tempfile::tempdir().unwrap();
    let mut opts = options(data.path(), out.path(), small_lungnet(0.0));
    opts.val = ValSplit::Fraction(0.0);
    opts.epochs = 3;
    let stop = AtomicBool::new(true); // as if Ctrl-C came during the first step
    assert_eq!(train::train(gpu, &opts, &stop, &mut Quiet).unwrap(), Outcome::Stopped { steps: 1 });
    opts.resume = true;
    let outcome = train::train(gpu, &opts, &AtomicBool::new(false), &mut Quiet).unwrap();
    assert_eq!(outcome, Outcome::Finished { steps: 9, best_dice: None });
}

#[test]
fn a_run_that_cannot_fit_the_device_is_refused_before_it_starts() {
    if common::gpu().is_none() {
        return;
    }
    use dilaseg::gpu::{GpuError, GpuOptions};
    let small = Gpu::new(&GpuOptions { memory_budget: Some(4 << 20), ..GpuOptions::from_env() }).unwrap();
    let data = cxr_folder(3);
    let out = tempfile::tempdir().unwrap();
    let opts = options(data.path(), out.path(), ModelConfig::lungnet());
    let err = train::train(&small, &opts, &AtomicBool::new(false), &mut Quiet).expect_err("started");
    assert!(
        matches!(&err, train::TrainError::Gpu(GpuError::TooLarge { limit_name: "available memory", .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("training at 1x1x64x64"), "{err}");
    assert!(!train::last_path(out.path()).exists(), "nothing is written for a run that cannot start");
}

/// Destroys the device at a given step, as a driver reset would lose it.
struct LoseDevice<'g> {
    gpu: &'g Gpu,
    at: u64,
}

impl train::Observer for LoseDevice<'_> {
    fn step(&mut self, r: &train::StepReport) {
        if r.step == self.at {
            self.gpu.device.destroy();
        }
    }
}

#[test]
fn a_device_lost_mid_run_stops_with_a_clear_error_and_keeps_the_last_checkpoint() {
    if common::gpu().is_none() {
        return;
    }
    // Its own device: this test destroys it.
    let gpu = Gpu::new(&dilaseg::gpu::GpuOptions::from_env()).unwrap();
    let data = cxr_folder(4);
    let out = tempfile::tempdir().unwrap();
    let mut opts = options(data.path(), out.path(), small_lungnet(0.0));
    opts.epochs = 3;
    opts.val = ValSplit::Fraction(0.25);
    // 3 training images: epoch 1 ends (and saves) at step 3; lost at step 4.
    let err = train::train(&gpu, &opts, &AtomicBool::new(false), &mut LoseDevice { gpu: &gpu, at: 4 })
        .expect_err("the run went on without its device");
    eprintln!("the run stopped with: {err}");
    assert!(matches!(err, train::TrainError::Gpu(_)), "{err:?}");
    assert!(err.to_string().to_lowercase().contains("lost") || err.to_string().contains("invalid"), "{err}");
    let last = checkpoint::load(&train::last_path(out.path())).expect("the last checkpoint is kept");
    assert_eq!(last.meta.step, Some(3));
}
