//! What each fuzz target does with its input, shared by the targets
//! (fuzz_targets/, under libFuzzer) and by tests/fuzz_regressions.rs, which
//! replays the seeds and every input that ever crashed on stable Rust.
//! Errors are expected; a panic, an abort or a huge allocation is a bug.
#![allow(dead_code)] // each target uses one of these

use std::io::Cursor;
use std::path::{Path, PathBuf};

use dilaseg::data::loader::{load_sample, DecodeOptions};
use dilaseg::data::{split, Dataset, ValSplit};
use dilaseg::model::config::ModelConfig;
use dilaseg::model::{checkpoint, params::ParamSet, Architecture};

/// A checkpoint file: safetensors header, tensors, metadata (format,
/// config JSON, train_size, threshold, step).
pub fn checkpoint(data: &[u8]) {
    let _ = checkpoint::parse(data, Path::new("fuzz.safetensors"));
}

/// An optimiser-state file, read for the seo2018 preset with Adam and SGD.
pub fn optim_state(data: &[u8]) {
    let specs = Architecture::new(&ModelConfig::seo2018()).params();
    for adam in [true, false] {
        let _ = checkpoint::parse_optim(data, Path::new("fuzz.optim.safetensors"), &specs, adam);
    }
}

/// A model config (a `--config` file, or a checkpoint's metadata): parsed,
/// and when accepted, built and initialised as training would, and written
/// back.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = ModelConfig::from_json(text) {
        let arch = Architecture::new(&config);
        let _ = arch.receptive_radius();
        let _ = ParamSet::init(&arch, 0);
        ModelConfig::from_json(&config.to_json().to_string()).expect("a written config reads back");
    }
}

/// An image file to the network's input tensor (grey and RGB).
pub fn image(data: &[u8]) {
    for channels in [1, 3] {
        if let Ok(planes) = dilaseg::data::image::decode_image(data, Path::new("fuzz.img"), channels) {
            assert_eq!(planes.data.len(), planes.c * planes.h * planes.w);
            let _ = planes.resize_bilinear(7, 5);
        }
    }
}

/// A data folder: file names (and some contents) from the input, then
/// the scan, the pairing of images with masks, the split and the decoding.
pub fn data_folder(data: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    materialise(data, dir.path());
    exercise(dir.path());
}

/// Each input line names a file under `dir` (letters, digits and `_-./`
/// kept, `.` and `..` dropped, 3 levels at most, 24 files at most). A name
/// ending in `.png` gets a small valid PNG (grey value: the line's length),
/// any other the line's own bytes.
fn materialise(data: &[u8], dir: &Path) {
    for line in data.split(|&b| b == b'\n').take(24) {
        let name: String =
            line.iter().map(|&b| b as char).filter(|c| c.is_ascii_alphanumeric() || "_-./".contains(*c)).collect();
        let rel: PathBuf = name.split('/').filter(|p| !p.is_empty() && *p != "." && *p != "..").take(3).collect();
        if rel.as_os_str().is_empty() {
            continue;
        }
        let path = dir.join(&rel);
        if path.parent().is_some_and(|p| std::fs::create_dir_all(p).is_err()) {
            continue;
        }
        let content = if name.ends_with(".png") { png(line.len() as u8) } else { line.to_vec() };
        let _ = std::fs::write(&path, content);
    }
}

fn png(value: u8) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::GrayImage::from_pixel(3, 2, image::Luma([value]))
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .expect("a PNG in memory");
    bytes
}

/// Scans `dir` as `dilaseg train` does, pairs, splits both ways, and
/// decodes every pair. Errors are fine; panics are what is looked for.
fn exercise(dir: &Path) {
    let Ok(dataset) = Dataset::scan(dir) else { return };
    let Ok(samples) = dataset.labelled() else { return };
    for how in [ValSplit::Fraction(0.25), ValSplit::Subjects(vec![(1, 3)])] {
        let _ = split(&samples, dataset.layout, &how, 0);
    }
    // As binary masks and as label maps of a 3-class model.
    for labels in [None, Some(3)] {
        let opts = DecodeOptions { channels: 1, size: Some((4, 4)), skip_bad: false, labels };
        for sample in &samples {
            let _ = load_sample(sample, 0, &opts);
        }
    }
}
