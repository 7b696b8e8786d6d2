//! The whole network on the CPU in f64, composed from `crate::cpu`'s ops:
//! the oracle the GPU graph is tested against. Written for clarity.

use super::config::{ModelConfig, NormKind};
use super::params::ParamSet;
use super::{Architecture, Place};
use crate::cpu::{self, Tensor};
use crate::nn::{Activation, NormStats};

/// Training (batch statistics, dropout with the given mask key) or inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train { dropout_seed: u32, step: u32 },
    Infer,
}

/// What the backward pass needs of one block's forward.
struct BlockCache {
    input: Tensor,
    /// Convolution output (the norm's input).
    t: Tensor,
    /// Norm-block output (the activation's input).
    u: Tensor,
}

pub struct Forward {
    pub logits: Tensor,
    /// Batch-norm running statistics after this forward, by norm prefix
    /// (training mode with batch norm only).
    pub running: Vec<(String, Vec<f64>, Vec<f64>)>,
    input: Tensor,
    blocks: Vec<BlockCache>,
    /// The output convolution's input.
    out_input: Tensor,
}

fn stats(cfg: &ModelConfig) -> NormStats {
    match cfg.norm {
        NormKind::Batch => NormStats::PerChannel,
        _ => NormStats::PerSample,
    }
}

/// The norm block of layer `prefix` on `t`, as training or inference does it.
fn norm_forward(
    p: &ParamSet,
    cfg: &ModelConfig,
    prefix: &str,
    t: &Tensor,
    mode: Mode,
    running: &mut Vec<(String, Vec<f64>, Vec<f64>)>,
) -> Tensor {
    let (gamma, beta) = (p.get_f64(&format!("{prefix}.weight")), p.get_f64(&format!("{prefix}.bias")));
    match (cfg.norm, mode) {
        (NormKind::Batch, Mode::Infer) => {
            let m = cpu::norm::Moments {
                mean: p.get_f64(&format!("{prefix}.running_mean")),
                var: p.get_f64(&format!("{prefix}.running_var")),
                count: 0,
            };
            cpu::norm::apply(t, &m, NormStats::PerChannel, &gamma, &beta)
        }
        (NormKind::Batch, Mode::Train { .. }) => {
            let (y, m) = cpu::norm::forward(t, NormStats::PerChannel, &gamma, &beta);
            let mut rm = p.get_f64(&format!("{prefix}.running_mean"));
            let mut rv = p.get_f64(&format!("{prefix}.running_var"));
            cpu::norm::update_running(&mut rm, &mut rv, &m);
            running.push((prefix.to_string(), rm, rv));
            y
        }
        _ => cpu::norm::forward(t, NormStats::PerSample, &gamma, &beta).0,
    }
}

pub fn forward(arch: &Architecture, p: &ParamSet, x: &Tensor, mode: Mode) -> Forward {
    let cfg = &arch.config;
    let act = cfg.activation();
    let mut running = Vec::new();
    let x0 = match &arch.input_norm {
        Some(prefix) => norm_forward(p, cfg, prefix, x, mode, &mut running),
        None => x.clone(),
    };
    let mut layer_outputs = vec![x0];
    let mut blocks = Vec::new();
    let mut head: Option<Tensor> = None;
    for b in &arch.blocks {
        let input = match b.place {
            Place::Concat { .. } => layer_outputs.last().expect("x0").clone(),
            _ => head.take().unwrap_or_else(|| {
                let outputs: Vec<&Tensor> = layer_outputs.iter().collect();
                let cat = cpu::layout::concat(&outputs);
                match mode {
                    Mode::Train { dropout_seed, step } if cfg.dropout > 0.0 => {
                        cpu::dropout::forward(&cat, cfg.dropout, dropout_seed, step)
                    }
                    _ => cat,
                }
            }),
        };
        let (w, bias) = (p.get(&format!("{}.weight", b.conv)), p.get_f64(&format!("{}.bias", b.conv)));
        let t = cpu::conv::forward(&input, &Tensor::from_f32(shape_of(p, &b.conv), w), &bias, b.dilation);
        if b.place == Place::Out {
            return Forward { logits: t, running, input: x.clone(), blocks, out_input: input };
        }
        let u = match &b.norm {
            Some(prefix) => norm_forward(p, cfg, prefix, &t, mode, &mut running),
            None => t.clone(),
        };
        let mut out = cpu::act::forward(&u, act);
        if b.residual {
            out = cpu::act::add(&out, &input);
        }
        match b.place {
            Place::Concat { .. } => layer_outputs.push(out),
            _ => head = Some(out),
        }
        blocks.push(BlockCache { input, t, u });
    }
    unreachable!("an architecture ends with its output convolution")
}

fn shape_of(p: &ParamSet, conv: &str) -> crate::Shape {
    let name = format!("{conv}.weight");
    p.specs[p.index(&name).unwrap_or_else(|| panic!("no parameter {name}"))].shape
}

/// Gradients of every parameter (aligned with `p.specs`; zero for running
/// statistics) given d loss / d logits.
pub fn backward(arch: &Architecture, p: &ParamSet, fwd: &Forward, mode: Mode, dlogits: &Tensor) -> Vec<Vec<f64>> {
    let cfg = &arch.config;
    let act: Activation = cfg.activation();
    let stats = stats(cfg);
    let mut grads: Vec<Vec<f64>> = p.values.iter().map(|v| vec![0.0; v.len()]).collect();
    let mut set = |name: String, g: Vec<f64>| {
        let i = p.index(&name).unwrap_or_else(|| panic!("no parameter {name}"));
        grads[i] = g;
    };
    let out = arch.blocks.last().expect("output block");
    let w = Tensor::from_f32(shape_of(p, &out.conv), p.get("out.weight"));
    let g = cpu::conv::backward(&fwd.out_input, &w, dlogits, 1);
    set("out.weight".into(), g.dw.data);
    set("out.bias".into(), g.db);
    let mut d = g.dx;

    let dilated = arch.blocks.iter().filter(|b| matches!(b.place, Place::Concat { .. })).count();
    // Head blocks, last to first.
    for (b, cache) in arch.blocks[dilated..arch.blocks.len() - 1].iter().zip(&fwd.blocks[dilated..]).rev() {
        d = block_backward(p, b, cache, act, stats, d, &mut set);
    }
    // d is now the gradient of the (dropped) concatenation.
    let dcat = match mode {
        Mode::Train { dropout_seed, step } if cfg.dropout > 0.0 => {
            cpu::dropout::backward(&d, cfg.dropout, dropout_seed, step)
        }
        _ => d,
    };
    let mut slices: Vec<Tensor> = (0..=dilated)
        .map(|k| {
            let (c0, c) =
                if k == 0 { (0, cfg.in_channels) } else { (cfg.in_channels + (k - 1) * cfg.width, cfg.width) };
            cpu::layout::channels(&dcat, c0, c)
        })
        .collect();
    for (i, (b, cache)) in arch.blocks[..dilated].iter().zip(&fwd.blocks[..dilated]).enumerate().rev() {
        let dx = slices[i + 1].clone();
        if b.residual {
            slices[i] = cpu::act::add(&slices[i], &dx);
        }
        let dinput = block_backward(p, b, cache, act, stats, dx, &mut set);
        slices[i] = cpu::act::add(&slices[i], &dinput);
    }
    if let Some(prefix) = &arch.input_norm {
        let g = cpu::norm::backward(&fwd.input, stats, &p.get_f64(&format!("{prefix}.weight")), &slices[0]);
        set(format!("{prefix}.weight"), g.dgamma);
        set(format!("{prefix}.bias"), g.dbeta);
    }
    grads
}

/// Backward through act(norm_block(conv(input))) given the gradient of its
/// activation output; records the block's parameter gradients and returns
/// the gradient of its input (the residual path is the caller's).
fn block_backward(
    p: &ParamSet,
    b: &super::Block,
    cache: &BlockCache,
    act: Activation,
    stats: NormStats,
    dout: Tensor,
    set: &mut impl FnMut(String, Vec<f64>),
) -> Tensor {
    // The activation's derivative depends only on the sign of its input u.
    let du = cpu::act::backward(&cache.u, &dout, act);
    let dt = match &b.norm {
        Some(prefix) => {
            let g = cpu::norm::backward(&cache.t, stats, &p.get_f64(&format!("{prefix}.weight")), &du);
            set(format!("{prefix}.weight"), g.dgamma);
            set(format!("{prefix}.bias"), g.dbeta);
            g.dx
        }
        None => du,
    };
    let w = Tensor::from_f32(shape_of(p, &b.conv), p.get(&format!("{}.weight", b.conv)));
    let g = cpu::conv::backward(&cache.input, &w, &dt, b.dilation);
    set(format!("{}.weight", b.conv), g.dw.data);
    set(format!("{}.bias", b.conv), g.db);
    g.dx
}
