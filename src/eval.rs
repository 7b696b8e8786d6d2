//! Scoring segmentations against ground-truth masks: per image Dice, IoU,
//! precision and recall (Kaggle's rule: an empty prediction on an empty
//! mask scores 1), their means, and for multi-class models the per-class
//! Dice and the confusion matrix.

use std::path::{Path, PathBuf};

use crate::data::image::{load_image, load_labels, load_mask};
use crate::data::{DataError, Sample};
use crate::infer::Predictor;
use crate::metrics::{self, BinaryScores};
use crate::model::config::OutputKind;

pub struct ImageScore {
    pub image: PathBuf,
    pub scores: BinaryScores,
}

#[derive(Default)]
pub struct EvalReport {
    pub images: Vec<ImageScore>,
    pub failures: Vec<(PathBuf, String)>,
    /// Multi-class models: the confusion matrix (rows truth, columns prediction).
    pub confusion: Option<Vec<Vec<u64>>>,
}

impl EvalReport {
    pub fn means(&self) -> Option<BinaryScores> {
        let n = self.images.len() as f64;
        (n > 0.0).then(|| {
            let sum = |f: fn(&BinaryScores) -> f64| self.images.iter().map(|i| f(&i.scores)).sum::<f64>() / n;
            BinaryScores {
                dice: sum(|s| s.dice),
                iou: sum(|s| s.iou),
                precision: sum(|s| s.precision),
                recall: sum(|s| s.recall),
            }
        })
    }

    /// The summary as JSON: counts, mean scores, and per-class results.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({ "images": self.images.len(), "failed": self.failures.len() });
        if let Some(m) = self.means() {
            v["mean"] =
                serde_json::json!({ "dice": m.dice, "iou": m.iou, "precision": m.precision, "recall": m.recall });
        }
        if let Some(c) = &self.confusion {
            v["class_dice"] = serde_json::json!(metrics::class_dice(c));
            v["confusion"] = serde_json::json!(c);
        }
        v
    }

    /// The files `write` writes into `dir`.
    pub fn files(dir: &Path) -> [PathBuf; 2] {
        [dir.join("per_image.csv"), dir.join("summary.json")]
    }

    /// Writes `per_image.csv` and `summary.json` into `dir` (created) and
    /// returns their paths.
    pub fn write(&self, dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
        let with_path = |path: &Path| {
            let path = path.to_path_buf();
            move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
        };
        std::fs::create_dir_all(dir).map_err(with_path(dir))?;
        let [csv, json] = Self::files(dir);
        std::fs::write(&csv, self.csv()).map_err(with_path(&csv))?;
        let summary = serde_json::to_string_pretty(&self.to_json()).expect("JSON of numbers");
        std::fs::write(&json, summary).map_err(with_path(&json))?;
        Ok((csv, json))
    }

    /// Per-image rows: `image,dice,iou,precision,recall`.
    pub fn csv(&self) -> String {
        let mut out = String::from("image,dice,iou,precision,recall\n");
        for i in &self.images {
            let s = &i.scores;
            out.push_str(&format!(
                "{},{:.6},{:.6},{:.6},{:.6}\n",
                i.image.display(),
                s.dice,
                s.iou,
                s.precision,
                s.recall
            ));
        }
        out
    }
}

fn size_error(path: &Path, got: (usize, usize), want: (usize, usize)) -> DataError {
    DataError::Image {
        path: path.to_path_buf(),
        message: format!("is {}x{} but its image is {}x{}", got.0, got.1, want.0, want.1),
    }
}

/// Runs the model on every labelled sample and scores it. Multi-class
/// softmax models are scored foreground (any class but 0) against
/// background per image, and per class through the confusion matrix.
pub fn eval_model(predictor: &mut Predictor, samples: &[Sample], native: bool) -> EvalReport {
    let cfg = predictor.arch.config.clone();
    let multi = cfg.output == OutputKind::Softmax && cfg.out_channels > 2;
    let mut report = EvalReport {
        confusion: multi.then(|| vec![vec![0; cfg.out_channels]; cfg.out_channels]),
        ..Default::default()
    };
    for s in samples {
        let Some(mask_path) = &s.mask else { continue };
        let result = (|| -> Result<BinaryScores, String> {
            let image = load_image(&s.image, cfg.in_channels).map_err(|e| e.beside(&s.image))?;
            let pred = predictor.predict(&image, native).map_err(|e| e.to_string())?;
            let plane = image.h * image.w;
            if let Some(matrix) = &mut report.confusion {
                let (h, w, labels) = load_labels(mask_path, cfg.out_channels).map_err(|e| e.to_string())?;
                if (h, w) != (image.h, image.w) {
                    return Err(size_error(mask_path, (h, w), (image.h, image.w)).to_string());
                }
                let o = &pred.output.data;
                let argmax: Vec<usize> = (0..plane)
                    .map(|p| {
                        (0..cfg.out_channels).fold(0, |b, k| if o[k * plane + p] > o[b * plane + p] { k } else { b })
                    })
                    .collect();
                metrics::confusion(matrix, &argmax, &labels);
                let truth: Vec<bool> = labels.iter().map(|&l| l != 0).collect();
                return Ok(metrics::binary_scores(&pred.mask, &truth));
            }
            let mask = load_mask(mask_path).map_err(|e| e.to_string())?;
            if (mask.h, mask.w) != (image.h, image.w) {
                return Err(size_error(mask_path, (mask.h, mask.w), (image.h, image.w)).to_string());
            }
            let truth: Vec<bool> = mask.data.iter().map(|&v| v > 0.5).collect();
            Ok(metrics::binary_scores(&pred.mask, &truth))
        })();
        match result {
            Ok(scores) => report.images.push(ImageScore { image: s.image.clone(), scores }),
            Err(e) => report.failures.push((s.image.clone(), e)),
        }
    }
    report
}

/// The prediction written for `image` in `dir`: `{stem}_mask.png` (as
/// `dilaseg infer` names it), else a file of the image's own name.
pub fn prediction_for(dir: &Path, image: &Path) -> Option<PathBuf> {
    let stem = image.file_stem()?.to_string_lossy().into_owned();
    [dir.join(format!("{stem}_mask.png")), dir.join(image.file_name()?)].into_iter().find(|p| p.is_file())
}

/// Scores masks already written in `pred_dir` against the samples' masks.
pub fn eval_predictions(pred_dir: &Path, samples: &[Sample]) -> EvalReport {
    let mut report = EvalReport::default();
    for s in samples {
        let Some(mask_path) = &s.mask else { continue };
        let result = (|| -> Result<BinaryScores, String> {
            let pred_path = prediction_for(pred_dir, &s.image)
                .ok_or_else(|| format!("no prediction in {} (expected {{name}}_mask.png)", pred_dir.display()))?;
            let (pred, truth) =
                (load_mask(&pred_path).map_err(|e| e.to_string())?, load_mask(mask_path).map_err(|e| e.to_string())?);
            if (pred.h, pred.w) != (truth.h, truth.w) {
                return Err(size_error(&pred_path, (pred.h, pred.w), (truth.h, truth.w)).to_string());
            }
            let (p, t): (Vec<bool>, Vec<bool>) =
                (pred.data.iter().map(|&v| v > 0.5).collect(), truth.data.iter().map(|&v| v > 0.5).collect());
            Ok(metrics::binary_scores(&p, &t))
        })();
        match result {
            Ok(scores) => report.images.push(ImageScore { image: s.image.clone(), scores }),
            Err(e) => report.failures.push((s.image.clone(), e)),
        }
    }
    report
}
