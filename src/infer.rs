//! Inference on whole images: each image is scaled to the size the model
//! was trained at (or kept at its own size), run through the network, and
//! the output is mapped back to the image's size and thresholded. Over many
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
    graphs: HashMap<(usize, usize), Graph>,
}

impl<'g> Predictor<'g> {
    /// `threshold` overrides the checkpoint's (else MODEL.md's 0.5).
    pub fn new(gpu: &'g Gpu, ckpt: Checkpoint, threshold: Option<f32>) -> Self {
        Predictor {
            gpu,
            threshold: threshold.or(ckpt.meta.threshold).unwrap_or(DEFAULT_THRESHOLD),
            train_size: ckpt.meta.train_size,
            arch: ckpt.arch,
            params: ckpt.params,
            graphs: HashMap::new(),
        }
    }

    /// Runs the network on `image` at the training size (or, with `native`
    /// or no recorded size, at the image's own) and maps the result back.
    pub fn predict(&mut self, image: &Planes, native: bool) -> Result<Prediction, GpuError> {
        let cfg = &self.arch.config;
        let (h, w) = match (native, self.train_size) {
            (false, Some(size)) => size,
            _ => (image.h, image.w),
        };
        let input = image.resize_bilinear(h, w);
        if !self.graphs.contains_key(&(h, w)) {
            let graph = Graph::new(self.gpu, &self.arch, &self.params, Shape::new(1, cfg.in_channels, h, w), None)?;
            self.graphs.insert((h, w), graph);
        }
        let graph = &self.graphs[&(h, w)];
        graph.set_input(self.gpu, &input.data)?;
        graph.forward(self.gpu)?;
        let logits = graph.read_logits(self.gpu)?;
        let output =
            Planes { c: cfg.out_channels, h, w, data: activate(cfg, &logits, h * w) }.resize_bilinear(image.h, image.w);
        let scores = scores(cfg, &output.data, image.h * image.w);
        let mask = scores.iter().map(|&s| s >= self.threshold).collect();
        Ok(Prediction { output, scores, mask })
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
