//! Activation and residual launches (shaders/elementwise.wgsl).
//! CPU oracle: `cpu::act`.

use bytemuck::{Pod, Zeroable};

use super::{ensure_apart, ensure_same, run_grid, u32_of};
use crate::gpu::shaders::Family;
use crate::gpu::{Dispatch, Gpu, Kernel, Result, View};
use crate::nn::Activation;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Params {
    n: u32,
    c: u32,
    hw: u32,
    slope: f32,
    a_ctotal: u32,
    a_coff: u32,
    b_ctotal: u32,
    b_coff: u32,
    g_ctotal: u32,
    g_coff: u32,
    _pad0: u32,
    _pad1: u32,
}

/// The parameters of a launch over slices a and b (and g, act_backward's
/// gradient; b where unused).
fn params(a: &View, b: &View, slope: f32) -> Params {
    params_with(a, b, b, slope)
}

fn params_with(a: &View, b: &View, g: &View, slope: f32) -> Params {
    let s = a.shape();
    Params {
        n: u32_of(s.n),
        c: u32_of(s.c),
        hw: u32_of(s.plane()),
        slope,
        a_ctotal: u32_of(a.tensor.shape.c),
        a_coff: u32_of(a.c_offset),
        b_ctotal: u32_of(b.tensor.shape.c),
        b_coff: u32_of(b.c_offset),
        g_ctotal: u32_of(g.tensor.shape.c),
        g_coff: u32_of(g.c_offset),
        _pad0: 0,
        _pad1: 0,
    }
}

/// `y = act(x)`.
pub fn act_forward(gpu: &Gpu, x: View, act: Activation, y: View) -> Result<Dispatch> {
    let label = format!("act.forward {} slope {}", x.shape(), act.slope);
    ensure_same(&label, &x, &y)?;
    let bindings = [(1, x), (2, y)];
    let kernel = Kernel::new(Family::Elementwise, "act_forward");
    gpu.dispatch(label, &kernel, &params(&x, &y, act.slope), &bindings, run_grid(gpu, &x))
}

/// `dx = dy * act'(y)`, from the activation's output `y` (or its input:
/// the same sign). Out of place: in a block without a norm, dy is a slice
/// of the concatenation's gradient beside the block input's, which the
/// convolution's data pass writes, and a dispatch may not bind a buffer it
/// writes twice.
pub fn act_backward(gpu: &Gpu, y: View, act: Activation, dy: View, dx: View) -> Result<Dispatch> {
    let label = format!("act.backward {} slope {}", y.shape(), act.slope);
    ensure_same(&label, &y, &dy)?;
    ensure_same(&label, &y, &dx)?;
    let bindings = [(1, y), (2, dx), (3, dy)];
    let kernel = Kernel::new(Family::Elementwise, "act_backward");
    gpu.dispatch(label, &kernel, &params_with(&y, &dx, &dy, act.slope), &bindings, run_grid(gpu, &y))
}

/// `dst += src` (the residual and its backward, between parts of the
/// concatenation): slices of one buffer are bound once, read-write.
pub fn add(gpu: &Gpu, src: View, dst: View) -> Result<Dispatch> {
    let label = format!("residual.add {}", src.shape());
    ensure_same(&label, &src, &dst)?;
    let within = src.tensor.same_storage(dst.tensor);
    if within {
        ensure_apart(&label, &src, &dst)?;
    }
    let (entry, bindings) = if within { ("add_within", vec![(2, dst)]) } else { ("add", vec![(1, src), (2, dst)]) };
    // Reads both operands and writes one.
    let bytes = 3.0 * dst.shape().numel() as f64 * 4.0;
    let grid = run_grid(gpu, &src);
    gpu.dispatch(label, &Kernel::new(Family::Elementwise, entry), &params(&src, &dst, 0.0), &bindings, grid)
        .map(|d| d.with_bytes(bytes))
}
