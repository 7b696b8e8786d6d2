//! Needs no GPU: layouts are detected on the real data in ../shared/data,
//! the split is by subject, pixels and masks are decoded as MODEL.md says,
//! and bad files are clear errors naming them.

mod common;

use std::path::{Path, PathBuf};

use dilaseg::data::image::{load_image, load_mask, Planes};
use dilaseg::data::loader::{load_batch, DecodeOptions};
use dilaseg::data::{parse_subjects, split, Dataset, Layout, ValSplit};

#[test]
fn kaggle_and_paired_layouts_are_detected_on_real_data() {
    let nerve = Dataset::scan(&common::data_dir().join("nerve")).unwrap();
    assert_eq!(nerve.layout, Layout::Kaggle);
    assert_eq!(nerve.labelled().unwrap().len(), 1689);
    let s = &nerve.samples[0];
    assert!(s.mask.as_ref().unwrap().to_string_lossy().ends_with("_mask.jpg"));
    assert!(s.subject.is_some());

    let cxr = Dataset::scan(&common::data_dir().join("lung-cxr")).unwrap();
    assert_eq!(cxr.layout, Layout::Paired);
    assert_eq!(cxr.labelled().unwrap().len(), 412);
    let s = &cxr.samples[0];
    assert_eq!(s.image.file_name(), s.mask.as_ref().unwrap().file_name());
}

#[test]
fn validation_split_is_by_subject_for_the_kaggle_layout() {
    let nerve = Dataset::scan(&common::data_dir().join("nerve")).unwrap();
    let labelled = nerve.labelled().unwrap();
    let (train, val) =
        split(&labelled, nerve.layout, &ValSplit::Subjects(parse_subjects("31-35").unwrap()), 0).unwrap();
    assert!(val.iter().all(|s| (31..=35).contains(&s.subject.unwrap())));
    assert!(train.iter().all(|s| !(31..=35).contains(&s.subject.unwrap())));
    assert_eq!(train.len() + val.len(), labelled.len());

    let (train, val) = split(&labelled, nerve.layout, &ValSplit::Fraction(0.2), 7).unwrap();
    let subjects =
        |v: &[dilaseg::data::Sample]| v.iter().map(|s| s.subject.unwrap()).collect::<std::collections::BTreeSet<_>>();
    assert!(subjects(&train).is_disjoint(&subjects(&val)), "a subject is on both sides of the split");
    assert_eq!(subjects(&val).len(), 7, "20% of 35 subjects");
    assert!(parse_subjects("3-1").is_err() && parse_subjects("a").is_err());
}

#[test]
fn lzw_tiff_jpeg_and_png_decode_to_unit_range() {
    let tif = load_image(&common::data_dir().join("nerve-original/1_1.tif"), 1).unwrap();
    assert_eq!((tif.c, tif.h, tif.w), (1, 420, 580));
    assert!(tif.data.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(tif.data.iter().any(|&v| v > 0.5), "an ultrasound image has bright pixels");
    let mask = load_mask(&common::data_dir().join("nerve-original/1_1_mask.tif")).unwrap();
    assert!(mask.data.iter().all(|&v| v == 0.0 || v == 1.0) && mask.data.contains(&1.0));

    // A colour TIFF (lung-ct) becomes one grey channel or three.
    let ct = std::fs::read_dir(common::data_dir().join("lung-ct/images")).unwrap().next().unwrap().unwrap().path();
    assert_eq!(load_image(&ct, 1).unwrap().c, 1);
    assert_eq!(load_image(&ct, 3).unwrap().data.len(), 3 * 512 * 512);
}

#[test]
fn sixteen_bit_pixels_scale_by_65535_and_masks_threshold_at_32767() {
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<u16> = vec![0, 32767, 32768, 65535];
    let img = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(4, 1, values).unwrap();
    for ext in ["png", "tif"] {
        let path = dir.path().join(format!("x.{ext}"));
        img.save(&path).unwrap();
        let p = load_image(&path, 1).unwrap();
        assert!((p.data[1] - 32767.0 / 65535.0).abs() < 1e-6 && p.data[3] == 1.0, "{ext}: {:?}", p.data);
        assert_eq!(load_mask(&path).unwrap().data, [0.0, 0.0, 1.0, 1.0], "{ext}");
    }
}

#[test]
fn colour_converts_to_grey_as_pils_l_and_8_bit_masks_threshold_at_127() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.png");
    let pixels = [[10, 200, 31], [255, 255, 255], [0, 0, 0], [1, 2, 3], [128, 127, 128], [255, 0, 0], [0, 255, 0]];
    image::RgbImage::from_raw(7, 1, pixels.concat()).unwrap().save(&path).unwrap();
    let p = load_image(&path, 1).unwrap();
    // What Pillow 13's Image.convert("L") gives for these pixels (its
    // rounded fixed-point ITU-R 601 luma; unrounded, the first is 123.924).
    let pil = [124, 255, 0, 2, 127, 76, 150];
    assert_eq!(p.data, pil.map(|v| v as f32 / 255.0), "grey values");
    let path = dir.path().join("m.png");
    image::GrayImage::from_raw(3, 1, vec![127, 128, 255]).unwrap().save(&path).unwrap();
    assert_eq!(load_mask(&path).unwrap().data, [0.0, 1.0, 1.0]);
}

#[test]
fn resizing_is_bilinear_for_images_and_nearest_for_masks() {
    let p = Planes { c: 1, h: 2, w: 2, data: vec![0.0, 1.0, 2.0, 3.0] };
    // Upsampling 2x2 to 4x4 with half-pixel centres: corners stay, inner
    // samples interpolate.
    let up = p.resize_bilinear(4, 4);
    assert_eq!(up.data[0], 0.0);
    assert_eq!(up.data[15], 3.0);
    assert!((up.data[1] - 0.25).abs() < 1e-6, "{:?}", up.data);
    let near = p.resize_nearest(4, 4);
    assert_eq!(&near.data[..4], &[0.0, 0.0, 1.0, 1.0]);
    let down = Planes { c: 1, h: 4, w: 4, data: (0..16).map(|v| v as f32).collect() }.resize_bilinear(2, 2);
    assert_eq!(down.data, [2.5, 4.5, 10.5, 12.5]);
}

#[test]
fn the_eight_transforms_are_distinct_and_invertible() {
    let p = Planes { c: 2, h: 3, w: 3, data: (0..18).map(|v| v as f32).collect() };
    let all: Vec<Planes> = (0..8).map(|t| p.dihedral(t)).collect();
    for i in 0..8 {
        for j in 0..i {
            assert_ne!(all[i].data, all[j].data, "transforms {i} and {j} coincide");
        }
    }
    let quarter = p.dihedral(1);
    assert_eq!(quarter.dihedral(1).dihedral(1).dihedral(1), p, "four quarter turns are the identity");
    assert_eq!(p.dihedral(4).dihedral(4), p, "a flip twice is the identity");
    let wide = Planes { c: 1, h: 2, w: 3, data: (0..6).map(|v| v as f32).collect() };
    assert_eq!((wide.dihedral(1).h, wide.dihedral(1).w), (3, 2));
}

fn broken_folder() -> (tempfile::TempDir, Vec<dilaseg::data::Sample>) {
    let dir = tempfile::tempdir().unwrap();
    let src = common::data_dir().join("nerve");
    for name in ["1_1.jpg", "1_1_mask.jpg", "1_2.jpg", "1_2_mask.jpg"] {
        std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
    }
    std::fs::write(dir.path().join("1_2.jpg"), b"not a jpeg at all").unwrap();
    let samples = Dataset::scan(dir.path()).unwrap().labelled().unwrap();
    (dir, samples)
}

#[test]
fn a_broken_image_is_an_error_naming_it_or_skipped_on_request() {
    let (_dir, samples) = broken_folder();
    let opts = DecodeOptions { channels: 1, size: Some((64, 64)), skip_bad: false, labels: None };
    let err = load_batch(&samples, &vec![(0, 0), (1, 0)], &opts).expect_err("a broken file was accepted").to_string();
    assert!(err.contains("1_2.jpg"), "{err}");
    let batch = load_batch(&samples, &vec![(0, 0), (1, 0)], &DecodeOptions { skip_bad: true, ..opts }).unwrap();
    assert_eq!((batch.n, batch.skipped.len()), (2, 1), "the batch keeps its size");
    assert!(batch.skipped[0].to_string().contains("1_2.jpg"));
}

/// A multi-class model's masks are label maps (MODEL.md): class indices
/// as targets, resized by nearest neighbour and turned with the image; a
/// binary mask's 255 is not a class of a 3-class model, and says so.
#[test]
fn a_multi_class_models_masks_are_label_maps_of_its_classes() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["images", "masks"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let labels: Vec<u8> = (0..12).map(|i| [0, 1, 2][i % 3]).collect();
    image::GrayImage::from_raw(4, 3, vec![90; 12]).unwrap().save(dir.path().join("images/a.png")).unwrap();
    image::GrayImage::from_raw(4, 3, labels.clone()).unwrap().save(dir.path().join("masks/a.png")).unwrap();
    image::GrayImage::from_raw(4, 3, vec![90; 12]).unwrap().save(dir.path().join("images/b.png")).unwrap();
    let mut binary = vec![0u8; 12];
    binary[6] = 255;
    image::GrayImage::from_raw(4, 3, binary).unwrap().save(dir.path().join("masks/b.png")).unwrap();
    let samples = Dataset::scan(dir.path()).unwrap().labelled().unwrap();
    let opts = DecodeOptions { channels: 1, size: None, skip_bad: false, labels: Some(3) };
    let batch = load_batch(&samples, &vec![(0, 1)], &opts).unwrap();
    // Transform 1 of `dihedral`, applied to the label map itself.
    let planes = Planes { c: 1, h: 3, w: 4, data: labels.iter().map(|&l| f32::from(l)).collect() };
    assert_eq!(batch.masks, planes.dihedral(1).data, "class indices, turned with the image");
    let err = load_batch(&samples, &vec![(1, 0)], &opts).expect_err("255 taken as a class").to_string();
    assert!(err.contains("b.png") && err.contains("(2, 1) holds 255") && err.contains("3-class"), "{err}");
    // The same mask for a binary model: foreground where above 127.
    let batch = load_batch(&samples, &vec![(1, 0)], &DecodeOptions { labels: None, ..opts }).unwrap();
    assert_eq!(batch.masks.iter().filter(|&&v| v == 1.0).count(), 1);
}

#[test]
fn a_folder_without_images_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = Dataset::scan(dir.path()).unwrap_err().to_string();
    assert!(err.contains("no images") && err.contains(&dir.path().display().to_string()), "{err}");
    let err = Dataset::scan(&PathBuf::from("/no/such/folder")).unwrap_err().to_string();
    assert!(err.contains("/no/such/folder"), "{err}");
}

#[test]
fn an_image_header_declaring_a_huge_size_is_refused_before_decoding() {
    // Found by fuzzing (fuzz/regressions/image): 359 bytes of JPEG whose
    // header declares 2056 x 32774 pixels; decoding it took over 2 GB.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/image/oom-jpeg-2056x32774");
    let bytes = std::fs::read(&path).unwrap();
    let err = dilaseg::data::image::decode_image(&bytes, &path, 1).expect_err("decoded");
    let message = err.to_string();
    assert!(message.contains("2056x32774") && message.contains("oom-jpeg"), "{message}");
}
