//! `dilaseg profile`: where a forward pass's or training step's time goes.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dilaseg::gpu::{Gpu, TimeSource};
use dilaseg::model::checkpoint::{self, parse_size};
use dilaseg::model::config::ModelConfig;
use dilaseg::model::graph::{Graph, Optimizer, TrainSetup};
use dilaseg::model::params::ParamSet;
use dilaseg::model::Architecture;
use dilaseg::nn::{self, SigmoidLoss};
use dilaseg::rng::Rng;
use dilaseg::Shape;

use super::GpuArgs;

#[derive(Args, Debug)]
pub struct ProfileArgs {
    /// Model preset: lungnet or seo2018.
    #[arg(long, default_value = "lungnet", conflicts_with_all = ["config", "model"])]
    preset: String,
    /// JSON model config.
    #[arg(long, conflicts_with = "model")]
    config: Option<PathBuf>,
    /// A checkpoint (its config and weights).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Input size HxW.
    #[arg(long, default_value = "256x256", value_parser = |s: &str| parse_size(s).ok_or_else(|| format!("{s:?}: expected HxW")))]
    size: (usize, usize),
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Profile a training step (forward, loss, backward, Adam) instead of a forward pass.
    #[arg(long)]
    train: bool,
    /// Timed iterations (after one warm-up).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    gpu: GpuArgs,
}

pub fn run(args: &ProfileArgs) -> anyhow::Result<()> {
    let (arch, params) = match (&args.model, &args.config) {
        (Some(path), _) => {
            let c = checkpoint::load(path)?;
            (c.arch, c.params)
        }
        (None, config) => {
            let cfg = match config {
                Some(p) => ModelConfig::from_json(
                    &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
                )
                .with_context(|| format!("{}", p.display()))?,
                None => ModelConfig::preset(&args.preset)?,
            };
            let arch = Architecture::new(&cfg);
            let params = ParamSet::init(&arch, 0);
            (arch, params)
        }
    };
    let gpu = Gpu::new(&args.gpu.options())?;
    let (h, w) = args.size;
    let shape = Shape::new(args.batch, arch.config.in_channels, h, w);
    let setup = TrainSetup {
        optimizer: Optimizer::Adam(nn::Adam::with_lr(1e-3)),
        sigmoid_loss: SigmoidLoss { bce: true, dice: false },
        class_weights: None,
        dropout_seed: 0,
    };
    let mut graph = Graph::new(&gpu, &arch, &params, shape, args.train.then_some(&setup))?;
    let mut rng = Rng::new(0);
    graph.set_input(&gpu, &(0..shape.numel()).map(|_| rng.uniform() as f32).collect::<Vec<_>>())?;
    if args.train {
        graph.set_target(&gpu, &(0..shape.n * h * w).map(|_| (rng.next_u64() % 2) as f32).collect::<Vec<_>>())?;
    }
    let profile = dilaseg::profile::profile(&gpu, &mut graph, args.train, args.iters)?;
    if args.json {
        let mut v = profile.to_json();
        v["adapter"] = gpu.describe().into();
        v["shape"] = shape.to_string().into();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let what = if args.train { "training step" } else { "forward pass" };
    let clock = match profile.source {
        TimeSource::GpuTimestamps => "GPU timestamps",
        TimeSource::CpuWallPerSubmission => "CPU wall time per submission (this adapter has no timestamps)",
    };
    println!("{what} of {shape} on {}, {} iterations; times from {clock}", gpu.describe(), profile.iters);
    let total = profile.total_ms();
    let per_iter = |ms: f64| ms / profile.iters as f64;
    println!("{:<60} {:>6} {:>11} {:>10} {:>6}", "kernel", "calls", "total ms", "mean ms", "share");
    for r in &profile.rows {
        println!(
            "{:<60} {:>6} {:>11.2} {:>10.3} {:>5.1}%",
            r.name,
            r.calls,
            r.total_ms,
            r.total_ms / r.calls as f64,
            100.0 * r.total_ms / total
        );
    }
    for (phase, ms) in &profile.phases {
        println!("{:<60} {:>6} {:>11.2} per iteration", format!("{phase:?} total"), "", per_iter(*ms));
    }
    println!(
        "sum of kernels {:.2} ms per iteration; the step itself (one submission, CPU clock) {:.2} ms median",
        per_iter(total),
        profile.step_ms
    );
    Ok(())
}
