//! The norm block `y = x + Norm(x)` (MODEL.md), where
//! `Norm(x) = gamma * (x - mean) / sqrt(var + eps) + beta` with biased
//! variance over each statistics group (see `NormStats`).

use super::Tensor;
use crate::nn::{NormStats, BN_MOMENTUM, NORM_EPS};

/// Mean and biased variance of every group, indexed by `NormStats::group`.
#[derive(Clone, Debug, PartialEq)]
pub struct Moments {
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    /// Elements per group.
    pub count: usize,
}

/// Visits the flat indices of every element of group `g`.
fn for_group(x: &Tensor, stats: NormStats, g: usize, mut f: impl FnMut(usize)) {
    let s = x.shape;
    let (samples, c) = match stats {
        NormStats::PerSample => (g / s.c..g / s.c + 1, g % s.c),
        NormStats::PerChannel => (0..s.n, g),
    };
    for n in samples {
        let base = s.index(n, c, 0, 0);
        (base..base + s.plane()).for_each(&mut f);
    }
}

/// Two-pass moments (mean first, then the centred sum of squares).
pub fn moments(x: &Tensor, stats: NormStats) -> Moments {
    let s = x.shape;
    let groups = stats.groups(s.n, s.c);
    let count = s.numel() / groups;
    let mut mean = vec![0.0; groups];
    let mut var = vec![0.0; groups];
    for g in 0..groups {
        let mut sum = 0.0;
        for_group(x, stats, g, |i| sum += x.data[i]);
        mean[g] = sum / count as f64;
        let mut ss = 0.0;
        for_group(x, stats, g, |i| ss += (x.data[i] - mean[g]).powi(2));
        var[g] = ss / count as f64;
    }
    Moments { mean, var, count }
}

/// Applies the norm block with the given per-group moments (training
/// statistics from `moments`, or running statistics with `PerChannel`).
pub fn apply(x: &Tensor, m: &Moments, stats: NormStats, gamma: &[f64], beta: &[f64]) -> Tensor {
    let s = x.shape;
    let mut y = x.clone();
    for n in 0..s.n {
        for c in 0..s.c {
            let g = stats.group(n, c, s.c);
            let inv = 1.0 / (m.var[g] + NORM_EPS as f64).sqrt();
            let base = s.index(n, c, 0, 0);
            for i in base..base + s.plane() {
                y.data[i] += gamma[c] * (x.data[i] - m.mean[g]) * inv + beta[c];
            }
        }
    }
    y
}

/// The norm block in training: statistics of `x` itself.
pub fn forward(x: &Tensor, stats: NormStats, gamma: &[f64], beta: &[f64]) -> (Tensor, Moments) {
    let m = moments(x, stats);
    (apply(x, &m, stats, gamma, beta), m)
}

pub struct NormGrads {
    pub dx: Tensor,
    pub dgamma: Vec<f64>,
    pub dbeta: Vec<f64>,
}

/// Gradients of the training-mode norm block (`forward`): the identity
/// path plus the usual normalisation backward,
/// `dx = dy + gamma * inv * (dy - mean(dy) - xhat * mean(dy * xhat))`.
pub fn backward(x: &Tensor, stats: NormStats, gamma: &[f64], dy: &Tensor) -> NormGrads {
    let s = x.shape;
    let m = moments(x, stats);
    let groups = stats.groups(s.n, s.c);
    let mut dx = dy.clone();
    let mut dgamma = vec![0.0; s.c];
    let mut dbeta = vec![0.0; s.c];
    for g in 0..groups {
        let c = match stats {
            NormStats::PerSample => g % s.c,
            NormStats::PerChannel => g,
        };
        let inv = 1.0 / (m.var[g] + NORM_EPS as f64).sqrt();
        let xhat = |i: usize| (x.data[i] - m.mean[g]) * inv;
        let (mut sum_dy, mut sum_dy_xhat) = (0.0, 0.0);
        for_group(x, stats, g, |i| {
            sum_dy += dy.data[i];
            sum_dy_xhat += dy.data[i] * xhat(i);
        });
        dgamma[c] += sum_dy_xhat;
        dbeta[c] += sum_dy;
        let (mean_dy, mean_dy_xhat) = (sum_dy / m.count as f64, sum_dy_xhat / m.count as f64);
        for_group(x, stats, g, |i| {
            dx.data[i] += gamma[c] * inv * (dy.data[i] - mean_dy - xhat(i) * mean_dy_xhat);
        });
    }
    NormGrads { dx, dgamma, dbeta }
}

/// PyTorch BatchNorm2d's running-statistics update from one training batch's
/// per-channel moments (unbiased variance in the running estimate).
pub fn update_running(running_mean: &mut [f64], running_var: &mut [f64], m: &Moments) {
    let mom = BN_MOMENTUM as f64;
    let unbias = m.count as f64 / (m.count as f64 - 1.0).max(1.0);
    for c in 0..running_mean.len() {
        running_mean[c] = (1.0 - mom) * running_mean[c] + mom * m.mean[c];
        running_var[c] = (1.0 - mom) * running_var[c] + mom * m.var[c] * unbias;
    }
}
