//! Builds `assets/lung-cxr/`: the bundled sample data (README: "the two
//! commands"). Takes the first 16 Shenzhen chest X-rays of
//! `../shared/data/lung-cxr` (public NLM set, CC0 masks; see
//! assets/README.md), resizes them with dilaseg's own loader (bilinear
//! images, nearest masks) to 256x256 and writes 8-bit grey PNGs.
//!
//! `cargo run --release --example make_assets [SOURCE] [DEST]`

use std::path::PathBuf;

use dilaseg::data::loader::{load_sample, DecodeOptions};
use dilaseg::data::Dataset;

const COUNT: usize = 16;
const SIZE: (usize, usize) = (256, 256);

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let source = PathBuf::from(args.next().unwrap_or_else(|| "../shared/data/lung-cxr".into()));
    let dest = PathBuf::from(args.next().unwrap_or_else(|| "assets/lung-cxr".into()));
    let samples = Dataset::scan(&source)?.labelled()?;
    let decode = DecodeOptions { channels: 1, size: Some(SIZE), skip_bad: false, labels: None };
    for sub in ["images", "masks"] {
        std::fs::create_dir_all(dest.join(sub))?;
    }
    for s in samples.iter().take(COUNT) {
        let (image, mask) = load_sample(s, 0, &decode)?;
        let name = s.image.with_extension("png");
        let name = name.file_name().expect("a file name");
        let to_u8 = |v: &[f32]| v.iter().map(|&x| (x * 255.0).round().clamp(0.0, 255.0) as u8).collect::<Vec<_>>();
        let (w, h) = (image.w as u32, image.h as u32);
        image::GrayImage::from_raw(w, h, to_u8(&image.data))
            .expect("sizes match")
            .save(dest.join("images").join(name))?;
        image::GrayImage::from_raw(w, h, to_u8(&mask.data))
            .expect("sizes match")
            .save(dest.join("masks").join(name))?;
    }
    println!("wrote {COUNT} image/mask pairs of {}x{} to {}", SIZE.0, SIZE.1, dest.display());
    Ok(())
}
