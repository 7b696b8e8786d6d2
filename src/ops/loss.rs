//! Output functions and losses with their gradients (shaders/loss.wgsl).
//! CPU oracle: `cpu::loss`.

use bytemuck::{Pod, Zeroable};

use super::{ensure, u32_of};
use crate::gpu::shaders::Family;
use crate::gpu::{Dispatch, Gpu, Grid, Kernel, Result, Tensor, View};
use crate::nn::SigmoidLoss;
use crate::shape::Shape;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Params {
    n: u32,
    c: u32,
    hw: u32,
    kind: u32,
    bce: u32,
    dice: u32,
    _pad0: u32,
    _pad1: u32,
}

/// One per-pixel stage of the loss.
fn stage(
    gpu: &Gpu,
    label: &str,
    entry: &'static str,
    p: &Params,
    bindings: &[(u32, &Tensor)],
    pixels: usize,
) -> Result<Dispatch> {
    let views: Vec<(u32, View)> = bindings.iter().map(|(b, t)| (*b, t.view())).collect();
    gpu.dispatch(format!("{label} {entry}"), &Kernel::new(Family::Loss, entry), p, &views, Grid::Elements(pixels))
}

/// Which output function and loss (MODEL.md's `output`).
pub enum LossKind {
    /// Softmax over channels with (optionally class-weighted) cross-entropy.
    SoftmaxCrossEntropy { class_weights: Option<Tensor> },
    /// One channel, sigmoid, BCE and/or soft Dice.
    Sigmoid(SigmoidLoss),
    /// One linear channel, mean squared error.
    Mse,
}

/// The recorded loss: run `dispatches` in order; `sums[3]` then holds the
/// loss (the only value a step reads back), `grad` d loss / d logits and
/// `probs` the softmax or sigmoid output.
pub struct Loss {
    pub dispatches: Vec<Dispatch>,
    pub sums: Tensor,
    pub probs: Option<Tensor>,
}

impl Loss {
    /// Index of the loss value in `sums`.
    pub const LOSS_INDEX: usize = 3;
}

/// Builds the three stages for `logits` against per-pixel `target`
/// (N x 1 x H x W), writing the gradient into `grad` (the logits' shape).
pub fn build(gpu: &Gpu, logits: &Tensor, target: &Tensor, kind: &LossKind, grad: &Tensor) -> Result<Loss> {
    let s = logits.shape;
    let label = format!("loss {s}");
    let pixels = s.n * s.plane();
    ensure(target.shape == s.with_c(1), &label, || format!("target {} for logits {s}", target.shape))?;
    ensure(grad.shape == s, &label, || format!("gradient {} for logits {s}", grad.shape))?;
    if !matches!(kind, LossKind::SoftmaxCrossEntropy { .. }) {
        ensure(s.c == 1, &label, || format!("{} channels: sigmoid and MSE outputs have one", s.c))?;
    }
    let sigmoid = match kind {
        LossKind::Sigmoid(w) => *w,
        _ => SigmoidLoss { bce: false, dice: false },
    };
    let p = Params {
        n: u32_of(s.n),
        c: u32_of(s.c),
        hw: u32_of(s.plane()),
        kind: match kind {
            LossKind::SoftmaxCrossEntropy { .. } => 0,
            LossKind::Sigmoid(_) => 1,
            LossKind::Mse => 2,
        },
        bce: u32::from(sigmoid.bce),
        dice: u32::from(sigmoid.dice),
        _pad0: 0,
        _pad1: 0,
    };
    let terms = gpu.tensor(Shape::new(pixels, 3, 1, 1))?;
    let sums = gpu.tensor(Shape::vector(4))?;
    let (l, t) = ((1, logits), (2, target));
    // Each entry point binds exactly what it reads and writes.
    let (probs, term_stage, grad_stage) = match kind {
        LossKind::SoftmaxCrossEntropy { class_weights } => {
            // Unweighted is weighted by ones: one kernel, no flag.
            let weights = match class_weights {
                Some(w) => {
                    ensure(w.shape.numel() == s.c, &label, || {
                        format!("{} class weights for {} classes", w.shape.numel(), s.c)
                    })?;
                    w.clone()
                }
                None => gpu.upload(Shape::vector(s.c), &vec![1.0; s.c])?,
            };
            let probs = gpu.tensor(s)?;
            let terms_d =
                stage(gpu, &label, "softmax_terms", &p, &[l, t, (3, &weights), (4, &probs), (5, &terms)], pixels)?;
            let grad_d = stage(gpu, &label, "softmax_grad", &p, &[l, t, (3, &weights), (8, &sums), (9, grad)], pixels)?;
            (Some(probs), terms_d, grad_d)
        }
        LossKind::Sigmoid(_) => {
            let probs = gpu.tensor(s)?;
            let terms_d = stage(gpu, &label, "sigmoid_terms", &p, &[l, t, (4, &probs), (5, &terms)], pixels)?;
            let grad_d = stage(gpu, &label, "sigmoid_grad", &p, &[l, t, (8, &sums), (9, grad)], pixels)?;
            (Some(probs), terms_d, grad_d)
        }
        LossKind::Mse => {
            let terms_d = stage(gpu, &label, "mse_terms", &p, &[l, t, (5, &terms)], pixels)?;
            let grad_d = stage(gpu, &label, "mse_grad", &p, &[l, t, (9, grad)], pixels)?;
            (None, terms_d, grad_d)
        }
    };
    let reduce = Kernel::new(Family::Loss, "reduce");
    let reduce =
        gpu.dispatch(format!("{label} reduce"), &reduce, &p, &[(6, terms.view()), (7, sums.view())], Grid::Groups(1))?;
    let dispatches = vec![term_stage, reduce, grad_stage];
    Ok(Loss { dispatches, sums, probs })
}
