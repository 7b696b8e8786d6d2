//! Shared by the test files: the test GPU, a seeded generator, comparisons.
#![allow(dead_code)] // each test file uses a different part

use std::sync::OnceLock;

use dilaseg::cpu::Tensor;
use dilaseg::gpu::{Gpu, GpuOptions, Tuning};
use dilaseg::Shape;

/// The adapter the GPU tests run on (lavapipe in CI), opened once per test
/// binary. Without one the tests are skipped, except when `CI` is set:
/// there a missing adapter fails them, so CI can never pass by skipping.
pub fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new(&GpuOptions::from_env()) {
        Ok(gpu) => {
            eprintln!("GPU tests on {}", gpu.describe());
            Some(gpu)
        }
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("CI is set and no GPU adapter opened: {e}")
        }
        Err(e) => {
            eprintln!("skipping GPU tests: {e}");
            None
        }
    })
    .as_ref()
}

/// A second device that runs the kernels hardware GPUs get
/// (`Tuning::Gpu`: one pixel per invocation, tiled convolutions), so
/// lavapipe tests them too.
pub fn gpu_tuned_for_gpus() -> Option<&'static Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    gpu()?;
    GPU.get_or_init(|| {
        let opts = GpuOptions { tuning: Some(Tuning::Gpu), ..GpuOptions::from_env() };
        Some(Gpu::new(&opts).expect("the adapter opened once opens again"))
    })
    .as_ref()
}

/// `let gpu = gpu_or_skip!();` at the top of a GPU test.
#[macro_export]
macro_rules! gpu_or_skip {
    () => {
        match common::gpu() {
            Some(gpu) => gpu,
            None => return,
        }
    };
}

/// The shared real data: `DILASEG_DATA`, else `../shared/data` beside the
/// project (as in CI).
pub fn data_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("DILASEG_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    assert!(dir.is_dir(), "real data not found at {} (set DILASEG_DATA)", dir.display());
    dir
}

/// Runs the dilaseg binary: (exit code, stdout, stderr).
pub fn dilaseg(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dilaseg")).args(args).output().expect("dilaseg runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// SplitMix64: deterministic test data with no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi), rounded to f32 so the CPU and the GPU start
    /// from identical values.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (lo + (hi - lo) * u) as f32 as f64
    }

    pub fn tensor(&mut self, shape: Shape, lo: f64, hi: f64) -> Tensor {
        Tensor::new(shape, (0..shape.numel()).map(|_| self.uniform(lo, hi)).collect())
    }

    pub fn vec(&mut self, len: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..len).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// Asserts `|gpu - cpu| <= atol + rtol * |cpu|` everywhere, naming the
/// worst element when it fails.
pub fn assert_close(what: &str, gpu: &[f32], cpu: &[f64], atol: f64, rtol: f64) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths differ");
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let excess = (g as f64 - c).abs() - (atol + rtol * c.abs());
        // Written so that a NaN (from either side) counts as a failure.
        let within = excess <= 0.0;
        if !within && worst.is_none_or(|(_, e)| excess > e) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        panic!("{what}: element {i}: GPU {} vs CPU {} (atol {atol}, rtol {rtol})", gpu[i], cpu[i]);
    }
}
