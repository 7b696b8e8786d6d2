//! Norm-block launches (shaders/norm.wgsl): statistics, apply, running
//! statistics, backward. CPU oracle: `cpu::norm`.

use bytemuck::{Pod, Zeroable};

use super::{ensure, ensure_apart, ensure_same, reduction_parts, run_grid, u32_of, window_of};
use crate::gpu::shaders::Family;
use crate::gpu::{Dispatch, Gpu, Grid, Kernel, Result, Tensor, Tuning, View, Window};
use crate::nn::{Activation, NormStats, BN_MOMENTUM, NORM_EPS};
use crate::shape::Shape;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Params {
    n: u32,
    c: u32,
    hw: u32,
    res_coff: u32,
    x_ctotal: u32,
    x_coff: u32,
    y_ctotal: u32,
    y_coff: u32,
    eps: f32,
    momentum: f32,
    slope: f32,
    _pad1: u32,
    dx_ctotal: u32,
    dx_coff: u32,
    _pad2: [u32; 2],
    win: [[u32; 4]; WINDOWS],
}

/// Parameters for input `x` and output (or output-gradient) view `y`.
fn params(x: &View, y: &View) -> Params {
    let s = x.shape();
    Params {
        n: u32_of(s.n),
        c: u32_of(s.c),
        hw: u32_of(s.plane()),
        res_coff: 0,
        x_ctotal: u32_of(x.tensor.shape.c),
        x_coff: u32_of(x.c_offset),
        y_ctotal: u32_of(y.tensor.shape.c),
        y_coff: u32_of(y.c_offset),
        eps: NORM_EPS,
        momentum: BN_MOMENTUM,
        slope: 0.0,
        _pad1: 0,
        dx_ctotal: u32_of(x.tensor.shape.c),
        dx_coff: u32_of(x.c_offset),
        _pad2: [0; 2],
        win: [[0; 4]; WINDOWS],
    }
}

fn kernel(entry: &'static str, stats: NormStats) -> Kernel {
    Kernel::new(Family::Norm, entry).with("PER_CHANNEL", f64::from(u8::from(stats == NormStats::PerChannel)))
}

/// A kernel with the activation after the block fused (`ACT` in norm.wgsl),
/// or none, and its parameters.
fn with_act(kernel: Kernel, mut p: Params, act: Option<Activation>) -> (Kernel, Params) {
    p.slope = act.map_or(0.0, |a| a.slope);
    (kernel.with("ACT", f64::from(u8::from(act.is_some()))), p)
}

/// A norm layer's per-channel parameters and the per-group statistics it
/// normalises with: the batch's own (training), or the running ones with
/// `NormStats::PerChannel` (batch-norm inference).
pub struct NormTensors<'a> {
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub mean: &'a Tensor,
    pub var: &'a Tensor,
}

impl NormTensors<'_> {
    /// Refuses statistics or parameters of the wrong size for `x`.
    fn ensure_fits(&self, label: &str, x: &View, stats: NormStats) -> Result<()> {
        ensure_stats(label, x.shape(), stats, &[self.mean, self.var])?;
        ensure_channels(label, x.c, &[self.gamma, self.beta])
    }

    /// Their bindings in norm.wgsl.
    fn bindings(&self) -> [(u32, View<'_>); 4] {
        [(2, self.gamma.view()), (3, self.beta.view()), (4, self.mean.view()), (5, self.var.view())]
    }
}

fn ensure_stats(label: &str, s: Shape, stats: NormStats, t: &[&Tensor]) -> Result<()> {
    let groups = stats.groups(s.n, s.c);
    for t in t {
        ensure(t.shape.numel() == groups, label, || format!("statistics {} for {groups} groups", t.shape))?;
    }
    Ok(())
}

fn ensure_channels(label: &str, c: usize, t: &[&Tensor]) -> Result<()> {
    for t in t {
        ensure(t.shape.numel() == c, label, || format!("per-channel tensor {} for {c} channels", t.shape))?;
    }
    Ok(())
}

/// A statistics kernel over `groups` groups, in `parts` parts (norm.wgsl's
/// PARTS): `kernel` (a workgroup per group) writing the results, or with
/// parts its `_parts` entry writing per-part values that the entry
/// `combine` merges in order. `bindings` are the kernel's, `results` the
/// bindings its results go to.
#[allow(clippy::too_many_arguments)]
fn in_parts(
    gpu: &Gpu,
    label: String,
    kernel: Kernel,
    p: Params,
    bindings: Vec<(u32, View)>,
    results: &[(u32, View)],
    (parted, combine): (&'static str, Combine),
    groups: usize,
    parts: usize,
) -> Result<Vec<Dispatch>> {
    if parts == 1 {
        let mut bindings = bindings;
        bindings.extend_from_slice(results);
        return Ok(vec![gpu.dispatch(label, &kernel, &p, &bindings, Grid::Groups(groups))?]);
    }
    let kernel = kernel.with("PARTS", parts as f64);
    let part_values = gpu.tensor(Shape::new(groups, parts, 2, 1))?;
    let mut first = bindings;
    first.push((17, part_values.view()));
    let grid = Grid::Groups(groups * parts);
    let sums =
        gpu.dispatch(format!("{label} {parts} parts"), &Kernel { entry: parted, ..kernel.clone() }, &p, &first, grid)?;
    let combined = combine_parts(gpu, &label, kernel, combine, p, &part_values, results, groups)?;
    Ok(vec![sums, combined])
}

/// The entries of norm.wgsl that merge a reduction's per-part values in
/// order: one invocation per group (`combine_*`: CPU adapters, few parts,
/// no workgroup barrier), or a workgroup per group (`combine_*_wg`: GPUs,
/// up to GPU_REDUCTION_WORKGROUPS parts, which one invocation walked in
/// 40 us on an H200, 2026-11-29).
#[derive(Clone, Copy)]
struct Combine {
    per_invocation: &'static str,
    per_workgroup: &'static str,
}

const COMBINE_MOMENTS: Combine = Combine { per_invocation: "combine_moments", per_workgroup: "combine_moments_wg" };
const COMBINE_SUMS: Combine = Combine { per_invocation: "combine_sums", per_workgroup: "combine_sums_wg" };

/// The `combine` launch merging each group's per-part values
/// (`part_values`) in order into `results`.
#[allow(clippy::too_many_arguments)]
fn combine_parts(
    gpu: &Gpu,
    label: &str,
    kernel: Kernel,
    combine: Combine,
    p: Params,
    part_values: &Tensor,
    results: &[(u32, View)],
    groups: usize,
) -> Result<Dispatch> {
    let mut merge = vec![(17, part_values.view())];
    merge.extend_from_slice(results);
    let label = label.replacen(kernel.entry, combine.per_invocation, 1);
    let (entry, grid) = match gpu.tuning() {
        Tuning::Cpu => (combine.per_invocation, Grid::Elements(groups)),
        Tuning::Gpu => (combine.per_workgroup, Grid::Groups(groups)),
    };
    gpu.dispatch(label, &Kernel { entry, ..kernel }, &p, &merge, grid)
}

/// Elements per part of the windowed reductions (norm.wgsl's PART_LEN),
/// the first that fits: 4096 where every window starts aligned (four parts
/// fill it; a 256x256 plane is four windows), else 4080, which leaves room
/// for a start rounded down to the offset alignment (five windows).
const PART_LENS: [usize; 2] = [4096, 4080];
/// Parts per window and windows per launch (shared by the inputs: x; x
/// and dy): norm.wgsl's WINDOW_PARTS and WINDOWS.
const WINDOW_PARTS: usize = 4;
const WINDOWS: usize = 14;
/// The binding of the first window; input i's window k is bound at
/// FIRST_WINDOW + i * (WINDOWS / inputs) + k.
const FIRST_WINDOW: u32 = 19;

/// One window of the windowed reductions: up to WINDOW_PARTS parts of one
/// plane, read through a 64 KiB window of each input.
struct PartWindow {
    /// Per input: the window's offset in its tensor (bytes) and where the
    /// parts start in it (elements).
    at: Vec<(u64, u32)>,
    /// part_out's index of the first part, and the parts' elements.
    first: u32,
    len: u32,
}

/// The windows of the windowed reductions over `inputs` (x, and dy for
/// the backward sums), group by group, plane by plane, and the parts per
/// group; None where the windowed kernels cannot be used or would not pay
/// (a hardware GPU, too few uniform bindings, planes under one part: a
/// launch per 7 or 14 planes, where the storage kernels take every group in
/// one; an input no window can hold; x and dy windows starting at
/// different offsets within a vec4).
fn part_windows(gpu: &Gpu, inputs: &[View], stats: NormStats, part_len: usize) -> Option<(Vec<PartWindow>, usize)> {
    let bindings = 1 + WINDOWS as u32;
    let s = inputs[0].shape();
    let least = PART_LENS[PART_LENS.len() - 1];
    if gpu.tuning() != Tuning::Cpu || gpu.limits.max_uniform_buffers_per_shader_stage < bindings || s.plane() < least {
        return None;
    }
    let per_plane = s.plane().div_ceil(part_len);
    let samples = if stats == NormStats::PerChannel { s.n } else { 1 };
    let mut windows = Vec::new();
    for g in 0..stats.groups(s.n, s.c) {
        let (n0, c) = if stats == NormStats::PerChannel { (0, g) } else { (g / s.c, g % s.c) };
        for n in n0..n0 + samples {
            for j in (0..per_plane).step_by(WINDOW_PARTS) {
                let from = j * part_len;
                let len = (WINDOW_PARTS * part_len).min(s.plane() - from);
                let at = inputs.iter().map(|v| window_of(gpu, v, n, c, from, len)).collect::<Option<Vec<_>>>()?;
                if at.iter().any(|&(_, lo)| lo % 4 != at[0].1 % 4) {
                    return None;
                }
                let first = (g * samples + n - n0) * per_plane + j;
                windows.push(PartWindow { at, first: u32_of(first), len: u32_of(len) });
            }
        }
    }
    Some((windows, samples * per_plane))
}

/// A windowed reduction (`entry`, norm.wgsl's moments_windows or
/// backward_sums_windows) over `inputs` (x; dy), WINDOWS / inputs windows a
/// launch writing per-part values, then `combine` merging each group's
/// parts in order into `results`; None where `part_windows` refuses.
#[allow(clippy::too_many_arguments)]
fn in_windows(
    gpu: &Gpu,
    label: &str,
    kernel: &Kernel,
    stats: NormStats,
    p: Params,
    inputs: &[View],
    bindings: &[(u32, View)],
    results: &[(u32, View)],
    (entry, combine): (&'static str, Combine),
    groups: usize,
) -> Result<Option<Vec<Dispatch>>> {
    let found = PART_LENS.iter().find_map(|&len| Some((len, part_windows(gpu, inputs, stats, len)?)));
    let Some((part_len, (windows, parts))) = found else { return Ok(None) };
    let kernel = kernel.clone().with("PARTS", parts as f64).with("WINDOWED", 1.0).with("PART_LEN", part_len as f64);
    let part_values = gpu.tensor(Shape::new(groups, parts, 2, 1))?;
    let mut launch_bindings = bindings.to_vec();
    launch_bindings.push((17, part_values.view()));
    let mut list = Vec::new();
    let per_launch = WINDOWS / inputs.len();
    for launch in windows.chunks(per_launch) {
        let mut lp = p;
        let mut bound = Vec::new();
        for k in 0..per_launch {
            // Bindings past the last window repeat it, with no elements.
            let w = &launch[k.min(launch.len() - 1)];
            let len = if k < launch.len() { w.len } else { 0 };
            lp.win[k] = [w.at[0].1, w.at.last().map_or(0, |a| a.1), w.first, len];
            for (i, (input, &(offset, _))) in inputs.iter().zip(&w.at).enumerate() {
                let binding = FIRST_WINDOW + (i * per_launch + k) as u32;
                bound.push(Window { binding, tensor: input.tensor, offset });
            }
        }
        let d = gpu.dispatch_windowed(
            format!("{label} windowed"),
            &Kernel { entry, ..kernel.clone() },
            &lp,
            &launch_bindings,
            &bound,
            Grid::Groups(WINDOW_PARTS),
        )?;
        let elements: u32 = launch.iter().map(|w| w.len).sum();
        list.push(d.with_bytes(f64::from(elements) * 4.0 * inputs.len() as f64));
    }
    list.push(combine_parts(gpu, label, kernel, combine, p, &part_values, results, groups)?);
    Ok(Some(list))
}

/// Mean and biased variance of every group of `x` into `mean`, `var`.
pub fn moments(gpu: &Gpu, x: View, stats: NormStats, mean: &Tensor, var: &Tensor) -> Result<Vec<Dispatch>> {
    let label = format!("norm.moments {} {stats:?}", x.shape());
    ensure_stats(&label, x.shape(), stats, &[mean, var])?;
    let results = vec![(6, mean.view()), (7, var.view())];
    moments_with(gpu, label, x, stats, kernel("moments", stats), params(&x, &x), results)
}

/// `moments` into `t.mean`, `t.var` for a deferred block (`View::affine`):
/// its output act(x + Norm(x)) is never stored, and the kernel that writes
/// the statistics also writes `table`'s entries for x's channels (norm.wgsl's
/// AFFINE), from which the convolutions reading the block apply it. No apply
/// pass follows.
pub fn moments_deferred(
    gpu: &Gpu,
    x: View,
    stats: NormStats,
    t: &NormTensors,
    act: Option<Activation>,
    table: &Tensor,
) -> Result<Vec<Dispatch>> {
    let label = format!("norm.moments {} {stats:?} deferred", x.shape());
    t.ensure_fits(&label, &x, stats)?;
    let entries = x.shape().n * x.tensor.shape.c;
    ensure(table.shape.numel() >= 4 * entries, &label, || {
        format!("a table of {} floats for {entries} (sample, channel) entries", table.shape.numel())
    })?;
    let mut p = params(&x, &x);
    p.slope = act.map_or(1.0, |a| a.slope);
    let results =
        vec![(2, t.gamma.view()), (3, t.beta.view()), (6, t.mean.view()), (7, t.var.view()), (33, table.view())];
    moments_with(gpu, label, x, stats, kernel("moments", stats).with("AFFINE", 1.0), p, results)
}

fn moments_with(
    gpu: &Gpu,
    label: String,
    x: View,
    stats: NormStats,
    k: Kernel,
    p: Params,
    results: Vec<(u32, View)>,
) -> Result<Vec<Dispatch>> {
    let groups = stats.groups(x.shape().n, x.c);
    let entries = ("moments_windows", COMBINE_MOMENTS);
    if let Some(list) = in_windows(gpu, &label, &k, stats, p, &[x], &[], &results, entries, groups)? {
        return Ok(list);
    }
    let parts = reduction_parts(gpu, groups, x.shape().plane());
    let entries = ("moments_parts", COMBINE_MOMENTS);
    in_parts(gpu, label, k, p, vec![(1, x)], &results, entries, groups, parts)
}

/// `y = x + gamma * (x - mean) / sqrt(var + eps) + beta`, then `act(y)`
/// when an activation is given.
pub fn apply(
    gpu: &Gpu,
    x: View,
    stats: NormStats,
    t: &NormTensors,
    act: Option<Activation>,
    y: View,
) -> Result<Dispatch> {
    apply_with(gpu, x, stats, t, act, y, None)
}

/// `apply`, then `y += residual` (a view of y's shape): in the same pass
/// where the residual is another slice of y's buffer (`RESIDUAL` in
/// norm.wgsl), else by a separate add.
#[allow(clippy::too_many_arguments)]
pub fn apply_with_residual(
    gpu: &Gpu,
    x: View,
    stats: NormStats,
    t: &NormTensors,
    act: Option<Activation>,
    y: View,
    residual: View,
) -> Result<Vec<Dispatch>> {
    if residual.tensor.same_storage(y.tensor) {
        return Ok(vec![apply_with(gpu, x, stats, t, act, y, Some(residual))?]);
    }
    Ok(vec![apply(gpu, x, stats, t, act, y)?, super::elementwise::add(gpu, residual, y)?])
}

fn apply_with(
    gpu: &Gpu,
    x: View,
    stats: NormStats,
    t: &NormTensors,
    act: Option<Activation>,
    y: View,
    residual: Option<View>,
) -> Result<Dispatch> {
    let label = format!("norm.apply {} {stats:?}", x.shape());
    ensure_same(&label, &x, &y)?;
    t.ensure_fits(&label, &x, stats)?;
    let mut bindings = vec![(1, x), (8, y)];
    bindings.extend(t.bindings());
    let (mut kernel, mut p) = with_act(kernel("apply", stats), params(&x, &y), act);
    if let Some(res) = residual {
        ensure_same(&label, &res, &y)?;
        ensure_apart(&label, &res, &y)?;
        p.res_coff = u32_of(res.c_offset);
        kernel = kernel.with("RESIDUAL", 1.0);
    }
    let (label, kernel, bindings) = vec4_runs(gpu, &x, label, kernel, bindings);
    let d = gpu.dispatch(label, &kernel, &p, &bindings, run_grid(gpu, &x))?;
    // With a residual it reads y's buffer besides (x, the residual, y).
    Ok(if residual.is_some() { d.with_bytes(3.0 * y.shape().numel() as f64 * 4.0) } else { d })
}

/// PyTorch's running-statistics update from the batch moments of an
/// `x_shape` input (per-channel `mean`, `var`).
pub fn update_running(
    gpu: &Gpu,
    x: View,
    mean: &Tensor,
    var: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
) -> Result<Dispatch> {
    let label = format!("norm.update_running {}", x.shape());
    ensure_channels(&label, x.c, &[mean, var, running_mean, running_var])?;
    let bindings = [(4, mean.view()), (5, var.view()), (15, running_mean.view()), (16, running_var.view())];
    let p = params(&x, &x);
    gpu.dispatch(label, &kernel("update_running", NormStats::PerChannel), &p, &bindings, Grid::Elements(x.c))
}

/// Per group: sum(dy) and sum(dy * xhat) into `sums` (2 values a group),
/// where with an activation `dy` is the gradient of its output (masked by
/// the block's output sign, worked out again).
pub fn backward_sums(
    gpu: &Gpu,
    x: View,
    dy: View,
    stats: NormStats,
    t: &NormTensors,
    act: Option<Activation>,
    sums: &Tensor,
) -> Result<Vec<Dispatch>> {
    let label = format!("norm.backward_sums {} {stats:?}", x.shape());
    ensure_same(&label, &x, &dy)?;
    t.ensure_fits(&label, &x, stats)?;
    let groups = stats.groups(x.shape().n, x.c);
    ensure(sums.shape.numel() == 2 * groups, &label, || format!("sums {} for {groups} groups", sums.shape))?;
    let (kernel, p) = with_act(kernel("backward_sums", stats), params(&x, &dy), act);
    let results = [(11, sums.view())];
    let entries = ("backward_sums_windows", COMBINE_SUMS);
    if let Some(list) = in_windows(gpu, &label, &kernel, stats, p, &[x, dy], &t.bindings(), &results, entries, groups)?
    {
        return Ok(list);
    }
    let mut bindings = vec![(1, x), (9, dy)];
    bindings.extend(t.bindings());
    let parts = reduction_parts(gpu, groups, x.shape().plane());
    let entries = ("backward_sums_parts", COMBINE_SUMS);
    in_parts(gpu, label, kernel, p, bindings, &results, entries, groups, parts)
}

/// The input gradient of the norm block into the view `dx` (x's layout);
/// `act` as in `backward_sums`.
#[allow(clippy::too_many_arguments)]
pub fn backward_data(
    gpu: &Gpu,
    x: View,
    dy: View,
    stats: NormStats,
    t: &NormTensors,
    act: Option<Activation>,
    sums: &Tensor,
    dx: View,
) -> Result<Dispatch> {
    let label = format!("norm.backward_data {} {stats:?}", x.shape());
    ensure_same(&label, &x, &dy)?;
    ensure_same(&label, &x, &dx)?;
    t.ensure_fits(&label, &x, stats)?;
    let mut bindings = vec![(1, x), (9, dy), (12, sums.view()), (10, dx)];
    bindings.extend(t.bindings());
    let (kernel, mut p) = with_act(kernel("backward_data", stats), params(&x, &dy), act);
    (p.dx_ctotal, p.dx_coff) = (u32_of(dx.tensor.shape.c), u32_of(dx.c_offset));
    let (label, kernel, bindings) = vec4_runs(gpu, &x, label, kernel, bindings);
    gpu.dispatch(label, &kernel, &p, &bindings, run_grid(gpu, &x))
}

/// apply's and backward_data's x, y, dy and dx bound as vec4s (`VEC4` in
/// norm.wgsl, the label marked) where every run is whole and starts on a
/// vec4: runs of a multiple of 4 pixels (CPU adapters) that divide the
/// planes. llvmpipe loads (and stores) storage lane by lane, a vec4's four
/// components in one trip of that loop: seo2018's apply and data-gradient
/// passes took 25-35% less time (docs/KERNELS.md).
fn vec4_runs<'a>(
    gpu: &Gpu,
    x: &View,
    label: String,
    kernel: Kernel,
    bindings: Vec<(u32, View<'a>)>,
) -> (String, Kernel, Vec<(u32, View<'a>)>) {
    let run = gpu.run_length();
    if !run.is_multiple_of(4) || !x.shape().plane().is_multiple_of(run) {
        return (label, kernel, bindings);
    }
    let vec4 = |b: u32| match b {
        1 => 40,
        8 => 41,
        9 => 42,
        10 => 43,
        other => other,
    };
    let bindings = bindings.into_iter().map(|(b, v)| (vec4(b), v)).collect();
    (format!("{label} vec4"), kernel.with("VEC4", 1.0), bindings)
}

/// dgamma and dbeta (overwritten) from the per-group sums, and with
/// `input_bias` the gradient of the bias of the convolution whose output is
/// `x` (equal to dbeta, see norm.wgsl's param_grads_and_bias), so that no
/// pass over the block's input gradient sums it.
pub fn param_grads(
    gpu: &Gpu,
    x: View,
    stats: NormStats,
    sums: &Tensor,
    dgamma: &Tensor,
    dbeta: &Tensor,
    input_bias: Option<&Tensor>,
) -> Result<Dispatch> {
    let label = format!("norm.param_grads {} {stats:?}", x.shape());
    ensure_channels(&label, x.c, &[dgamma, dbeta])?;
    let mut bindings = vec![(12, sums.view()), (13, dgamma.view()), (14, dbeta.view())];
    let entry = match input_bias {
        Some(db) => {
            ensure_channels(&label, x.c, &[db])?;
            bindings.push((18, db.view()));
            "param_grads_and_bias"
        }
        None => "param_grads",
    };
    gpu.dispatch(label, &kernel(entry, stats), &params(&x, &x), &bindings, Grid::Elements(x.c))
}
