//! The training run: data in, checkpoints and metrics out. Reports progress
//! through an `Observer` (the command line draws a progress bar; tests stay
//! quiet), so nothing here knows about terminals.
//!
//! Run folder: `last.safetensors` (+ `last.optim.safetensors`: optimiser
//! state and position, for `--resume`), `best.safetensors` (best
//! validation Dice), `metrics.csv` (a row per epoch), `loss.csv` (a row per
//! step).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::data::loader::{load_sample, BatchPlan, DecodeOptions, Prefetcher};
use crate::data::{image::dimensions, split, DataError, Dataset, Sample, ValSplit};
use crate::gpu::{Gpu, GpuError};
use crate::metrics;
use crate::model::checkpoint::{self, CheckpointError, CheckpointMeta, OptimState};
use crate::model::config::{ConfigError, ModelConfig};
use crate::model::graph::{Graph, Optimizer, TrainSetup};
use crate::model::output::{foreground_scores, DEFAULT_THRESHOLD};
use crate::model::params::ParamSet;
use crate::model::Architecture;
use crate::nn::{self, SigmoidLoss};
use crate::rng::Rng;
use crate::shape::Shape;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    // `error`, not `source`: see CheckpointError::Io.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error(
        "the loss became {loss} at step {step}; stopped. The last good checkpoint is kept in {run}. \
         Try a lower --lr."
    )]
    NonFinite { step: u64, loss: f32, run: PathBuf },
    #[error("{0}")]
    Options(String),
}

type Result<T, E = TrainError> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ThresholdChoice {
    Fixed(f32),
    /// The threshold that maximises the validation Dice.
    Auto,
}

#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub data: PathBuf,
    pub config: ModelConfig,
    /// Start from these weights (their config wins over `config`).
    pub init: Option<PathBuf>,
    pub out: PathBuf,
    pub epochs: usize,
    pub batch: usize,
    pub seed: u64,
    pub max_steps: Option<u64>,
    pub optimizer: Optimizer,
    pub size: Option<(usize, usize)>,
    pub val: ValSplit,
    pub augment: bool,
    pub skip_bad: bool,
    pub threshold: ThresholdChoice,
    pub sigmoid_loss: SigmoidLoss,
    pub class_weights: Option<Vec<f32>>,
    /// Continue the run in `out` from its last checkpoint.
    pub resume: bool,
}

impl TrainOptions {
    /// Defaults for a preset's config: MODEL.md's batch size and Adam at 1e-3.
    pub fn new(data: PathBuf, config: ModelConfig, out: PathBuf) -> Self {
        let batch = if config.norm == crate::model::config::NormKind::Batch { 2 } else { 1 };
        TrainOptions {
            data,
            config,
            init: None,
            out,
            epochs: 1,
            batch,
            seed: 0,
            max_steps: None,
            optimizer: Optimizer::Adam(nn::Adam::with_lr(1e-3)),
            size: None,
            val: ValSplit::Fraction(0.2),
            augment: false,
            skip_bad: false,
            threshold: ThresholdChoice::Fixed(DEFAULT_THRESHOLD),
            sigmoid_loss: SigmoidLoss { bce: true, dice: false },
            class_weights: None,
            resume: false,
        }
    }
}

pub struct RunInfo {
    pub adapter: String,
    pub train_images: usize,
    pub val_images: usize,
    pub skipped_files: usize,
    pub shape: Shape,
    pub steps_per_epoch: usize,
    pub total_steps: u64,
    pub start_step: u64,
}

pub struct StepReport {
    pub step: u64,
    pub epoch: usize,
    pub loss: f32,
    pub images_per_s: f64,
}

pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_dice: Option<f64>,
    pub val_iou: Option<f64>,
    pub threshold: f32,
    pub seconds: f64,
}

/// Receives progress; every method has a quiet default.
pub trait Observer {
    fn started(&mut self, _info: &RunInfo) {}
    fn step(&mut self, _report: &StepReport) {}
    fn epoch(&mut self, _report: &EpochReport) {}
    fn warn(&mut self, _message: &str) {}
}

/// Discards every report.
pub struct Quiet;
impl Observer for Quiet {}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Finished {
        steps: u64,
        best_dice: Option<f64>,
    },
    /// Stopped early (`--max-steps` or a stop request) with a resumable checkpoint.
    Stopped {
        steps: u64,
    },
}

/// Files of the run folder.
pub fn last_path(run: &Path) -> PathBuf {
    run.join("last.safetensors")
}

pub fn best_path(run: &Path) -> PathBuf {
    run.join("best.safetensors")
}

/// Whether `dir` already holds a training run (which a fresh run must not
/// overwrite).
pub fn holds_run(dir: &Path) -> bool {
    last_path(dir).exists()
}

pub fn already_a_run(dir: &Path) -> TrainError {
    TrainError::Options(format!(
        "{} already holds a training run; continue it with --resume {0}, or choose another --out",
        dir.display()
    ))
}

/// The run's position, kept in the optimiser file's metadata.
struct Position {
    epoch: usize,
    /// Batches of `epoch` already trained.
    epoch_step: usize,
    best_dice: Option<f64>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |error| TrainError::Io { path: path.to_path_buf(), error }
}

/// Checks every file's header (and sizes, without `--size`); with
/// `skip_bad`, unreadable samples are dropped and counted.
fn preflight(
    samples: Vec<Sample>,
    opts: &TrainOptions,
    obs: &mut dyn Observer,
    skipped: &mut usize,
) -> Result<Vec<Sample>> {
    let mut kept = Vec::with_capacity(samples.len());
    let mut first: Option<(PathBuf, (usize, usize))> = None;
    for s in samples {
        let files = [Some(&s.image), s.mask.as_ref()];
        let sizes: std::result::Result<Vec<(usize, usize)>, DataError> =
            files.iter().flatten().map(|p| dimensions(p)).collect();
        let sizes = match sizes {
            Ok(sizes) => sizes,
            Err(e) if opts.skip_bad => {
                obs.warn(&format!("skipping: {e}"));
                *skipped += 1;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if opts.size.is_none() {
            match &first {
                None => first = Some((s.image.clone(), sizes[0])),
                Some((path, size)) => {
                    if let Some(other) = sizes.iter().find(|z| *z != size) {
                        return Err(DataError::SizeMismatch {
                            first: path.clone(),
                            first_h: size.0,
                            first_w: size.1,
                            other: s.image.clone(),
                            other_h: other.0,
                            other_w: other.1,
                        }
                        .into());
                    }
                }
            }
        }
        kept.push(s);
    }
    Ok(kept)
}

/// Shuffled batches of one epoch with their augmentation, a pure function
/// of (seed, epoch): a resumed run rebuilds exactly the same plan.
fn epoch_plan(n: usize, batch: usize, seed: u64, epoch: usize, augment: bool, square: bool) -> Vec<BatchPlan> {
    let mut rng = Rng::new(seed ^ (epoch as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    // Non-square images keep their shape: identity, 180 degrees and the two flips.
    const SHAPE_KEEPING: [u8; 4] = [0, 2, 4, 6];
    order
        .chunks_exact(batch)
        .map(|chunk| {
            chunk
                .iter()
                .map(|&i| {
                    let t = match (augment, square) {
                        (false, _) => 0,
                        (true, true) => rng.below(8) as u8,
                        (true, false) => SHAPE_KEEPING[rng.below(4)],
                    };
                    (i, t)
                })
                .collect()
        })
        .collect()
}

struct Validation {
    dice: f64,
    iou: f64,
    threshold: f32,
    all_empty: bool,
}

/// Mean per-image Dice and IoU of the validation set at `threshold`, or at
/// the threshold (0.05 .. 0.95) that maximises the Dice.
fn validate(
    gpu: &Gpu,
    graph: &Graph,
    samples: &[Sample],
    decode: &DecodeOptions,
    choice: ThresholdChoice,
) -> Result<Validation> {
    let cfg = &graph.arch.config;
    let mut scored = Vec::with_capacity(samples.len());
    for s in samples {
        let (image, mask) = load_sample(s, 0, decode)?;
        graph.set_input(gpu, &image.data)?;
        graph.forward(gpu)?;
        let logits = graph.read_logits(gpu)?;
        let truth: Vec<bool> = mask.data.iter().map(|&v| v > 0.5).collect();
        scored.push((foreground_scores(cfg, &logits, image.h * image.w), truth));
    }
    let at = |t: f32| {
        let (mut dice, mut iou, mut empty) = (0.0, 0.0, true);
        for (scores, truth) in &scored {
            let pred: Vec<bool> = scores.iter().map(|&s| s >= t).collect();
            empty &= !pred.iter().any(|&p| p);
            dice += metrics::dice(&pred, truth);
            iou += metrics::iou(&pred, truth);
        }
        let n = scored.len().max(1) as f64;
        Validation { dice: dice / n, iou: iou / n, threshold: t, all_empty: empty }
    };
    Ok(match choice {
        ThresholdChoice::Fixed(t) => at(t),
        ThresholdChoice::Auto => (1..20)
            .map(|k| at(k as f32 / 20.0))
            .fold(None, |best: Option<Validation>, v| match best {
                Some(b) if b.dice >= v.dice => Some(b),
                _ => Some(v),
            })
            .expect("thresholds to try"),
    })
}

/// Runs (or resumes) a training run. `stop` is polled after every step: set
/// it (e.g. on Ctrl-C) to stop with a resumable checkpoint.
pub fn train(gpu: &Gpu, opts: &TrainOptions, stop: &AtomicBool, obs: &mut dyn Observer) -> Result<Outcome> {
    if opts.batch == 0 || opts.epochs == 0 {
        return Err(TrainError::Options("--batch and --epochs must be at least 1".into()));
    }
    if !opts.resume && holds_run(&opts.out) {
        return Err(already_a_run(&opts.out));
    }
    std::fs::create_dir_all(&opts.out).map_err(io_err(&opts.out))?;
    let run = &opts.out;

    // Model and weights: a resumed run's last checkpoint, --init, or a fresh init.
    let resumed = if opts.resume { Some(checkpoint::load(&last_path(run))?) } else { None };
    let initial = match (&resumed, &opts.init) {
        (Some(c), _) => Some(c.clone()),
        (None, Some(path)) => Some(checkpoint::load(path)?),
        (None, None) => None,
    };
    let (arch, params, meta) = match initial {
        Some(c) => (c.arch, c.params, c.meta),
        None => {
            opts.config.validate()?;
            let arch = Architecture::new(&opts.config);
            let params = ParamSet::init(&arch, opts.seed);
            (arch, params, CheckpointMeta::default())
        }
    };
    let cfg = arch.config.clone();

    // Data.
    let dataset = Dataset::scan(&opts.data)?;
    let labelled = dataset.labelled()?;
    let unlabelled = dataset.samples.len() - labelled.len();
    if unlabelled > 0 {
        obs.warn(&format!("{unlabelled} images have no mask and are not used"));
    }
    let (train_set, val_set) = split(&labelled, dataset.layout, &opts.val, opts.seed)?;
    let mut skipped_files = 0;
    let train_set = preflight(train_set, opts, obs, &mut skipped_files)?;
    let val_set = preflight(val_set, opts, obs, &mut skipped_files)?;
    if train_set.len() < opts.batch {
        return Err(TrainError::Options(format!(
            "--batch {} is larger than the {} training images",
            opts.batch,
            train_set.len()
        )));
    }
    let (h, w) = match opts.size {
        Some(size) => size,
        None => dimensions(&train_set[0].image)?,
    };
    let shape = Shape::new(opts.batch, cfg.in_channels, h, w);
    let decode = DecodeOptions {
        channels: cfg.in_channels,
        size: opts.size,
        skip_bad: opts.skip_bad,
        labels: cfg.label_classes(),
    };

    // Graphs: training, and inference at batch 1 for validation.
    let setup = TrainSetup {
        optimizer: opts.optimizer,
        sigmoid_loss: opts.sigmoid_loss,
        class_weights: opts.class_weights.clone(),
        dropout_seed: (opts.seed as u32) ^ 0x5eed_d20f,
    };
    let val_shape = shape.with_c(cfg.in_channels).with_n(1);
    let need = Graph::memory_need(gpu, &arch, &params, shape, Some(&setup))?
        + Graph::memory_need(gpu, &arch, &params, val_shape, None)?;
    gpu.check_memory(|| format!("training at {shape} (and validation at {val_shape})"), need)?;
    // Kept through the first step and the first validation.
    let _prewarm = Graph::prewarm(gpu, &arch, &params, &[(shape, Some(&setup)), (val_shape, None)])?;
    let mut graph = Graph::new(gpu, &arch, &params, shape, Some(&setup))?;
    let val_graph = Graph::new(gpu, &arch, &params, val_shape, None)?;

    let steps_per_epoch = train_set.len() / opts.batch;
    let mut position = Position { epoch: 0, epoch_step: 0, best_dice: None };
    let mut step: u64 = 0;
    if resumed.is_some() {
        let saved = resumed.as_ref().and_then(|c| c.meta.step);
        let state = matching_optim(run, &arch, graph.is_adam(), saved)?;
        remove_stale_temporaries(run);
        let values: Vec<Vec<f32>> = state.tensors.into_iter().map(|(_, _, v)| v).collect();
        graph.write_optimizer_state(gpu, &values)?;
        step = state.step;
        let get = |key: &str| state.position.get(key).and_then(|v| v.parse::<usize>().ok());
        position.epoch = get("epoch").unwrap_or(0);
        position.epoch_step = get("epoch_step").unwrap_or(0);
        position.best_dice = state.position.get("best_dice").and_then(|v| v.parse().ok());
    }
    let total_steps = (opts.epochs * steps_per_epoch) as u64;
    obs.started(&RunInfo {
        adapter: gpu.describe(),
        train_images: train_set.len(),
        val_images: val_set.len(),
        skipped_files,
        shape,
        steps_per_epoch,
        total_steps,
        start_step: step,
    });

    let loss_log = run.join("loss.csv");
    truncate_log(&loss_log, |s| s <= step)?;
    truncate_log(&run.join("metrics.csv"), |e| e < position.epoch as u64)?;
    let header = needs_header(&loss_log);
    let mut loss_file =
        std::fs::OpenOptions::new().create(true).append(true).open(&loss_log).map_err(io_err(&loss_log))?;
    if header {
        append_line(&mut loss_file, "step,epoch,loss").map_err(io_err(&loss_log))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .map_err(|error| TrainError::Io { path: run.clone(), error })?;
    let train_samples = Arc::new(train_set);
    let square = h == w;
    let mut meta = meta;
    meta.train_size = Some((h, w));
    // The step belongs to `last` alone (save_last sets it); a resumed run's
    // best checkpoint must not inherit the step it resumed from.
    meta.step = None;
    let mut threshold = meta.threshold.unwrap_or(DEFAULT_THRESHOLD);

    while position.epoch < opts.epochs {
        let epoch = position.epoch;
        let started = Instant::now();
        let plans = epoch_plan(train_samples.len(), opts.batch, opts.seed, epoch, opts.augment, square);
        let mut loader =
            Prefetcher::start(&runtime, train_samples.clone(), plans[position.epoch_step..].to_vec(), decode, 4);
        let mut loss_sum = 0.0;
        let mut losses = 0;
        while let Some(batch) = loader.next_batch() {
            let batch = batch?;
            for e in &batch.skipped {
                obs.warn(&format!("replaced in its batch: {e}"));
            }
            let t0 = Instant::now();
            graph.set_input(gpu, &batch.images)?;
            graph.set_target(gpu, &batch.masks)?;
            graph.step(gpu, (step + 1) as u32, true)?;
            let loss = graph.loss(gpu)?;
            if !loss.is_finite() {
                return Err(TrainError::NonFinite { step: step + 1, loss, run: run.clone() });
            }
            step += 1;
            position.epoch_step += 1;
            loss_sum += loss as f64;
            losses += 1;
            append_line(&mut loss_file, &format!("{step},{epoch},{loss}")).map_err(io_err(&loss_log))?;
            obs.step(&StepReport {
                step,
                epoch,
                loss,
                images_per_s: batch.n as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            });
            // A limit reached on an epoch's last step stops after its
            // validation (below), so the epoch's results are not lost.
            let at_limit = opts.max_steps.is_some_and(|m| step >= m) && position.epoch_step < plans.len();
            if at_limit || stop.load(Ordering::Relaxed) {
                save_last(gpu, &graph, run, &meta, step, &position)?;
                return Ok(Outcome::Stopped { steps: step });
            }
        }
        // End of epoch: validate, then save.
        let trained = graph.read_params(gpu)?;
        let val = if val_set.is_empty() {
            None
        } else {
            val_graph.write_params(gpu, &trained)?;
            let v = validate(gpu, &val_graph, &val_set, &decode, opts.threshold)?;
            if v.all_empty {
                obs.warn(&format!(
                    "every validation prediction is empty at threshold {}: the outputs never reach it \
                     (try --threshold auto)",
                    v.threshold
                ));
            }
            Some(v)
        };
        if let Some(v) = &val {
            threshold = v.threshold;
            meta.threshold = Some(threshold);
        }
        position.epoch += 1;
        position.epoch_step = 0;
        let report = EpochReport {
            epoch,
            train_loss: loss_sum / losses.max(1) as f64,
            val_dice: val.as_ref().map(|v| v.dice),
            val_iou: val.as_ref().map(|v| v.iou),
            threshold,
            seconds: started.elapsed().as_secs_f64(),
        };
        append_metrics(run, &report)?;
        if let Some(v) = &val {
            if position.best_dice.is_none_or(|b| v.dice > b) {
                position.best_dice = Some(v.dice);
                checkpoint::save(&best_path(run), &arch, &trained, &meta)?;
            }
        }
        save_last(gpu, &graph, run, &meta, step, &position)?;
        obs.epoch(&report);
        if opts.max_steps.is_some_and(|m| step >= m) && position.epoch < opts.epochs {
            return Ok(Outcome::Stopped { steps: step });
        }
    }
    Ok(Outcome::Finished { steps: step, best_dice: position.best_dice })
}

/// Writes `last.safetensors` and its optimiser state with the position.
fn save_last(gpu: &Gpu, graph: &Graph, run: &Path, meta: &CheckpointMeta, step: u64, pos: &Position) -> Result<()> {
    let params = graph.read_params(gpu)?;
    let names = checkpoint::optim_names(&params.specs, graph.is_adam());
    let values = graph.read_optimizer_state(gpu)?;
    let mut position = std::collections::HashMap::from([
        ("optimizer".to_string(), if graph.is_adam() { "adam" } else { "sgd" }.to_string()),
        ("epoch".to_string(), pos.epoch.to_string()),
        ("epoch_step".to_string(), pos.epoch_step.to_string()),
    ]);
    if let Some(d) = pos.best_dice {
        position.insert("best_dice".into(), d.to_string());
    }
    let state =
        OptimState { tensors: names.into_iter().zip(values).map(|((n, s), v)| (n, s, v)).collect(), step, position };
    // Both files carry the step: resuming pairs the weights with the
    // optimiser state of the same step (`matching_optim`), never a mix.
    let last = last_path(run);
    let optim = checkpoint::optim_path(&last);
    // The previous optimiser state stays until `last` itself is replaced
    // (see `matching_optim`).
    if optim.exists() {
        let prev = prev_optim_path(run);
        std::fs::rename(&optim, &prev).map_err(io_err(&prev))?;
    }
    checkpoint::save_optim(&optim, &state)?;
    checkpoint::save(&last, &graph.arch, &params, &CheckpointMeta { step: Some(step), ..meta.clone() })?;
    Ok(())
}

fn append_metrics(run: &Path, r: &EpochReport) -> Result<()> {
    let path = run.join("metrics.csv");
    let new = needs_header(&path);
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    if new {
        append_line(&mut f, "epoch,train_loss,val_dice,val_iou,threshold,seconds").map_err(io_err(&path))?;
    }
    let row = format!(
        "{},{:.6},{},{},{},{:.1}",
        r.epoch,
        r.train_loss,
        opt(r.val_dice),
        opt(r.val_iou),
        r.threshold,
        r.seconds
    );
    append_line(&mut f, &row).map_err(io_err(&path))
}

/// Appends `line` and its newline in one write (`writeln!` on a file makes
/// a write per formatted piece, and a run killed between them left half a
/// row for the resumed run to append to).
fn append_line(f: &mut std::fs::File, line: &str) -> std::io::Result<()> {
    f.write_all(format!("{line}\n").as_bytes())
}

/// Drops the rows of a CSV log whose first column fails `keep` (rows
/// written after the last checkpoint by a run that was killed), so a
/// resumed run's logs have each step and epoch once. The log is replaced
/// atomically (when it was rewritten in place, a kill between its
/// truncation and the write lost the rows before the checkpoint too: a run
/// killed 12 times lost metrics.csv's header and first epoch,
/// tests/crash.rs).
fn truncate_log(path: &Path, keep: impl Fn(u64) -> bool) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| line.split(',').next().and_then(|s| s.parse::<u64>().ok()).is_none_or(&keep))
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    if body == text {
        return Ok(());
    }
    checkpoint::replace_file(path, body.as_bytes()).map_err(io_err(path))
}

/// Whether a log at `path` needs its header: absent or empty (a run killed
/// between creating the file and writing to it leaves it empty).
fn needs_header(path: &Path) -> bool {
    std::fs::metadata(path).map_or(true, |m| m.len() == 0)
}

/// The optimiser state saved before `last.safetensors`' current one.
fn prev_optim_path(run: &Path) -> PathBuf {
    run.join("last.optim.prev.safetensors")
}

/// The optimiser state that belongs to `last.safetensors` (saved at step
/// `step`). A save writes the optimiser state, then the weights, each file
/// atomically, after moving the previous state aside; a run killed between
/// the two leaves the weights one save behind the newest state, and the
/// previous state is then theirs. That one is moved back into place, so a
/// second crash finds a consistent pair too.
fn matching_optim(run: &Path, arch: &Architecture, adam: bool, step: Option<u64>) -> Result<OptimState> {
    let (optim, prev) = (checkpoint::optim_path(&last_path(run)), prev_optim_path(run));
    let mut found = Vec::new();
    for path in [&optim, &prev] {
        if !path.exists() {
            continue;
        }
        let state = checkpoint::load_optim(path, &arch.params(), adam)?;
        if Some(state.step) == step {
            if path == &prev {
                std::fs::rename(&prev, &optim).map_err(io_err(&optim))?;
            }
            return Ok(state);
        }
        found.push(format!("{} is at step {}", path.display(), state.step));
    }
    Err(TrainError::Options(format!(
        "{} (step {step:?}) has no matching optimiser state ({}); start again, or continue from the weights \
         alone with --init",
        last_path(run).display(),
        if found.is_empty() { "none found".to_string() } else { found.join(", ") }
    )))
}

/// Removes the temporary files of checkpoint writes that a killed run left.
fn remove_stale_temporaries(run: &Path) {
    let Ok(entries) = std::fs::read_dir(run) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_log_keeps_its_header_and_earlier_rows_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.csv");
        std::fs::write(&path, "epoch,train_loss\n0,0.5\n1,0.4\n2,0.3\n3,0.2\n").unwrap();
        truncate_log(&path, |e| e < 2).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "epoch,train_loss\n0,0.5\n1,0.4\n");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["metrics.csv"], "a temporary file was left behind");
        // Nothing to cut: the file is left as it is.
        truncate_log(&path, |e| e < 2).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "epoch,train_loss\n0,0.5\n1,0.4\n");
    }

    #[test]
    fn a_log_needs_its_header_when_absent_or_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.csv");
        assert!(needs_header(&path));
        std::fs::write(&path, "").unwrap();
        assert!(needs_header(&path), "a run killed after creating the log left it empty");
        std::fs::write(&path, "step,epoch,loss\n").unwrap();
        assert!(!needs_header(&path));
    }
}
