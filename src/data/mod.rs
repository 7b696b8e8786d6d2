//! Labelled image folders: layouts, the validation split, decoding and
//! augmentation ahead of the GPU.
//!
//! Layouts, detected automatically:
//! - paired folders: `images/X` with `masks/X` (same file name);
//! - Kaggle flat: `{subject}_{frame}.ext` with `{subject}_{frame}_mask.ext`
//!   beside it (the subject is the number before the first `_`);
//! - a plain folder of images (no masks: inference only).

pub mod image;
pub mod loader;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::rng::Rng;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {message}")]
    Image { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Folder { path: PathBuf, message: String },
    #[error("{0}")]
    Split(String),
    #[error(
        "images differ in size ({first}: {first_h}x{first_w}, {other}: {other_h}x{other_w}); \
         a batch needs one size: pass --size HxW to resize them"
    )]
    SizeMismatch { first: PathBuf, first_h: usize, first_w: usize, other: PathBuf, other_h: usize, other_w: usize },
}

impl DataError {
    /// The error as reported beside `item`'s path (a per-file line that
    /// names the file first): the bare reason where it is about that file,
    /// so the path is not said twice, the whole error where it names
    /// another (the item's mask).
    pub fn beside(self, item: &Path) -> String {
        match self {
            DataError::Image { path, message } if path == item => message,
            e => e.to_string(),
        }
    }
}

const EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "tif", "tiff"];

fn is_image(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Paired,
    Kaggle,
    Plain,
}

/// One image and its mask, if it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub image: PathBuf,
    pub mask: Option<PathBuf>,
    /// Kaggle layout: the subject number.
    pub subject: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct Dataset {
    pub root: PathBuf,
    pub layout: Layout,
    /// Sorted by file name, so every run sees one order.
    pub samples: Vec<Sample>,
}

fn list(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let folder_err = |e: std::io::Error| DataError::Folder { path: dir.to_path_buf(), message: e.to_string() };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(folder_err)? {
        let path = entry.map_err(folder_err)?.path();
        if path.is_file() && is_image(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

impl Dataset {
    pub fn scan(dir: &Path) -> Result<Dataset, DataError> {
        if !dir.is_dir() {
            return Err(DataError::Folder { path: dir.to_path_buf(), message: "not a folder".into() });
        }
        let (images, masks) = (dir.join("images"), dir.join("masks"));
        let (layout, samples) = if images.is_dir() {
            let samples: Vec<Sample> = list(&images)?
                .into_iter()
                .map(|image| {
                    let mask = masks.join(image.file_name().expect("listed files have names"));
                    Sample { mask: mask.is_file().then_some(mask), image, subject: None }
                })
                .collect();
            (Layout::Paired, samples)
        } else {
            let files = list(dir)?;
            let is_mask = |p: &Path| stem(p).ends_with("_mask");
            if files.iter().any(|p| is_mask(p)) {
                let masks: std::collections::HashMap<String, &PathBuf> =
                    files.iter().filter(|p| is_mask(p)).map(|p| (stem(p), p)).collect();
                let samples: Vec<Sample> = files
                    .iter()
                    .filter(|p| !is_mask(p))
                    .map(|image| {
                        let mask = masks.get(&format!("{}_mask", stem(image))).map(|p| (*p).clone());
                        let subject = stem(image).split('_').next().and_then(|s| s.parse().ok());
                        Sample { image: image.clone(), mask, subject }
                    })
                    .collect();
                (Layout::Kaggle, samples)
            } else {
                let samples: Vec<Sample> =
                    files.into_iter().map(|image| Sample { image, mask: None, subject: None }).collect();
                (Layout::Plain, samples)
            }
        };
        if samples.is_empty() {
            return Err(DataError::Folder {
                path: dir.to_path_buf(),
                message: format!("no images ({}) found", EXTENSIONS.join(", ")),
            });
        }
        Ok(Dataset { root: dir.to_path_buf(), layout, samples })
    }

    /// The samples that have masks; an error when there are none.
    pub fn labelled(&self) -> Result<Vec<Sample>, DataError> {
        let labelled: Vec<Sample> = self.samples.iter().filter(|s| s.mask.is_some()).cloned().collect();
        if labelled.is_empty() {
            let hint = match self.layout {
                Layout::Paired => "no file in images/ has a mask of the same name in masks/",
                Layout::Kaggle => "no image has a {name}_mask file beside it",
                Layout::Plain => "expected images/ and masks/ folders, or Kaggle {name}_mask files",
            };
            return Err(DataError::Folder { path: self.root.clone(), message: format!("no labelled images: {hint}") });
        }
        Ok(labelled)
    }
}

/// How to hold out validation images.
#[derive(Clone, Debug, PartialEq)]
pub enum ValSplit {
    /// Kaggle layout: these subjects.
    Subjects(Vec<(u32, u32)>),
    /// A fraction of the subjects (Kaggle layout) or of the files, drawn
    /// with the run's seed.
    Fraction(f64),
}

/// Parses "31-35" or "1,4,7-9" into inclusive ranges.
pub fn parse_subjects(s: &str) -> Result<Vec<(u32, u32)>, DataError> {
    let bad =
        || DataError::Split(format!("--val-subjects {s:?}: expected numbers and ranges such as 31-35 or 1,4,7-9"));
    s.split(',')
        .map(|part| {
            let part = part.trim();
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b): (u32, u32) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
            if a > b {
                return Err(bad());
            }
            Ok((a, b))
        })
        .collect()
}

/// Splits labelled samples into (train, validation): by subject for the
/// Kaggle layout (frames of one subject are near-duplicates), by file
/// otherwise.
pub fn split(
    samples: &[Sample],
    layout: Layout,
    how: &ValSplit,
    seed: u64,
) -> Result<(Vec<Sample>, Vec<Sample>), DataError> {
    let held: Box<dyn Fn(&Sample) -> bool> = match (how, layout) {
        (ValSplit::Subjects(ranges), Layout::Kaggle) => {
            let ranges = ranges.clone();
            Box::new(move |s: &Sample| s.subject.is_some_and(|x| ranges.iter().any(|&(a, b)| (a..=b).contains(&x))))
        }
        (ValSplit::Subjects(_), _) => {
            return Err(DataError::Split(
                "--val-subjects needs the Kaggle layout ({subject}_{frame}.ext); use --val-fraction".into(),
            ))
        }
        (ValSplit::Fraction(f), _) if !(0.0..1.0).contains(f) => {
            return Err(DataError::Split(format!("--val-fraction {f}: must be in [0, 1)")))
        }
        (ValSplit::Fraction(f), Layout::Kaggle) => {
            let mut subjects: Vec<u32> =
                samples.iter().filter_map(|s| s.subject).collect::<BTreeSet<_>>().into_iter().collect();
            Rng::new(seed).shuffle(&mut subjects);
            let take = (subjects.len() as f64 * f).round() as usize;
            let chosen: BTreeSet<u32> = subjects.into_iter().take(take).collect();
            Box::new(move |s: &Sample| s.subject.is_some_and(|x| chosen.contains(&x)))
        }
        (ValSplit::Fraction(f), _) => {
            let mut order: Vec<usize> = (0..samples.len()).collect();
            Rng::new(seed).shuffle(&mut order);
            let take = (samples.len() as f64 * f).round() as usize;
            let chosen: BTreeSet<PathBuf> = order.into_iter().take(take).map(|i| samples[i].image.clone()).collect();
            Box::new(move |s: &Sample| chosen.contains(&s.image))
        }
    };
    let (val, train): (Vec<Sample>, Vec<Sample>) = samples.iter().cloned().partition(|s| held(s));
    if train.is_empty() {
        return Err(DataError::Split("the validation split leaves no training images".into()));
    }
    Ok((train, val))
}
