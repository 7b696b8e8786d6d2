//! The microbenchmarks' launches (shaders/bench.wgsl). CPU oracle:
//! `cpu::bench`.

use bytemuck::{Pod, Zeroable};

use super::{ensure, u32_of};
use crate::gpu::shaders::Family;
use crate::gpu::{Dispatch, Gpu, Grid, Kernel, Result, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Params {
    len: u32,
    iters: u32,
    _pad0: u32,
    _pad1: u32,
}

/// Independent fma chains per invocation of `fma_chains` (8 vec4 accumulators).
pub const CHAINS: usize = 32;

/// One invocation per 4 values of `seeds`; each runs `CHAINS` chains of
/// `iters` multiply-adds and writes their sum (4 values) to `out`.
pub fn fma_chains(gpu: &Gpu, seeds: &Tensor, out: &Tensor, iters: u32) -> Result<Dispatch> {
    let label = format!("bench.fma_chains {} x{iters}", seeds.shape);
    let n = seeds.shape.numel();
    ensure(iters.is_multiple_of(4), &label, || format!("{iters} steps: the kernel takes four per trip"))?;
    ensure(n.is_multiple_of(4) && out.shape.numel() == n, &label, || {
        format!("seeds {} and out {}", seeds.shape, out.shape)
    })?;
    let p = Params { len: u32_of(n / 4), iters, _pad0: 0, _pad1: 0 };
    let bindings = [(1, seeds.view()), (2, out.view())];
    let flops = 2.0 * CHAINS as f64 * f64::from(iters) * (n / 4) as f64;
    gpu.dispatch(label, &Kernel::new(Family::Bench, "fma_chains"), &p, &bindings, Grid::Elements(n / 4))
        .map(|d| d.with_flops(flops))
}

/// `dst = src`, 16 bytes per invocation.
pub fn copy(gpu: &Gpu, src: &Tensor, dst: &Tensor) -> Result<Dispatch> {
    let label = format!("bench.copy {}", src.shape);
    let n = src.shape.numel();
    ensure(n.is_multiple_of(4) && dst.shape.numel() == n, &label, || {
        format!("src {} and dst {}", src.shape, dst.shape)
    })?;
    let p = Params { len: u32_of(n / 4), iters: 0, _pad0: 0, _pad1: 0 };
    let bindings = [(1, src.view()), (2, dst.view())];
    gpu.dispatch(label, &Kernel::new(Family::Bench, "copy"), &p, &bindings, Grid::Elements(n / 4))
}
