//! Output functions and losses with their gradients with respect to the
//! network's raw output (logits). Targets hold one value per pixel
//! (N x 1 x H x W): a class index for softmax, 0 or 1 otherwise.

use super::Tensor;
use crate::nn::SigmoidLoss;

pub struct LossGrad {
    pub loss: f64,
    /// Gradient of `loss` with respect to the logits.
    pub grad: Tensor,
}

/// Softmax over channels at every pixel (MODEL.md's "4D softmax").
pub fn softmax(logits: &Tensor) -> Tensor {
    let s = logits.shape;
    let mut p = Tensor::zeros(s);
    for n in 0..s.n {
        for px in 0..s.plane() {
            let idx = |c: usize| s.index(n, c, 0, 0) + px;
            let max = (0..s.c).map(|c| logits.data[idx(c)]).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..s.c).map(|c| (logits.data[idx(c)] - max).exp()).sum();
            for c in 0..s.c {
                p.data[idx(c)] = (logits.data[idx(c)] - max).exp() / sum;
            }
        }
    }
    p
}

/// Cross-entropy averaged over pixels, weighted by class when `class_weights`
/// is given: `sum(w_y * nll) / sum(w_y)` (PyTorch's weighted mean).
pub fn softmax_cross_entropy(logits: &Tensor, target: &[f64], class_weights: Option<&[f64]>) -> LossGrad {
    let s = logits.shape;
    assert_eq!(target.len(), s.n * s.plane(), "one target per pixel");
    let p = softmax(logits);
    let mut grad = Tensor::zeros(s);
    let (mut weighted_nll, mut weight_sum) = (0.0, 0.0);
    for n in 0..s.n {
        for px in 0..s.plane() {
            let y = target[n * s.plane() + px] as usize;
            let w = class_weights.map_or(1.0, |cw| cw[y]);
            weighted_nll -= w * p.data[s.index(n, y, 0, 0) + px].ln();
            weight_sum += w;
            for c in 0..s.c {
                let i = s.index(n, c, 0, 0) + px;
                grad.data[i] = w * (p.data[i] - if c == y { 1.0 } else { 0.0 });
            }
        }
    }
    grad.data.iter_mut().for_each(|g| *g /= weight_sum);
    LossGrad { loss: weighted_nll / weight_sum, grad }
}

pub fn sigmoid(logits: &Tensor) -> Tensor {
    Tensor::new(logits.shape, logits.data.iter().map(|&z| 1.0 / (1.0 + (-z).exp())).collect())
}

/// Binary cross-entropy (mean over pixels, computed from the logits),
/// soft Dice `1 - (2 sum(p y) + 1) / (sum(p) + sum(y) + 1)` over the whole
/// batch, or their sum.
pub fn sigmoid_loss(logits: &Tensor, target: &[f64], which: SigmoidLoss) -> LossGrad {
    assert_eq!(target.len(), logits.data.len(), "one target per pixel");
    let m = target.len() as f64;
    let p = sigmoid(logits);
    let mut loss = 0.0;
    let mut grad = Tensor::zeros(logits.shape);
    if which.bce {
        for (i, (&z, &y)) in logits.data.iter().zip(target).enumerate() {
            // softplus(z) - y z, stable for large |z|.
            loss += (z.max(0.0) + (-z.abs()).exp().ln_1p() - y * z) / m;
            grad.data[i] += (p.data[i] - y) / m;
        }
    }
    if which.dice {
        let inter: f64 = p.data.iter().zip(target).map(|(p, y)| p * y).sum();
        let num = 2.0 * inter + 1.0;
        let den = p.data.iter().sum::<f64>() + target.iter().sum::<f64>() + 1.0;
        loss += 1.0 - num / den;
        for (i, &y) in target.iter().enumerate() {
            let pi = p.data[i];
            let d_dice_dp = -(2.0 * y * den - num) / (den * den);
            grad.data[i] += d_dice_dp * pi * (1.0 - pi);
        }
    }
    LossGrad { loss, grad }
}

/// Mean squared error of a linear output against the mask.
pub fn mse(pred: &Tensor, target: &[f64]) -> LossGrad {
    assert_eq!(target.len(), pred.data.len(), "one target per pixel");
    let m = target.len() as f64;
    let loss = pred.data.iter().zip(target).map(|(z, y)| (z - y).powi(2)).sum::<f64>() / m;
    let grad = pred.data.iter().zip(target).map(|(z, y)| 2.0 * (z - y) / m).collect();
    LossGrad { loss, grad: Tensor::new(pred.shape, grad) }
}
