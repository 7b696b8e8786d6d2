//! Convolution launches (shaders/conv.wgsl). CPU oracle: `cpu::conv`.

use bytemuck::{Pod, Zeroable};

use super::{ensure, u32_of};
use crate::gpu::shaders::Family;
use crate::gpu::{Dispatch, Gpu, Grid, Kernel, Result, Tensor, View};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Params {
    n: u32,
    cin: u32,
    cout: u32,
    h: u32,
    w: u32,
    dilation: u32,
    in_ctotal: u32,
    in_coff: u32,
    out_ctotal: u32,
    out_coff: u32,
    accumulate: u32,
    _pad: u32,
}

/// Checks `w` (OIHW, odd square kernel) against the input and output views
/// and returns the kernel size and the parameters.
fn params(label: &str, input: &View, w: &Tensor, output: &View, dilation: usize) -> Result<(usize, Params)> {
    let (xs, ws, ys) = (input.shape(), w.shape, output.shape());
    ensure(ws.h == ws.w && ws.h % 2 == 1, label, || format!("weights {ws} are not an odd square kernel"))?;
    ensure(ws.c == xs.c && ws.n == ys.c, label, || format!("weights {ws} do not map {xs} to {ys}"))?;
    ensure((xs.n, xs.h, xs.w) == (ys.n, ys.h, ys.w), label, || format!("input {xs} and output {ys} differ"))?;
    ensure(dilation >= 1, label, || "dilation 0".to_string())?;
    let p = Params {
        n: u32_of(xs.n),
        cin: u32_of(xs.c),
        cout: u32_of(ys.c),
        h: u32_of(xs.h),
        w: u32_of(xs.w),
        dilation: u32_of(dilation),
        in_ctotal: u32_of(input.tensor.shape.c),
        in_coff: u32_of(input.c_offset),
        out_ctotal: u32_of(output.tensor.shape.c),
        out_coff: u32_of(output.c_offset),
        accumulate: 0,
        _pad: 0,
    };
    Ok((ws.h, p))
}

/// BENCH.md's count, the same for the forward and both gradients.
fn flops(p: &Params, k: usize) -> f64 {
    2.0 * f64::from(p.cin) * f64::from(p.cout) * (k * k) as f64 * f64::from(p.n) * f64::from(p.h) * f64::from(p.w)
}

fn kernel(entry: &'static str, k: usize) -> Kernel {
    Kernel::new(Family::Conv, entry).with("K", k as f64)
}

/// `y = conv(x, w, dilation) + b`, written into the view `y`.
pub fn forward(gpu: &Gpu, x: View, w: &Tensor, b: &Tensor, dilation: usize, y: View) -> Result<Dispatch> {
    let label = format!("conv.forward {} {}x{} d{dilation}", x.shape(), w.shape.h, w.shape.w);
    let (k, p) = params(&label, &x, w, &y, dilation)?;
    ensure(b.shape.numel() == y.c, &label, || format!("bias {} for {} outputs", b.shape, y.c))?;
    let bindings = [(1, x), (2, w.view()), (3, b.view()), (4, y)];
    gpu.dispatch(label, &kernel("forward", k), &p, &bindings, Grid::Elements(y.shape().numel()))
        .map(|d| d.with_flops(flops(&p, k)))
}

/// The input gradient: the transposed convolution of `dy`, written into
/// (or, with `accumulate`, added to) the view `dx`.
pub fn backward_data(gpu: &Gpu, dy: View, w: &Tensor, dilation: usize, dx: View, accumulate: bool) -> Result<Dispatch> {
    let label = format!("conv.backward_data {} {}x{} d{dilation}", dx.shape(), w.shape.h, w.shape.w);
    let (k, mut p) = params(&label, &dx, w, &dy, dilation)?;
    p.accumulate = u32::from(accumulate);
    let bindings = [(5, dy), (2, w.view()), (6, dx)];
    gpu.dispatch(label, &kernel("backward_data", k), &p, &bindings, Grid::Elements(dx.shape().numel()))
        .map(|d| d.with_flops(flops(&p, k)))
}

/// The weight gradient `dw` (overwritten) from the layer input and `dy`.
pub fn backward_weight(gpu: &Gpu, x: View, dy: View, dilation: usize, dw: &Tensor) -> Result<Dispatch> {
    let label = format!("conv.backward_weight {} {}x{} d{dilation}", x.shape(), dw.shape.h, dw.shape.w);
    let (k, p) = params(&label, &x, dw, &dy, dilation)?;
    let bindings = [(1, x), (5, dy), (7, dw.view())];
    gpu.dispatch(label, &kernel("backward_weight", k), &p, &bindings, Grid::Groups(dw.shape.numel()))
        .map(|d| d.with_flops(flops(&p, k)))
}

/// The bias gradient `db` (overwritten): the sum of `dy` per channel.
pub fn backward_bias(gpu: &Gpu, dy: View, db: &Tensor) -> Result<Dispatch> {
    let label = format!("conv.backward_bias {}", dy.shape());
    ensure(db.shape.numel() == dy.c, &label, || format!("bias gradient {} for {} channels", db.shape, dy.c))?;
    let s = dy.shape();
    let p = Params {
        n: u32_of(s.n),
        cin: 0,
        cout: u32_of(s.c),
        h: u32_of(s.h),
        w: u32_of(s.w),
        dilation: 1,
        in_ctotal: 0,
        in_coff: 0,
        out_ctotal: u32_of(dy.tensor.shape.c),
        out_coff: u32_of(dy.c_offset),
        accumulate: 0,
        _pad: 0,
    };
    let bindings = [(5, dy), (8, db.view())];
    gpu.dispatch(label, &Kernel::new(Family::Conv, "backward_bias"), &p, &bindings, Grid::Groups(s.c))
}
