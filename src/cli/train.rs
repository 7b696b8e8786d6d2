//! `dilaseg train`: arguments, the progress bar, Ctrl-C.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use dilaseg::data::{parse_subjects, ValSplit};
use dilaseg::gpu::Gpu;
use dilaseg::model::checkpoint::parse_size;
use dilaseg::model::config::ModelConfig;
use dilaseg::model::graph::Optimizer;
use dilaseg::nn::{self, SigmoidLoss};
use dilaseg::train::{self, EpochReport, Observer, Outcome, RunInfo, StepReport, ThresholdChoice, TrainOptions};
use indicatif::{ProgressBar, ProgressStyle};

use super::GpuArgs;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OptimizerArg {
    Adam,
    Sgd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SigmoidLossArg {
    Bce,
    Dice,
    #[value(name = "bce+dice")]
    BceDice,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Folder of labelled images: images/ + masks/ (same names), or Kaggle's
    /// {subject}_{frame}.ext with {subject}_{frame}_mask.ext.
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Model preset: lungnet (the paper) or seo2018 (the 2018 blog variant).
    #[arg(long, default_value = "lungnet", conflicts_with = "config")]
    preset: String,
    /// JSON model config with MODEL.md's fields, for custom variants.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Start from these weights (fine-tuning); the model config comes from the checkpoint.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Run folder: checkpoints, metrics.csv, loss.csv.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Images per step (default: the preset's, 1 for lungnet, 2 for seo2018).
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this many steps in all (with a resumable checkpoint).
    #[arg(long)]
    max_steps: Option<u64>,
    #[arg(long, value_enum, default_value = "adam")]
    optimizer: OptimizerArg,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.0)]
    momentum: f32,
    /// L2 weight decay (PyTorch's form), for Adam and SGD.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Resize images (bilinear) and masks (nearest) to HxW, e.g. 128x128.
    #[arg(long, value_parser = parse_size_arg)]
    size: Option<(usize, usize)>,
    /// Validation subjects (Kaggle layout), e.g. 31-35 or 1,4,7-9.
    #[arg(long, conflicts_with = "val_fraction")]
    val_subjects: Option<String>,
    /// Fraction held out for validation: by subject (Kaggle layout) or by file.
    #[arg(long, default_value_t = 0.2)]
    val_fraction: f64,
    /// The paper's 8 flip/rotate-by-90 augmentations.
    #[arg(long)]
    augment: bool,
    /// Warn about unreadable files and go on without them.
    #[arg(long)]
    skip_bad: bool,
    /// Decision threshold: a number, or `auto` for the one that maximises the validation Dice.
    #[arg(long, default_value = "0.5", value_parser = parse_threshold)]
    threshold: ThresholdChoice,
    /// Loss of a sigmoid output.
    #[arg(long, value_enum, default_value = "bce")]
    loss: SigmoidLossArg,
    /// Cross-entropy class weights, e.g. 0.5,2.
    #[arg(long, value_delimiter = ',')]
    class_weights: Option<Vec<f32>>,
    /// Continue the run in this folder from its last checkpoint, with its
    /// options (a new --max-steps may be given; run from the same folder,
    /// as relative paths are kept as typed).
    #[arg(long)]
    resume: Option<PathBuf>,
    #[command(flatten)]
    gpu: GpuArgs,
}

pub(super) fn parse_size_arg(s: &str) -> Result<(usize, usize), String> {
    parse_size(s).ok_or_else(|| format!("{s:?}: expected HxW, e.g. 128x128"))
}

fn parse_threshold(s: &str) -> Result<ThresholdChoice, String> {
    if s == "auto" {
        return Ok(ThresholdChoice::Auto);
    }
    s.parse::<f32>()
        .ok()
        .filter(|t| t.is_finite())
        .map(ThresholdChoice::Fixed)
        .ok_or_else(|| format!("{s:?}: expected a number or auto"))
}

/// Saved in the run folder so `--resume` continues with the same options.
const ARGS_FILE: &str = "args.json";

impl TrainArgs {
    fn options(&self) -> anyhow::Result<TrainOptions> {
        let config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                ModelConfig::from_json(&text).with_context(|| format!("{}", path.display()))?
            }
            None => ModelConfig::preset(&self.preset)?,
        };
        let (data, out) = (self.data.clone().expect("required"), self.out.clone().expect("required"));
        let mut opts = TrainOptions::new(data, config, out);
        opts.init = self.init.clone();
        opts.epochs = self.epochs;
        opts.batch = self.batch.unwrap_or(opts.batch);
        opts.seed = self.seed;
        opts.max_steps = self.max_steps;
        opts.optimizer = match self.optimizer {
            OptimizerArg::Adam => {
                Optimizer::Adam(nn::Adam { weight_decay: self.weight_decay, ..nn::Adam::with_lr(self.lr) })
            }
            OptimizerArg::Sgd => {
                Optimizer::Sgd(nn::Sgd { lr: self.lr, momentum: self.momentum, weight_decay: self.weight_decay })
            }
        };
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("--lr {}: must be a positive number", self.lr);
        }
        opts.size = self.size;
        opts.val = match &self.val_subjects {
            Some(s) => ValSplit::Subjects(parse_subjects(s)?),
            None => ValSplit::Fraction(self.val_fraction),
        };
        opts.augment = self.augment;
        opts.skip_bad = self.skip_bad;
        opts.threshold = self.threshold;
        opts.sigmoid_loss = match self.loss {
            SigmoidLossArg::Bce => SigmoidLoss { bce: true, dice: false },
            SigmoidLossArg::Dice => SigmoidLoss { bce: false, dice: true },
            SigmoidLossArg::BceDice => SigmoidLoss { bce: true, dice: true },
        };
        opts.class_weights = self.class_weights.clone();
        Ok(opts)
    }
}

/// Draws the progress bar: loss, images/s and ETA; epoch summaries above it.
pub(super) struct Bar {
    pub(super) bar: ProgressBar,
    /// Launch time, to report how long start-up took until the first step.
    launched: std::time::Instant,
    first_step_seen: bool,
}

impl Bar {
    /// A training progress bar; `launched` is when the program started.
    pub(super) fn new(launched: std::time::Instant) -> Self {
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps, {msg}, ETA {eta}").expect("valid template"),
        );
        Bar { bar, launched, first_step_seen: false }
    }

    /// A line above the bar, or on stderr when there is no bar (output is
    /// not a terminal): logs must keep warnings and epoch summaries.
    fn line(&self, text: String) {
        if self.bar.is_hidden() {
            eprintln!("{text}");
        } else {
            self.bar.println(text);
        }
    }
}

impl Observer for Bar {
    fn started(&mut self, info: &RunInfo) {
        self.bar.set_length(info.total_steps);
        self.bar.set_position(info.start_step);
        self.bar.reset_eta();
        self.line(format!(
            "training on {}: {} images ({} for validation{}), batches of {}, {} steps per epoch",
            info.adapter,
            info.train_images,
            info.val_images,
            if info.skipped_files > 0 { format!(", {} unreadable skipped", info.skipped_files) } else { String::new() },
            info.shape,
            info.steps_per_epoch
        ));
    }

    fn step(&mut self, r: &StepReport) {
        if !self.first_step_seen {
            self.first_step_seen = true;
            self.line(format!("first step done {:.1} s after launch", self.launched.elapsed().as_secs_f64()));
        }
        self.bar.set_position(r.step);
        self.bar.set_message(format!("epoch {} loss {:.4} {:.2} img/s", r.epoch + 1, r.loss, r.images_per_s));
    }

    fn epoch(&mut self, r: &EpochReport) {
        let val = match (r.val_dice, r.val_iou) {
            (Some(d), Some(i)) => format!("validation Dice {d:.4} IoU {i:.4} at threshold {:.2}", r.threshold),
            _ => "no validation images".to_string(),
        };
        self.line(format!("epoch {}: train loss {:.4}, {val} ({:.0} s)", r.epoch + 1, r.train_loss, r.seconds));
    }

    fn warn(&mut self, message: &str) {
        self.line(format!("warning: {message}"));
    }
}

/// Sets `flag` on the first Ctrl-C (the run then stops after its step).
pub(super) fn stop_on_ctrl_c(flag: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
            eprintln!("\nstopping after this step; resume with --resume");
            flag.store(true, Ordering::SeqCst);
        }
    });
}

pub fn run(args: &TrainArgs, argv: &[String]) -> anyhow::Result<()> {
    let launched = std::time::Instant::now();
    let (mut opts, gpu_args) = match &args.resume {
        Some(run) => {
            let saved = run.join(ARGS_FILE);
            let text = std::fs::read_to_string(&saved)
                .with_context(|| format!("{}: not a run folder (no {ARGS_FILE})", run.display()))?;
            let argv: Vec<String> = serde_json::from_str(&text).with_context(|| format!("{}", saved.display()))?;
            let super::Cli { command: super::Command::Train(original) } =
                <super::Cli as clap::Parser>::try_parse_from(&argv)
                    .with_context(|| format!("{}: saved arguments no longer parse", saved.display()))?
            else {
                bail!("{}: not a training run", saved.display());
            };
            let mut opts = original.options()?;
            // The saved options, but this invocation's step limit.
            opts.max_steps = args.max_steps;
            opts.resume = true;
            opts.out = run.clone();
            (opts, &args.gpu)
        }
        None => (args.options()?, &args.gpu),
    };
    if !opts.resume {
        if train::holds_run(&opts.out) {
            return Err(train::already_a_run(&opts.out).into());
        }
        std::fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
        let saved = opts.out.join(ARGS_FILE);
        std::fs::write(&saved, serde_json::to_string(argv)?).with_context(|| format!("writing {}", saved.display()))?;
    }
    opts.out = absolute(&opts.out);
    let gpu = Gpu::new(&gpu_args.options())?;
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_ctrl_c(stop.clone());
    let mut observer = Bar::new(launched);
    let outcome = train::train(&gpu, &opts, &stop, &mut observer);
    observer.bar.finish_and_clear();
    let says_so = matches!(outcome, Err(train::TrainError::NonFinite { .. }));
    if outcome.is_err() && !says_so && train::holds_run(&opts.out) {
        // A lost device, a full disk: the run so far is safe.
        eprintln!("the last checkpoint is kept in {}; continue with: dilaseg train --resume {0}", opts.out.display());
    }
    match outcome? {
        Outcome::Finished { steps, best_dice } => {
            println!(
                "finished after {steps} steps; best validation Dice {}",
                best_dice.map_or("n/a".into(), |d| format!("{d:.4}"))
            );
            println!(
                "checkpoints: {} and {}",
                train::best_path(&opts.out).display(),
                train::last_path(&opts.out).display()
            );
        }
        Outcome::Stopped { steps } => {
            println!("stopped after {steps} steps; continue with: dilaseg train --resume {}", opts.out.display());
        }
    }
    Ok(())
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
