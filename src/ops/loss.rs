//! Output functions and losses with their gradients (shaders/loss.wgsl).
//! CPU oracle: `cpu::loss`.

use bytemuck::{Pod, Zeroable};

use super::{ensure, reduction_parts, u32_of};
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
    SoftmaxCrossEntropy { class_weights: Option<Vec<f32>> },
    /// One channel, sigmoid, BCE and/or soft Dice.
    Sigmoid(SigmoidLoss),
    /// One linear channel, mean squared error.
    Mse,
}

/// The recorded loss: write the targets with `write_target`, then run
/// `dispatches` in order; `sums[3]` then holds the loss (the only value a
/// step reads back), the gradient tensor d loss / d logits and `probs` the
/// softmax or sigmoid output.
pub struct Loss {
    pub dispatches: Vec<Dispatch>,
    pub sums: Tensor,
    pub probs: Option<Tensor>,
    target: Tensor,
    /// Softmax: the class weights on the host and the batch's total weight
    /// on the device, the gradient's normaliser (written with the targets).
    class_weights: Option<(Vec<f32>, Tensor)>,
}

impl Loss {
    /// Index of the loss value in `sums`.
    pub const LOSS_INDEX: usize = 3;

    /// Writes the per-pixel targets (N x 1 x H x W) and, for cross-entropy,
    /// their total class weight. Refuses a class index that is not a whole
    /// number below the class count, or a non-finite target, naming it.
    pub fn write_target(&self, gpu: &Gpu, data: &[f32]) -> Result<()> {
        let label = format!("loss {}", self.target.shape);
        ensure(data.len() == self.target.shape.numel(), &label, || {
            format!("{} target values for {} pixels", data.len(), self.target.shape.numel())
        })?;
        let bad = data.iter().position(|t| !t.is_finite());
        ensure(bad.is_none(), &label, || format!("target {} is {}", bad.unwrap_or(0), data[bad.unwrap_or(0)]))?;
        if let Some((weights, total)) = &self.class_weights {
            let mut sum = 0.0f64;
            for (at, &t) in data.iter().enumerate() {
                let class = t as usize;
                let valid = t >= 0.0 && t.fract() == 0.0 && class < weights.len();
                ensure(valid, &label, || format!("target {at} is {t}, not a class index below {}", weights.len()))?;
                sum += f64::from(weights[class]);
            }
            gpu.write(total, &[sum as f32])?;
        }
        gpu.write(&self.target, data)?;
        Ok(())
    }
}

/// Builds the loss of `logits` against per-pixel `target` (N x 1 x H x W),
/// writing the gradient into `grad` (the logits' shape): terms,
/// probabilities and gradient in one pass where the gradient's normaliser
/// is known before the step, then the reduction; Dice adds a third pass
/// after it (shaders/loss.wgsl).
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
    let (l, t, terms_out, grad_out) = ((1, logits), (2, target), (5, &terms), (9, grad));
    // The reduction: in parts (a workgroup each) where there are enough
    // pixels, then one workgroup over the parts' sums.
    let parts = reduction_parts(gpu, 1, pixels);
    let kernel = Kernel::new(Family::Loss, "reduce").with("PARTS", parts as f64);
    let mut reduce = Vec::new();
    let rows = if parts > 1 {
        let part_sums = gpu.tensor(Shape::new(parts, 3, 1, 1))?;
        let bindings = [(6, terms.view()), (5, part_sums.view())];
        let entry = Kernel { entry: "reduce_parts", ..kernel.clone() };
        reduce.push(gpu.dispatch(
            format!("{label} reduce {parts} parts"),
            &entry,
            &p,
            &bindings,
            Grid::Groups(parts),
        )?);
        part_sums
    } else {
        terms.clone()
    };
    reduce.push(gpu.dispatch(
        format!("{label} reduce"),
        &kernel,
        &p,
        &[(6, rows.view()), (7, sums.view())],
        Grid::Groups(1),
    )?);
    // Each entry point binds exactly what it reads and writes.
    let (dispatches, probs, class_weights) = match kind {
        LossKind::SoftmaxCrossEntropy { class_weights } => {
            // Unweighted is weighted by ones: one kernel, no flag.
            let weights = class_weights.clone().unwrap_or_else(|| vec![1.0; s.c]);
            ensure(weights.len() == s.c, &label, || format!("{} class weights for {} classes", weights.len(), s.c))?;
            let on_device = gpu.upload(Shape::vector(s.c), &weights)?;
            let total = gpu.tensor(Shape::vector(1))?;
            let probs = gpu.tensor(s)?;
            let bindings = [l, t, (3, &on_device), (4, &probs), terms_out, grad_out, (10, &total)];
            let fused = stage(gpu, &label, "softmax_loss", &p, &bindings, pixels)?;
            (then(fused, reduce), Some(probs), Some((weights, total)))
        }
        LossKind::Sigmoid(which) => {
            let probs = gpu.tensor(s)?;
            let dispatches = if which.dice {
                let terms_d = stage(gpu, &label, "sigmoid_terms", &p, &[l, t, (4, &probs), terms_out], pixels)?;
                let grad_d = stage(gpu, &label, "sigmoid_grad", &p, &[l, t, (8, &sums), grad_out], pixels)?;
                let mut list = then(terms_d, reduce);
                list.push(grad_d);
                list
            } else {
                let bindings = [l, t, (4, &probs), terms_out, grad_out];
                then(stage(gpu, &label, "sigmoid_loss", &p, &bindings, pixels)?, reduce)
            };
            (dispatches, Some(probs), None)
        }
        LossKind::Mse => {
            let fused = stage(gpu, &label, "mse_loss", &p, &[l, t, terms_out, grad_out], pixels)?;
            (then(fused, reduce), None, None)
        }
    };
    Ok(Loss { dispatches, sums, probs, target: target.clone(), class_weights })
}

/// `first`, then the launches `rest`.
fn then(first: Dispatch, rest: Vec<Dispatch>) -> Vec<Dispatch> {
    std::iter::once(first).chain(rest).collect()
}
