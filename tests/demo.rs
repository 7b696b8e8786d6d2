//! `dilaseg demo` end to end on lavapipe with the bundled X-rays: every file
//! it promises, a curve plot with both curves drawn, and no overwriting.

mod common;

use common::dilaseg;

use dilaseg::plot::Curves;

/// Pixels of `image` close to `rgb`.
fn count(image: &image::RgbImage, rgb: [u8; 3]) -> usize {
    image.pixels().filter(|p| p.0.iter().zip(rgb).all(|(&a, b)| a.abs_diff(b) < 40)).count()
}

#[test]
fn demo_trains_scores_and_writes_every_file_it_promises() {
    if common::gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    // 12 training images of the 16 bundled: one epoch is 12 steps.
    let args = ["demo", "--out", run_s, "--size", "32x32", "--width", "4", "--epochs", "2", "--max-steps", "12"];
    let (code, stdout, stderr) = dilaseg(&args);
    assert_eq!(code, 0, "demo failed:\n{stdout}\n{stderr}");
    assert!(stderr.contains("demo on "), "the adapter is not named:\n{stderr}");

    for file in ["last.safetensors", "best.safetensors", "loss.csv", "metrics.csv", "curves.png"] {
        assert!(run.join(file).is_file(), "no {file} in the run folder");
    }
    let per_image = std::fs::read_to_string(run.join("holdout/per_image.csv")).unwrap();
    assert_eq!(per_image.lines().count(), 1 + 4, "4 held-out images scored:\n{per_image}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("holdout/summary.json")).unwrap()).unwrap();
    let dice = summary["mean"]["dice"].as_f64().expect("a mean Dice");
    assert!((0.0..=1.0).contains(&dice));
    assert!(stdout.contains(&format!("hold-out Dice  {dice:.4}")), "the printed Dice is not the scored one:\n{stdout}");

    // Each held-out image (the per-image rows name them) has its pictures.
    let images = run.join("holdout/images");
    for row in per_image.lines().skip(1) {
        let stem = std::path::Path::new(row.split(',').next().unwrap()).file_stem().unwrap().to_str().unwrap();
        for suffix in ["_mask.png", "_prob.png", "_overlay.png", ".gif"] {
            let path = images.join(format!("{stem}{suffix}"));
            image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }

    // The plot holds both curves: the loss's 12 steps and one Dice point.
    let curves = Curves::read(&run).unwrap();
    assert_eq!(curves.loss.len(), 12);
    assert_eq!(curves.dice.len(), 1);
    let plot = image::open(run.join("curves.png")).unwrap().to_rgb8();
    assert!(count(&plot, [0, 0, 255]) > 100, "no loss curve drawn");
    assert!(count(&plot, [255, 0, 0]) > 20, "no Dice drawn");

    // A second demo into the same folder is refused, and nothing changes.
    let before = std::fs::read(run.join("best.safetensors")).unwrap();
    let (code, _, stderr) = dilaseg(&args);
    assert_ne!(code, 0);
    assert!(stderr.contains("already holds a training run"), "{stderr}");
    assert_eq!(std::fs::read(run.join("best.safetensors")).unwrap(), before);

    // A hold-out fraction that keeps no image is refused before training.
    let none = dir.path().join("none");
    let (code, _, stderr) = dilaseg(&["demo", "--out", none.to_str().unwrap(), "--holdout", "0.01"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--holdout 0.01 keeps no image aside"), "{stderr}");
    assert!(!none.exists(), "a run folder was made for a demo that could not run");
}
