//! Optimiser launches (shaders/optim.wgsl). CPU oracle: `cpu::optim`.

use bytemuck::{Pod, Zeroable};

use super::{ensure, u32_of};
use crate::gpu::shaders::Family;
use crate::gpu::{Dispatch, Gpu, Grid, Kernel, Result, Tensor};
use crate::nn::{Adam, Sgd};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Params {
    len: u32,
    step_size: f32,
    beta1: f32,
    beta2: f32,
    bias2_sqrt: f32,
    eps: f32,
    weight_decay: f32,
    momentum: f32,
}

enum Rule {
    Adam(Adam),
    Sgd,
}

/// One parameter tensor's update. Adam's bias corrections depend on the
/// step, so `set_step` rewrites them (in f64 on the host) before each step.
pub struct Update {
    pub dispatch: Dispatch,
    params: Params,
    rule: Rule,
}

impl Update {
    /// Prepares the update for optimiser step `step` (counting from 1).
    pub fn set_step(&mut self, gpu: &Gpu, step: u32) {
        if let Rule::Adam(hp) = &self.rule {
            self.params.step_size = (hp.lr as f64 / (1.0 - (hp.beta1 as f64).powi(step as i32))) as f32;
            self.params.bias2_sqrt = (1.0 - (hp.beta2 as f64).powi(step as i32)).sqrt() as f32;
            self.dispatch.set_params(gpu, &self.params);
        }
    }
}

fn ensure_like(label: &str, p: &Tensor, others: &[&Tensor]) -> Result<()> {
    for t in others {
        ensure(t.shape.numel() == p.shape.numel(), label, || format!("{} state for a {} parameter", t.shape, p.shape))?;
    }
    Ok(())
}

/// Adam on `param` with gradient `grad` and moments `m`, `v`; ready for step 1.
pub fn adam(gpu: &Gpu, param: &Tensor, grad: &Tensor, m: &Tensor, v: &Tensor, hp: &Adam) -> Result<Update> {
    let label = format!("adam {}", param.shape);
    ensure_like(&label, param, &[grad, m, v])?;
    let params = Params {
        len: u32_of(param.shape.numel()),
        step_size: 0.0,
        beta1: hp.beta1,
        beta2: hp.beta2,
        bias2_sqrt: 0.0,
        eps: hp.eps,
        weight_decay: hp.weight_decay,
        momentum: 0.0,
    };
    let bindings = [(1, param.view()), (2, grad.view()), (3, m.view()), (4, v.view())];
    let grid = Grid::Elements(param.shape.numel());
    // Traffic: reads the parameter, gradient and both moments; writes three of them.
    let bytes = 7.0 * param.bytes() as f64;
    let dispatch =
        gpu.dispatch(label, &Kernel::new(Family::Optim, "adam"), &params, &bindings, grid)?.with_bytes(bytes);
    let mut update = Update { dispatch, params, rule: Rule::Adam(*hp) };
    update.set_step(gpu, 1);
    Ok(update)
}

/// SGD (optionally with momentum, buffer `momentum_buf`) on `param`.
pub fn sgd(gpu: &Gpu, param: &Tensor, grad: &Tensor, momentum_buf: &Tensor, hp: &Sgd) -> Result<Update> {
    let label = format!("sgd {}", param.shape);
    ensure_like(&label, param, &[grad, momentum_buf])?;
    let params = Params {
        len: u32_of(param.shape.numel()),
        step_size: hp.lr,
        beta1: 0.0,
        beta2: 0.0,
        bias2_sqrt: 1.0,
        eps: 0.0,
        weight_decay: hp.weight_decay,
        momentum: hp.momentum,
    };
    let bindings = [(1, param.view()), (2, grad.view()), (3, momentum_buf.view())];
    let grid = Grid::Elements(param.shape.numel());
    // Traffic: reads the parameter, gradient and momentum; writes two of them.
    let bytes = 5.0 * param.bytes() as f64;
    let dispatch = gpu.dispatch(label, &Kernel::new(Family::Optim, "sgd"), &params, &bindings, grid)?.with_bytes(bytes);
    Ok(Update { dispatch, params, rule: Rule::Sgd })
}
