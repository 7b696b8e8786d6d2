//! Inverted dropout: kept elements are scaled by 1 / (1 - p). The mask comes
//! from `nn::dropout_keeps` (seed, step, element index), so the backward pass
//! and the GPU kernel reproduce it without storing it.

use super::Tensor;
use crate::nn::dropout_keeps;

fn scale(x: &Tensor, p: f32, seed: u32, step: u32) -> Tensor {
    let keep_scale = 1.0 / (1.0 - p as f64);
    let data = x
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| if dropout_keeps(seed, step, i as u32, p) { v * keep_scale } else { 0.0 })
        .collect();
    Tensor::new(x.shape, data)
}

pub fn forward(x: &Tensor, p: f32, seed: u32, step: u32) -> Tensor {
    scale(x, p, seed, step)
}

/// Dropout is linear in its input: the gradient takes the same mask and scale.
pub fn backward(dy: &Tensor, p: f32, seed: u32, step: u32) -> Tensor {
    scale(dy, p, seed, step)
}
