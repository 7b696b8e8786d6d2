//! `dilaseg infer` end to end on lavapipe with real images: the files it
//! promises, per-file errors that let the rest go on, a refused checkpoint.

mod common;

use common::dilaseg;

use std::path::{Path, PathBuf};

use dilaseg::model::checkpoint::{self, CheckpointMeta};
use dilaseg::model::config::ModelConfig;
use dilaseg::model::params::ParamSet;
use dilaseg::model::Architecture;

/// An (untrained) narrow lungnet checkpoint recorded as trained at 64x64.
fn model(dir: &Path) -> PathBuf {
    let arch = Architecture::new(&ModelConfig { width: 4, head: vec![8], ..ModelConfig::lungnet() });
    let path = dir.join("model.safetensors");
    let meta = CheckpointMeta { train_size: Some((64, 64)), ..CheckpointMeta::default() };
    checkpoint::save(&path, &arch, &ParamSet::init(&arch, 1), &meta).unwrap();
    path
}

fn cxr(name: &str) -> PathBuf {
    common::data_dir().join("lung-cxr/images").join(name)
}

#[test]
fn infer_writes_mask_score_map_overlay_and_npy_at_the_image_size() {
    if common::gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let truth = common::data_dir().join("lung-cxr/masks");
    let (m, o, t) = (model(dir.path()), out.to_str().unwrap(), truth.to_str().unwrap());
    let image = cxr("CHNCXR_0042_0.jpg");
    let (code, stdout, stderr) = dilaseg(&[
        "infer",
        "--model",
        m.to_str().unwrap(),
        image.to_str().unwrap(),
        "--out",
        o,
        "--truth",
        t,
        "--npy",
        "--gif",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("1 images, 0 failed") && stdout.contains("mean Dice"), "{stdout}");

    let mask = image::open(out.join("CHNCXR_0042_0_mask.png")).unwrap();
    assert_eq!((mask.width(), mask.height(), mask.color()), (512, 512, image::ColorType::L8));
    assert!(mask.to_luma8().pixels().all(|p| p[0] == 0 || p[0] == 255));
    let score = image::open(out.join("CHNCXR_0042_0_prob.png")).unwrap();
    assert_eq!((score.width(), score.color()), (512, image::ColorType::L16));
    let overlay = image::open(out.join("CHNCXR_0042_0_overlay.png")).unwrap().to_rgb8();
    assert_eq!(overlay.dimensions(), (512, 512));
    let green = dilaseg::export::TRUTH;
    assert!(overlay.pixels().any(|p| p.0 == green), "the ground truth is outlined");
    // The blog's animation: image, truth, prediction and both overlays.
    use image::AnimationDecoder;
    let gif = std::io::BufReader::new(std::fs::File::open(out.join("CHNCXR_0042_0.gif")).unwrap());
    let frames = image::codecs::gif::GifDecoder::new(gif).unwrap().into_frames().collect_frames().unwrap();
    assert_eq!(frames.len(), 5);
    // Softmax with 2 classes: the .npy holds both probabilities, C x H x W.
    let npy = std::fs::read(out.join("CHNCXR_0042_0.npy")).unwrap();
    let header = String::from_utf8_lossy(&npy[10..128]);
    assert!(header.contains("'descr': '<f4'") && header.contains("'shape': (2, 512, 512)"), "{header}");
    assert_eq!(npy.len(), 128 + 2 * 512 * 512 * 4);
    let probs: Vec<f32> = npy[128..].chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let plane = 512 * 512;
    assert!((0..plane).step_by(997).all(|p| (probs[p] + probs[plane + p] - 1.0).abs() < 1e-4), "softmax sums to 1");

    // Running again into the same folder: the image fails, its results are
    // kept as they were; --overwrite replaces them.
    std::fs::write(out.join("CHNCXR_0042_0_mask.png"), b"kept").unwrap();
    let again = ["infer", "--model", m.to_str().unwrap(), image.to_str().unwrap(), "--out", o];
    let (code, _, stderr) = dilaseg(&again);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("CHNCXR_0042_0_mask.png exists already"), "{stderr}");
    assert_eq!(std::fs::read(out.join("CHNCXR_0042_0_mask.png")).unwrap(), b"kept");
    let (code, _, stderr) = dilaseg(&[&again[..], &["--overwrite"]].concat());
    assert_eq!(code, 0, "{stderr}");
    assert!(image::open(out.join("CHNCXR_0042_0_mask.png")).is_ok());
}

#[test]
fn bad_inputs_are_reported_per_file_and_the_rest_go_on() {
    if common::gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\n then nothing").unwrap();
    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, "a text file with an image name").unwrap();
    let out = dir.path().join("out");
    let good = cxr("CHNCXR_0041_0.jpg");
    let m = model(dir.path());
    let args = [
        "infer",
        "--model",
        m.to_str().unwrap(),
        good.to_str().unwrap(),
        broken.to_str().unwrap(),
        text.to_str().unwrap(),
        "/no/such.png",
        "--out",
        out.to_str().unwrap(),
    ];
    let (code, stdout, stderr) = dilaseg(&args);
    assert_eq!(code, 3, "partial failure has its own exit code: {stderr}");
    for name in ["broken.png", "notes.jpg", "/no/such.png"] {
        // Named, and once a line (the decoder's error had named it again).
        let line =
            stderr.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("no error names {name}: {stderr}"));
        assert_eq!(line.matches(name).count(), 1, "{line}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.join("CHNCXR_0041_0_mask.png").is_file(), "the good image was still segmented: {stdout}");
}

#[test]
fn a_checkpoint_that_does_not_match_its_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let arch = Architecture::new(&ModelConfig::lungnet());
    let narrow = Architecture::new(&ModelConfig { width: 8, ..ModelConfig::lungnet() });
    let path = dir.path().join("mismatch.safetensors");
    checkpoint::save(&path, &arch, &ParamSet::init(&narrow, 1), &CheckpointMeta::default()).unwrap();
    let good = cxr("CHNCXR_0041_0.jpg");
    let (code, _, stderr) = dilaseg(&[
        "infer",
        "--model",
        path.to_str().unwrap(),
        good.to_str().unwrap(),
        "--out",
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert_eq!(code, 4, "bad input: {stderr}");
    assert!(
        stderr.contains("mismatch.safetensors") && stderr.contains("dilated.1.conv.weight: shape [8, 8, 3, 3]"),
        "{stderr}"
    );
}

#[test]
fn the_shipped_model_segments_chest_xrays_it_was_not_trained_on() {
    if common::gpu().is_none() {
        return;
    }
    // assets/seo2018-lung-cxr.safetensors was trained on assets/lung-cxr
    // (X-rays 1-16); these are X-rays 41-49 of the same set.
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/seo2018-lung-cxr.safetensors");
    let pattern = common::data_dir().join("lung-cxr/images/CHNCXR_004*");
    let truth = common::data_dir().join("lung-cxr/masks");
    let out = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = dilaseg(&[
        "infer",
        "--model",
        model.to_str().unwrap(),
        pattern.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let dice: f64 = stdout
        .split("mean Dice ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no Dice in: {stdout}"));
    // Seen on 2026-11-27: 0.865 on X-rays 41-59.
    assert!(dice > 0.8, "mean Dice {dice} on unseen X-rays");
}

#[test]
fn tiles_give_the_one_pass_result_and_too_large_images_tile_themselves() {
    if common::gpu().is_none() {
        return;
    }
    use dilaseg::gpu::{Gpu, GpuOptions};
    use dilaseg::infer::Predictor;
    // The shipped model: batch norm, which inference applies per pixel.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/seo2018-lung-cxr.safetensors");
    let image = dilaseg::data::image::load_image(&cxr("CHNCXR_0001_0.jpg"), 1).unwrap().resize_bilinear(300, 600);
    let gpu = common::gpu().unwrap();
    let whole = Predictor::new(gpu, checkpoint::load(&shipped).unwrap(), None).predict(&image, true).unwrap();

    let mut tiled = Predictor::new(gpu, checkpoint::load(&shipped).unwrap(), None);
    tiled.tile = Some(200);
    let t = tiled.predict(&image, true).unwrap();
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5);
    assert!(close(&t.scores, &whole.scores), "200-pixel tiles changed the output");

    // 2 MiB bindings: one 3-channel layer of a 300x600 image needs 2.16 MB,
    // so the image is tiled by itself, with the same result.
    let small = Gpu::new(&GpuOptions { max_storage_binding: Some(2 << 20), ..GpuOptions::from_env() }).unwrap();
    let auto = Predictor::new(&small, checkpoint::load(&shipped).unwrap(), None).predict(&image, true).unwrap();
    assert!(close(&auto.scores, &whole.scores), "automatic tiles changed the output");
    assert_eq!(auto.mask, whole.mask);

    // Likewise when the image needs more memory than the device has to give.
    let ckpt = checkpoint::load(&shipped).unwrap();
    let shape = dilaseg::Shape::new(1, 1, 300, 600);
    // Measured on a device of its own: tests beside it share `gpu`'s pool.
    let tight = |budget| Gpu::new(&GpuOptions { memory_budget: budget, ..GpuOptions::from_env() }).unwrap();
    let need = dilaseg::model::graph::Graph::memory_need(&tight(None), &ckpt.arch, &ckpt.params, shape, None).unwrap();
    let tight = tight(Some(need - 1));
    let auto = Predictor::new(&tight, ckpt, None).predict(&image, true).unwrap();
    assert!(close(&auto.scores, &whole.scores), "tiles for memory changed the output");

    // Instance norm (lungnet) normalises over the whole image: its tiles
    // run with statistics gathered over all of them first. Tiles of 100
    // pixels on 150x450 have windows of at most 150x386, each leaving out
    // part of the image, so their own statistics would not do.
    let dir = tempfile::tempdir().unwrap();
    let lungnet = || checkpoint::load(&model(dir.path())).unwrap();
    let image = image.resize_bilinear(150, 450);
    let whole = Predictor::new(gpu, lungnet(), None).predict(&image, true).unwrap();
    let mut tiled = Predictor::new(gpu, lungnet(), None);
    tiled.tile = Some(100);
    let tiled_lungnet = tiled.predict(&image, true).unwrap();
    let worst = tiled_lungnet.scores.iter().zip(&whole.scores).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(worst <= 1e-4, "instance-norm tiles differ from one pass by {worst}");
}
