//! `dilaseg demo`: the whole product on the chest X-rays bundled in
//! assets/, with nothing to download. Trains a lungnet on part of them,
//! keeps the rest aside, segments those with the trained model and scores
//! them, and writes everything into one fresh run folder: checkpoints,
//! training logs, the curves of loss and Dice, metrics, masks, overlays and
//! the 2018 blog's animated GIFs.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use crate::data::{split, DataError, Dataset, Sample, ValSplit};
use crate::eval::{self, EvalReport};
use crate::gpu::{Gpu, GpuError};
use crate::infer::{self, InferOptions, Item, Predictor};
use crate::model::checkpoint::{self, CheckpointError};
use crate::model::config::ModelConfig;
use crate::plot::{Curves, PlotError};
use crate::train::{self, Observer, Outcome, ThresholdChoice, TrainError, TrainOptions};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Options(String),
}

pub type Result<T> = std::result::Result<T, DemoError>;

#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Labelled images (the bundled `assets/lung-cxr` by default).
    pub data: PathBuf,
    /// The run folder; must not hold a run already.
    pub out: PathBuf,
    pub size: (usize, usize),
    /// Maps per dilated layer: lungnet's 32, or fewer for a quicker demo
    /// (the head narrows in proportion).
    pub width: usize,
    pub epochs: usize,
    pub max_steps: Option<u64>,
    /// Fraction of the images kept aside: training never sees them; they
    /// choose the best checkpoint and are then segmented and scored.
    pub holdout: f64,
    pub seed: u64,
}

/// Where the demo put things, and how well the model did.
pub struct DemoReport {
    pub run: PathBuf,
    pub model: PathBuf,
    pub curves: PathBuf,
    /// Per-image scores and their means (`per_image.csv`, `summary.json`).
    pub metrics: (PathBuf, PathBuf),
    /// Masks, score maps, overlays and GIFs of the held-out images.
    pub images: PathBuf,
    pub eval: EvalReport,
    pub outcome: Outcome,
    pub train_images: usize,
    pub holdout_images: usize,
}

/// The bundled sample images: `assets/lung-cxr` under the working folder
/// (a checkout), else in the source tree this binary was built from.
pub fn bundled_data() -> PathBuf {
    let here = Path::new("assets/lung-cxr");
    if here.is_dir() {
        here.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/lung-cxr")
    }
}

/// `runs/demo-N` for the first N not taken.
pub fn fresh_run_folder() -> PathBuf {
    (1..).map(|n| PathBuf::from(format!("runs/demo-{n}"))).find(|p| !p.exists()).expect("an unused name")
}

/// lungnet (MODEL.md) at `width` maps per dilated layer, its head scaled
/// by the same factor from lungnet's 128 and 32.
pub fn config(width: usize) -> ModelConfig {
    let base = ModelConfig::lungnet();
    let head = base.head.iter().map(|&h| (h * width).div_ceil(base.width).max(1)).collect();
    ModelConfig { width, head, ..base }
}

pub fn run(gpu: &Gpu, opts: &DemoOptions, stop: &AtomicBool, obs: &mut dyn Observer) -> Result<DemoReport> {
    if !opts.data.is_dir() {
        return Err(DemoError::Options(format!("{}: no such folder of labelled images", opts.data.display())));
    }
    let config = config(opts.width);
    config.validate().map_err(|e| DemoError::Options(e.to_string()))?;
    let mut train_opts = TrainOptions::new(opts.data.clone(), config, opts.out.clone());
    train_opts.size = Some(opts.size);
    train_opts.epochs = opts.epochs;
    train_opts.max_steps = opts.max_steps;
    train_opts.seed = opts.seed;
    train_opts.val = ValSplit::Fraction(opts.holdout);
    train_opts.threshold = ThresholdChoice::Auto;
    // The held-out images: the split training makes (same data, rule and
    // seed), checked before anything is trained.
    let dataset = Dataset::scan(&opts.data)?;
    let (train_set, holdout) = split(&dataset.labelled()?, dataset.layout, &train_opts.val, opts.seed)?;
    if holdout.is_empty() {
        return Err(DemoError::Options(format!("--holdout {} keeps no image aside", opts.holdout)));
    }
    let outcome = train::train(gpu, &train_opts, stop, obs)?;
    // The best checkpoint by held-out Dice; a run stopped before its first
    // epoch ended has only its last.
    let best = train::best_path(&opts.out);
    let model = if best.exists() { best } else { train::last_path(&opts.out) };

    let curves = opts.out.join("curves.png");
    Curves::read(&opts.out)?.draw(&curves)?;

    let mut predictor = Predictor::new(gpu, checkpoint::load(&model)?, None);
    let eval = eval::eval_model(&mut predictor, &holdout, false);
    let metrics = eval.write(&opts.out.join("holdout"))?;
    let images = opts.out.join("holdout/images");
    std::fs::create_dir_all(&images)?;
    let items = holdout.iter().map(item).collect();
    let written = infer::run(
        &mut predictor,
        items,
        &InferOptions { out: images.clone(), native: false, npy: false, gif: true, overwrite: false },
        &mut |_| {},
    );
    if let Some((path, why)) = written.failures.first() {
        return Err(DemoError::Options(format!("{}: {why}", path.display())));
    }
    Ok(DemoReport {
        run: opts.out.clone(),
        model,
        curves,
        metrics,
        images,
        eval,
        outcome,
        train_images: train_set.len(),
        holdout_images: holdout.len(),
    })
}

fn item(s: &Sample) -> Item {
    let stem = s.image.file_stem().map_or_else(|| "image".into(), |n| n.to_string_lossy().into_owned());
    Item { image: s.image.clone(), truth: s.mask.clone(), stem }
}
