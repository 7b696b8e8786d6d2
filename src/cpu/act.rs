//! ReLU / LeakyReLU and the per-layer residual add.

use super::Tensor;
use crate::nn::Activation;

pub fn forward(x: &Tensor, act: Activation) -> Tensor {
    let slope = act.slope as f64;
    let data = x.data.iter().map(|&v| if v > 0.0 { v } else { slope * v }).collect();
    Tensor::new(x.shape, data)
}

/// Gradient from the activation's OUTPUT `y` (y > 0 exactly where x > 0 for
/// any slope >= 0), so the pre-activation need not be kept. At x = 0 the
/// gradient is `slope`, as in PyTorch.
pub fn backward(y: &Tensor, dy: &Tensor, act: Activation) -> Tensor {
    let slope = act.slope as f64;
    let data = y.data.iter().zip(&dy.data).map(|(&y, &g)| if y > 0.0 { g } else { slope * g }).collect();
    Tensor::new(y.shape, data)
}

/// The residual `a + b`; its backward passes the gradient to both terms.
pub fn add(a: &Tensor, b: &Tensor) -> Tensor {
    assert_eq!(a.shape, b.shape, "residual add shapes");
    Tensor::new(a.shape, a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect())
}
