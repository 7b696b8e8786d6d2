//! `dilaseg eval` on real X-rays: scoring a model and scoring the masks
//! `dilaseg infer` wrote for it agree; missing predictions are reported.

mod common;

use common::dilaseg;

use std::path::{Path, PathBuf};

/// Three unseen X-rays with their masks, in the paired layout.
fn folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["images", "masks"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        for id in [43, 44, 45] {
            let name = format!("CHNCXR_00{id}_0.jpg");
            std::fs::copy(common::data_dir().join("lung-cxr").join(sub).join(&name), dir.path().join(sub).join(&name))
                .unwrap();
        }
    }
    dir
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn scoring_a_model_equals_scoring_the_masks_infer_wrote_for_it() {
    if common::gpu().is_none() {
        return;
    }
    let data = folder();
    let work = tempfile::tempdir().unwrap();
    let model: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/seo2018-lung-cxr.safetensors");
    let (d, m) = (data.path().to_str().unwrap(), model.to_str().unwrap());
    let (a, b, masks) = (work.path().join("a"), work.path().join("b"), work.path().join("masks"));
    let (code, stdout, stderr) = dilaseg(&["eval", "--model", m, "--data", d, "--out", a.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("Dice") && stdout.contains("recall"), "{stdout}");
    let images = data.path().join("images");
    let (code, _, stderr) =
        dilaseg(&["infer", "--model", m, images.to_str().unwrap(), "--out", masks.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) =
        dilaseg(&["eval", "--pred", masks.to_str().unwrap(), "--data", d, "--out", b.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let (sa, sb) = (summary(&a), summary(&b));
    assert_eq!(sa["images"], 3);
    for key in ["dice", "iou", "precision", "recall"] {
        let (x, y) = (sa["mean"][key].as_f64().unwrap(), sb["mean"][key].as_f64().unwrap());
        assert!((x - y).abs() < 1e-9, "{key}: model {x} vs written masks {y}");
    }
    assert!(sa["mean"]["dice"].as_f64().unwrap() > 0.7, "{sa}");
    let csv = std::fs::read_to_string(a.join("per_image.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "a header and a row per image:\n{csv}");
}

#[test]
fn a_missing_prediction_is_reported_by_image_and_the_rest_are_scored() {
    let data = folder();
    let preds = tempfile::tempdir().unwrap();
    // A perfect prediction for one image only: its own mask.
    let mask = data.path().join("masks/CHNCXR_0043_0.jpg");
    let pred = image::open(&mask).unwrap().to_luma8();
    let binary = image::GrayImage::from_fn(pred.width(), pred.height(), |x, y| {
        image::Luma([if pred.get_pixel(x, y)[0] > 127 { 255 } else { 0 }])
    });
    binary.save(preds.path().join("CHNCXR_0043_0_mask.png")).unwrap();
    let out = preds.path().join("eval");
    let (code, _, stderr) = dilaseg(&[
        "eval",
        "--pred",
        preds.path().to_str().unwrap(),
        "--data",
        data.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 3, "partial failure: {stderr}");
    assert!(stderr.contains("CHNCXR_0044_0.jpg") && stderr.contains("no prediction"), "{stderr}");
    let s = summary(&out);
    assert_eq!((s["images"].as_u64(), s["failed"].as_u64()), (Some(1), Some(2)));
    assert_eq!(s["mean"]["dice"].as_f64(), Some(1.0), "a mask scored against itself");
}

#[test]
fn an_image_that_does_not_decode_is_named_once_and_the_rest_are_scored() {
    if common::gpu().is_none() {
        return;
    }
    let data = folder();
    let broken = data.path().join("images/CHNCXR_0044_0.jpg");
    std::fs::write(&broken, "not a JPEG").unwrap();
    let out = data.path().join("eval");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/seo2018-lung-cxr.safetensors");
    let (code, _, stderr) = dilaseg(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 3, "partial failure: {stderr}");
    let name = broken.display().to_string();
    let line = stderr.lines().find(|l| l.contains(&name)).unwrap_or_else(|| panic!("no error names it: {stderr}"));
    assert_eq!(line.matches(&name).count(), 1, "{line}");
    assert_eq!(summary(&out)["images"].as_u64(), Some(2));
}
