//! The command line: argument parsing and printing only; the work lives in
//! the library.

pub mod bench;
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
    /// so the result is unchanged); by default only images too large for the
    /// device are tiled. Not for instance-norm models (lungnet), whose
    /// statistics span the whole image.
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
