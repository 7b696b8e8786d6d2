//! `dilaseg eval`: scores a model (or masks already written) against a
//! labelled folder; a table on stdout, per-image CSV and JSON in --out.

use std::path::PathBuf;

use clap::Args;
use dilaseg::data::Dataset;
use dilaseg::eval::{self, EvalReport};
use dilaseg::gpu::Gpu;
use dilaseg::infer::Predictor;
use dilaseg::model::checkpoint;

use super::{GpuArgs, PredictArgs};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint to evaluate.
    #[arg(long, required_unless_present = "pred", conflicts_with = "pred")]
    model: Option<PathBuf>,
    /// Score masks already written here ({name}_mask.png, as `dilaseg infer` writes them).
    #[arg(long)]
    pred: Option<PathBuf>,
    /// Labelled images: images/ + masks/, or the Kaggle layout.
    #[arg(long)]
    data: PathBuf,
    /// Folder for per_image.csv and summary.json.
    #[arg(long)]
    out: PathBuf,
    /// Replace a report already in --out.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    run: PredictArgs,
    #[command(flatten)]
    gpu: GpuArgs,
}

pub fn print_table(report: &EvalReport) {
    if let Some(m) = report.means() {
        println!("{:<10} {:>8}", "metric", "mean");
        for (name, v) in [("Dice", m.dice), ("IoU", m.iou), ("precision", m.precision), ("recall", m.recall)] {
            println!("{name:<10} {v:>8.4}");
        }
    }
    if let Some(c) = &report.confusion {
        let dice = dilaseg::metrics::class_dice(c);
        println!("\nclass  Dice     confusion row (truth x prediction)");
        for (k, row) in c.iter().enumerate() {
            println!("{k:<6} {:.4}   {row:?}", dice[k]);
        }
    }
}

/// Returns whether every image was scored.
pub fn run(args: &EvalArgs) -> anyhow::Result<bool> {
    if let Some(existing) = EvalReport::files(&args.out).into_iter().find(|p| p.exists() && !args.overwrite) {
        anyhow::bail!("{} exists already (--overwrite replaces it)", existing.display());
    }
    let dataset = Dataset::scan(&args.data)?;
    let samples = dataset.labelled()?;
    let report = match (&args.model, &args.pred) {
        (Some(model), _) => {
            let ckpt = checkpoint::load(model)?;
            let gpu = Gpu::new(&args.gpu.options())?;
            let mut predictor = Predictor::new(&gpu, ckpt, args.run.threshold);
            predictor.tile = args.run.tile.map(|t| t as usize);
            eprintln!("evaluating {} images on {}, threshold {}", samples.len(), gpu.describe(), predictor.threshold);
            eval::eval_model(&mut predictor, &samples, args.run.native)
        }
        (None, Some(pred)) => eval::eval_predictions(pred, &samples),
        (None, None) => unreachable!("clap requires --model or --pred"),
    };
    for (path, why) in &report.failures {
        eprintln!("error: {}: {why}", path.display());
    }
    let (csv, json) = report.write(&args.out)?;
    print_table(&report);
    println!(
        "\n{} images scored, {} failed; {} and {}",
        report.images.len(),
        report.failures.len(),
        csv.display(),
        json.display()
    );
    Ok(report.failures.is_empty())
}
