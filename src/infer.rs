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
use crate::gpu::{Gpu, GpuError, Prewarm};
use crate::metrics;
use crate::model::checkpoint::Checkpoint;
use crate::model::config::{ModelConfig, NormKind};
use crate::model::graph::Graph;
use crate::model::output::{activate, scores, DEFAULT_THRESHOLD};
use crate::model::params::ParamSet;
use crate::model::{Architecture, ParamKind};
use crate::shape::Shape;

/// One image's result at the image's own size.
pub struct Prediction {
    /// The output after softmax or sigmoid (linear: as is), C x H x W.
    pub output: Planes,
    /// Foreground score per pixel.
    pub scores: Vec<f32>,
    pub mask: Vec<bool>,
}

/// A model ready to run on whole images.
pub struct Predictor<'g> {
    gpu: &'g Gpu,
    pub arch: Architecture,
    model: Model,
    pub threshold: f32,
    pub train_size: Option<(usize, usize)>,
    /// Tiles of this many pixels a side (plus the halo), when forced.
    pub tile: Option<usize>,
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
            model: Model::new(ckpt.arch.clone(), ckpt.params),
            arch: ckpt.arch,
            tile: None,
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
        let mut result = self.model.logits(self.gpu, input);
        for tile in AUTO_TILES {
            match result {
                Err(GpuError::TooLarge { .. }) if tile < input.h.max(input.w) => result = self.tiled(input, tile),
                _ => break,
            }
        }
        result
    }

    /// The logits of `input` from tiles of `tile` pixels a side, each run
    /// with a halo of the receptive-field radius around it (clipped at the
    /// image's edges, where the whole image is zero-padded too), so every
    /// kept output pixel sees exactly what it sees in one pass. Instance
    /// norm's statistics span the whole image: for such a model they are
    /// first gathered over the tiles, norm by norm, and then given to it.
    fn tiled(&mut self, input: &Planes, tile: usize) -> Result<Vec<f32>, GpuError> {
        let windows = Window::cover(input.h, input.w, tile, self.arch.receptive_radius());
        let mut given =
            if self.arch.config.norm == NormKind::Instance { Some(self.given_stats(input, &windows)?) } else { None };
        let (h, w, c_out) = (input.h, input.w, self.arch.config.out_channels);
        let mut logits = vec![0.0f32; c_out * h * w];
        for win in &windows {
            let window = win.input(input);
            let out = given.as_mut().unwrap_or(&mut self.model).logits(self.gpu, &window)?;
            let kept = win.kept(Planes { c: c_out, h: window.h, w: window.w, data: out });
            let tw = win.x1 - win.x0;
            for (c, y) in (0..c_out).flat_map(|c| (win.y0..win.y1).map(move |y| (c, y))) {
                let src = (c * kept.h + y - win.y0) * tw;
                let dst = (c * h + y) * w + win.x0;
                logits[dst..dst + tw].copy_from_slice(&kept.data[src..src + tw]);
            }
        }
        Ok(logits)
    }

    /// The model with the whole image's statistics given to every instance
    /// norm, gathered over the tiles in forward order: pass k runs each tile as far as norm k's
    /// input, with norms 0..k already given their statistics, and adds up
    /// the kept pixels (exact, since the halo covers all the pixels that
    /// reach them). About 13 partial passes over the tiles, then the last
    /// pass: several times the work of one pass, the price of exactness.
    fn given_stats(&self, input: &Planes, windows: &[Window]) -> Result<Model, GpuError> {
        let mut given = Model::given_stats(&self.arch, &self.model.params);
        let first = windows[0].input(input);
        // The first tile's prewarm guard kept through the passes.
        let (sites, _prewarm) = {
            let (graph, prewarm) = given.graph(self.gpu, first.h, first.w)?;
            (graph.norm_sites().len(), prewarm)
        };
        for k in 0..sites {
            let mut stats: Vec<Running> = Vec::new();
            let mut prefix = String::new();
            for win in windows {
                let window = win.input(input);
                let (graph, _prewarm) = given.graph(self.gpu, window.h, window.w)?;
                let site = &graph.norm_sites()[k];
                graph.set_input(self.gpu, &window.data)?;
                graph.forward_to(self.gpu, site)?;
                let c = site.channels();
                let data = graph.read_norm_input(self.gpu, site)?;
                let kept = win.kept(Planes { c, h: window.h, w: window.w, data });
                stats.resize(c, Running::default());
                for (s, plane) in stats.iter_mut().zip(kept.data.chunks(kept.h * kept.w)) {
                    s.add(plane);
                }
                prefix.clone_from(&site.prefix);
            }
            given.give(self.gpu, &prefix, &stats)?;
        }
        Ok(given)
    }
}

/// A tile of the output (rows y0..y1, columns x0..x1) and the window of
/// the input that is run for it: the tile grown by the halo, clipped at the
/// image's edges.
struct Window {
    y0: usize,
    y1: usize,
    x0: usize,
    x1: usize,
    wy0: usize,
    wy1: usize,
    wx0: usize,
    wx1: usize,
}

impl Window {
    /// Tiles of `tile` pixels a side covering h x w, with their windows.
    fn cover(h: usize, w: usize, tile: usize, halo: usize) -> Vec<Window> {
        let mut windows = Vec::new();
        for y0 in (0..h).step_by(tile) {
            for x0 in (0..w).step_by(tile) {
                let (y1, x1) = ((y0 + tile).min(h), (x0 + tile).min(w));
                windows.push(Window {
                    y0,
                    y1,
                    x0,
                    x1,
                    wy0: y0.saturating_sub(halo),
                    wx0: x0.saturating_sub(halo),
                    wy1: (y1 + halo).min(h),
                    wx1: (x1 + halo).min(w),
                });
            }
        }
        windows
    }

    fn input(&self, image: &Planes) -> Planes {
        image.crop(self.wy0, self.wx0, self.wy1 - self.wy0, self.wx1 - self.wx0)
    }

    /// The tile's part of something computed over the window.
    fn kept(&self, window: Planes) -> Planes {
        window.crop(self.y0 - self.wy0, self.x0 - self.wx0, self.y1 - self.y0, self.x1 - self.x0)
    }
}

/// Count, mean and centred sum of squares, merged part by part (Chan et
/// al.'s pairwise update) in f64, so the whole image's statistics come out
/// as a two-pass computation over it would give them.
#[derive(Clone, Copy, Default)]
struct Running {
    n: f64,
    mean: f64,
    m2: f64,
}

impl Running {
    fn add(&mut self, values: &[f32]) {
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let m2 = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>();
        let total = self.n + n;
        let delta = mean - self.mean;
        self.mean += delta * n / total;
        self.m2 += m2 + delta * delta * self.n * n / total;
        self.n = total;
    }
}

/// A model with its weights and one inference graph per input size seen.
struct Model {
    arch: Architecture,
    params: ParamSet,
    graphs: HashMap<(usize, usize), Graph>,
}

impl Model {
    fn new(arch: Architecture, params: ParamSet) -> Self {
        Model { arch, params, graphs: HashMap::new() }
    }

    /// An instance-norm model whose statistics are given (`give`) rather
    /// than computed over the input. That is batch norm in inference with
    /// the given statistics as its running ones: the same formula with the
    /// same eps, so the graph is the batch-norm model's, with these weights.
    fn given_stats(arch: &Architecture, params: &ParamSet) -> Self {
        let arch = Architecture::new(&ModelConfig { norm: NormKind::Batch, ..arch.config.clone() });
        let specs = arch.params();
        let values = specs
            .iter()
            .map(|s| match params.index(&s.name) {
                Some(i) => params.values[i].clone(),
                // Statistics not gathered yet: placeholders, whose effect
                // on later layers is never read.
                None => vec![if s.kind == ParamKind::RunningVar { 1.0 } else { 0.0 }; s.shape.numel()],
            })
            .collect();
        Model::new(arch, ParamSet { specs, values })
    }

    /// The plan for h x w, built on first use, and then the compiling of its
    /// kernels on the spare cores (`Gpu::prewarm`): keep it while the plan
    /// makes its first launches.
    fn graph(&mut self, gpu: &Gpu, h: usize, w: usize) -> Result<(&Graph, Option<Prewarm>), GpuError> {
        let mut prewarm = None;
        if !self.graphs.contains_key(&(h, w)) {
            let shape = Shape::new(1, self.arch.config.in_channels, h, w);
            let need = Graph::memory_need(gpu, &self.arch, &self.params, shape, None)?;
            gpu.check_memory(|| format!("inference at {shape}"), need)?;
            prewarm = Graph::prewarm(gpu, &self.arch, &self.params, &[(shape, None)])?;
            self.graphs.insert((h, w), Graph::new(gpu, &self.arch, &self.params, shape, None)?);
        }
        Ok((&self.graphs[&(h, w)], prewarm))
    }

    /// Gives norm `prefix` its statistics (the mean and biased variance).
    fn give(&mut self, gpu: &Gpu, prefix: &str, stats: &[Running]) -> Result<(), GpuError> {
        let mean = self.params.index(&format!("{prefix}.running_mean")).expect("a batch-norm model");
        let var = self.params.index(&format!("{prefix}.running_var")).expect("a batch-norm model");
        self.params.values[mean] = stats.iter().map(|s| s.mean as f32).collect();
        self.params.values[var] = stats.iter().map(|s| (s.m2 / s.n) as f32).collect();
        self.graphs.values().try_for_each(|g| g.write_params(gpu, &self.params))
    }

    /// The logits of `input` (C x H x W planes) in one pass.
    fn logits(&mut self, gpu: &Gpu, input: &Planes) -> Result<Vec<f32>, GpuError> {
        let (graph, _prewarm) = self.graph(gpu, input.h, input.w)?;
        graph.set_input(gpu, &input.data)?;
        graph.forward(gpu)?;
        graph.read_logits(gpu)
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
    /// Replace outputs that exist already (else the item fails, untouched).
    pub overwrite: bool,
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
    let suffixes = ["_mask.png", "_prob.png", "_overlay.png"].into_iter();
    let optional = [(opts.gif, ".gif"), (opts.npy, ".npy")].into_iter().filter_map(|(on, s)| on.then_some(s));
    if let Some(existing) = suffixes.chain(optional).map(path).find(|p| p.exists() && !opts.overwrite) {
        return Err(format!("{} exists already (--overwrite replaces it)", existing.display()));
    }
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
        let predicted = decoded.map_err(|e| e.beside(&item.image)).and_then(|(image, truth)| {
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
