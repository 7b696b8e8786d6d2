//! Results to files: the binary mask (8-bit PNG, 0/255), the score map
//! (16-bit PNG, score x 65535, clamped to [0, 1]), an overlay for people
//! (prediction tinted and outlined on the image, ground truth outlined in a
//! second colour), the 2018 blog's animated GIF, and the raw output as a
//! NumPy `.npy` (f32, C x H x W).

use std::io::Write;
use std::path::Path;

use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage};

/// Prediction colour (tint and outline) and ground-truth outline colour.
pub const PREDICTION: [u8; 3] = [255, 64, 32];
pub const TRUTH: [u8; 3] = [40, 220, 80];

pub fn mask_image(mask: &[bool], w: usize, h: usize) -> GrayImage {
    GrayImage::from_raw(w as u32, h as u32, mask.iter().map(|&m| if m { 255 } else { 0 }).collect())
        .expect("one value per pixel")
}

pub fn score_image(scores: &[f32], w: usize, h: usize) -> ImageBuffer<Luma<u16>, Vec<u16>> {
    let data = scores.iter().map(|&s| (s.clamp(0.0, 1.0) * 65535.0).round() as u16).collect();
    ImageBuffer::from_raw(w as u32, h as u32, data).expect("one value per pixel")
}

/// Pixels of `mask` with a 4-neighbour outside it (or on the image edge).
fn outline(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    let at = |x: isize, y: isize| {
        x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h && mask[y as usize * w + x as usize]
    };
    (0..h * w)
        .map(|i| {
            let (x, y) = ((i % w) as isize, (i / w) as isize);
            mask[i] && !(at(x - 1, y) && at(x + 1, y) && at(x, y - 1) && at(x, y + 1))
        })
        .collect()
}

/// The grey image with the prediction tinted (35%) and outlined, and the
/// ground truth, when known, outlined on top.
pub fn overlay(grey: &[f32], pred: &[bool], truth: Option<&[bool]>, w: usize, h: usize) -> RgbImage {
    let pred_edge = outline(pred, w, h);
    let truth_edge = truth.map(|t| outline(t, w, h));
    let mut img = RgbImage::new(w as u32, h as u32);
    for (i, px) in img.pixels_mut().enumerate() {
        let g = grey[i].clamp(0.0, 1.0) * 255.0;
        let mut c = [g; 3];
        if pred[i] {
            for k in 0..3 {
                c[k] = 0.65 * c[k] + 0.35 * PREDICTION[k] as f32;
            }
        }
        if pred_edge[i] {
            c = PREDICTION.map(f32::from);
        }
        if truth_edge.as_ref().is_some_and(|t| t[i]) {
            c = TRUTH.map(f32::from);
        }
        *px = Rgb(c.map(|v| v.round() as u8));
    }
    img
}

/// The blog's animation, one frame a second, looping: the image, the
/// ground truth (when known), the prediction, the truth overlay (when
/// known), the prediction overlay.
pub fn write_gif(
    path: &Path,
    grey: &[f32],
    pred: &[bool],
    truth: Option<&[bool]>,
    w: usize,
    h: usize,
) -> image::ImageResult<()> {
    use image::codecs::gif::{GifEncoder, Repeat};
    use image::{Delay, Frame, RgbaImage};
    let grey_frame = |values: &mut dyn Iterator<Item = u8>| {
        RgbaImage::from_fn(w as u32, h as u32, |_, _| {
            let g = values.next().unwrap_or(0);
            image::Rgba([g, g, g, 255])
        })
    };
    let binary = |m: &[bool]| grey_frame(&mut m.iter().map(|&b| if b { 255 } else { 0 }));
    let rgba = |img: RgbImage| image::DynamicImage::ImageRgb8(img).to_rgba8();
    let mut frames = vec![grey_frame(&mut grey.iter().map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8))];
    if let Some(t) = truth {
        frames.push(binary(t));
    }
    frames.push(binary(pred));
    if let Some(t) = truth {
        frames.push(rgba(overlay(grey, t, None, w, h)));
    }
    frames.push(rgba(overlay(grey, pred, None, w, h)));
    let mut encoder = GifEncoder::new(std::fs::File::create(path)?);
    encoder.set_repeat(Repeat::Infinite)?;
    encoder.encode_frames(frames.into_iter().map(|f| Frame::from_parts(f, 0, 0, Delay::from_numer_denom_ms(1000, 1))))
}

/// Writes `data` (C x H x W, C-order) as a NumPy .npy file, format 1.0.
pub fn write_npy(path: &Path, data: &[f32], shape: [usize; 3]) -> std::io::Result<()> {
    assert_eq!(data.len(), shape.iter().product::<usize>(), "npy data and shape");
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}, {}), }}", shape[0], shape[1], shape[2]);
    // Magic (6) + version (2) + length (2) + header, padded with spaces to a
    // multiple of 64 and ended by a newline.
    let total = (10 + header.len() + 1).next_multiple_of(64);
    header.push_str(&" ".repeat(total - 10 - header.len() - 1));
    header.push('\n');
    let mut out = Vec::with_capacity(total + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::File::create(path)?.write_all(&out)
}
