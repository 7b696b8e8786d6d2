//! Inverted-dropout launch (shaders/dropout.wgsl). CPU oracle: `cpu::dropout`;
//! the mask hash itself: `nn::dropout_uniform`.

use bytemuck::{Pod, Zeroable};

use super::{ensure, ensure_same, run_grid, u32_of};
use crate::gpu::shaders::Family;
use crate::gpu::{Dispatch, Gpu, Kernel, Result, View};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Params {
    n: u32,
    c: u32,
    hw: u32,
    p: f32,
    seed: u32,
    step: u32,
    a_ctotal: u32,
    a_coff: u32,
    b_ctotal: u32,
    b_coff: u32,
    m_ctotal: u32,
    m_coff: u32,
}

/// `y = x * keep / (1 - p)` with the mask of (seed, step); the launch's
/// step is rewritten by `Dispatch::set_step` (the forward pass and the
/// backward pass, the same launch on the gradients, share seed and step,
/// hence the mask).
pub fn apply(gpu: &Gpu, x: View, p: f32, seed: u32, step: u32, y: View) -> Result<Dispatch> {
    apply_part(gpu, x, p, seed, step, y, (x.c, 0))
}

/// `apply` on one part of a larger tensor of `mask.0` channels, of which `x`
/// is channels [mask.1, mask.1 + x.c): the part gets its elements' share of
/// the whole tensor's mask.
pub fn apply_part(gpu: &Gpu, x: View, p: f32, seed: u32, step: u32, y: View, mask: (usize, usize)) -> Result<Dispatch> {
    let label = format!("dropout {} p {p} part {}", x.shape(), mask.1);
    ensure(mask.1 + x.c <= mask.0, &label, || format!("channels {}.. of a {}-channel mask", mask.1, mask.0))?;
    ensure_same(&label, &x, &y)?;
    ensure((0.0..1.0).contains(&p), &label, || format!("probability {p} outside [0, 1)"))?;
    let s = x.shape();
    let params = Params {
        n: u32_of(s.n),
        c: u32_of(s.c),
        hw: u32_of(s.plane()),
        p,
        seed,
        step,
        a_ctotal: u32_of(x.tensor.shape.c),
        a_coff: u32_of(x.c_offset),
        b_ctotal: u32_of(y.tensor.shape.c),
        b_coff: u32_of(y.c_offset),
        m_ctotal: u32_of(mask.0),
        m_coff: u32_of(mask.1),
    };
    let bindings = [(1, x), (2, y)];
    let dispatch =
        gpu.dispatch(label, &Kernel::new(Family::Dropout, "apply"), &params, &bindings, run_grid(gpu, &x))?;
    Ok(dispatch.with_step_at(std::mem::offset_of!(Params, step)))
}
