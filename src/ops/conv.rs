//! Convolution launches (shaders/conv.wgsl). CPU oracle: `cpu::conv`.

use bytemuck::{Pod, Zeroable};

use super::{ensure, ensure_apart, reduction_parts, u32_of, window_align, window_of};
use crate::gpu::shaders::Family;
use crate::gpu::{Dispatch, Gpu, Grid, Kernel, Result, Tensor, Tuning, View, Window, WINDOW_BYTES, WORKGROUP};
use crate::shape::Shape;

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
    transposed: u32,
    group: u32,
    chunk: u32,
    w_ctotal: u32,
    w_coff: u32,
    band_n: u32,
    band_y0: u32,
    band_rows: u32,
    res_coff: u32,
    drop_p: f32,
    drop_seed: u32,
    drop_step: u32,
    _pad: u32,
    pack: [u32; 4],
    win: [[i32; 4]; 3],
}

/// Checks `w` (OIHW, odd square kernel) against the input and output views
/// and returns the kernel size and the parameters.
fn params(label: &str, input: &View, w: &Tensor, output: &View, dilation: usize) -> Result<(usize, Params)> {
    let (xs, ws) = (input.shape(), w.shape);
    ensure(ws.c == xs.c, label, || format!("weights {ws} for an input of {} channels", xs.c))?;
    part_params(label, input, w, 0, output, dilation)
}

/// `params` for an input that is channels [w_coff, w_coff + input.c) of
/// what `w` convolves (one part of a concatenation).
fn part_params(
    label: &str,
    input: &View,
    w: &Tensor,
    w_coff: usize,
    output: &View,
    dilation: usize,
) -> Result<(usize, Params)> {
    let (xs, ws, ys) = (input.shape(), w.shape, output.shape());
    ensure(ws.h == ws.w && ws.h % 2 == 1, label, || format!("weights {ws} are not an odd square kernel"))?;
    ensure(w_coff + xs.c <= ws.c && ws.n == ys.c, label, || {
        format!("weights {ws} do not map {xs} (at input channel {w_coff}) to {ys}")
    })?;
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
        transposed: 0,
        group: 0,
        chunk: 0,
        w_ctotal: u32_of(ws.c),
        w_coff: u32_of(w_coff),
        band_n: 0,
        band_y0: 0,
        band_rows: 0,
        res_coff: 0,
        drop_p: 0.0,
        drop_seed: 0,
        drop_step: 0,
        _pad: 0,
        pack: [0; 4],
        win: [[0; 4]; 3],
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

/// Which kernels compute a convolution's forward and input gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// One invocation per output element; any shape.
    Baseline,
    /// Register-blocked, weights from a uniform table (shaders/conv.wgsl,
    /// `blocked_sums`): when one output-channel group's weights fit it.
    Blocked,
    /// `Blocked` with the table rows shared by subgroup broadcasts, where
    /// the adapter has subgroups of at least 8 lanes.
    BlockedSubgroup,
    /// `Blocked` for at most 4 computed channels, by runs of 8 pixels per
    /// invocation (`narrow_*` in conv.wgsl): a table row feeds 32
    /// multiply-adds instead of 4. CPU adapters' kernel for seo2018's
    /// 3-channel layers.
    Narrow,
    /// `Narrow` with every input value read through 64 KiB uniform windows
    /// (`window_*` in conv.wgsl), one launch per band of rows of a sample:
    /// 3x3 kernels over at most 4 input channels, on CPU adapters, where
    /// llvmpipe gathers uniform loads but loads storage lane by lane. Falls
    /// back to `Narrow` for an input buffer under 64 KiB or rows wider than
    /// a window.
    Windowed,
    /// Implicit GEMMs tiled in workgroup memory (`tiled_*` in conv.wgsl),
    /// the weight gradient split over the pixels; any shape. The weight
    /// gradient of hardware GPUs (`Tuning::Gpu`), whose many cores the
    /// blocked one leaves idle, and the convolutions whose weights the
    /// blocked kernels' table cannot hold.
    Tiled,
}

impl std::str::FromStr for Variant {
    type Err = String;

    fn from_str(s: &str) -> Result<Variant, String> {
        Variant::ALL.into_iter().find(|v| v.name() == s).ok_or_else(|| {
            let names: Vec<_> = Variant::ALL.iter().map(|v| v.name()).collect();
            format!("unknown kernel variant {s:?}; the variants are: {}", names.join(", "))
        })
    }
}

/// vec4s in one packed-weight table (`PACK_LEN` in conv.wgsl): 64 KiB.
const PACK_LEN: usize = 4096;

/// Invocations per workgroup of `blocked_weight` (`WG_WEIGHT` in conv.wgsl).
const WEIGHT_WORKGROUP: usize = 8;

/// Invocations per workgroup of the blocked forward and data kernels
/// (`WG_CHAIN` in conv.wgsl).
const CHAIN_WORKGROUP: usize = 64;

/// Output channels, (ci, tap) rows and pixels of one workgroup's tile in
/// the tiled kernels (`TILE_CO`, `TILE_R`, `TILE_P` in conv.wgsl).
const TILE_CO: usize = 32;
const TILE_R: usize = 64;
const TILE_P: usize = 64;
/// tap_weight's (ci, tap) rows a tile: 8 input channels' 9 taps, or 72
/// input channels of a 1x1 kernel.
const TAP_TILE_ROWS: usize = 72;
/// tiled_weight_narrow's rows a tile (conv.wgsl's NARROW_R).
const NARROW_R: usize = 32;

/// Pixels per invocation of the narrow kernels (`NARROW_RUN` in conv.wgsl).
const NARROW_RUN: usize = 8;

/// Whether the narrow (and windowed) kernels take runs of pixels a stride
/// apart (`STRIDED` in conv.wgsl: a 3x3 kernel row's taps then load 10
/// columns a run instead of 24), and their runs per image row: strided
/// wherever that loads less, counting the runs a large dilation leaves
/// mostly empty on a narrow image (at 64 wide, dilation 34 fills 34 runs
/// where neighbours fill 8). 1x1 kernels have a stride of 1 either way.
fn narrow_runs(w: usize, k: usize, dilation: usize) -> (bool, usize) {
    let neighbours = w.div_ceil(NARROW_RUN);
    let q = if k == 3 { dilation } else { 1 };
    let strided = slots(w, NARROW_RUN * q, q.min(w));
    if k == 1 || strided * 10 <= neighbours * 24 {
        (true, strided)
    } else {
        (false, neighbours)
    }
}

/// Input channels the windowed kernels take (`WIN_CIN` in conv.wgsl): one
/// window per input channel and kernel row, twelve at most.
const WINDOW_CIN: usize = 4;

/// conv.wgsl's window bindings `win0` .. `win11`.
const FIRST_WINDOW_BINDING: u32 = 11;
const WINDOWS: usize = 12;

/// Uniform bindings of a windowed launch: twelve windows (the pipeline
/// layout holds every one the shader names; those past the input channels
/// repeat the first), the packed weights and the parameters.
const WINDOW_BINDINGS: u32 = WINDOWS as u32 + 2;

/// Invocations narrow_weight aims for, blocks of rows times parts of the
/// pixels: 1x1, blocks of 9 input channels (seo2018's 31 -> 3 head: 4
/// blocks); 3x3, blocks of NARROW_WEIGHT_CIN input channels (its 3 -> 3
/// layers: one block). For the 3x3 blocks 512 (lavapipe, 2026-11-29,
/// profiles of the seo2018 step against its 3x3 forward): 1024 parts made
/// twice the partial sums to store and reduce (0.70-0.73 of the forward
/// against 0.58-0.66), 256 too few invocations to share two threads
/// evenly (1.08-1.14).
fn narrow_weight_invocations(k: usize) -> usize {
    if k == 3 {
        512
    } else {
        1024
    }
}

/// Input channels a 3x3 narrow_weight invocation walks side by side (`NCB`
/// in conv.wgsl), loading dy's channels once a pixel for all of them.
const NARROW_WEIGHT_CIN: usize = 3;

/// Chunks of dy the blocked weight gradient packs per batch (their tables
/// in one buffer, each read through a window), where a storage binding can
/// hold them: fixed per device, so that a graph's memory stays affine in
/// its pixel count (`Graph::memory_need`). 28 chunks of 512 pixels (32
/// channels) fit one 64 KiB window of a plane with room for its alignment,
/// so a sample's batch is one `pack_dy_windows` launch per three blocks,
/// and a multiple of the 14 (or 7, 4, 2) chunks a weight launch walks.
const PACK_BATCH: usize = 28;

/// Workgroups the tiled weight gradient aims for: its tiles (tap_weight's
/// (Cout / 32) x (Cin / 8) for 3x3, (Cout / 32) x (Cin / 72) for 1x1;
/// tiled_weight_narrow's Cin * K * K / 32 for at most 4 output channels),
/// times as many pixel parts as it takes to give a large
/// GPU (132 multiprocessors on an H200) several workgroups each, at most
/// 512 parts. The parts do not depend on the image size (parts past the
/// pixels sum nothing), so a graph's memory stays affine in its pixel count
/// (`Graph::memory_need`). On an H200 (2026-11-29, two alternations) 2048
/// took the head's 321 -> 128 weight gradient 1.61-1.69 -> 1.46-1.47 ms
/// with tiled_weight, the 3x3 ones unchanged; 4096 no faster than 1024. With
/// tap_weight (2026-11-30) 1024, 2048 and 4096 gave the same within noise.
const TILED_WEIGHT_GROUPS: usize = 2048;

/// Kernel sizes the blocked forward and data kernels handle: their 3x3 taps
/// are spelled out (`blocked_sums` in conv.wgsl).
const BLOCKED_K: [usize; 2] = [1, 3];

/// Output channels per invocation of the blocked kernels, in vec4 blocks.
fn blocks(cout: usize) -> usize {
    cout.div_ceil(4).min(8)
}

/// Pixels per invocation of the blocked forward and data kernels (`CHAIN`
/// in conv.wgsl): chains of three on CPU adapters, where they share input
/// loads and table rows (lavapipe: 1.6x faster), one pixel on hardware
/// GPUs, which want many invocations with few registers each.
fn chain(gpu: &Gpu) -> usize {
    match gpu.tuning() {
        Tuning::Cpu => 3,
        Tuning::Gpu => 1,
    }
}

/// Uniform tables (of 4 * COB output channels each) per launch of the
/// blocked kernels (`TABLES` in conv.wgsl): on CPU adapters as many as the
/// computed channels fill, up to 4 (each loaded input value then feeds up
/// to 4x the multiply-adds; lavapipe: 1.9x faster for a 321 -> 128 1x1
/// layer), one on GPUs (fewer registers per invocation).
fn tables(gpu: &Gpu, cout: usize, cob: usize) -> usize {
    match gpu.tuning() {
        Tuning::Cpu => cout.div_ceil(4 * cob).min(TABLE_BINDINGS.len()),
        Tuning::Gpu => 1,
    }
}

/// The most tables a blocked_weight launch binds: MAX_TABLES where the adapter
/// takes that many uniform buffers besides the parameters (lavapipe: 15),
/// else the four table bindings.
fn max_tables(gpu: &Gpu) -> usize {
    if gpu.limits.max_uniform_buffers_per_shader_stage as usize > MAX_TABLES {
        MAX_TABLES
    } else {
        TABLE_BINDINGS.len()
    }
}

/// Row slots per sample of the blocked forward and data kernels for chains
/// `stride` apart in `rows` (1 to 3) output rows (`chain_start` in
/// conv.wgsl): blocks of rows * stride rows, min(stride, h) pairs (or
/// triples) each.
fn row_slots(h: usize, stride: usize, rows: usize) -> usize {
    if rows == 1 {
        h
    } else {
        slots(h, rows * stride, stride.min(h))
    }
}

/// Chains (or pairs) along `len` pixels (rows) cut into blocks of `block`
/// holding `span` each, the last block only as many as it has pixels
/// (`slots` in conv.wgsl): at 256 wide, dilation 21 leaves a last block of
/// 4 columns, which took 21 chains, 17 of them computing nothing.
fn slots(len: usize, block: usize, span: usize) -> usize {
    len / block * span + span.min(len % block)
}

/// A band of output rows one blocked launch covers (`band_y0`,
/// `band_rows`) and its chains' rows (`ROWS` in conv.wgsl).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Band {
    y0: usize,
    len: usize,
    rows: usize,
}

/// The bands of output rows of the blocked forward and data kernels: for
/// one-table launches on CPU adapters, chains of 1, 2 or 3 rows,
/// whichever leaves the least work, a chain of r rows costing
/// `ROW_COST[r - 1]` single rows (on lavapipe the rows share input rows and
/// table rows: a pair costs about 1.5 rows, a triple about 2.05,
/// `conv3x3-d13-fwd` 29.5 against 28.2 ms, 2026-11-29), counted with the
/// empty slots a large dilation leaves (`row_slots`). Or two launches:
/// whole blocks of one kind from the top, the rest of another kind, where
/// that saves more than `LAUNCH_ROWS`: at 256 rows and dilation 55 a
/// third of the pairs' slots were empty below row 220; pairs over rows 0 to
/// 109 and triples over the rest leave 11% less work. 1x1 kernels, whose
/// stride is 1, take triples: they share only the table rows, and the 128
/// -> 32 forward went 36.5-38.8 -> 32.0-32.6 ms (inference profiles,
/// lavapipe, 2026-11-30, two alternations).
fn row_bands(chain: usize, tables: usize, h: usize, stride: usize) -> Vec<Band> {
    if chain == 1 || tables != 1 {
        return vec![Band { y0: 0, len: h, rows: 1 }];
    }
    let cost = |len: usize, r: usize| row_slots(len, stride, r) as f64 * ROW_COST[r - 1];
    let modes = 1..=ROW_COST.len();
    let whole = modes.clone().map(|r| (cost(h, r), vec![Band { y0: 0, len: h, rows: r }]));
    // The second band takes pairs or triples only: a split into single rows
    // gains little and would compile one more pipeline.
    let split = modes.clone().flat_map(|r| {
        let block = r * stride;
        (1..h.div_ceil(block)).flat_map(move |blocks| {
            let y = blocks * block;
            (2..=ROW_COST.len()).filter(move |&r2| r2 != r).map(move |r2| {
                let bands = vec![Band { y0: 0, len: y, rows: r }, Band { y0: y, len: h - y, rows: r2 }];
                (cost(y, r) + cost(h - y, r2) + LAUNCH_ROWS, bands)
            })
        })
    });
    whole.chain(split).min_by(|a, b| a.0.total_cmp(&b.0)).expect("three one-launch plans").1
}

/// Whether the blocked convolution `p` may take `row_bands`' pairs and
/// triples of rows at all. Not with the 1x1 kernels' fused dropout, which
/// indexes its mask by the chain's first row. 1x1 kernels only from
/// TRIPLE_MIN_CIN input channels (the 2 -> 32 input gradient went 1.6 ->
/// 2.7 ms in triples, training profiles, two alternations) and not on Mesa
/// 25, where triples took the 128 -> 32 forward 13.4 -> 15.9-16.4 ms
/// (inference profiles, 2026-11-30, two alternations).
fn rows_shareable(gpu: &Gpu, k: usize, p: &Params) -> bool {
    p.drop_p == 0.0 && (k != 1 || (!mesa_25(gpu) && p.cin as usize >= TRIPLE_MIN_CIN))
}

/// Input channels from which a 1x1 blocked launch takes triples of rows
/// (`rows_shareable`): 128 gained, 2 lost.
const TRIPLE_MIN_CIN: usize = 32;

/// What a second launch must save, in single rows of chains (see
/// `row_bands`): one for its own cost (on lavapipe a launch costs 0.05-0.15
/// ms, a row of a 32 -> 32 layer's chains at 256x256 about 0.15 ms) and two
/// for the error of `ROW_COST`, so that a split is not made for less than
/// about 1% of a 256-row layer (dilation 21: 0.2 rows).
const LAUNCH_ROWS: f64 = 3.0;

/// What a chain of 1, 2 or 3 rows costs, in single rows (see `row_bands`).
const ROW_COST: [f64; 3] = [1.0, 1.5, 2.05];

/// The blocked kernels' table bindings (`wpack`, `wpack1`..`wpack3`). They
/// name every one whatever `TABLES` is: a launch with fewer binds its last
/// table again in the others (unread).
const TABLE_BINDINGS: [u32; 4] = [9, 23, 24, 25];

/// conv.wgsl's `affine` (uniform) and `affine_rows` (storage): a deferred
/// norm block's table (`View::affine`).
const AFFINE_BINDING: u32 = 26;
const AFFINE_ROWS_BINDING: u32 = 27;

/// Invocations per row of the blocked forward and data kernels for chains
/// of `chain` pixels `stride` apart (`chain_start` in conv.wgsl): blocks of
/// chain * stride columns, min(stride, w) chains each.
fn chains_per_row(w: usize, stride: usize, chain: usize) -> usize {
    if chain == 1 {
        w
    } else {
        slots(w, chain * stride, stride.min(w))
    }
}

impl Variant {
    pub const ALL: [Variant; 6] = [
        Variant::Baseline,
        Variant::Blocked,
        Variant::BlockedSubgroup,
        Variant::Narrow,
        Variant::Windowed,
        Variant::Tiled,
    ];

    /// The name `dilaseg bench --variant` takes and reports.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::Blocked => "blocked",
            Variant::BlockedSubgroup => "blocked-subgroup",
            Variant::Narrow => "narrow",
            Variant::Windowed => "windowed",
            Variant::Tiled => "tiled",
        }
    }

    /// The fastest variant that handles a convolution computing `cout`
    /// channels from `cin` with a `k` x `k` kernel on `gpu`: the blocked
    /// one where its table fits (on an H200 too it beat the tiled one,
    /// 0.24 against 0.32 ms for a 32 -> 32 3x3 layer, docs/PERFORMANCE.md),
    /// else the tiled one (on lavapipe too 2.5x faster than the baseline).
    /// A hardware GPU's 3x3 layers read the table without subgroups: on an
    /// H200 each lane loading the row's vec4s at one address beat the 8
    /// lanes' gather and broadcasts, 0.17-0.19 against 0.20-0.25 ms per
    /// 32 -> 32 layer, where the head's 1x1 kernels were 16-36% slower so
    /// (2026-11-30, docs/PERFORMANCE.md).
    pub fn choose(gpu: &Gpu, cin: usize, cout: usize, k: usize) -> Variant {
        if BLOCKED_K.contains(&k) && cin * k * k * blocks(cout) <= PACK_LEN {
            if cout <= 4 && gpu.tuning() == Tuning::Cpu {
                if k == 3 && cin <= WINDOW_CIN && WINDOW_BINDINGS <= gpu.limits.max_uniform_buffers_per_shader_stage {
                    Variant::Windowed
                } else {
                    Variant::Narrow
                }
            } else if k == 3 && gpu.tuning() == Tuning::Gpu {
                Variant::Blocked
            } else {
                Variant::blocked(gpu)
            }
        } else {
            Variant::Tiled
        }
    }

    /// The weight gradient's variant. The blocked one walks the pixels
    /// chunk by chunk, one dispatch of cin * k * k / 64 workgroups each:
    /// on a software adapter's few threads it was 22x faster than the
    /// baseline, but on a hardware GPU those few workgroups leave it idle
    /// (H200: 24 ms for a 32 -> 32 3x3 layer), where the tiled one split
    /// over the pixels took 0.43 ms (the baseline 1.98; docs/PERFORMANCE.md).
    /// On lavapipe the tiled one is 13x slower than the blocked one.
    pub fn for_weight_grad(gpu: &Gpu, cout: usize) -> Variant {
        match gpu.tuning() {
            Tuning::Cpu if cout <= 4 => Variant::Narrow,
            Tuning::Cpu => Variant::blocked(gpu),
            Tuning::Gpu => Variant::Tiled,
        }
    }

    /// The blocked variant `gpu` runs best.
    pub fn blocked(gpu: &Gpu) -> Variant {
        if gpu.has_subgroups(8) {
            Variant::BlockedSubgroup
        } else {
            Variant::Blocked
        }
    }

    fn family(self) -> Family {
        match self {
            Variant::BlockedSubgroup => Family::ConvSubgroup,
            _ => Family::Conv,
        }
    }
}

/// `y = conv(x, w, dilation) + b`, written into the view `y`.
pub fn forward(gpu: &Gpu, x: View, w: &Tensor, b: &Tensor, dilation: usize, y: View) -> Result<Vec<Dispatch>> {
    forward_with(gpu, Variant::choose(gpu, x.c, y.c, w.shape.h), x, w, b, dilation, y)
}

/// `forward` by a given variant (tests and the bench compare them).
pub fn forward_with(
    gpu: &Gpu,
    variant: Variant,
    x: View,
    w: &Tensor,
    b: &Tensor,
    dilation: usize,
    y: View,
) -> Result<Vec<Dispatch>> {
    let label = format!("conv.forward {} {}x{} d{dilation}", x.shape(), w.shape.h, w.shape.w);
    let (k, p) = params(&label, &x, w, &y, dilation)?;
    ensure(b.shape.numel() == y.c, &label, || format!("bias {} for {} outputs", b.shape, y.c))?;
    match variant {
        Variant::Baseline => {
            let bindings = [(1, x), (2, w.view()), (3, b.view()), (4, y)];
            let d = gpu.dispatch(label, &kernel("forward", k), &p, &bindings, Grid::Elements(y.shape().numel()))?;
            Ok(vec![d.with_flops(flops(&p, k))])
        }
        Variant::Tiled => tiled(gpu, label, Pass::Forward, p, k, w, x, Some(b), y),
        _ => blocked(gpu, variant, label, Pass::Forward, p, k, w, x, Some(b), y),
    }
}

/// The input gradient: the transposed convolution of `dy`, written into
/// (or, with `accumulate`, added to) the view `dx`.
pub fn backward_data(
    gpu: &Gpu,
    dy: View,
    w: &Tensor,
    dilation: usize,
    dx: View,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    backward_data_with(gpu, Variant::choose(gpu, dy.c, dx.c, w.shape.h), dy, w, dilation, dx, accumulate)
}

/// `backward_data` by a given variant.
pub fn backward_data_with(
    gpu: &Gpu,
    variant: Variant,
    dy: View,
    w: &Tensor,
    dilation: usize,
    dx: View,
    accumulate: bool,
) -> Result<Vec<Dispatch>> {
    let label = data_label(&dx, w, dilation);
    let (k, mut p) = params(&label, &dx, w, &dy, dilation)?;
    p.accumulate = u32::from(accumulate);
    match variant {
        Variant::Baseline => {
            let bindings = [(5, dy), (2, w.view()), (6, dx)];
            let grid = Grid::Elements(dx.shape().numel());
            let d = gpu.dispatch(label, &kernel("backward_data", k), &p, &bindings, grid)?;
            Ok(vec![d.with_flops(flops(&p, k))])
        }
        v => data_pass(gpu, v, label, p, k, w, dy, dx),
    }
}

/// The input gradient by the tiled or blocked kernels (`p` as the weight
/// gradient's: x is dx), or for 1x1 kernels on CPU adapters by
/// `table_data`.
#[allow(clippy::too_many_arguments)]
fn data_pass(
    gpu: &Gpu,
    variant: Variant,
    label: String,
    p: Params,
    k: usize,
    w: &Tensor,
    dy: View,
    dx: View,
) -> Result<Vec<Dispatch>> {
    match variant {
        Variant::Tiled => tiled(gpu, label, Pass::Data, transposed(p), k, w, dy, None, dx),
        _ if takes_table_data(gpu, variant, k, &p) => table_data(gpu, variant, label, p, w, dy, dx),
        _ => blocked(gpu, variant, label, Pass::Data, transposed(p), k, w, dy, None, dx),
    }
}

/// Mesa 25 or later: its lavapipe's costs differ from Mesa 22's in a few
/// of the choices here (measured on both, docs/KERNELS.md, "Mesa 25").
fn mesa_25(gpu: &Gpu) -> bool {
    gpu.mesa_release().is_some_and(|release| release >= (25, 0))
}

/// Whether an input gradient (`p` as the weight gradient's) goes to
/// `table_data`: blocked 1x1 kernels on CPU adapters, without a residual
/// gradient to add, where dy fills more than one table. Its invocations
/// store three channels at every pixel after 4 * COB multiply-adds per
/// table, so with one table the stores dominate (lavapipe, lungnet step:
/// the 32 -> 128 input gradient 25-28 ms against 26-27 blocked, the 2 -> 32
/// one 7 against 2.3; the head's 128 -> 321 one 114-139 against 179-188).
/// Not on Mesa 25 and later, whose lavapipe runs the blocked kernel faster
/// (the head's: 146-158 against 205-220 ms per lungnet step, 2026-11-29;
/// releases 23 and 24 were not measured).
fn takes_table_data(gpu: &Gpu, variant: Variant, k: usize, p: &Params) -> bool {
    let dy_channels = p.cout as usize;
    matches!(variant, Variant::Blocked | Variant::BlockedSubgroup)
        && k == 1
        && gpu.tuning() == Tuning::Cpu
        && !mesa_25(gpu)
        && p.accumulate != ADD_RESIDUAL
        && dy_channels > 4 * blocks(dy_channels)
}

/// The input gradient's launch label (its profile row).
fn data_label(dx: &View, w: &Tensor, dilation: usize) -> String {
    format!("conv.backward_data {} {}x{} d{dilation}", dx.shape(), w.shape.h, w.shape.w)
}

/// `Params::accumulate` for a data gradient that also adds the layer's
/// residual gradient (blocked, narrow and windowed kernels: `RESIDUAL`).
const ADD_RESIDUAL: u32 = 2;

/// The blocked kernels' store overrides for `p` (`ACCUMULATE`, `RESIDUAL`).
fn stores(kernel: Kernel, p: &Params) -> Kernel {
    kernel
        .with("ACCUMULATE", f64::from(u8::from(p.accumulate > 0)))
        .with("RESIDUAL", f64::from(u8::from(p.accumulate == ADD_RESIDUAL)))
}

/// `dx += backward_data(dy) + residual`: a layer's input gradient when the
/// layer adds its input to its output (`residual`: the output's gradient,
/// dx's shape). In the convolution's own stores where the residual is
/// another slice of dx's buffer and the kernel is a blocked one, else a
/// separate add first.
pub fn backward_data_adding(
    gpu: &Gpu,
    dy: View,
    w: &Tensor,
    dilation: usize,
    dx: View,
    residual: View,
) -> Result<Vec<Dispatch>> {
    let variant = Variant::choose(gpu, dy.c, dx.c, w.shape.h);
    let fusable = !matches!(variant, Variant::Baseline | Variant::Tiled);
    if !fusable || !residual.tensor.same_storage(dx.tensor) || residual.shape() != dx.shape() {
        let mut list = vec![super::elementwise::add(gpu, residual, dx)?];
        list.extend(backward_data(gpu, dy, w, dilation, dx, true)?);
        return Ok(list);
    }
    let label = data_label(&dx, w, dilation);
    ensure_apart(&label, &residual, &dx)?;
    let (k, mut p) = params(&label, &dx, w, &dy, dilation)?;
    p.accumulate = ADD_RESIDUAL;
    p.res_coff = u32_of(residual.c_offset);
    blocked(gpu, variant, label, Pass::Data, transposed(p), k, w, dy, None, dx)
}

/// The input gradient's convolution for the blocked kernels: dy's channels
/// in, dx's out.
fn transposed(p: Params) -> Params {
    Params {
        cin: p.cout,
        cout: p.cin,
        in_ctotal: p.out_ctotal,
        in_coff: p.out_coff,
        out_ctotal: p.in_ctotal,
        out_coff: p.in_coff,
        transposed: 1,
        ..p
    }
}

/// The parts of a concatenation, in channel order, with each one's first
/// channel in it; the parts must make up all of `w`'s input channels.
fn parts<'a>(label: &str, parts: &[View<'a>], w: &Tensor) -> Result<Vec<(usize, View<'a>)>> {
    let mut offset = 0;
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        out.push((offset, *part));
        offset += part.c;
    }
    ensure(offset == w.shape.c, label, || format!("parts of {offset} channels for weights {}", w.shape))?;
    Ok(out)
}

/// Inverted dropout on a 1x1 convolution's input (the head's on the
/// concatenation), fused into its blocked kernels (`DROP_LOADS`,
/// `DROP_STORES` in conv.wgsl): ops::dropout's mask over all of the
/// weights' input channels, from `seed` and the training step, which
/// `Dispatch::set_step` rewrites on the launches that use it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InputDropout {
    pub p: f32,
    pub seed: u32,
}

/// Whether a 1x1 convolution of the parts `inputs` to `cout` channels
/// takes an `InputDropout`: where its forward, data gradient and weight
/// gradient all run blocked kernels (on CPU adapters; a hardware GPU's
/// weight gradient is tiled). Elsewhere ops::dropout does it in passes.
pub fn takes_dropout(gpu: &Gpu, inputs: &[View], cout: usize) -> bool {
    let blocked = |v| matches!(v, Variant::Blocked | Variant::BlockedSubgroup);
    blocked(Variant::for_weight_grad(gpu, cout))
        && inputs
            .iter()
            .all(|x| blocked(Variant::choose(gpu, x.c, cout, 1)) && blocked(Variant::choose(gpu, cout, x.c, 1)))
}

/// Whether a k x k convolution from `cin` to `cout` channels can read its
/// input through a deferred norm block (`View::affine`): where its forward
/// and weight-gradient kernels are the blocked ones, which apply the block
/// as they load (conv.wgsl's LAZY). Its input gradient does not read the
/// input.
pub fn reads_deferred(gpu: &Gpu, cin: usize, cout: usize, k: usize) -> bool {
    let blocked = |v| matches!(v, Variant::Blocked | Variant::BlockedSubgroup);
    blocked(Variant::choose(gpu, cin, cout, k)) && blocked(Variant::for_weight_grad(gpu, cout))
}

/// A part's parameters with `drop` (checked: 1x1, blocked kernels).
fn with_dropout(label: &str, variant: Variant, k: usize, mut p: Params, drop: Option<InputDropout>) -> Result<Params> {
    if let Some(d) = drop {
        ensure(k == 1 && matches!(variant, Variant::Blocked | Variant::BlockedSubgroup), label, || {
            format!("dropout is fused only into blocked 1x1 kernels, not {variant:?} {k}x{k} (see takes_dropout)")
        })?;
        (p.drop_p, p.drop_seed, p.drop_step) = (d.p, d.seed, 1);
    }
    Ok(p)
}

/// A launch that drops out its input (or input gradient) as it goes:
/// its training step is rewritten with the other dropout launches'.
fn stepped(d: Dispatch, p: &Params) -> Dispatch {
    if p.drop_p > 0.0 {
        d.with_step_at(std::mem::offset_of!(Params, drop_step))
    } else {
        d
    }
}

/// A part's label: the convolution's, with its first channel where the
/// input comes in parts.
fn part_label(pass: &str, x: &View, w: &Tensor, dilation: usize, c0: usize, parts: usize) -> String {
    let part = if parts > 1 { format!(" part {c0}") } else { String::new() };
    format!("conv.{pass} {} {}x{} d{dilation}{part}", x.shape(), w.shape.h, w.shape.w)
}

/// `y = conv(concat(inputs), w, dilation) + b` without the concatenation in
/// one buffer: each part is convolved with its slice of `w` and added into
/// `y` (so no binding holds the whole concatenation). Blocked or tiled
/// kernels, as `Variant::choose` picks for the part (the baseline does not
/// take a part of the weights' input channels); with `drop`, of
/// `dropout(concat(inputs))`.
pub fn forward_parts(
    gpu: &Gpu,
    inputs: &[View],
    w: &Tensor,
    b: &Tensor,
    dilation: usize,
    y: View,
    drop: Option<InputDropout>,
) -> Result<Vec<Dispatch>> {
    if let ([x], None) = (inputs, drop) {
        return forward(gpu, *x, w, b, dilation, y);
    }
    let base = format!("conv.forward {}x{} d{dilation}", w.shape.h, w.shape.w);
    ensure(b.shape.numel() == y.c, &base, || format!("bias {} for {} outputs", b.shape, y.c))?;
    let mut list = Vec::new();
    for (c0, x) in parts(&base, inputs, w)? {
        let label = part_label("forward", &x, w, dilation, c0, inputs.len());
        let (k, mut p) = part_params(&label, &x, w, c0, &y, dilation)?;
        p.accumulate = u32::from(c0 > 0);
        let variant = Variant::choose(gpu, x.c, y.c, k);
        let p = with_dropout(&label, variant, k, p, drop)?;
        list.extend(match variant {
            Variant::Tiled => tiled(gpu, label, Pass::Forward, p, k, w, x, Some(b), y)?,
            v => blocked(gpu, v, label, Pass::Forward, p, k, w, x, Some(b), y)?,
        });
    }
    Ok(list)
}

/// The input gradients of `forward_parts`, each written into its part of
/// `dxs` (with `drop`, the gradient of the concatenation before dropout).
pub fn backward_data_parts(
    gpu: &Gpu,
    dy: View,
    w: &Tensor,
    dilation: usize,
    dxs: &[View],
    drop: Option<InputDropout>,
) -> Result<Vec<Dispatch>> {
    if let ([dx], None) = (dxs, drop) {
        return backward_data(gpu, dy, w, dilation, *dx, false);
    }
    let base = format!("conv.backward_data {}x{} d{dilation}", w.shape.h, w.shape.w);
    let mut list = Vec::new();
    for (c0, dx) in parts(&base, dxs, w)? {
        let label = part_label("backward_data", &dx, w, dilation, c0, dxs.len());
        let (k, p) = part_params(&label, &dx, w, c0, &dy, dilation)?;
        let variant = Variant::choose(gpu, dy.c, dx.c, k);
        let p = with_dropout(&label, variant, k, p, drop)?;
        list.extend(data_pass(gpu, variant, label, p, k, w, dy, dx)?);
    }
    Ok(list)
}

/// `backward_weight_parts` and `backward_data_parts` together: where both
/// read dy from uniform tables (a 1x1 convolution of one part on CPU
/// adapters: blocked_weight and table_data), from one packing of them, the
/// input gradient's launches over each batch of tables after the weight
/// gradient's.
#[allow(clippy::too_many_arguments)]
pub fn backward_parts(
    gpu: &Gpu,
    xs: &[View],
    dy: View,
    w: &Tensor,
    dilation: usize,
    dw: &Tensor,
    dxs: &[View],
    drop: Option<InputDropout>,
) -> Result<Vec<Dispatch>> {
    let variant = Variant::for_weight_grad(gpu, dy.c);
    if let ([x], [dx]) = (xs, dxs) {
        let label = part_label("backward_weight", x, dw, dilation, 0, 1);
        let data_label = part_label("backward_data", dx, w, dilation, 0, 1);
        let (k, pw) = part_params(&label, x, dw, 0, &dy, dilation)?;
        let (_, pd) = part_params(&data_label, dx, w, 0, &dy, dilation)?;
        let data_variant = Variant::choose(gpu, dy.c, dx.c, k);
        if matches!(variant, Variant::Blocked | Variant::BlockedSubgroup) && takes_table_data(gpu, data_variant, k, &pd)
        {
            let (pw, pd) =
                (with_dropout(&label, variant, k, pw, drop)?, with_dropout(&data_label, data_variant, k, pd, drop)?);
            let kernel = table_kernel(variant, k, &dy);
            let mut weight = weight_launch(gpu, &kernel, &label, pw, k, *x, dw);
            let mut data = data_launch(gpu, &kernel, &data_label, pd, w, *dx);
            // A batch's weight launches one after another, as without
            // table_data, then its data launches (interleaving them one by
            // one measured no better on lavapipe, within the noise).
            let mut pending = Vec::new();
            return dy_tables(gpu, &kernel, pw, dy, &mut |l| {
                let mut list = weight(l)?;
                pending.extend(data(l)?);
                if l.batch_end {
                    list.append(&mut pending);
                }
                Ok(list)
            });
        }
    }
    let mut list = backward_weight_parts(gpu, xs, dy, dilation, dw, drop)?;
    list.extend(backward_data_parts(gpu, dy, w, dilation, dxs, drop)?);
    Ok(list)
}

/// The weight gradient of `forward_parts`: each part fills its input
/// channels of `dw`.
pub fn backward_weight_parts(
    gpu: &Gpu,
    xs: &[View],
    dy: View,
    dilation: usize,
    dw: &Tensor,
    drop: Option<InputDropout>,
) -> Result<Vec<Dispatch>> {
    if let ([x], None) = (xs, drop) {
        return backward_weight(gpu, *x, dy, dilation, dw);
    }
    let base = format!("conv.backward_weight {}x{} d{dilation}", dw.shape.h, dw.shape.w);
    let mut list = Vec::new();
    for (c0, x) in parts(&base, xs, dw)? {
        let label = part_label("backward_weight", &x, dw, dilation, c0, xs.len());
        let (k, p) = part_params(&label, &x, dw, c0, &dy, dilation)?;
        let variant = Variant::for_weight_grad(gpu, dy.c);
        let p = with_dropout(&label, variant, k, p, drop)?;
        list.extend(weight_grad(gpu, variant, label, p, k, x, dy, dw)?);
    }
    Ok(list)
}

/// Which convolution a launch computes: the forward one, or the input
/// gradient's (the transposed convolution of dy; params `transposed`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Forward,
    Data,
}

/// The blocked variants: per group of 4 * COB computed channels, a packing
/// of the group's weights into a uniform table, then the convolution.
#[allow(clippy::too_many_arguments)]
fn blocked(
    gpu: &Gpu,
    variant: Variant,
    label: String,
    pass: Pass,
    p: Params,
    k: usize,
    w: &Tensor,
    input: View,
    bias: Option<&Tensor>,
    output: View,
) -> Result<Vec<Dispatch>> {
    let (cin, cout) = (p.cin as usize, p.cout as usize);
    let cob = blocks(cout);
    ensure(BLOCKED_K.contains(&k), &label, || format!("the blocked kernels take 1x1 and 3x3 kernels, not {k}x{k}"))?;
    ensure(cin * k * k * cob <= PACK_LEN, &label, || {
        format!("{cin} x {k} x {k} inputs per channel do not fit the blocked kernel's table; use the tiled or baseline kernels")
    })?;
    let narrow = matches!(variant, Variant::Narrow | Variant::Windowed);
    ensure(!narrow || cob == 1, &label, || format!("the narrow kernels compute at most 4 channels, not {cout}"))?;
    if variant == Variant::Windowed {
        // Its input is read through windows, which no binding check sees.
        ensure(input.affine.is_none(), &label, || "the windowed kernels do not read deferred norm blocks".into())?;
        ensure(k == 3 && cin <= WINDOW_CIN, &label, || {
            format!("the windowed kernels take 3x3 kernels over at most {WINDOW_CIN} channels, not {k}x{k} over {cin}")
        })?;
        if let Some(list) = windowed(gpu, &label, pass, p, w, input, bias, output)? {
            return Ok(list);
        }
        return blocked(gpu, Variant::Narrow, label, pass, p, k, w, input, bias, output);
    }
    let chain = if narrow { 1 } else { chain(gpu) };
    let kernel = |entry| {
        Kernel::new(variant.family(), entry).with("K", k as f64).with("COB", cob as f64).with("CHAIN", chain as f64)
    };
    let s = output.shape();
    let pixels = s.n * s.h * s.w;
    let entry = match (variant, pass) {
        (Variant::Narrow, Pass::Forward) => "narrow_forward",
        (Variant::Narrow, Pass::Data) => "narrow_data",
        (_, Pass::Forward) => "blocked_forward",
        (_, Pass::Data) => "blocked_data",
    };
    let stride = if k == 3 { p.dilation as usize } else { 1 };
    // A launch per group of `tables` blocks of 4 * COB output channels
    // (the last may hold fewer), each block's weights packed in a table.
    let per_table = 4 * cob;
    let tables = if narrow { 1 } else { tables(gpu, cout, cob) };
    let blocks = cout.div_ceil(per_table);
    let mut list = Vec::new();
    // Many input channels of a 1x1 forward on a CPU adapter before Mesa 25:
    // read from a channel-interleaved copy (X_INTERLEAVED in conv.wgsl),
    // made here.
    let interleave = pass == Pass::Forward && k == 1 && chain > 1 && cin >= INTERLEAVED_X_CIN && !mesa_25(gpu);
    let copy = if interleave { interleave_channels(gpu, &p, input)? } else { None };
    let interleaved = copy.map(|(tensor, d)| {
        list.push(d);
        tensor
    });
    let x_interleaved = interleaved.as_ref().map(Tensor::view);
    for group in 0..blocks.div_ceil(tables) {
        let first = group * tables;
        let mut packed: Vec<Tensor> = Vec::new();
        for block in first..blocks.min(first + tables) {
            let table = gpu.uniform_table(PACK_LEN * 4)?;
            list.push(gpu.dispatch(
                format!("conv.pack_weights {} group {block}", w.shape),
                &kernel("pack_weights"),
                &Params { group: u32_of(block), ..p },
                &[(2, w.view()), (10, table.view())],
                Grid::Elements(cin * k * k * cob),
            )?);
            packed.push(table);
        }
        // An input beside the output in one buffer is read through the
        // output's binding (X_IN_Y: a dispatch may bind a buffer it writes
        // only once).
        let in_place = !narrow && pass == Pass::Forward && input.tensor.shares_buffer(output.tensor);
        if in_place {
            ensure_apart(&label, &input, &output)?;
        }
        let mut bindings = match (in_place, x_interleaved) {
            (true, _) => vec![(4, output)],
            (false, Some(copy)) => vec![(1, copy), (4, output)],
            (false, None) => vec![(1, input), (4, output)],
        };
        bindings.extend(bias.map(|b| (3, b.view())));
        let vec4 = narrow && narrow_vec4(k, s.w, &p);
        if vec4 {
            bindings = vec4_bindings(bindings);
        }
        let bound = if narrow { 1 } else { TABLE_BINDINGS.len() };
        let mut windows: Vec<Window> = TABLE_BINDINGS[..bound]
            .iter()
            .enumerate()
            .map(|(t, &binding)| Window { binding, tensor: &packed[t.min(packed.len() - 1)], offset: 0 })
            .collect();
        // A deferred norm block's input: its table as a uniform (the
        // narrow kernels do not take one: `Gpu::dispatch` refuses it).
        let lazy = input.affine.filter(|_| !narrow);
        windows.extend(lazy.map(|tensor| Window { binding: AFFINE_BINDING, tensor, offset: 0 }));
        let valid = (packed.len() * per_table).min(cout - per_table * first);
        let group_flops = 2.0 * (cin * k * k * valid * pixels) as f64;
        // Narrow: an invocation per run of a row, one launch; blocked: one
        // per chain, a launch per band of rows.
        let launches: Vec<(Kernel, Grid, Band)> = if narrow {
            let (strided, runs) = narrow_runs(s.w, k, p.dilation as usize);
            let launch =
                kernel(entry).with("STRIDED", f64::from(u8::from(strided))).with("VEC4", f64::from(u8::from(vec4)));
            vec![(launch, Grid::Elements(s.n * s.h * runs), Band { y0: 0, len: s.h, rows: 1 })]
        } else {
            let per_row = chains_per_row(s.w, stride, chain);
            let bands = if rows_shareable(gpu, k, &p) {
                row_bands(chain, packed.len(), s.h, stride)
            } else {
                vec![Band { y0: 0, len: s.h, rows: 1 }]
            };
            let grid = |band: &Band| {
                Grid::Groups((s.n * row_slots(band.len, stride, band.rows) * per_row).div_ceil(CHAIN_WORKGROUP))
            };
            bands.iter().map(|band| (kernel(entry).with("ROWS", band.rows as f64), grid(band), *band)).collect()
        };
        let drop = p.drop_p > 0.0;
        for (launch, grid, band) in launches {
            let launch = launch
                .with("X_INTERLEAVED", f64::from(u8::from(x_interleaved.is_some())))
                .with("LAZY", f64::from(u8::from(lazy.is_some())))
                .with("X_IN_Y", f64::from(u8::from(in_place)))
                .with("VALID", valid as f64)
                .with("TABLES", packed.len() as f64)
                .with("DROP_LOADS", f64::from(u8::from(drop && pass == Pass::Forward)))
                .with("DROP_STORES", f64::from(u8::from(drop && pass == Pass::Data)));
            let bp = Params { group: u32_of(first), band_y0: u32_of(band.y0), band_rows: u32_of(band.len), ..p };
            let d = gpu.dispatch_windowed(
                format!("{label} group {group}"),
                &stores(launch, &p),
                &bp,
                &bindings,
                &windows,
                grid,
            )?;
            let share = band.len as f64 / s.h as f64;
            list.push(stepped(d, &p).with_flops(group_flops * share));
        }
    }
    Ok(list)
}

/// Input channels from which a blocked 1x1 forward on a CPU adapter reads
/// a channel-interleaved copy of its input (`interleave_channels`): from
/// the planes each chain walks as many lines 256 KiB apart as there are
/// input channels, and waits for each miss. On lavapipe (2026-11-29,
/// docs/KERNELS.md) the head's 321 -> 128 forward at 256x256 took 99-101
/// ms instead of 148-152, its copy 26-28; but with 128 or 129 channels the
/// copy cost what it saved (the 128 -> 32 forward 18-19 ms instead of
/// 31-32, its copy 10-11; the head at 420x580, whose concatenation is held
/// in parts of 129, 128 and 64 channels, 88 ms saved and 114 spent). Not
/// on Mesa 25, whose head forward took 89-92 ms from the planes, 79 from
/// the copy, and the copy 15.
const INTERLEAVED_X_CIN: usize = 256;

/// Pixels per tile of the interleaved copy (conv.wgsl's INTERLEAVE), and
/// tiles per workgroup of the launch that makes it (INTERLEAVE_GROUP).
const INTERLEAVE: usize = 8;
const INTERLEAVE_GROUP: usize = 32;

/// A copy of `input` as X_INTERLEAVED reads it ([sample][tile of
/// INTERLEAVE pixels][channel][pixel]), and the launch that makes it; None
/// where the copy would exceed a storage binding.
fn interleave_channels(gpu: &Gpu, p: &Params, input: View) -> Result<Option<(Tensor, Dispatch)>> {
    let s = input.shape();
    let tiles = s.plane().div_ceil(INTERLEAVE);
    let shape = Shape::new(s.n, tiles, s.c, INTERLEAVE);
    if shape.numel() as u64 * 4 > gpu.limits.max_storage_buffer_binding_size {
        return Ok(None);
    }
    let copy = gpu.tensor(shape)?;
    // Whole tiles from aligned vec4s where planes hold a multiple of 8 pixels.
    let vec4 = s.plane().is_multiple_of(INTERLEAVE);
    let input_binding = if vec4 { X4_BINDING } else { 1 };
    let grid = Grid::Groups(s.n * tiles.div_ceil(INTERLEAVE_GROUP) * s.c.div_ceil(8));
    let d = gpu.dispatch(
        format!("conv.interleave_channels {}", s),
        &Kernel::new(Family::Conv, "interleave_channels").with("VEC4", f64::from(u8::from(vec4))),
        p,
        &[(input_binding, input.stored()), (Y4_BINDING, copy.view())],
        grid,
    )?;
    let bytes = 4.0 * (s.numel() + shape.numel()) as f64;
    Ok(Some((copy, d.with_bytes(bytes))))
}

/// Rows of the input one window holds (the band a windowed launch
/// covers), or None where the windowed kernels cannot read `input`: a
/// buffer under a window, a row wider than one.
fn window_rows(gpu: &Gpu, input: &View, p: &Params) -> Option<usize> {
    let window = WINDOW_BYTES as usize / 4;
    // A window holds its rows after up to `align - 1` floats
    // (band_windows), none where every row starts aligned: at 256 wide 64
    // rows, four bands a plane instead of five.
    let (w, align) = (p.w as usize, window_align(gpu));
    let slack = if w % align == 0 { 0 } else { align - 1 };
    let rows = (window - slack) / w;
    (input.tensor.buffer().size() as usize / 4 >= window && rows > 0).then(|| rows.min(p.h as usize))
}

/// The parameters and windows of the launch for sample n's band of output
/// rows from y0: for input channel ci and kernel row ky, window ci * 3 + ky
/// holds the rows that kernel row reads (clamped into the image: the band's
/// rows reading outside it are padding, zeroed in the kernel). The twelve
/// bindings are all filled, those past the input channels with the first.
fn band_windows<'a>(
    gpu: &Gpu,
    input: &View<'a>,
    p: Params,
    n: usize,
    y0: usize,
    rows: usize,
) -> (Params, Vec<Window<'a>>) {
    let (h, width, d) = (p.h as usize, p.w as usize, p.dilation as usize);
    let window = WINDOW_BYTES as usize / 4;
    let align = window_align(gpu);
    let buffer = input.tensor.buffer().size() as usize / 4;
    let (ctotal, coff) = (p.in_ctotal as usize, p.in_coff as usize);
    let band = rows.min(h - y0);
    let mut bp = Params { band_n: u32_of(n), band_y0: u32_of(y0), band_rows: u32_of(band), ..p };
    let mut windows = Vec::with_capacity(3 * WINDOW_CIN);
    for ci in 0..p.cin as usize {
        for ky in 0..3 {
            let first = (y0 + ky * d).saturating_sub(d).min(h - rows);
            let at = (n * ctotal + coff + ci) * h * width + first * width;
            let start = (at / align * align).min(buffer - window);
            let k = ci * 3 + ky;
            bp.win[k / 4][k % 4] = i32::try_from(at as isize - start as isize - (first * width) as isize)
                .expect("a window offset fits an i32");
            windows.push(Window {
                binding: FIRST_WINDOW_BINDING + k as u32,
                tensor: input.tensor,
                offset: (start * 4) as u64,
            });
        }
    }
    for k in windows.len()..WINDOWS {
        windows.push(Window {
            binding: FIRST_WINDOW_BINDING + k as u32,
            tensor: input.tensor,
            offset: windows[0].offset,
        });
    }
    (bp, windows)
}

/// The windowed variant (`window_*` in conv.wgsl): the packed weights, then
/// per sample and band of output rows one launch reading its input through
/// windows, one per (input channel, kernel row), each holding the rows that
/// kernel row reads for the band. None where the input does not allow it
/// (a buffer under 64 KiB, a row wider than a window): the caller falls
/// back to the narrow kernels.
#[allow(clippy::too_many_arguments)]
fn windowed(
    gpu: &Gpu,
    label: &str,
    pass: Pass,
    p: Params,
    w: &Tensor,
    input: View,
    bias: Option<&Tensor>,
    output: View,
) -> Result<Option<Vec<Dispatch>>> {
    let Some(rows) = window_rows(gpu, &input, &p) else { return Ok(None) };
    let (cin, h, width) = (p.cin as usize, p.h as usize, p.w as usize);
    let kernel = |entry| Kernel::new(Family::Conv, entry).with("K", 3.0).with("COB", 1.0);
    let table = gpu.uniform_table(PACK_LEN * 4)?;
    let mut list = vec![gpu.dispatch(
        format!("conv.pack_weights {}", w.shape),
        &kernel("pack_weights"),
        &p,
        &[(2, w.view()), (10, table.view())],
        Grid::Elements(cin * 9),
    )?];
    let entry = if pass == Pass::Forward { "window_forward" } else { "window_data" };
    let (strided, per_row) = narrow_runs(width, 3, p.dilation as usize);
    let mut bindings = vec![(9, table.view()), (4, output)];
    bindings.extend(bias.map(|b| (3, b.view())));
    for n in 0..p.n as usize {
        for y0 in (0..h).step_by(rows) {
            let band = rows.min(h - y0);
            let (bp, windows) = band_windows(gpu, &input, p, n, y0, rows);
            let bytes = 4.0 * ((cin + p.cout as usize) * band * width) as f64;
            let flops = 2.0 * (cin * 9 * p.cout as usize * band * width) as f64;
            let d = gpu.dispatch_windowed(
                // One label for every band: one profile row per convolution.
                label.to_string(),
                &stores(
                    kernel(entry)
                        .with("WIN_CIN", cin as f64)
                        .with("VALID", f64::from(p.cout))
                        .with("STRIDED", f64::from(u8::from(strided))),
                    &p,
                ),
                &bp,
                &bindings,
                &windows,
                Grid::Elements(band * per_row),
            )?;
            list.push(d.with_flops(flops).with_bytes(bytes));
        }
    }
    Ok(Some(list))
}

/// The weight gradient `dw` (overwritten) from the layer input and `dy`.
pub fn backward_weight(gpu: &Gpu, x: View, dy: View, dilation: usize, dw: &Tensor) -> Result<Vec<Dispatch>> {
    backward_weight_with(gpu, Variant::for_weight_grad(gpu, dy.c), x, dy, dilation, dw)
}

/// `backward_weight` by a given variant (both handle any shape).
pub fn backward_weight_with(
    gpu: &Gpu,
    variant: Variant,
    x: View,
    dy: View,
    dilation: usize,
    dw: &Tensor,
) -> Result<Vec<Dispatch>> {
    let label = format!("conv.backward_weight {} {}x{} d{dilation}", x.shape(), dw.shape.h, dw.shape.w);
    let (k, p) = params(&label, &x, dw, &dy, dilation)?;
    match variant {
        Variant::Baseline => {
            let bindings = [(1, x), (5, dy), (7, dw.view())];
            let grid = Grid::Groups(dw.shape.numel());
            let d = gpu.dispatch(label, &kernel("backward_weight", k), &p, &bindings, grid)?;
            Ok(vec![d.with_flops(flops(&p, k))])
        }
        _ => weight_grad(gpu, variant, label, p, k, x, dy, dw),
    }
}

/// The weight gradient by a variant other than the baseline (which does
/// not take a part of the weights' input channels).
#[allow(clippy::too_many_arguments)]
fn weight_grad(
    gpu: &Gpu,
    variant: Variant,
    label: String,
    p: Params,
    k: usize,
    x: View,
    dy: View,
    dw: &Tensor,
) -> Result<Vec<Dispatch>> {
    match variant {
        Variant::Tiled => tiled_weight(gpu, label, p, k, x, dy, dw),
        Variant::Narrow | Variant::Windowed => narrow_weight(gpu, label, p, k, x, dy, dw),
        _ => blocked_weight(gpu, variant, label, p, k, x, dy, dw),
    }
}

/// The tiled convolution (`entry` tiled_forward or tiled_data, `p` the
/// computed convolution's): one dispatch of a workgroup per tile of
/// TILE_CO output channels x TILE_P pixels.
#[allow(clippy::too_many_arguments)]
fn tiled(
    gpu: &Gpu,
    label: String,
    pass: Pass,
    p: Params,
    k: usize,
    w: &Tensor,
    input: View,
    bias: Option<&Tensor>,
    output: View,
) -> Result<Vec<Dispatch>> {
    let pixels = output.shape().n * output.shape().h * output.shape().w;
    let groups = (p.cout as usize).div_ceil(TILE_CO) * pixels.div_ceil(TILE_P);
    let mut bindings = vec![(1, input), (2, w.view()), (4, output)];
    bindings.extend(bias.map(|b| (3, b.view())));
    let entry = if pass == Pass::Forward { "tiled_forward" } else { "tiled_data" };
    let kernel = kernel(entry, k).with("ACCUMULATE", f64::from(p.accumulate));
    let d = gpu.dispatch(label, &kernel, &p, &bindings, Grid::Groups(groups))?;
    Ok(vec![d.with_flops(flops(&p, k))])
}

/// The tiled weight gradient: tiled_weight's partial sums, one per part of
/// the pixels, then reduce_partials adds them into `dw` in order.
#[allow(clippy::too_many_arguments)]
fn tiled_weight(
    gpu: &Gpu,
    label: String,
    p: Params,
    k: usize,
    x: View,
    dy: View,
    dw: &Tensor,
) -> Result<Vec<Dispatch>> {
    let (rows, cout) = (x.c * k * k, dy.c);
    // At most 4 output channels: tiles of 4 x NARROW_R (tiled_weight_narrow);
    // 1x1 and 3x3 kernels: tap_weight's tiles of TAP_TILE_ROWS (ci, tap) rows.
    let (entry, tiles) = if cout <= 4 {
        ("tiled_weight_narrow", rows.div_ceil(NARROW_R))
    } else if BLOCKED_K.contains(&k) {
        let cin_per_tile = TAP_TILE_ROWS / (k * k);
        ("tap_weight", cout.div_ceil(TILE_CO) * x.c.div_ceil(cin_per_tile))
    } else {
        ("tiled_weight", cout.div_ceil(TILE_CO) * rows.div_ceil(TILE_R))
    };
    let partials = partials_tensor(gpu, TILED_WEIGHT_GROUPS.div_ceil(tiles).min(512), cout, rows)?;
    let split = partials.shape.n;
    let sums = kernel(entry, k).with("SPLIT", split as f64);
    let bindings = [(1, x), (5, dy), (7, partials.view())];
    let d = gpu.dispatch(label, &sums, &p, &bindings, Grid::Groups(split * tiles))?;
    Ok(vec![d.with_flops(flops(&p, k)), reduce_partials(gpu, p, k, &partials, dw)?])
}

/// A partials buffer [part][cout][rows] for up to `split` parts: fewer where
/// the device's storage bindings are too small for them.
fn partials_tensor(gpu: &Gpu, split: usize, cout: usize, rows: usize) -> Result<Tensor> {
    let most = gpu.limits.max_storage_buffer_binding_size / (4 * cout * rows) as u64;
    gpu.tensor(Shape::new(split.min(most.max(1) as usize), cout, rows, 1))
}

/// reduce_partials: `dw`'s entries of a convolution `p` (Cout x Cin x K x
/// K, a part of the input channels at `p.w_coff`) as the in-order sums of
/// `partials` [part][Cout][Cin * K * K].
fn reduce_partials(gpu: &Gpu, p: Params, k: usize, partials: &Tensor, dw: &Tensor) -> Result<Dispatch> {
    let label = format!("conv.reduce_partials {} {} parts", dw.shape, partials.shape.n);
    let p = Params { group: 0, ..p };
    reduce_into(gpu, kernel("reduce_partials", k), label, p, p.cout as usize, partials, dw)
}

/// The reduce_partials launch (`reduce`: its kernel with K, COB) adding the
/// `valid` output channels of `partials` [part][Cin * K * K][valid] from
/// group `p.group` into `dw`: one invocation per entry on CPU adapters
/// (`REDUCE_LANES` 1: a workgroup barrier is dear there), 32 on GPUs, whose
/// weight gradients have up to 512 parts; WG / REDUCE_LANES entries a
/// workgroup.
fn reduce_into(
    gpu: &Gpu,
    reduce: Kernel,
    label: String,
    p: Params,
    valid: usize,
    partials: &Tensor,
    dw: &Tensor,
) -> Result<Dispatch> {
    let (split, entries) = (partials.shape.n, partials.shape.c * partials.shape.h);
    let lanes = match gpu.tuning() {
        Tuning::Cpu => 1,
        Tuning::Gpu => 32,
    };
    let reduce = reduce.with("VALID", valid as f64).with("SPLIT", split as f64).with("REDUCE_LANES", lanes as f64);
    let grid = Grid::Groups(entries.div_ceil(WORKGROUP / lanes));
    gpu.dispatch(label, &reduce, &p, &[(1, partials.view()), (4, dw.view())], grid)
}

/// The narrow weight gradient (at most 4 output channels): narrow_weight's
/// partial sums, then reduce_partials. The parts do not depend on the
/// image size, as in `tiled_weight`.
fn narrow_weight(
    gpu: &Gpu,
    label: String,
    p: Params,
    k: usize,
    x: View,
    dy: View,
    dw: &Tensor,
) -> Result<Vec<Dispatch>> {
    let (rows, cout) = (x.c * k * k, dy.c);
    ensure(cout <= 4, &label, || format!("the narrow kernels compute at most 4 channels, not {cout}"))?;
    // 3x3: up to NARROW_WEIGHT_CIN input channels an invocation, walked side
    // by side (their blocks of nine taps); 1x1: blocks of 9 input channels.
    let (ncb, blocks) = if k == 3 {
        let ncb = x.c.min(NARROW_WEIGHT_CIN);
        (ncb, x.c.div_ceil(ncb))
    } else {
        (1, rows.div_ceil(9))
    };
    let partials = partials_tensor(gpu, narrow_weight_invocations(k).div_ceil(blocks), cout, rows)?;
    let split = partials.shape.n;
    let sums =
        kernel("narrow_weight", k).with("SPLIT", split as f64).with("VALID", cout as f64).with("NCB", ncb as f64);
    // 1x1: four pixels a step, x and dy as vec4s, where the planes hold
    // whole vec4s (the partials stay scalars).
    let vec4 = k == 1 && x.shape().plane().is_multiple_of(4);
    let (xb, dyb) = if vec4 { (X4_BINDING, DY4_BINDING) } else { (1, 5) };
    let bindings = [(xb, x), (dyb, dy), (4, partials.view())];
    let sums = sums.with("VEC4", f64::from(u8::from(vec4)));
    let d = gpu.dispatch(label, &sums, &p, &bindings, Grid::Elements(split * blocks))?;
    Ok(vec![d.with_flops(flops(&p, k)), reduce_partials(gpu, p, k, &partials, dw)?])
}

/// Whether the narrow forward and data kernels take a 1x1 convolution's
/// runs as vec4s (`VEC4` in conv.wgsl): rows of a multiple of 8 pixels, so
/// that every run is whole and starts on a vec4, and stores that only
/// write or add (no fused dropout or residual).
fn narrow_vec4(k: usize, w: usize, p: &Params) -> bool {
    k == 1 && w.is_multiple_of(NARROW_RUN) && p.drop_p == 0.0 && p.accumulate != ADD_RESIDUAL
}

/// conv.wgsl's x4, dy4 and y4: x, dy and y as vec4s.
const X4_BINDING: u32 = 40;
const DY4_BINDING: u32 = 41;
const Y4_BINDING: u32 = 42;

/// A narrow forward or data launch's x (1) and y (4) bound as vec4s.
fn vec4_bindings(bindings: Vec<(u32, View)>) -> Vec<(u32, View)> {
    let vec4 = |b: u32| match b {
        1 => X4_BINDING,
        4 => Y4_BINDING,
        other => other,
    };
    bindings.into_iter().map(|(b, v)| (vec4(b), v)).collect()
}

/// blocked_weight's invocations per trio of (ci, tap) rows: enough to give
/// lavapipe's threads about 256 invocations (a 32 -> 32 3x3 layer has 96
/// trios, three workgroups: alone they would keep one of two threads idle
/// a third of the time), at most 16 parts.
fn weight_split(trios: usize) -> usize {
    (256 / trios).clamp(1, 16)
}

/// blocked_weight's trios of (ci, tap) rows: the three taps of a kernel row
/// (3x3), three input channels (1x1).
fn weight_trios(cin: usize, k: usize) -> usize {
    if k == 3 {
        3 * cin
    } else {
        cin.div_ceil(3)
    }
}

/// The kernels that read dy's tables (pack_dy, blocked_weight, table_data,
/// reduce_partials) for a k x k convolution with output gradient `dy`.
fn table_kernel(variant: Variant, k: usize, dy: &View) -> impl Fn(&'static str) -> Kernel {
    let cob = blocks(dy.c);
    move |entry| Kernel::new(variant.family(), entry).with("K", k as f64).with("COB", cob as f64)
}

/// One launch over dy's tables (`dy_tables`): group `group` of TABLES =
/// `bound` blocks of output channels from block `first`, chunks `c` ..
/// `c + walked` of dy (`CHUNKS` = `per_launch`; `chunk` pixels each,
/// `count` in all), whether
/// it is the group's last launch and its batch's (the next one repacks),
/// and the table windows to bind.
struct TableLaunch<'a> {
    group: usize,
    first: usize,
    bound: usize,
    group_cout: usize,
    c: usize,
    chunk: usize,
    per_launch: usize,
    count: usize,
    last: bool,
    batch_end: bool,
    windows: Vec<Window<'a>>,
}

/// dy packed into uniform tables and the launches that read them
/// (blocked_weight, table_data): per group of blocks of 4 * COB output
/// channels, batch by batch of chunks, the batch's packing, then per
/// `CHUNKS` chunks `launch` (table j * TABLES + t: block t's chunk c + j;
/// bindings past the last repeat it, unread).
fn dy_tables(
    gpu: &Gpu,
    kernel: &dyn Fn(&'static str) -> Kernel,
    p: Params,
    dy: View,
    launch: &mut dyn FnMut(&TableLaunch) -> Result<Vec<Dispatch>>,
) -> Result<Vec<Dispatch>> {
    let cout = dy.c;
    let cob = blocks(cout);
    let chunk = PACK_LEN / cob;
    let pixels = dy.shape().n * dy.shape().h * dy.shape().w;
    let chunks = pixels.div_ceil(chunk);
    // Tables packed per launch: PACK_BATCH, or what one binding can hold.
    let table_size = (PACK_LEN * 16) as u64;
    let batch_len = (PACK_BATCH as u64).min(gpu.limits.max_storage_buffer_binding_size / table_size).max(1) as usize;
    let per_table = 4 * cob;
    let tables = tables(gpu, cout, cob);
    let blocks = cout.div_ceil(per_table);
    let mut list = Vec::new();
    for group in 0..blocks.div_ceil(tables) {
        let first = group * tables;
        let bound = blocks.min(first + tables) - first;
        let packs =
            (0..bound).map(|_| gpu.tensor(Shape::vector(batch_len * PACK_LEN * 4))).collect::<Result<Vec<_>>>()?;
        let per_launch = chunks_per_launch(gpu, bound, batch_len, chunks);
        for c in (0..chunks).step_by(per_launch) {
            if c % batch_len == 0 {
                let batch = batch_len.min(chunks - c);
                for (t, pack) in packs.iter().enumerate() {
                    let gp = Params { group: u32_of(first + t), chunk: u32_of(c), ..p };
                    list.extend(pack_dy(gpu, kernel, gp, dy, pack, (c, batch), (cob, chunk))?);
                }
            }
            let walked = per_launch.min(chunks - c);
            let windows = table_bindings(per_launch * bound)
                .enumerate()
                .map(|(t, binding)| {
                    let t = t.min(walked * bound - 1);
                    let at = c + t / bound;
                    Window { binding, tensor: &packs[t % bound], offset: (at % batch_len) as u64 * table_size }
                })
                .collect();
            list.extend(launch(&TableLaunch {
                group,
                first,
                bound,
                group_cout: (bound * per_table).min(cout - per_table * first),
                c,
                chunk,
                per_launch,
                count: pixels.min((c + walked) * chunk) - c * chunk,
                last: c + per_launch >= chunks,
                batch_end: c + per_launch >= chunks || (c + per_launch).is_multiple_of(batch_len),
                windows,
            })?);
        }
    }
    Ok(list)
}

/// The blocked weight gradient: per output-channel group, chunk by chunk,
/// dy's chunk packed into the group's uniform table, then every (ci, tap)
/// adds its products into dw.
#[allow(clippy::too_many_arguments)]
fn blocked_weight(
    gpu: &Gpu,
    variant: Variant,
    label: String,
    p: Params,
    k: usize,
    x: View,
    dy: View,
    dw: &Tensor,
) -> Result<Vec<Dispatch>> {
    ensure(BLOCKED_K.contains(&k), &label, || format!("the blocked kernels take 1x1 and 3x3 kernels, not {k}x{k}"))?;
    let kernel = table_kernel(variant, k, &dy);
    let mut weight = weight_launch(gpu, &kernel, &label, p, k, x, dw);
    dy_tables(gpu, &kernel, p, dy, &mut weight)
}

/// blocked_weight's launch over the tables of a `TableLaunch`, and after a
/// group's last one the reduction of its partial sums (where SPLIT > 1).
fn weight_launch<'a>(
    gpu: &'a Gpu,
    kernel: &'a dyn Fn(&'static str) -> Kernel,
    label: &'a str,
    p: Params,
    k: usize,
    x: View<'a>,
    dw: &'a Tensor,
) -> impl FnMut(&TableLaunch) -> Result<Vec<Dispatch>> + 'a {
    let cin = x.c;
    let trios = weight_trios(cin, k);
    let split = weight_split(trios);
    let mut partials: Option<Tensor> = None;
    move |l: &TableLaunch| {
        let gp = Params { group: u32_of(l.first), chunk: u32_of(l.c), ..p };
        if split > 1 && l.c == 0 {
            partials = Some(gpu.tensor(Shape::new(split, cin * k * k, l.group_cout, 1))?);
        }
        let grid = Grid::Groups(split * trios.div_ceil(WEIGHT_WORKGROUP));
        let sums = partials.as_ref().map_or(dw.view(), |t| t.view());
        let weight = kernel("blocked_weight")
            .with("CHAIN", 3.0)
            .with("TABLES", l.bound as f64)
            .with("VALID", l.group_cout as f64)
            .with("FIRST_WRITES", 1.0)
            .with("SPLIT", split as f64)
            .with("CHUNKS", l.per_launch as f64)
            .with("DROP_LOADS", f64::from(u8::from(p.drop_p > 0.0)));
        let mut bindings = vec![(1, x), (4, sums)];
        // A deferred norm block's input: its table from storage (the
        // launch's uniform bindings may all be dy's tables).
        let weight = weight.with("LAZY", f64::from(u8::from(x.affine.is_some())));
        bindings.extend(x.affine.map(|t| (AFFINE_ROWS_BINDING, t.view())));
        let d =
            gpu.dispatch_windowed(format!("{label} group {}", l.group), &weight, &gp, &bindings, &l.windows, grid)?;
        let d = stepped(d, &gp);
        // Traffic of the launch's chunks, not of the whole bound tensors.
        let table_bytes = (l.bound * l.count * blocks(p.cout as usize) * 16) as f64;
        let bytes = (cin * l.count * 4) as f64 + table_bytes + (2 * cin * k * k * l.group_cout * 4) as f64;
        let mut list = vec![d.with_flops(2.0 * (cin * k * k * l.group_cout * l.count) as f64).with_bytes(bytes)];
        if let (Some(partials), true) = (&partials, l.last) {
            let label = format!("conv.reduce_partials {} group {}", dw.shape, l.group);
            let gp = Params { group: u32_of(l.first), ..p };
            list.push(reduce_into(gpu, kernel("reduce_partials"), label, gp, l.group_cout, partials, dw)?);
        }
        Ok(list)
    }
}

/// The input gradient of a 1x1 convolution by `table_data` (conv.wgsl):
/// dy packed into tables as for the weight gradient (`dy_tables`), then per
/// group of TABLES blocks of dy's channels and per CHUNKS chunks a launch
/// of one invocation per trio of dx's channels (later groups add).
#[allow(clippy::too_many_arguments)]
fn table_data(
    gpu: &Gpu,
    variant: Variant,
    label: String,
    p: Params,
    w: &Tensor,
    dy: View,
    dx: View,
) -> Result<Vec<Dispatch>> {
    let kernel = table_kernel(variant, 1, &dy);
    let mut data = data_launch(gpu, &kernel, &label, p, w, dx);
    dy_tables(gpu, &kernel, p, dy, &mut data)
}

/// table_data's launch over the tables of a `TableLaunch`.
fn data_launch<'a>(
    gpu: &'a Gpu,
    kernel: &'a dyn Fn(&'static str) -> Kernel,
    label: &'a str,
    p: Params,
    w: &'a Tensor,
    dx: View<'a>,
) -> impl FnMut(&TableLaunch) -> Result<Vec<Dispatch>> + 'a {
    let cin = dx.c;
    move |l: &TableLaunch| {
        let accumulate = u32::from(p.accumulate > 0 || l.group > 0);
        let launch = kernel("table_data")
            .with("TABLES", l.bound as f64)
            .with("DROP_STORES", f64::from(u8::from(p.drop_p > 0.0)));
        let bindings = [(2, w.view()), (4, dx)];
        let grid = Grid::Groups(cin.div_ceil(3).div_ceil(WEIGHT_WORKGROUP));
        // A launch per chunk: one inlined walk to compile, not CHUNKS.
        let chunk = l.chunk;
        let mut list = Vec::new();
        for (j, tables) in l.windows.chunks(l.bound).enumerate().take(l.count.div_ceil(chunk)) {
            let gp = Params { group: u32_of(l.first), chunk: u32_of(l.c + j), accumulate, ..p };
            // Bindings past the last table repeat it, unread.
            let windows: Vec<Window> = table_bindings(l.bound)
                .enumerate()
                .map(|(t, binding)| {
                    let t = &tables[t.min(tables.len() - 1)];
                    Window { binding, tensor: t.tensor, offset: t.offset }
                })
                .collect();
            let d = gpu.dispatch_windowed(
                format!("{label} group {}", l.group),
                &stores(launch.clone(), &gp),
                &gp,
                &bindings,
                &windows,
                grid,
            )?;
            let count = chunk.min(l.count - j * chunk);
            let bytes = ((cin + l.bound * blocks(p.cout as usize) * 4) * count * 4) as f64;
            list.push(stepped(d, &gp).with_flops(2.0 * (cin * l.group_cout * count) as f64).with_bytes(bytes));
        }
        Ok(list)
    }
}

/// The most chunks a weight-gradient launch walks on Mesa 25 and later
/// (`chunks_per_launch`).
const MESA_25_CHUNKS: usize = 4;

/// Chunks of dy each blocked_weight launch walks (`CHUNKS`) for `bound`
/// blocks of output channels: on CPU adapters as many as the tables a
/// launch can bind hold (14 for a 32-channel layer, 2 for the head's 128
/// channels), so that a launch's own cost (about 0.15 ms on lavapipe) is
/// paid once for them all; on Mesa 25 and later at most 4, which its
/// lavapipe runs faster (`conv3x3-d13-bwd-weight` 28.0-28.2 ms against
/// 33.4-38.6 with 14, a lungnet step 1328-1405 against 1392-1428,
/// 2026-11-29; Mesa 22 the other way round, 31 against 32-33). A launch's
/// chunks lie in one packing batch of `batch_len`. No more than the
/// `chunks` there are: each is one more inlined walk to compile (small
/// images).
fn chunks_per_launch(gpu: &Gpu, bound: usize, batch_len: usize, chunks: usize) -> usize {
    let most = match gpu.tuning() {
        Tuning::Cpu => {
            let fit = max_tables(gpu) / bound;
            let fit = if mesa_25(gpu) { fit.min(MESA_25_CHUNKS) } else { fit };
            (1..=fit).rev().find(|&n| batch_len.is_multiple_of(n)).unwrap_or(1)
        }
        Tuning::Gpu => 1,
    };
    most.min(chunks)
}

/// The bindings of `tables` tables a blocked_weight launch binds: the four
/// table bindings, and with more than 4 also the first ten windows'
/// (conv.wgsl's `table_load` names all fourteen then; a launch with fewer
/// tables binds its last again in the others, unread).
fn table_bindings(tables: usize) -> impl Iterator<Item = u32> {
    let windows = if tables > TABLE_BINDINGS.len() { MAX_TABLES - TABLE_BINDINGS.len() } else { 0 };
    TABLE_BINDINGS.into_iter().chain((FIRST_WINDOW_BINDING..).take(windows))
}

/// The most tables a blocked_weight launch binds (`TABLES` x `CHUNKS`): with the
/// parameters, the fifteen uniform buffers a stage may have on lavapipe.
const MAX_TABLES: usize = 14;

/// Packs chunks c .. c + batch of dy's block of output channels P.group
/// into `pack` (conv.wgsl's pack_dy layout, `cob` vec4s a pixel, `chunk`
/// pixels a table): on CPU adapters through uniform windows of dy
/// (`pack_dy_windows`: a launch per three blocks and per piece of a
/// sample's plane that one window holds), else from storage (`pack_dy`,
/// and wherever a piece has no window: a buffer under 64 KiB).
fn pack_dy(
    gpu: &Gpu,
    kernel: &dyn Fn(&'static str) -> Kernel,
    p: Params,
    dy: View,
    pack: &Tensor,
    (c, batch): (usize, usize),
    (cob, chunk): (usize, usize),
) -> Result<Vec<Dispatch>> {
    let s = dy.shape();
    let (hw, block) = (s.h * s.w, p.group as usize);
    let (q0, q1) = (c * chunk, (s.n * hw).min((c + batch) * chunk));
    let label = format!("conv.pack_dy {} group {block}", dy.shape());
    // dy's channels read and the table's vec4s written, per pixel.
    let bytes = |pixels: usize, channels: usize, blocks: usize| (pixels * (channels * 4 + blocks * 16)) as f64;
    if let Some(launches) = pack_windows(gpu, p, dy, (q0, q1), cob) {
        let kernel = kernel("pack_dy_windows");
        return launches
            .into_iter()
            .map(|(wp, windows)| {
                let d = gpu.dispatch_windowed(
                    format!("{label} windowed"),
                    &kernel,
                    &wp,
                    &[(10, pack.view())],
                    &windows,
                    Grid::Elements(wp.pack[1] as usize),
                )?;
                let blocks = (WINDOWS / 4).min(cob - wp.pack[2] as usize);
                Ok(d.with_bytes(bytes(wp.pack[1] as usize, 4 * blocks, blocks)))
            })
            .collect();
    }
    let block_cout = (4 * cob).min(s.c - 4 * cob * block);
    let d =
        gpu.dispatch(label, &kernel("pack_dy"), &p, &[(5, dy), (10, pack.view())], Grid::Elements(batch * PACK_LEN))?;
    Ok(vec![d.with_bytes(bytes(q1 - q0, block_cout, cob))])
}

/// The launches of pack_dy_windows for pixels q0 .. q1 (of N x H x W) of
/// dy's block P.group: per sample's piece of them that one window holds,
/// per three vec4 blocks, the parameters and the 12 windows; None where a
/// window cannot be had (a hardware GPU, too few uniform bindings, a
/// buffer under 64 KiB).
fn pack_windows<'a>(
    gpu: &Gpu,
    p: Params,
    dy: View<'a>,
    (q0, q1): (usize, usize),
    cob: usize,
) -> Option<Vec<(Params, Vec<Window<'a>>)>> {
    if gpu.tuning() != Tuning::Cpu || gpu.limits.max_uniform_buffers_per_shader_stage < 1 + WINDOWS as u32 {
        return None;
    }
    let s = dy.shape();
    let hw = s.h * s.w;
    // Any start within a window's alignment leaves room for the piece.
    let piece = WINDOW_BYTES as usize / 4 - window_align(gpu);
    let first_channel = 4 * cob * p.group as usize;
    let mut launches = Vec::new();
    for n in q0 / hw..q1.div_ceil(hw) {
        let (from, to) = (q0.max(n * hw), q1.min((n + 1) * hw));
        for start in (from..to).step_by(piece) {
            let len = piece.min(to - start);
            for b0 in (0..cob).step_by(WINDOWS / 4) {
                let mut wp = Params { pack: [u32_of(start - q0), u32_of(len), u32_of(b0), 0], ..p };
                let mut windows = Vec::with_capacity(WINDOWS);
                for k in 0..WINDOWS {
                    let channel = (first_channel + 4 * b0 + k).min(s.c - 1);
                    let (offset, at) = window_of(gpu, &dy, n, channel, start - n * hw, len)?;
                    wp.win[k / 4][k % 4] = i32::try_from(at).expect("a window offset fits an i32");
                    windows.push(Window { binding: FIRST_WINDOW_BINDING + k as u32, tensor: dy.tensor, offset });
                }
                launches.push((wp, windows));
            }
        }
    }
    Some(launches)
}

/// The bias gradient `db` (overwritten): the sum of `dy` per channel, on a
/// GPU in parts (`reduction_parts`) added by reduce_partials.
pub fn backward_bias(gpu: &Gpu, dy: View, db: &Tensor) -> Result<Vec<Dispatch>> {
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
        transposed: 0,
        group: 0,
        chunk: 0,
        w_ctotal: 0,
        w_coff: 0,
        ..Zeroable::zeroed()
    };
    let parts = reduction_parts(gpu, s.c, s.plane());
    let sums = Kernel::new(Family::Conv, "backward_bias").with("SPLIT", parts as f64);
    if parts == 1 {
        return Ok(vec![gpu.dispatch(label, &sums, &p, &[(5, dy), (8, db.view())], Grid::Groups(s.c))?]);
    }
    let partials = gpu.tensor(Shape::new(parts, s.c, 1, 1))?;
    let d = gpu.dispatch(
        format!("{label} {parts} parts"),
        &sums,
        &p,
        &[(5, dy), (8, partials.view())],
        Grid::Groups(parts * s.c),
    )?;
    // db as the weight gradient of a 1x1 convolution from one channel.
    let r = reduce_partials(gpu, Params { cin: 1, w_ctotal: 1, ..p }, 1, &partials, db)?;
    Ok(vec![d, r])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every output row is computed once: by the chains of row_bands'
    /// launches, mapped as chain_start in conv.wgsl maps them.
    #[test]
    fn row_bands_cover_every_row_once() {
        for h in 1..=80 {
            for d in [1, 2, 3, 5, 8, 13, 21, 34, 55] {
                let bands = row_bands(3, 1, h, d);
                let mut seen = vec![0; h];
                for (i, band) in bands.iter().enumerate() {
                    let last = i + 1 == bands.len();
                    let span = d.min(band.len);
                    for slot in 0..row_slots(band.len, d, band.rows) {
                        let oy = band.y0 + band.rows * d * (slot / span) + slot % span;
                        for row in (0..band.rows).map(|r| oy + r * d).filter(|&y| y < h) {
                            assert!(last || row < band.y0 + band.len, "{h} rows, d {d}: {bands:?} leaves its band");
                            seen[row] += 1;
                        }
                    }
                }
                assert!(seen.iter().all(|&c| c == 1), "{h} rows, d {d}: {bands:?} covers {seen:?}");
            }
        }
    }

    /// The shapes tests/kernels.rs runs for each row mode take that mode.
    #[test]
    fn row_bands_take_single_rows_pairs_or_triples_by_their_cost() {
        let modes = |h, dilation| row_bands(3, 1, h, dilation).iter().map(|b| b.rows).collect::<Vec<_>>();
        assert_eq!(modes(44, 11), [2]);
        assert_eq!(modes(46, 21), [2]);
        assert_eq!(modes(37, 13), [3]);
        assert_eq!(modes(53, 5), [3]);
        // Two launches: 13 pairs over rows 0 to 25, then triples.
        assert_eq!(row_bands(3, 1, 64, 13), [Band { y0: 0, len: 26, rows: 2 }, Band { y0: 26, len: 38, rows: 3 }]);
        // At 256 rows small dilations fill the triples' blocks, large ones
        // leave slots empty below the last whole block: pairs and triples.
        assert_eq!(modes(256, 5), [3]);
        assert_eq!(modes(256, 55), [2, 3]);
        // 40 rows at dilation 55: every row alone.
        assert_eq!(modes(40, 55), [1]);
        // Several tables: no row sharing; a 1x1 kernel (stride 1): triples.
        assert_eq!(row_bands(3, 2, 256, 13), [Band { y0: 0, len: 256, rows: 1 }]);
        assert_eq!(row_bands(3, 1, 256, 1), [Band { y0: 0, len: 256, rows: 3 }]);
    }
}
