//! `dilaseg infer`: inputs (files, folders, glob patterns), a progress bar
//! and the closing summary.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use dilaseg::data::Dataset;
use dilaseg::gpu::Gpu;
use dilaseg::infer::{self, InferOptions, Item, Predictor};
use dilaseg::model::checkpoint;
use indicatif::{ProgressBar, ProgressStyle};

use super::{GpuArgs, PredictArgs};

#[derive(Args, Debug)]
pub struct InferArgs {
    /// Checkpoint written by `dilaseg train` (e.g. runs/first/best.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Images, folders (any layout dilaseg reads; masks found there are the
    /// ground truth) or quoted glob patterns such as "scans/*.png".
    #[arg(required = true)]
    inputs: Vec<String>,
    /// Folder for the results: NAME_mask.png, NAME_prob.png (16-bit),
    /// NAME_overlay.png, and NAME.npy and NAME.gif on request.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    run: PredictArgs,
    /// Folder of ground-truth masks named like the images, outlined on the overlays.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Also write the output after softmax/sigmoid as NumPy .npy (f32, C x H x W).
    #[arg(long)]
    npy: bool,
    /// Also write an animated GIF per image: the image, the ground truth,
    /// the prediction and their overlays (as in the 2018 blog post).
    #[arg(long)]
    gif: bool,
    /// Replace results already in --out (else an image whose results exist fails, and they are kept).
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    gpu: GpuArgs,
}

/// The mask for `image` in `dir`: same file name, or same stem with another image extension.
fn truth_in(dir: &Path, image: &Path) -> Option<PathBuf> {
    let name = image.file_name()?;
    let same = dir.join(name);
    if same.is_file() {
        return Some(same);
    }
    let stem = image.file_stem()?.to_string_lossy().into_owned();
    ["png", "jpg", "jpeg", "tif", "tiff"].iter().map(|e| dir.join(format!("{stem}.{e}"))).find(|p| p.is_file())
}

/// Expands the inputs into items, reporting inputs that match nothing.
fn items(args: &InferArgs) -> (Vec<Item>, Vec<(PathBuf, String)>) {
    let mut found: Vec<(PathBuf, Option<PathBuf>)> = Vec::new();
    let mut bad = Vec::new();
    for input in &args.inputs {
        let path = PathBuf::from(input);
        if path.is_dir() {
            match Dataset::scan(&path) {
                Ok(ds) => found.extend(ds.samples.into_iter().map(|s| (s.image, s.mask))),
                Err(e) => bad.push((path, e.to_string())),
            }
        } else if path.is_file() {
            found.push((path, None));
        } else if input.contains(['*', '?', '[']) {
            let matches: Vec<PathBuf> =
                glob::glob(input).map(|paths| paths.flatten().filter(|p| p.is_file()).collect()).unwrap_or_default();
            if matches.is_empty() {
                bad.push((path, "the pattern matches no file".into()));
            }
            found.extend(matches.into_iter().map(|p| (p, None)));
        } else {
            bad.push((path, "no such file or folder".into()));
        }
    }
    let mut stems = HashSet::new();
    let items = found
        .into_iter()
        .map(|(image, truth)| {
            let truth = truth.or_else(|| args.truth.as_deref().and_then(|dir| truth_in(dir, &image)));
            let base = image.file_stem().map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
            // Output names come from the file name only (never its folders),
            // so results stay inside --out; repeated names get a suffix.
            let mut stem = base.clone();
            let mut k = 1;
            while !stems.insert(stem.clone()) {
                k += 1;
                stem = format!("{base}_{k}");
            }
            Item { image, truth, stem }
        })
        .collect();
    (items, bad)
}

/// Segments the inputs; returns whether every input succeeded.
pub fn run(args: &InferArgs) -> anyhow::Result<bool> {
    let ckpt = checkpoint::load(&args.model)?;
    let (items, mut failures) = items(args);
    for (path, why) in &failures {
        eprintln!("error: {}: {why}", path.display());
    }
    if items.is_empty() {
        anyhow::bail!("no images to segment");
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let gpu = Gpu::new(&args.gpu.options())?;
    let mut predictor = Predictor::new(&gpu, ckpt, args.run.threshold);
    predictor.tile = args.run.tile.map(|t| t as usize);
    let scale = match (args.run.native, predictor.train_size) {
        (false, Some((h, w))) => format!("at the training size {h}x{w}"),
        _ => "at each image's own size".into(),
    };
    eprintln!("segmenting {} images on {} {scale}, threshold {}", items.len(), gpu.describe(), predictor.threshold);
    let bar = ProgressBar::new(items.len() as u64)
        .with_style(ProgressStyle::with_template("{bar:30} {pos}/{len} images, ETA {eta}").expect("valid template"));
    let opts = InferOptions {
        out: args.out.clone(),
        native: args.run.native,
        npy: args.npy,
        gif: args.gif,
        overwrite: args.overwrite,
    };
    let summary = infer::run(&mut predictor, items, &opts, &mut |r| {
        bar.inc(1);
        if let Err(e) = &r.result {
            bar.suspend(|| eprintln!("error: {}: {e}", r.item.image.display()));
        }
    });
    bar.finish_and_clear();
    let summary_failed = summary.failures.len();
    failures.extend(summary.failures);
    println!(
        "{} images, {} failed, {:.1} s ({:.2} images/s){}; results in {}",
        summary.images,
        failures.len(),
        summary.seconds,
        (summary.images - summary_failed) as f64 / summary.seconds.max(1e-9),
        summary.mean_dice.map_or(String::new(), |d| format!(", mean Dice {d:.4} against the ground truth")),
        args.out.display()
    );
    Ok(failures.is_empty())
}
