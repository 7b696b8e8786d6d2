//! `dilaseg profile`: where a forward pass's or training step's time goes.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dilaseg::gpu::{Gpu, TimeSource};
use dilaseg::model::checkpoint::{self, parse_size};
use dilaseg::model::config::ModelConfig;
use dilaseg::model::params::ParamSet;
use dilaseg::model::Architecture;
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
    /// Also write every timed dispatch as Chrome trace-event JSON (open in Perfetto or chrome://tracing).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
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
    let mut graph = dilaseg::bench::synthetic_graph(&gpu, &arch, &params, shape, args.train)?;
    let profile = dilaseg::profile::profile(&gpu, &mut graph, args.train, args.iters)?;
    if let Some(path) = &args.trace {
        std::fs::write(path, serde_json::to_vec(&profile.to_trace())?)
            .with_context(|| format!("writing the trace {}", path.display()))?;
        eprintln!("trace of {} dispatches written to {}", profile.events.len(), path.display());
    }
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
    println!(
        "{:<60} {:>6} {:>11} {:>10} {:>6} {:>9} {:>8}",
        "kernel", "calls", "total ms", "mean ms", "share", "GFLOP/s", "GB/s"
    );
    for r in &profile.rows {
        // Only convolutions count arithmetic (BENCH.md); a dash elsewhere.
        let gflops = if r.cost.flops > 0.0 { format!("{:.2}", r.gflops()) } else { "-".into() };
        println!(
            "{:<60} {:>6} {:>11.2} {:>10.3} {:>5.1}% {:>9} {:>8.2}",
            r.name,
            r.calls,
            r.total_ms,
            r.total_ms / r.calls as f64,
            100.0 * r.total_ms / total,
            gflops,
            r.gbytes_per_s()
        );
    }
    for (phase, ms) in &profile.phases {
        println!("{:<60} {:>6} {:>11.2} per iteration", format!("{phase:?} total"), "", per_iter(*ms));
    }
    println!(
        "sum of kernels {:.2} ms in {:.0} launches per iteration; the step itself (one submission, CPU clock) {:.2} ms median",
        per_iter(total),
        profile.launches_per_iter(),
        profile.step_ms
    );
    println!(
        "the warm-up iteration {:.2} ms (on lavapipe a pipeline's first launch compiles it); its slowest launches:",
        profile.first_ms()
    );
    for (name, ms) in profile.slowest_first(dilaseg::profile::FIRST_SHOWN) {
        println!("  {name:<58} {ms:>11.2}");
    }
    Ok(())
}
