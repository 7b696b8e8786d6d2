//! Decoding and augmentation ahead of the GPU: each batch is decoded on
//! tokio's blocking pool, at most `depth` batches ahead of the consumer,
//! and handed over in plan order, so a seeded run sees the same batches
//! whatever the decode timing.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::image::{load_image, load_labels, load_mask, Planes};
use super::{DataError, Sample};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Model input channels (1: grey, 3: RGB).
    pub channels: usize,
    /// Resize every image and mask to (H, W).
    pub size: Option<(usize, usize)>,
    /// Replace an unreadable sample by another of its batch (and report it)
    /// instead of failing.
    pub skip_bad: bool,
    /// Masks are label maps of this many classes (a multi-class softmax
    /// model: `ModelConfig::label_classes`), else binary.
    pub labels: Option<usize>,
}

/// One batch to load: (sample index, dihedral transform 0..8) pairs.
pub type BatchPlan = Vec<(usize, u8)>;

/// A decoded batch, NCHW.
#[derive(Debug)]
pub struct Batch {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub images: Vec<f32>,
    /// N x 1 x H x W targets (0 or 1; with `DecodeOptions::labels`, class
    /// indices).
    pub masks: Vec<f32>,
    /// Samples that failed and were replaced (with `skip_bad`).
    pub skipped: Vec<DataError>,
}

/// An image and its mask, resized and transformed.
pub fn load_sample(sample: &Sample, transform: u8, opts: &DecodeOptions) -> Result<(Planes, Planes), DataError> {
    let mut image = load_image(&sample.image, opts.channels)?;
    let mask_path = sample
        .mask
        .as_ref()
        .ok_or_else(|| DataError::Image { path: sample.image.clone(), message: "has no mask".into() })?;
    let mut mask = match opts.labels {
        Some(classes) => {
            let (h, w, labels) = load_labels(mask_path, classes)?;
            Planes { c: 1, h, w, data: labels.into_iter().map(|l| l as f32).collect() }
        }
        None => load_mask(mask_path)?,
    };
    if let Some((h, w)) = opts.size {
        image = image.resize_bilinear(h, w);
        mask = mask.resize_nearest(h, w);
    } else if (mask.h, mask.w) != (image.h, image.w) {
        return Err(DataError::Image {
            path: mask_path.clone(),
            message: format!("mask is {}x{} but its image is {}x{}", mask.h, mask.w, image.h, image.w),
        });
    }
    Ok((image.dihedral(transform), mask.dihedral(transform)))
}

pub fn load_batch(samples: &[Sample], plan: &BatchPlan, opts: &DecodeOptions) -> Result<Batch, DataError> {
    let mut loaded = Vec::with_capacity(plan.len());
    let mut skipped = Vec::new();
    for &(i, t) in plan {
        match load_sample(&samples[i], t, opts) {
            Ok(pair) => {
                if let Some((first, _)) = loaded.first() {
                    let first: &Planes = first;
                    if (first.h, first.w) != (pair.0.h, pair.0.w) {
                        let (a, b) = (&samples[plan[0].0].image, &samples[i].image);
                        return Err(DataError::SizeMismatch {
                            first: a.clone(),
                            first_h: first.h,
                            first_w: first.w,
                            other: b.clone(),
                            other_h: pair.0.h,
                            other_w: pair.0.w,
                        });
                    }
                }
                loaded.push(pair);
            }
            Err(e) if opts.skip_bad => skipped.push(e),
            Err(e) => return Err(e),
        }
    }
    let Some((first, _)) = loaded.first() else {
        return Err(skipped.into_iter().next().expect("a batch plan is never empty"));
    };
    let (h, w) = (first.h, first.w);
    // Keep the batch size the graph was built for: repeat good samples.
    let good = loaded.len();
    for k in 0..skipped.len() {
        let again = loaded[k % good].clone();
        loaded.push(again);
    }
    let mut images = Vec::with_capacity(loaded.len() * opts.channels * h * w);
    let mut masks = Vec::with_capacity(loaded.len() * h * w);
    for (image, mask) in &loaded {
        images.extend_from_slice(&image.data);
        masks.extend_from_slice(&mask.data);
    }
    Ok(Batch { n: loaded.len(), h, w, images, masks, skipped })
}

/// Batches of `plans`, decoded ahead on the runtime's blocking pool.
pub struct Prefetcher {
    rx: mpsc::Receiver<JoinHandle<Result<Batch, DataError>>>,
    runtime: tokio::runtime::Handle,
}

impl Prefetcher {
    pub fn start(
        runtime: &tokio::runtime::Runtime,
        samples: Arc<Vec<Sample>>,
        plans: Vec<BatchPlan>,
        opts: DecodeOptions,
        depth: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(depth.max(1));
        runtime.spawn(async move {
            for plan in plans {
                let samples = samples.clone();
                let job = tokio::task::spawn_blocking(move || load_batch(&samples, &plan, &opts));
                if tx.send(job).await.is_err() {
                    break; // the consumer stopped early
                }
            }
        });
        Prefetcher { rx, runtime: runtime.handle().clone() }
    }

    /// The next batch in plan order (blocks until it is decoded); None at the end.
    pub fn next_batch(&mut self) -> Option<Result<Batch, DataError>> {
        self.runtime.block_on(async {
            let job = self.rx.recv().await?;
            Some(job.await.unwrap_or_else(|e| Err(DataError::Split(format!("a decoding task failed: {e}")))))
        })
    }
}
