//! dilaseg: dilated fully-convolutional networks for medical image
//! segmentation (LungNet, Anthimopoulos et al. 2019, and the 2018 reduced
//! variant), trained and run on the GPU through hand-written WGSL kernels.
//!
//! Layers, from the bottom: `shape` and `nn` (shared descriptions), `cpu`
//! (the f64 reference of every op, the tests' oracle), `gpu` (device,
//! buffers, pipelines, dispatches, WGSL sources), `ops` (one module per
//! kernel family: parameters and launches), `model` (the network: config,
//! architecture, CPU reference, GPU graph, checkpoints), `rng` (the seeded generator).

pub mod bench;
pub mod cpu;
pub mod data;
pub mod demo;
pub mod eval;
pub mod export;
pub mod gpu;
pub mod infer;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod ops;
pub mod plot;
pub mod profile;
pub mod rng;
pub mod shape;
pub mod train;

pub use shape::Shape;
