//! Parameter updates exactly as torch.optim.Adam and torch.optim.SGD.

use crate::nn::{Adam, Sgd};

/// One Adam step; `step` counts from 1 (PyTorch's bias correction).
pub fn adam_step(hp: &Adam, step: u32, p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64]) {
    let (b1, b2) = (hp.beta1 as f64, hp.beta2 as f64);
    let bias1 = 1.0 - b1.powi(step as i32);
    let bias2 = 1.0 - b2.powi(step as i32);
    for i in 0..p.len() {
        let grad = g[i] + hp.weight_decay as f64 * p[i];
        m[i] = b1 * m[i] + (1.0 - b1) * grad;
        v[i] = b2 * v[i] + (1.0 - b2) * grad * grad;
        let denom = v[i].sqrt() / bias2.sqrt() + hp.eps as f64;
        p[i] -= hp.lr as f64 / bias1 * m[i] / denom;
    }
}

/// One SGD step. With a zero-initialised buffer, `momentum * 0 + g` equals
/// PyTorch's first-step `buf = g`, so no special case is needed.
pub fn sgd_step(hp: &Sgd, p: &mut [f64], g: &[f64], buf: &mut [f64]) {
    for i in 0..p.len() {
        let grad = g[i] + hp.weight_decay as f64 * p[i];
        buf[i] = hp.momentum as f64 * buf[i] + grad;
        p[i] -= hp.lr as f64 * if hp.momentum != 0.0 { buf[i] } else { grad };
    }
}
