//! `dilaseg demo`: the first run on a fresh machine (see `dilaseg::demo`).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Args;
use dilaseg::demo::{self, DemoOptions};
use dilaseg::gpu::{Gpu, GpuOptions};
use dilaseg::train::Outcome;

use super::train::{parse_size_arg, stop_on_ctrl_c, Bar};
use super::GpuArgs;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Labelled images [default: the bundled assets/lung-cxr]
    #[arg(long)]
    data: Option<PathBuf>,
    /// Run folder [default: runs/demo-N, the first N not taken]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Training size HxW
    #[arg(long, default_value = "64x64", value_parser = parse_size_arg)]
    size: (usize, usize),
    /// Maps per dilated layer (lungnet has 32; the head narrows in proportion)
    #[arg(long, default_value_t = 16)]
    width: usize,
    #[arg(long, default_value_t = 12)]
    epochs: usize,
    /// Stop after this many training steps (e.g. for a quick check)
    #[arg(long)]
    max_steps: Option<u64>,
    /// Fraction of the images kept aside to choose the model and score it
    #[arg(long, default_value_t = 0.25)]
    holdout: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    gpu: GpuArgs,
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let launched = std::time::Instant::now();
    let opts = DemoOptions {
        data: args.data.clone().unwrap_or_else(demo::bundled_data),
        out: args.out.clone().unwrap_or_else(demo::fresh_run_folder),
        size: args.size,
        width: args.width,
        epochs: args.epochs,
        max_steps: args.max_steps,
        holdout: args.holdout,
        seed: args.seed,
    };
    // The best adapter present; with none, a software one, said so.
    let gpu = match Gpu::new(&args.gpu.options()) {
        Ok(gpu) => gpu,
        Err(e) if !args.gpu.options().software => {
            eprintln!("no GPU adapter opened ({e}); falling back to a software adapter");
            Gpu::new(&GpuOptions { software: true, ..args.gpu.options() })?
        }
        Err(e) => return Err(e.into()),
    };
    let kind = if gpu.info.device_type == wgpu::DeviceType::Cpu { "a software adapter" } else { "a GPU" };
    eprintln!("demo on {} ({kind}): lungnet of width {}, images {}", gpu.describe(), args.width, opts.data.display());
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_ctrl_c(stop.clone());
    let mut observer = Bar::new(launched);
    let report = demo::run(&gpu, &opts, &stop, &mut observer);
    observer.bar.finish_and_clear();
    let report = report?;
    let steps = match report.outcome {
        Outcome::Finished { steps, .. } | Outcome::Stopped { steps } => steps,
    };
    super::eval::print_table(&report.eval);
    println!(
        "\ntrained {steps} steps on {} images in {:.0} s; {} held-out images",
        report.train_images,
        launched.elapsed().as_secs_f64(),
        report.holdout_images
    );
    println!("run folder      {}", report.run.display());
    println!("model           {}", report.model.display());
    println!(
        "training logs   {} and {}",
        report.run.join("loss.csv").display(),
        report.run.join("metrics.csv").display()
    );
    println!("curves          {}", report.curves.display());
    println!("metrics         {} and {}", report.metrics.0.display(), report.metrics.1.display());
    println!("masks, overlays and GIFs of the held-out images in {}", report.images.display());
    match report.eval.means() {
        Some(m) => println!("hold-out Dice  {:.4} (mean over {} images)", m.dice, report.eval.images.len()),
        None => println!("hold-out Dice  n/a (no image scored)"),
    }
    println!("next: dilaseg infer --model {} YOUR_IMAGES --out results", report.model.display());
    Ok(())
}
