//! The CPU reference path: one plain, readable f64 function per operation,
//! forward and backward. It is the oracle the GPU kernels are tested
//! against (and whose backward passes are checked by finite differences),
//! never a fallback: clarity over speed.

pub mod act;
pub mod bench;
pub mod conv;
pub mod dropout;
pub mod layout;
pub mod loss;
pub mod norm;
pub mod optim;

use crate::shape::Shape;

/// A dense NCHW tensor of f64 values.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Shape,
    pub data: Vec<f64>,
}

impl Tensor {
    pub fn zeros(shape: Shape) -> Self {
        Tensor { shape, data: vec![0.0; shape.numel()] }
    }

    /// Panics when `data` does not hold `shape.numel()` values: a
    /// programming error in the reference path, not bad user input.
    pub fn new(shape: Shape, data: Vec<f64>) -> Self {
        assert_eq!(data.len(), shape.numel(), "tensor {shape} needs {} values", shape.numel());
        Tensor { shape, data }
    }

    pub fn from_f32(shape: Shape, data: &[f32]) -> Self {
        Tensor::new(shape, data.iter().map(|&v| v as f64).collect())
    }

    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }

    pub fn at(&self, n: usize, c: usize, y: usize, x: usize) -> f64 {
        self.data[self.shape.index(n, c, y, x)]
    }
}
