//! The command line: argument parsing and printing only; the work lives in
//! the library.

pub mod bench;
pub mod demo;
pub mod eval;
pub mod infer;
pub mod profile;
pub mod train;

use clap::{Args, Parser, Subcommand};
use dilaseg::gpu::{adapter_reports, BackendChoice, Gpu, GpuError, GpuOptions};

#[derive(Parser)]
#[command(
    name = "dilaseg",
    version,
    about = "Dilated fully-convolutional networks for medical image segmentation, on the GPU through WGSL",
    long_about = "Trains and runs LungNet-style dilated fully-convolutional segmenters (Anthimopoulos et al., \
                  IEEE JBHI 2019) entirely on the GPU through hand-written WGSL compute shaders, on any \
                  Vulkan, Metal, DX12 or GL adapter, including software ones such as Mesa's lavapipe."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// List every GPU adapter with the limits and features that matter here,
    /// and say which one dilaseg would use.
    Devices {
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// Train a model on a folder of labelled images.
    Train(Box<train::TrainArgs>),
    /// Segment images with a trained model: masks, score maps, overlays.
    Infer(Box<infer::InferArgs>),
    /// Score a model, or masks already written, against labelled images.
    Eval(Box<eval::EvalArgs>),
    /// Time every kernel of a forward pass or training step.
    Profile(Box<profile::ProfileArgs>),
    /// Time the workloads of BENCH.md against the adapter's measured peaks (one JSON object per line).
    Bench(Box<bench::BenchArgs>),
    /// The first run: train on the bundled chest X-rays, segment and score the ones kept aside,
    /// and write checkpoints, curves, metrics, overlays and GIFs into a fresh run folder.
    Demo(Box<demo::DemoArgs>),
}

/// How to choose the GPU adapter; shared by every command that uses one.
#[derive(Args, Debug)]
pub struct GpuArgs {
    /// Graphics API: auto, vulkan, metal, dx12 or gl. `auto` honours WGPU_BACKEND.
    #[arg(long, default_value = "auto", value_parser = parse_backend)]
    backend: BackendChoice,
    /// Use the adapter whose name contains this text (case-insensitive).
    #[arg(long, env = "WGPU_ADAPTER_NAME")]
    adapter: Option<String>,
    /// Use a software (CPU) adapter such as lavapipe, e.g. on a machine with no GPU or in CI.
    #[arg(long)]
    software: bool,
}

impl GpuArgs {
    pub fn options(&self) -> GpuOptions {
        GpuOptions {
            backend: self.backend,
            adapter: self.adapter.clone(),
            software: self.software,
            ..Default::default()
        }
    }
}

/// How a trained model is run on images; shared by `infer` and `eval`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Run at each image's own size instead of the size the model was trained at.
    #[arg(long)]
    pub native: bool,
    /// Decision threshold (default: the checkpoint's, else 0.5).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Run in tiles of N x N pixels (each with a halo of the receptive field,
    /// and for instance-norm models the whole image's statistics gathered
    /// first, so the result is unchanged); by default only images too large
    /// for the device are tiled.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub tile: Option<u32>,
}

fn parse_backend(s: &str) -> Result<BackendChoice, GpuError> {
    s.parse()
}

pub fn devices(args: &GpuArgs) -> anyhow::Result<()> {
    for report in adapter_reports(args.backend) {
        println!("{report}\n");
    }
    let gpu = Gpu::new(&args.options())?;
    println!("dilaseg would use: {}", gpu.describe());
    Ok(())
}

/// Exit statuses (README, "Exit codes").
pub mod status {
    pub const OTHER: u8 = 1;
    pub const USAGE: u8 = 2; // clap's own, for bad arguments
    pub const PARTIAL: u8 = 3;
    pub const BAD_INPUT: u8 = 4;
    pub const DEVICE: u8 = 5;
}

/// The exit status for an error that stopped a command: bad input (data,
/// checkpoint, config), the device (none, lost, too small), or other.
pub fn error_status(e: &anyhow::Error) -> u8 {
    e.chain().find_map(classify).unwrap_or(status::OTHER)
}

fn classify(e: &(dyn std::error::Error + 'static)) -> Option<u8> {
    use dilaseg::data::DataError;
    use dilaseg::demo::DemoError;
    use dilaseg::model::checkpoint::CheckpointError;
    use dilaseg::model::config::ConfigError;
    use dilaseg::train::TrainError;
    let gpu = |g: &GpuError| match g {
        // Shapes come from the inputs; the backend name from the command line.
        GpuError::Shape { .. } => status::BAD_INPUT,
        GpuError::UnknownBackend(_) => status::USAGE,
        _ => status::DEVICE,
    };
    if let Some(g) = e.downcast_ref::<GpuError>() {
        return Some(gpu(g));
    }
    // A checkpoint that cannot be written (a full disk) is not bad input.
    let checkpoint = |c: &CheckpointError| match c {
        CheckpointError::Io { error, .. } if error.kind() != std::io::ErrorKind::NotFound => None,
        _ => Some(status::BAD_INPUT),
    };
    if let Some(c) = e.downcast_ref::<CheckpointError>() {
        return checkpoint(c);
    }
    if let Some(t) = e.downcast_ref::<TrainError>() {
        return match t {
            TrainError::Gpu(g) => Some(gpu(g)),
            TrainError::Checkpoint(c) => checkpoint(c),
            TrainError::Data(_) | TrainError::Config(_) => Some(status::BAD_INPUT),
            _ => None,
        };
    }
    if let Some(d) = e.downcast_ref::<DemoError>() {
        return match d {
            DemoError::Train(t) => classify(t),
            DemoError::Gpu(g) => Some(gpu(g)),
            DemoError::Checkpoint(c) => checkpoint(c),
            DemoError::Data(_) => Some(status::BAD_INPUT),
            _ => None,
        };
    }
    (e.is::<DataError>() || e.is::<ConfigError>()).then_some(status::BAD_INPUT)
}
