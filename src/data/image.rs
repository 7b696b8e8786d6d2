//! Image files to tensors, as MODEL.md says: pixels scaled to [0, 1]
//! (8-bit / 255, 16-bit / 65535), colour converted to one grey channel with
//! ITU-R 601 luma weights (8-bit colour exactly as PIL's "L", rounded to 8
//! bits) unless the model takes 3 channels,
//! masks foreground where the grey value is > 127 (8-bit) or > 32767 (16-bit).
//! Resizing is bilinear for images (half-pixel centres, no antialiasing,
//! as PyTorch's `interpolate(mode="bilinear")`) and nearest for masks.

use std::path::Path;

use image::DynamicImage;

use super::DataError;

/// A decoded image: planar C x H x W f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Planes {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
}

const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// PIL's "L" from 8-bit RGB, which MODEL.md names: the luma in 16-bit fixed
/// point, rounded to an 8-bit value (Pillow's Convert.c), so that a PyTorch
/// reader that converts with PIL sees the same grey values (unrounded, a
/// fresh lungnet's scores differed by up to 0.65 on a colour image:
/// docs/measure/torch_agree.py).
fn pil_luma(p: &image::Rgb<u8>) -> f32 {
    let [r, g, b] = p.0.map(u32::from);
    ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as f32 / 255.0
}

fn open(path: &Path) -> Result<DynamicImage, DataError> {
    let bytes =
        std::fs::read(path).map_err(|e| DataError::Image { path: path.to_path_buf(), message: e.to_string() })?;
    decode(&bytes, path)
}

/// Pixels in the largest image read (8192 x 8192: 64 M pixels, 256 MB as
/// grey f32). Found by fuzzing: a 359-byte JPEG header declaring 2056 x
/// 32774 pixels made decoding and conversion take over 2 GB.
const MAX_PIXELS: u64 = 1 << 26;

/// Decodes an image file's bytes (the format guessed from them; `path`
/// names it in errors). The size in the header is checked first, so a
/// header that declares a huge image allocates nothing.
fn decode(bytes: &[u8], path: &Path) -> Result<DynamicImage, DataError> {
    let bad = |message: String| DataError::Image { path: path.to_path_buf(), message };
    let reader = || image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format();
    let (w, h) = reader().map_err(|e| bad(e.to_string()))?.into_dimensions().map_err(|e| bad(e.to_string()))?;
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(bad(format!("{w}x{h} is more than the {MAX_PIXELS} pixels (8192x8192) dilaseg reads")));
    }
    let img = reader().map_err(|e| bad(e.to_string()))?.decode().map_err(|e| bad(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(bad(format!("the image is empty ({}x{})", img.width(), img.height())));
    }
    Ok(img)
}

fn is_16_bit(img: &DynamicImage) -> bool {
    img.color().bytes_per_pixel() / img.color().channel_count() >= 2
}

/// Grey values in [0, 1] (luma for colour images: PIL's for 8-bit ones;
/// 16-bit colour, which PIL does not convert, unrounded).
fn grey(img: &DynamicImage) -> Vec<f32> {
    if img.color().has_color() && !is_16_bit(img) {
        img.to_rgb8().pixels().map(pil_luma).collect()
    } else if img.color().has_color() {
        img.to_rgb32f().pixels().map(|p| LUMA[0] * p[0] + LUMA[1] * p[1] + LUMA[2] * p[2]).collect()
    } else {
        img.to_luma32f().into_raw()
    }
}

/// An input image with `channels` (1 or 3) channels, values in [0, 1].
pub fn load_image(path: &Path, channels: usize) -> Result<Planes, DataError> {
    Ok(to_planes(open(path)?, channels))
}

/// `load_image` from the bytes of the file at `path` (named in errors).
pub fn decode_image(bytes: &[u8], path: &Path, channels: usize) -> Result<Planes, DataError> {
    Ok(to_planes(decode(bytes, path)?, channels))
}

fn to_planes(img: DynamicImage, channels: usize) -> Planes {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data = if channels == 1 {
        grey(&img)
    } else {
        let rgb = img.to_rgb32f();
        (0..3).flat_map(|c| rgb.pixels().map(move |p| p[c]).collect::<Vec<_>>()).collect()
    };
    Planes { c: channels, h, w, data }
}

/// A binary mask (1 foreground, 0 background).
pub fn load_mask(path: &Path) -> Result<Planes, DataError> {
    let img = open(path)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    // MODEL.md's > 127 of 255 and > 32767 of 65535 are both > 0.5 of full
    // scale (127.5 / 255 = 32767.5 / 65535 = 0.5, between the integer codes).
    let data = grey(&img).into_iter().map(|v| if v > 0.5 { 1.0 } else { 0.0 }).collect();
    Ok(Planes { c: 1, h, w, data })
}

/// A label map of `classes` classes: the grey value of each pixel as a
/// class index (colour images by their luma, rounded); a value that is not
/// a class is an error naming the pixel (a binary mask's 255, say, given
/// to a multi-class model).
pub fn load_labels(path: &Path, classes: usize) -> Result<(usize, usize, Vec<usize>), DataError> {
    let img = open(path)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let scale = if is_16_bit(&img) { 65535.0 } else { 255.0 };
    let labels: Vec<usize> = grey(&img).into_iter().map(|v| (v * scale).round() as usize).collect();
    if let Some(at) = labels.iter().position(|&l| l >= classes) {
        let message = format!(
            "pixel ({}, {}) holds {}, not a class of this {classes}-class model (a label map holds 0 to {})",
            at % w,
            at / w,
            labels[at],
            classes - 1
        );
        return Err(DataError::Image { path: path.to_path_buf(), message });
    }
    Ok((h, w, labels))
}

/// The size of an image file, reading only its header.
pub fn dimensions(path: &Path) -> Result<(usize, usize), DataError> {
    let (w, h) = image::image_dimensions(path)
        .map_err(|e| DataError::Image { path: path.to_path_buf(), message: e.to_string() })?;
    if w == 0 || h == 0 {
        return Err(DataError::Image { path: path.to_path_buf(), message: format!("the image is empty ({w}x{h})") });
    }
    Ok((h as usize, w as usize))
}

/// The source coordinate sampled for output coordinate `o` (half-pixel centres).
fn source(o: usize, from: usize, to: usize) -> f32 {
    ((o as f32 + 0.5) * from as f32 / to as f32 - 0.5).clamp(0.0, (from - 1) as f32)
}

impl Planes {
    /// Bilinear resize of every channel to h x w.
    pub fn resize_bilinear(&self, h: usize, w: usize) -> Planes {
        if (h, w) == (self.h, self.w) {
            return self.clone();
        }
        let mut data = Vec::with_capacity(self.c * h * w);
        for c in 0..self.c {
            let plane = &self.data[c * self.h * self.w..][..self.h * self.w];
            for oy in 0..h {
                let fy = source(oy, self.h, h);
                let (y0, wy) = (fy.floor() as usize, fy.fract());
                let y1 = (y0 + 1).min(self.h - 1);
                for ox in 0..w {
                    let fx = source(ox, self.w, w);
                    let (x0, wx) = (fx.floor() as usize, fx.fract());
                    let x1 = (x0 + 1).min(self.w - 1);
                    let at = |y: usize, x: usize| plane[y * self.w + x];
                    let top = at(y0, x0) * (1.0 - wx) + at(y0, x1) * wx;
                    let bottom = at(y1, x0) * (1.0 - wx) + at(y1, x1) * wx;
                    data.push(top * (1.0 - wy) + bottom * wy);
                }
            }
        }
        Planes { c: self.c, h, w, data }
    }

    /// Nearest-neighbour resize (PyTorch's "nearest": floor(o * from / to)).
    /// Rows [y0, y0 + h) and columns [x0, x0 + w) of every plane.
    pub fn crop(&self, y0: usize, x0: usize, h: usize, w: usize) -> Planes {
        assert!(y0 + h <= self.h && x0 + w <= self.w, "crop outside a {}x{} image", self.h, self.w);
        let mut data = Vec::with_capacity(self.c * h * w);
        for c in 0..self.c {
            for y in y0..y0 + h {
                let row = (c * self.h + y) * self.w;
                data.extend_from_slice(&self.data[row + x0..row + x0 + w]);
            }
        }
        Planes { c: self.c, h, w, data }
    }

    pub fn resize_nearest(&self, h: usize, w: usize) -> Planes {
        if (h, w) == (self.h, self.w) {
            return self.clone();
        }
        let mut data = Vec::with_capacity(self.c * h * w);
        for c in 0..self.c {
            for oy in 0..h {
                let y = (oy * self.h / h).min(self.h - 1);
                for ox in 0..w {
                    let x = (ox * self.w / w).min(self.w - 1);
                    data.push(self.data[(c * self.h + y) * self.w + x]);
                }
            }
        }
        Planes { c: self.c, h, w, data }
    }

    /// One of the 8 flip/rotate-by-90 transforms (the paper's augmentation):
    /// `t % 4` quarter turns counter-clockwise, then a horizontal flip when
    /// `t >= 4`. Odd turns swap H and W.
    pub fn dihedral(&self, t: u8) -> Planes {
        let turns = t % 4;
        let (h, w) = if turns % 2 == 1 { (self.w, self.h) } else { (self.h, self.w) };
        let mut data = Vec::with_capacity(self.data.len());
        for c in 0..self.c {
            for y in 0..h {
                for x in 0..w {
                    let x = if t >= 4 { w - 1 - x } else { x };
                    // Undo the quarter turns: output (y, x) reads source (sy, sx).
                    let (sy, sx) = match turns {
                        0 => (y, x),
                        1 => (x, self.w - 1 - y),
                        2 => (self.h - 1 - y, self.w - 1 - x),
                        _ => (self.h - 1 - x, y),
                    };
                    data.push(self.data[(c * self.h + sy) * self.w + sx]);
                }
            }
        }
        Planes { c: self.c, h, w, data }
    }
}
