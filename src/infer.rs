//! Inference on whole images: each image is scaled to the size the model
//! was trained at (or kept at its own size), run through the network, and
//! the output is mapped back to the image's size and thresholded. An input
//! too large for the device runs in tiles, each with a halo of the
//! receptive-field radius, so the stitched output equals the whole one. Over many
//! images, decoding (ahead) and encoding (behind) run on tokio's blocking
//! pool while the GPU works.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::data::image::{load_image, load_mask, Planes};
use crate::data::DataError;
use crate::export;
use crate::gpu::{Gpu, GpuError};
use crate::metrics;
use crate::model::checkpoint::Checkpoint;
use crate::model::config::NormKind;
use crate::model::graph::Graph;
use crate::model::output::{activate, scores, DEFAULT_THRESHOLD};
use crate::model::params::ParamSet;
use crate::model::Architecture;
use crate::shape::Shape;

/// One image's result at the image's own size.
pub struct Prediction {
    /// The output after softmax or sigmoid (linear: as is), C x H x W.
    pub output: Planes,
    /// Foreground score per pixel.
    pub scores: Vec<f32>,
    pub mask: Vec<bool>,
}

/// A model ready to run, with one graph per input size it has seen.
pub struct Predictor<'g> {
    gpu: &'g Gpu,
    pub arch: Architecture,
    params: ParamSet,
    pub threshold: f32,
    pub train_size: Option<(usize, usize)>,
    /// Tiles of this many pixels a side (plus the halo), when forced.
    pub tile: Option<usize>,
    graphs: HashMap<(usize, usize), Graph>,
}

/// Tile sides tried in turn when an input is too large for the device and
/// no `--tile` is given.
const AUTO_TILES: [usize; 3] = [256, 128, 64];

impl<'g> Predictor<'g> {
    /// `threshold` overrides the checkpoint's (else MODEL.md's 0.5).
    pub fn new(gpu: &'g Gpu, ckpt: Checkpoint, threshold: Option<f32>) -> Self {
        Predictor {
            gpu,
            threshold: threshold.or(ckpt.meta.threshold).unwrap_or(DEFAULT_THRESHOLD),
            train_size: ckpt.meta.train_size,
            arch: ckpt.arch,
            params: ckpt.params,
            tile: None,
            graphs: HashMap::new(),
        }
    }

    /// Runs the network on `image` at the training size (or, with `native`
    /// or no recorded size, at the image's own) and maps the result back.
    pub fn predict(&mut self, image: &Planes, native: bool) -> Result<Prediction, GpuError> {
        let (h, w) = match (native, self.train_size) {
            (false, Some(size)) => size,
            _ => (image.h, image.w),
        };
        let input = image.resize_bilinear(h, w);
        let logits = match self.tile {
            Some(t) if t < h.max(w) => self.tiled(&input, t)?,
            _ => self.auto(&input)?,
        };
        let cfg = &self.arch.config;
        let output =
            Planes { c: cfg.out_channels, h, w, data: activate(cfg, &logits, h * w) }.resize_bilinear(image.h, image.w);
        let scores = scores(cfg, &output.data, image.h * image.w);
        let mask = scores.iter().map(|&s| s >= self.threshold).collect();
        Ok(Prediction { output, scores, mask })
    }

    /// The logits of `input` in one pass, or in ever smaller tiles while
    /// the device refuses the size.
    fn auto(&mut self, input: &Planes) -> Result<Vec<f32>, GpuError> {
        let mut result = self.whole(input);
        for tile in AUTO_TILES {
            match result {
                Err(GpuError::TooLarge { .. }) if tile < input.h.max(input.w) => result = self.tiled(input, tile),
                _ => break,
            }
        }
        result
    }

    /// The logits of `input` (C x H x W planes) in one pass.
    fn whole(&mut self, input: &Planes) -> Result<Vec<f32>, GpuError> {
        let (h, w) = (input.h, input.w);
        if !self.graphs.contains_key(&(h, w)) {
            let shape = Shape::new(1, self.arch.config.in_channels, h, w);
            let graph = Graph::new(self.gpu, &self.arch, &self.params, shape, None)?;
            self.graphs.insert((h, w), graph);
        }
        let graph = &self.graphs[&(h, w)];
        graph.set_input(self.gpu, &input.data)?;
        graph.forward(self.gpu)?;
        graph.read_logits(self.gpu)
    }

    /// The logits of `input` from tiles of `tile` pixels a side, each run
    /// with a halo of the receptive-field radius around it (clipped at the
    /// image's edges, where the whole image is zero-padded too), so every
    /// kept output pixel sees exactly what it sees in one pass. Refused for
    /// instance norm, whose statistics span the whole image.
    fn tiled(&mut self, input: &Planes, tile: usize) -> Result<Vec<f32>, GpuError> {
        if self.arch.config.norm == NormKind::Instance {
            return Err(GpuError::Shape {
                kernel: "tiled inference".into(),
                message: format!(
                    "this model normalises each image as a whole (instance norm), so tiles would change its \
                     output; a {}x{} input is too large for this device in one piece: run it at a smaller size",
                    input.h, input.w
                ),
            });
        }
        let halo = self.arch.receptive_radius();
        let (h, w, c_out) = (input.h, input.w, self.arch.config.out_channels);
        let mut logits = vec![0.0f32; c_out * h * w];
        for y0 in (0..h).step_by(tile) {
            for x0 in (0..w).step_by(tile) {
                let (y1, x1) = ((y0 + tile).min(h), (x0 + tile).min(w));
                let (wy0, wx0) = (y0.saturating_sub(halo), x0.saturating_sub(halo));
                let (wy1, wx1) = ((y1 + halo).min(h), (x1 + halo).min(w));
                let window = input.crop(wy0, wx0, wy1 - wy0, wx1 - wx0);
                let out = self.whole(&window)?;
                let (wh, ww) = (window.h, window.w);
                for c in 0..c_out {
                    for y in y0..y1 {
                        let src = (c * wh + y - wy0) * ww + (x0 - wx0);
                        let dst = (c * h + y) * w + x0;
                        logits[dst..dst + (x1 - x0)].copy_from_slice(&out[src..src + (x1 - x0)]);
                    }
                }
            }
        }
        Ok(logits)
    }
}

/// One image to segment, and its ground-truth mask if known.
#[derive(Clone, Debug)]
pub struct Item {
    pub image: PathBuf,
    pub truth: Option<PathBuf>,
    /// Output file names start with this (unique within a job).
    pub stem: String,
}

#[derive(Clone, Debug)]
pub struct InferOptions {
    pub out: PathBuf,
    /// Run at each image's own size instead of the training size.
    pub native: bool,
    /// Also write the raw output as .npy.
    pub npy: bool,
    /// Also write the blog's animated GIF.
    pub gif: bool,
}

/// What happened to one item.
pub struct ItemReport<'a> {
    pub item: &'a Item,
    /// Dice against the ground truth, when known; Err with the reason on failure.
    pub result: Result<Option<f64>, String>,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub images: usize,
    pub failures: Vec<(PathBuf, String)>,
    pub seconds: f64,
    /// Mean Dice over the images with a known ground truth.
    pub mean_dice: Option<f64>,
}

/// A decoded item: the image, its truth, or why it could not be read.
type Decoded = (Item, Result<(Planes, Option<Vec<bool>>), DataError>);

fn decode(item: &Item, channels: usize) -> Result<(Planes, Option<Vec<bool>>), DataError> {
    let image = load_image(&item.image, channels)?;
    let truth = match &item.truth {
        None => None,
        Some(path) => {
            let m = load_mask(path)?;
            if (m.h, m.w) != (image.h, image.w) {
                return Err(DataError::Image {
                    path: path.clone(),
                    message: format!("mask is {}x{} but its image is {}x{}", m.h, m.w, image.h, image.w),
                });
            }
            Some(m.data.iter().map(|&v| v > 0.5).collect())
        }
    };
    Ok((image, truth))
}

/// Grey values for the overlay (luma of an RGB input).
fn grey(image: &Planes) -> Vec<f32> {
    let plane = image.h * image.w;
    if image.c == 3 {
        (0..plane)
            .map(|p| 0.299 * image.data[p] + 0.587 * image.data[plane + p] + 0.114 * image.data[2 * plane + p])
            .collect()
    } else {
        image.data[..plane].to_vec()
    }
}

fn write_outputs(
    opts: &InferOptions,
    stem: &str,
    image: &Planes,
    pred: &Prediction,
    truth: Option<&[bool]>,
) -> Result<(), String> {
    let (w, h) = (image.w, image.h);
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("writing {what}: {e}");
    let path = |suffix: &str| opts.out.join(format!("{stem}{suffix}"));
    export::mask_image(&pred.mask, w, h).save(path("_mask.png")).map_err(|e| fail("the mask", &e))?;
    export::score_image(&pred.scores, w, h).save(path("_prob.png")).map_err(|e| fail("the score map", &e))?;
    let grey = grey(image);
    export::overlay(&grey, &pred.mask, truth, w, h).save(path("_overlay.png")).map_err(|e| fail("the overlay", &e))?;
    if opts.gif {
        export::write_gif(&path(".gif"), &grey, &pred.mask, truth, w, h).map_err(|e| fail("the GIF", &e))?;
    }
    if opts.npy {
        let o = &pred.output;
        export::write_npy(&path(".npy"), &o.data, [o.c, o.h, o.w]).map_err(|e| fail("the .npy", &e))?;
    }
    Ok(())
}

/// Segments every item into `opts.out`, reporting each as it finishes.
/// A failed item is reported and the rest go on.
pub fn run(
    predictor: &mut Predictor,
    items: Vec<Item>,
    opts: &InferOptions,
    report: &mut dyn FnMut(ItemReport),
) -> Summary {
    let started = Instant::now();
    let channels = predictor.arch.config.in_channels;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().expect("a tokio runtime");
    let (tx, mut rx) = mpsc::channel::<tokio::task::JoinHandle<Decoded>>(4);
    let queued = items.clone();
    runtime.spawn(async move {
        for item in queued {
            let job = tokio::task::spawn_blocking(move || {
                let decoded = decode(&item, channels);
                (item, decoded)
            });
            if tx.send(job).await.is_err() {
                break;
            }
        }
    });
    // Encodes in flight (the item, its Dice, the write job), at most a few
    // so memory stays bounded however many images there are.
    let mut writes = std::collections::VecDeque::new();
    let mut summary = Summary { images: items.len(), ..Summary::default() };
    let mut all_dice = Vec::new();
    while let Some(job) = runtime.block_on(rx.recv()) {
        let Ok((item, decoded)) = runtime.block_on(job) else { continue };
        let predicted = decoded.map_err(|e| e.to_string()).and_then(|(image, truth)| {
            let pred = predictor.predict(&image, opts.native).map_err(|e| e.to_string())?;
            Ok((image, truth, pred))
        });
        match predicted {
            Ok((image, truth, pred)) => {
                let dice = truth.as_ref().map(|t| metrics::dice(&pred.mask, t));
                let (opts, stem) = (opts.clone(), item.stem.clone());
                let write =
                    runtime.spawn_blocking(move || write_outputs(&opts, &stem, &image, &pred, truth.as_deref()));
                writes.push_back((item, dice, write));
                while writes.len() > 4 || writes.front().is_some_and(|w| w.2.is_finished()) {
                    finish(&runtime, writes.pop_front().expect("non-empty"), &mut summary, &mut all_dice, report);
                }
            }
            Err(e) => {
                summary.failures.push((item.image.clone(), e.clone()));
                report(ItemReport { item: &item, result: Err(e) });
            }
        }
    }
    for w in writes {
        finish(&runtime, w, &mut summary, &mut all_dice, report);
    }
    summary.mean_dice = (!all_dice.is_empty()).then(|| all_dice.iter().sum::<f64>() / all_dice.len() as f64);
    summary.seconds = started.elapsed().as_secs_f64();
    summary
}

type Write = (Item, Option<f64>, tokio::task::JoinHandle<Result<(), String>>);

/// Waits for one item's files and reports it.
fn finish(
    runtime: &tokio::runtime::Runtime,
    (item, dice, write): Write,
    summary: &mut Summary,
    all_dice: &mut Vec<f64>,
    report: &mut dyn FnMut(ItemReport),
) {
    let result = runtime.block_on(write).map_err(|e| e.to_string()).and_then(|r| r).map(|()| dice);
    match &result {
        Ok(Some(d)) => all_dice.push(*d),
        Ok(None) => {}
        Err(e) => summary.failures.push((item.image.clone(), e.clone())),
    }
    report(ItemReport { item: &item, result });
}
