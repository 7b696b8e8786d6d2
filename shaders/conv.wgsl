// Convolution family: 'same' zero padding, stride 1, a K x K kernel (K is the
// pipeline constant, 3 or 1) with any dilation, weights OIHW, bias.
//
// Two variants (src/ops/conv.rs chooses; docs/KERNELS.md has the numbers).
// Baseline, any shape:
// - forward: one invocation per output element (n, co, y, x), summing
//   Cin * K * K taps;
// - backward_data: one invocation per input element (n, ci, y, x): the
//   transposed convolution, optionally accumulated into the destination
//   (a concat slice collects gradients from several consumers);
// - backward_weight: one workgroup per weight (co, ci, ky, kx), its
//   invocations striding over N x H x W and reduced in a fixed tree;
// - backward_bias: one workgroup per output channel, likewise.
// The file is compiled twice (src/gpu/shaders.rs): lines tagged `@subgroup`
// only where the adapter has subgroups of at least 8 lanes, lines tagged
// `@plain` only where it has not. With subgroups, each of 8 lanes reads one
// vec4 of a table row and a subgroup broadcast hands it to the others: on
// lavapipe that is 1.5x faster than every lane reading all 8 (2026-11-27).
// Blocked (pack_weights, blocked_forward, blocked_data), when one output-
// channel group's weights fit a 64 KiB uniform table (Cin * K * K * COB
// <= 4096 vec4s): see blocked_sums. The weight gradient likewise (pack_dy,
// blocked_weight): dy in uniform tables of CHUNK pixels, see blocked_weight.
// Activations and their gradients may be channel slices of larger buffers
// (`*_ctotal`, `*_coff`): the gradient of a tensor has its tensor's layout.

override K: u32 = 3u;

struct Params {
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
    // backward_data: add into dx (the blocked kernels take ACCUMULATE).
    accumulate: u32,
    // pack_weights: 1 to pack the transposed, tap-flipped kernel (the
    // input gradient's convolution).
    transposed: u32,
    // pack_weights, pack_dy and blocked_*: the group of 4 * COB output channels.
    group: u32,
    // pack_dy and blocked_weight: the chunk of CHUNK pixels.
    chunk: u32,
    // Blocked kernels: the weight tensor's input channels, of which this
    // convolution uses [w_coff, w_coff + its own input count) (a part of the
    // concatenation convolved on its own; the baseline needs the whole).
    w_ctotal: u32,
    w_coff: u32,
    // window_*: the sample and the band of output rows of this launch, and
    // each window's offset: input (ci, iy, ix) is element
    // win[k / 4][k % 4] + iy * w + ix of window k = ci * 3 + ky. Blocked
    // forward and data kernels with CHAIN > 1: the band of output rows of
    // this launch (of every sample; band_n unused).
    band_n: u32,
    band_y0: u32,
    band_rows: u32,
    // Blocked kernels with RESIDUAL: the residual's first channel in y's
    // buffer.
    res_coff: u32,
    // DROP_LOADS, DROP_STORES: the dropout probability, seed and step
    // (the step rewritten before each training step).
    drop_p: f32,
    drop_seed: u32,
    drop_step: u32,
    _pad: u32,
    // pack_dy_windows: (its first pixel from the batch's first, its
    // pixels, the group's first block it packs, unused).
    pack: vec4<u32>,
    win: array<vec4<i32>, 3>,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> dy: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;
@group(0) @binding(7) var<storage, read_write> dw: array<f32>;
@group(0) @binding(8) var<storage, read_write> db: array<f32>;
// A uniform buffer, not storage: on lavapipe a uniform load costs about a
// fifth of a storage load (docs/KERNELS.md), and 64 KiB is every adapter's
// minimum uniform binding size.
@group(0) @binding(9) var<uniform> wpack: array<vec4<f32>, PACK_LEN>;
@group(0) @binding(10) var<storage, read_write> wpack_out: array<vec4<f32>>;
// The blocked kernels' further tables (TABLES > 1), each for the next 4 *
// COB output channels (launches of more than 4 tables: also win0 ..
// win9, table_load).
@group(0) @binding(23) var<uniform> wpack1: array<vec4<f32>, PACK_LEN>;
@group(0) @binding(24) var<uniform> wpack2: array<vec4<f32>, PACK_LEN>;
@group(0) @binding(25) var<uniform> wpack3: array<vec4<f32>, PACK_LEN>;

// window_*: up to 4 input channels x 3 kernel rows, each a 64 KiB window
// into the input bound as a uniform buffer (see window_sums). WGSL cannot
// index bindings, hence twelve names.
@group(0) @binding(11) var<uniform> win0: array<vec4<f32>, PACK_LEN>;
@group(0) @binding(12) var<uniform> win1: array<vec4<f32>, PACK_LEN>;
@group(0) @binding(13) var<uniform> win2: array<vec4<f32>, PACK_LEN>;
@group(0) @binding(14) var<uniform> win3: array<vec4<f32>, PACK_LEN>;
@group(0) @binding(15) var<uniform> win4: array<vec4<f32>, PACK_LEN>;
@group(0) @binding(16) var<uniform> win5: array<vec4<f32>, PACK_LEN>;
@group(0) @binding(17) var<uniform> win6: array<vec4<f32>, PACK_LEN>;
@group(0) @binding(18) var<uniform> win7: array<vec4<f32>, PACK_LEN>;
@group(0) @binding(19) var<uniform> win8: array<vec4<f32>, PACK_LEN>;
@group(0) @binding(20) var<uniform> win9: array<vec4<f32>, PACK_LEN>;
@group(0) @binding(21) var<uniform> win10: array<vec4<f32>, PACK_LEN>;
@group(0) @binding(22) var<uniform> win11: array<vec4<f32>, PACK_LEN>;

// The narrow 1x1 kernels with VEC4 (the host's choice, src/ops/conv.rs
// `narrow_vec4`: rows of a multiple of 8 pixels, so that every run of 8 is
// whole and starts on a vec4): x, dy and y as vec4s of 4 neighbouring
// pixels. llvmpipe loads and stores storage in a loop over the lanes that
// takes a vec4's four components in one trip (norm.wgsl's VEC4 likewise).
@group(0) @binding(40) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(41) var<storage, read> dy4: array<vec4<f32>>;
@group(0) @binding(42) var<storage, read_write> y4: array<vec4<f32>>;
override VEC4: bool = false;

// Output channels per invocation of `blocked_*`, in vec4 blocks (1..8).
override COB: u32 = 8u;
// Uniform tables of the blocked kernels, 1 to 4, each the weights (or dy)
// of 4 * COB output channels: a launch computes TABLES * 4 * COB channels,
// from P.group's block of 4 * COB on. Up to 4 on CPU adapters for more
// than 32 output channels: each input value loaded then feeds up to 128
// channels' multiply-adds (a 321 -> 128 1x1 layer on lavapipe, scratch
// kernels, 2026-11-28: four launches of one table 885-930 ms, two of two
// 566-635, one of four 445-496; docs/KERNELS.md).
override TABLES: u32 = 1u;
// The blocked kernels' stores, fixed per pipeline rather than read from P:
// on llvmpipe a branch on a uniform still runs both sides under masks, and
// the two tests at each of 32 stores made the whole 3x3 forward kernel 1.7x
// slower (2026-11-28, docs/KERNELS.md). VALID: the channels of this
// group that exist (4 * COB but in the last group); ACCUMULATE: add into
// the destination instead of overwriting it.
override VALID: u32 = 32u;
override ACCUMULATE: bool = false;
// The data gradient of a layer with a residual: y += the gradient + the
// residual's gradient, channels from res_coff of y's own buffer (the
// concatenation's gradient parts share one), instead of a separate add.
override RESIDUAL: bool = false;
// blocked_weight's launches over one destination: the first (P.chunk 0)
// writes, later ones add, chosen by a select on the parameter rather than
// by ACCUMULATE, so that one pipeline serves them all. On lavapipe each
// pipeline is an LLVM compile of seconds on a cold start; a branch on the
// parameter instead compiled both sides of every store (docs/REJECTED.md).
override FIRST_WRITES: bool = false;
// blocked_weight's invocations per (ci, tap) (see there).
override SPLIT: u32 = 1u;
// vec4s in one uniform table (64 KiB).
const PACK_LEN: u32 = 4096u;
// Pixels of dy in one table for blocked_weight.
override CHUNK: u32 = PACK_LEN / COB;
// Chunks a blocked_weight launch walks, TABLES tables each (weight_walk).
override CHUNKS: u32 = 1u;
// Invocations per workgroup of blocked_weight: its grid is only Cin * K * K
// / 3 trios per group, so small workgroups spread it over more cores; 8,
// one SIMD batch on llvmpipe, leaves fewest lanes past the last trio idle
// (with 32: a 1 -> 32 layer's 3 trios filled 3 of 32 lanes, the head's
// 107 trios 107 of 128; lungnet step, 2026-11-28: the first layer's weight
// gradient 21-34 -> 12-15 ms).
const WG_WEIGHT: u32 = 8u;

// Invocations per workgroup of blocked_forward and blocked_data. llvmpipe
// hands a launch's workgroups to its threads one at a time, so the last
// one can leave a thread idle: with 256 a 32 -> 32 3x3 layer at 256x256
// was 29 workgroups of about 1 ms, 15 on one thread and 14 on the other;
// with 64 it is 114 (2026-11-29: `conv3x3-d1-fwd` 2-4% faster).
const WG_CHAIN: u32 = 64u;

// The head's dropout fused into its first 1x1 convolution (the host's
// check: blocked kernels, K = 1): DROP_LOADS drops out x's values as
// blocked_forward and blocked_weight load them, DROP_STORES the input
// gradient as blocked_data stores it, with dropout.wgsl's mask over the
// whole concatenation the weights convolve (w_ctotal channels, this part
// from channel w_coff). No dropout pass over the 321-channel
// concatenation and no buffer for its dropped copy, forward or backward.
override DROP_LOADS: bool = false;
override DROP_STORES: bool = false;

// A deferred norm block on the input (LAZY; src/model/graph.rs): `x` holds
// the block's input t, its output act(t + Norm(t)) is never stored, and
// each value is read as block_input(t, a): a = (mean, k = gamma * inv,
// beta, slope) of the value's (sample, channel), from the table that
// norm.wgsl's AFFINE wrote, indexed as x's buffer's channels are (entries
// for channels stored as they are: (0, 0, 0, 1), which read t + 0). What
// the norm's apply pass did (a load and a store per element) is then a
// few arithmetic operations on loads the convolutions make anyway. The
// forward kernels read the table as a uniform (a gather per input channel
// and lane); blocked_weight, whose launches may bind fourteen tables and P
// (the fifteen uniform buffers lavapipe allows a stage), from storage, a
// row at a time.
override LAZY: bool = false;
@group(0) @binding(26) var<uniform> affine: array<vec4<f32>, PACK_LEN>;
@group(0) @binding(27) var<storage, read> affine_rows: array<vec4<f32>>;

// The blocked forward's input read from `y`'s binding (X_IN_Y): where the
// input and output are channel slices of one buffer (a deferred layer
// writing its output beside its input in the concatenation), since wgpu
// lets a dispatch that writes a buffer bind it only once.
override X_IN_Y: bool = false;

// The blocked 1x1 forward reading x from interleave_channels' copy
// (X_INTERLEAVED): [sample][tile of INTERLEAVE pixels][channel][pixel], a
// pixel's input channels INTERLEAVE floats apart instead of a plane apart.
// From the planes, a chain's walk over the head's 321 input channels
// touched 321 lines 256 KiB apart, and waited for each miss
// (docs/KERNELS.md, "Channels interleaved for the head").
override X_INTERLEAVED: bool = false;
const INTERLEAVE: u32 = 8u;

// The elements of input channel ci at pixels q of sample n in the copy.
fn interleaved_at(n: u32, ci: u32, q: vec3<u32>) -> vec3<u32> {
    let tiles = (P.h * P.w + INTERLEAVE - 1u) / INTERLEAVE;
    let row = P.cin * INTERLEAVE;
    return vec3<u32>(n * tiles * row + ci * INTERLEAVE) + (q / INTERLEAVE) * row + q % INTERLEAVE;
}

fn x_at(i: u32) -> f32 {
    var v: f32;
    if (X_IN_Y) {
        v = y[i];
    } else {
        v = x[i];
    }
    return v;
}

// The block's output for stored value v: norm.wgsl's block_value, then
// its activation (u * slope below zero, as norm.wgsl's apply), or v
// without LAZY.
// (The `if`s on pipeline constants keep one side, with its bindings, in
// each pipeline's module: gpu::specialize.)
fn block_input(v: f32, a: vec4<f32>) -> f32 {
    var r = v;
    if (LAZY) {
        let u = v + fma(v - a.x, a.y, a.z);
        r = select(u * a.w, u, u > 0.0);
    }
    return r;
}

// The table entry of channel c (of x's view) of sample n, from the uniform
// table (forward kernels) or storage (blocked_weight); zero without LAZY.
fn affine_of(n: u32, c: u32) -> vec4<f32> {
    var a = vec4<f32>(0.0);
    if (LAZY) {
        a = affine[n * P.in_ctotal + P.in_coff + c];
    }
    return a;
}

fn affine_row(n: u32, c: u32) -> vec4<f32> {
    var a = vec4<f32>(0.0);
    if (LAZY) {
        a = affine_rows[n * P.in_ctotal + P.in_coff + c];
    }
    return a;
}

// v kept (scaled by 1 / (1 - p), as dropout.wgsl) or dropped: element i of
// the masked concatenation, `key` = dropout_key(P.drop_seed, P.drop_step).
fn dropped(v: f32, key: u32, i: u32) -> f32 {
    return select(0.0, v / (1.0 - P.drop_p), dropout_uniform(key, i) >= P.drop_p);
}

// blocked_data with DROP_STORES, set once per invocation: added to an
// index of y, the index of the same element in the masked concatenation
// (u32 arithmetic wraps); and the mask's key.
var<private> mask_shift: u32;
var<private> mask_key: u32;

// Input coordinate read by tap k of output coordinate o, or -1 in the padding.
fn tap(o: u32, k: u32, size: u32) -> i32 {
    let i = i32(o) + (i32(k) - i32(K / 2u)) * i32(P.dilation);
    return select(-1, i, i >= 0 && i < i32(size));
}

// Output coordinate that reads input coordinate i through tap k, or -1.
fn untap(i: u32, k: u32, size: u32) -> i32 {
    let o = i32(i) - (i32(k) - i32(K / 2u)) * i32(P.dilation);
    return select(-1, o, o >= 0 && o < i32(size));
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    let hw = P.h * P.w;
    if (i >= P.n * P.cout * hw) {
        return;
    }
    let e = unflatten(i, P.cout, hw);
    let n = e.x;
    let co = e.y;
    let p = e.z;
    let oy = p / P.w;
    let ox = p % P.w;
    var acc = bias[co];
    for (var ci = 0u; ci < P.cin; ci++) {
        for (var ky = 0u; ky < K; ky++) {
            let iy = tap(oy, ky, P.h);
            if (iy < 0) {
                continue;
            }
            for (var kx = 0u; kx < K; kx++) {
                let ix = tap(ox, kx, P.w);
                if (ix < 0) {
                    continue;
                }
                let xi = slice_index(n, ci, u32(iy) * P.w + u32(ix), hw, P.in_ctotal, P.in_coff);
                acc += x[xi] * wt[((co * P.cin + ci) * K + ky) * K + kx];
            }
        }
    }
    y[slice_index(n, co, p, hw, P.out_ctotal, P.out_coff)] = acc;
}

@compute @workgroup_size(WG)
fn backward_data(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    let hw = P.h * P.w;
    if (i >= P.n * P.cin * hw) {
        return;
    }
    let e = unflatten(i, P.cin, hw);
    let n = e.x;
    let ci = e.y;
    let p = e.z;
    let iy = p / P.w;
    let ix = p % P.w;
    var acc = 0.0;
    for (var co = 0u; co < P.cout; co++) {
        for (var ky = 0u; ky < K; ky++) {
            let oy = untap(iy, ky, P.h);
            if (oy < 0) {
                continue;
            }
            for (var kx = 0u; kx < K; kx++) {
                let ox = untap(ix, kx, P.w);
                if (ox < 0) {
                    continue;
                }
                let gi = slice_index(n, co, u32(oy) * P.w + u32(ox), hw, P.out_ctotal, P.out_coff);
                acc += dy[gi] * wt[((co * P.cin + ci) * K + ky) * K + kx];
            }
        }
    }
    let di = slice_index(n, ci, p, hw, P.in_ctotal, P.in_coff);
    if (P.accumulate != 0u) {
        dx[di] += acc;
    } else {
        dx[di] = acc;
    }
}

@compute @workgroup_size(WG)
fn backward_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    if (g >= P.cout * P.cin * K * K) {
        return;
    }
    let kx = g % K;
    let ky = (g / K) % K;
    let ci = (g / (K * K)) % P.cin;
    let co = g / (K * K * P.cin);
    let hw = P.h * P.w;
    var acc = 0.0;
    for (var j = lid.x; j < P.n * hw; j += WG) {
        let n = j / hw;
        let p = j % hw;
        let iy = tap(p / P.w, ky, P.h);
        let ix = tap(p % P.w, kx, P.w);
        if (iy >= 0 && ix >= 0) {
            let xi = slice_index(n, ci, u32(iy) * P.w + u32(ix), hw, P.in_ctotal, P.in_coff);
            acc += dy[slice_index(n, co, p, hw, P.out_ctotal, P.out_coff)] * x[xi];
        }
    }
    let total = workgroup_sum(lid.x, acc);
    if (lid.x == 0u) {
        dw[g] = total;
    }
}

// backward_bias: one workgroup per channel and part (SPLIT ranges of each
// plane's pixels, so that a few channels still fill a GPU). With SPLIT > 1
// db is bound to a partials buffer [part][channel], which reduce_partials
// (cin 1, K 1) adds in order.
@compute @workgroup_size(WG)
fn backward_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = group_index(wid, nwg);
    let co = w % P.cout;
    let part = w / P.cout;
    if (part >= SPLIT) {
        return;
    }
    let hw = P.h * P.w;
    let per = ((hw + RUN - 1u) / RUN + SPLIT - 1u) / SPLIT * RUN;
    let p0 = min(part * per, hw);
    let p1 = min(p0 + per, hw);
    var acc = 0.0;
    // Plane by plane, runs of RUN pixels a trip (common.wgsl): no division
    // per element, and less loop bookkeeping per element on a CPU adapter.
    for (var n = 0u; n < P.n; n++) {
        let base = slice_index(n, co, 0u, hw, P.out_ctotal, P.out_coff);
        for (var j = p0 + lid.x * RUN; j < p1; j += WG * RUN) {
            for (var t = 0u; t < RUN; t++) {
                if (j + t < p1) {
                    acc += dy[base + j + t];
                }
            }
        }
    }
    let total = workgroup_sum(lid.x, acc);
    if (lid.x == 0u) {
        db[w] = total;
    }
}

// pack_weights: one output-channel group's weights as `blocked_*` read
// them: [ci][tap][block] vec4s of 4 output channels, zero past Cout. P.cin
// and P.cout are the computed convolution's; with `transposed` the source is
// the forward kernel [ci][co][ky][kx] read as [co][ci] with the taps
// flipped (the input gradient's convolution).
@compute @workgroup_size(WG)
fn pack_weights(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    let kk = K * K;
    if (i >= P.cin * kk * COB) {
        return;
    }
    let b = i % COB;
    let t = (i / COB) % kk;
    let ci = i / (COB * kk);
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let co = (P.group * COB + b) * 4u + j;
        if (co < P.cout) {
            if (P.transposed != 0u) {
                v[j] = wt[(ci * P.w_ctotal + P.w_coff + co) * kk + (kk - 1u - t)];
            } else {
                v[j] = wt[(co * P.w_ctotal + P.w_coff + ci) * kk + t];
            }
        }
    }
    wpack_out[i] = v;
}

// The 4 * COB output channels of one pixel in registers. Named fields, not
// an array: llvmpipe keeps an array indexed in a loop in memory (through a
// helper taking a pointer to an array, blocked_weight ran 1.7x slower on
// lavapipe, measured 2026-11-27).
struct Acc {
    a0: vec4<f32>,
    a1: vec4<f32>,
    a2: vec4<f32>,
    a3: vec4<f32>,
    a4: vec4<f32>,
    a5: vec4<f32>,
    a6: vec4<f32>,
    a7: vec4<f32>,
}

// Row wb of table tbl: the 4 * COB weights (COB vec4s) one multiply-add step takes,
// the same for every invocation. With subgroups each of 8 lanes reads one
// vec4 and a subgroup broadcast hands it to the others.
fn table_row(tbl: u32, wb: u32, lane: u32) -> Acc {
    let mine = gather_row(tbl, wb, lane);
    var t: Acc;
    t.a0 = lane_block(mine, tbl, wb, 0u);
    if (COB > 1u) { t.a1 = lane_block(mine, tbl, wb, 1u); }
    if (COB > 2u) { t.a2 = lane_block(mine, tbl, wb, 2u); }
    if (COB > 3u) { t.a3 = lane_block(mine, tbl, wb, 3u); }
    if (COB > 4u) { t.a4 = lane_block(mine, tbl, wb, 4u); }
    if (COB > 5u) { t.a5 = lane_block(mine, tbl, wb, 5u); }
    if (COB > 6u) { t.a6 = lane_block(mine, tbl, wb, 6u); }
    if (COB > 7u) { t.a7 = lane_block(mine, tbl, wb, 7u); }
    return t;
}

// This lane's vec4 of table tbl's row wb (lane b gathers block b; the
// others repeat the last block), for lane_block to broadcast. Unused
// without subgroups.
fn gather_row(tbl: u32, wb: u32, lane: u32) -> vec4<f32> {
    return table_load(tbl, wb + min(lane % 8u, COB - 1u));
}

// Vec4 i of table tbl (a constant at every call, so the switch folds away).
// A launch of more than 4 tables (TABLES x CHUNKS) reads tables 4 to 13
// through the window bindings (only those pipelines name them).
fn table_load(tbl: u32, i: u32) -> vec4<f32> {
    if (CHUNKS * TABLES > 4u) {
        switch tbl {
            case 4u: { return win0[i]; }
            case 5u: { return win1[i]; }
            case 6u: { return win2[i]; }
            case 7u: { return win3[i]; }
            case 8u: { return win4[i]; }
            case 9u: { return win5[i]; }
            case 10u: { return win6[i]; }
            case 11u: { return win7[i]; }
            case 12u: { return win8[i]; }
            case 13u: { return win9[i]; }
            default: {}
        }
    }
    switch tbl {
        case 0u: { return wpack[i]; }
        case 1u: { return wpack1[i]; }
        case 2u: { return wpack2[i]; }
        default: { return wpack3[i]; }
    }
}

// `c` plus the value v times the table row t.
fn row_fma(c: Acc, v: f32, t: Acc) -> Acc {
    let s = vec4<f32>(v);
    var r = c;
    r.a0 = fma(s, t.a0, r.a0);
    if (COB > 1u) { r.a1 = fma(s, t.a1, r.a1); }
    if (COB > 2u) { r.a2 = fma(s, t.a2, r.a2); }
    if (COB > 3u) { r.a3 = fma(s, t.a3, r.a3); }
    if (COB > 4u) { r.a4 = fma(s, t.a4, r.a4); }
    if (COB > 5u) { r.a5 = fma(s, t.a5, r.a5); }
    if (COB > 6u) { r.a6 = fma(s, t.a6, r.a6); }
    if (COB > 7u) { r.a7 = fma(s, t.a7, r.a7); }
    return r;
}

// Pixels per invocation of blocked_forward and blocked_data, 1 to 3: a
// chain of pixels chain_stride() apart along a row. One pixel (hardware
// GPUs: more invocations, fewer registers each) or three (CPU adapters):
// a 3x3 tap row of the chain reads 5 input columns instead of 9 (the
// column the right tap of one pixel reads is the centre of the next and
// the left of the one after), and every table row, fetched and broadcast
// once, feeds three pixels. On lavapipe a 32 -> 32 3x3 layer at 256x256
// went from 174-198 to 100-122 ms (2026-11-28, docs/KERNELS.md).
override CHAIN: u32 = 1u;

// Output rows per chain of the blocked forward and data kernels with one
// table, 1 to 3: with 2 the chain is also repeated chain_stride() rows
// lower, the two sharing the middle kernel rows' input rows (4 rows of 5
// columns loaded for 6 pixels' 54 taps, not 2 x 3 rows) and every table
// row. On lavapipe a 32 -> 32 3x3 layer at 256x256, dilation 13, took 92
// against 122 ms (scratch kernels, 2026-11-28); with 3 (5 input rows for 9
// pixels) `conv3x3-d13-fwd` 28.0-28.4 against 29.5-29.6 ms (2026-11-29;
// `row_bands` in src/ops/conv.rs chooses). Its chains sit in Chain's t0 (row
// oy), t1 (row oy + d) and t2 (row oy + 2d). 1x1 kernels share only the
// table rows between neighbouring rows' chains: the 128 -> 32 forward went
// 36.5-38.8 -> 32.0-32.6 ms with triples (2026-11-30).
override ROWS: u32 = 1u;

// The distance between a chain's pixels: the dilation for 3x3 kernels, 1
// for 1x1 (only the table rows are shared there).
fn chain_stride() -> u32 {
    return select(1u, P.dilation, K == 3u);
}

// Chains (or pairs) along len pixels (rows) in blocks of `block` holding
// `span` each, the last block only as many as it has pixels: its chain o
// starts at pixel o of the block, so o must be inside it (`slots` in
// src/ops/conv.rs).
fn slots(len: u32, block: u32, span: u32) -> u32 {
    return len / block * span + min(span, len % block);
}

// The chain of invocation q as (sample, row, first column, whether it
// exists), clamped into range. With CHAIN > 1 each row is cut into blocks
// of CHAIN * s columns (s = chain_stride()), each holding min(s, w) chains
// (ox, ox + s, ...), the last one no more than it has columns (`slots`):
// per row `chains_per_row` in src/ops/conv.rs; with ROWS > 1 the rows
// likewise into blocks of ROWS * s rows, each holding min(s, h) pairs (oy,
// oy + s) or triples: `row_slots` there. A launch covers the band_rows
// rows from band_y0 (`row_bands` there: every band but the last is whole
// blocks, so no chain's rows leave its band).
fn chain_start(q: u32) -> vec4<u32> {
    let hw = P.h * P.w;
    if (CHAIN == 1u) {
        let qc = min(q, P.n * hw - 1u);
        let p = qc % hw;
        return vec4<u32>(qc / hw, p / P.w, p % P.w, select(0u, 1u, q < P.n * hw));
    }
    let s = chain_stride();
    let span = min(s, P.w);
    let per_row = slots(P.w, CHAIN * s, span);
    let span_y = min(s, P.band_rows);
    var rows = P.band_rows;
    if (ROWS > 1u) {
        rows = slots(P.band_rows, ROWS * s, span_y);
    }
    let total = P.n * rows * per_row;
    let qc = min(q, total - 1u);
    let slot = qc / per_row;
    let j = qc % per_row;
    let ox = CHAIN * s * (j / span) + j % span;
    var oy = slot % rows;
    if (ROWS > 1u) {
        oy = ROWS * s * (oy / span_y) + oy % span_y;
    }
    oy += P.band_y0;
    return vec4<u32>(slot / rows, oy, ox, select(0u, 1u, q < total && ox < P.w && oy < P.h));
}

// A chain's sums for one table: pixel m's 4 * COB channels in p<m>.
struct Trip {
    p0: Acc,
    p1: Acc,
    p2: Acc,
}

// A chain's sums: table t's in t<t> (in blocked_weight, block t's of its
// TABLES blocks of output channels).
struct Chain {
    t0: Trip,
    t1: Trip,
    t2: Trip,
    t3: Trip,
}

// `c` plus the chain's values v (pixel m: v[m]) times the table row t.
fn trip_fma(c: Trip, v: vec3<f32>, t: Acc) -> Trip {
    var r = c;
    r.p0 = row_fma(r.p0, v.x, t);
    if (CHAIN > 1u) { r.p1 = row_fma(r.p1, v.y, t); }
    if (CHAIN > 2u) { r.p2 = row_fma(r.p2, v.z, t); }
    return r;
}

// `c` plus the chain's values v times row wb of each of TABLES tables
// from `first` (a constant at every call), table first + t into c.t<t>.
fn chain_step(c: Chain, v: vec3<f32>, wb: u32, lane: u32, first: u32) -> Chain {
    var r = c;
    r.t0 = trip_fma(r.t0, v, table_row(first, wb, lane));
    if (TABLES > 1u) { r.t1 = trip_fma(r.t1, v, table_row(first + 1u, wb, lane)); }
    if (TABLES > 2u) { r.t2 = trip_fma(r.t2, v, table_row(first + 2u, wb, lane)); }
    if (TABLES > 3u) { r.t3 = trip_fma(r.t3, v, table_row(first + 3u, wb, lane)); }
    return r;
}

// The input columns a chain reads, ox + (j - 1) * s for j = 0..4 (at: the
// column clamped into the row, ok: inside it): the j-th of them is tap kx
// of pixel j - kx (3x3) and pixel j - 1's own column (1x1).
struct Cols {
    at: vec4<u32>,
    ok: vec4<bool>,
    at4: u32,
    ok4: bool,
}

// The chain's 2 + CHAIN columns of the input row starting at element `row`
// of x (`ok`: the row is inside the image), each loaded once; 0 in the
// padding.
struct Vals {
    v: vec4<f32>,
    v4: f32,
}

// (The padding stays zero: it pads the block's output.)
fn chain_values(row: u32, ok: bool, k: Cols, a: vec4<f32>) -> Vals {
    var r: Vals;
    r.v.x = select(0.0, block_input(x_at(row + k.at.x), a), ok && k.ok.x);
    r.v.y = select(0.0, block_input(x_at(row + k.at.y), a), ok && k.ok.y);
    r.v.z = select(0.0, block_input(x_at(row + k.at.z), a), ok && k.ok.z);
    if (CHAIN > 1u) { r.v.w = select(0.0, block_input(x_at(row + k.at.w), a), ok && k.ok.w); }
    if (CHAIN > 2u) { r.v4 = select(0.0, block_input(x_at(row + k.at4), a), ok && k.ok4); }
    return r;
}

// Columns first .. first + 2 of a chain's row values: what tap kx reads
// for the chain's three pixels (first = kx), or the three columns pixel m
// of the chain reads (first = m).
fn columns(r: Vals, first: u32) -> vec3<f32> {
    switch first {
        case 0u: { return r.v.xyz; }
        case 1u: { return r.v.yzw; }
        default: { return vec3<f32>(r.v.zw, r.v4); }
    }
}

// The input rows of a 3x3 chain (u0, u1, u2), or of a pair or triple of
// chains (u0 .. u4: the second chain's are u1, u2, u3, the third's u2, u3,
// u4).
struct Rows {
    u0: Vals,
    u1: Vals,
    u2: Vals,
    u3: Vals,
    u4: Vals,
}

// One output-channel block's table rows for the nine taps of an input
// channel: four output channels per tap.
struct Taps {
    t0: vec4<f32>,
    t1: vec4<f32>,
    t2: vec4<f32>,
    t3: vec4<f32>,
    t4: vec4<f32>,
    t5: vec4<f32>,
    t6: vec4<f32>,
    t7: vec4<f32>,
    t8: vec4<f32>,
}

// Block b of a table row whose vec4 this lane gathered (`mine`, lane b's
// is block b; with subgroups), or loaded from row `at` of table tbl.
fn lane_block(mine: vec4<f32>, tbl: u32, at: u32, b: u32) -> vec4<f32> {
    var v: vec4<f32>;
    v = table_load(tbl, at + b); // @plain
    switch b {
        case 0u: { v = subgroupBroadcast(mine, 0u); } // @subgroup
        case 1u: { v = subgroupBroadcast(mine, 1u); } // @subgroup
        case 2u: { v = subgroupBroadcast(mine, 2u); } // @subgroup
        case 3u: { v = subgroupBroadcast(mine, 3u); } // @subgroup
        case 4u: { v = subgroupBroadcast(mine, 4u); } // @subgroup
        case 5u: { v = subgroupBroadcast(mine, 5u); } // @subgroup
        case 6u: { v = subgroupBroadcast(mine, 6u); } // @subgroup
        case 7u: { v = subgroupBroadcast(mine, 7u); } // @subgroup
        default: {}
    }
    return v;
}

// gather_row for the nine table rows of table tbl from wb.
fn gather_taps(tbl: u32, wb: u32, lane: u32) -> Taps {
    return Taps(gather_row(tbl, wb, lane), gather_row(tbl, wb + COB, lane), gather_row(tbl, wb + 2u * COB, lane),
                gather_row(tbl, wb + 3u * COB, lane), gather_row(tbl, wb + 4u * COB, lane),
                gather_row(tbl, wb + 5u * COB, lane), gather_row(tbl, wb + 6u * COB, lane),
                gather_row(tbl, wb + 7u * COB, lane), gather_row(tbl, wb + 8u * COB, lane));
}

// Block b of the nine table rows from wb.
fn block_taps(m: Taps, tbl: u32, wb: u32, b: u32) -> Taps {
    return Taps(lane_block(m.t0, tbl, wb, b), lane_block(m.t1, tbl, wb + COB, b),
                lane_block(m.t2, tbl, wb + 2u * COB, b), lane_block(m.t3, tbl, wb + 3u * COB, b),
                lane_block(m.t4, tbl, wb + 4u * COB, b), lane_block(m.t5, tbl, wb + 5u * COB, b),
                lane_block(m.t6, tbl, wb + 6u * COB, b), lane_block(m.t7, tbl, wb + 7u * COB, b),
                lane_block(m.t8, tbl, wb + 8u * COB, b));
}

// a plus one pixel's nine taps: its input rows' columns r0, r1, r2 times
// the block's table rows w, summed in one chain of multiply-adds.
fn patch_sum(a: vec4<f32>, w: Taps, r0: vec3<f32>, r1: vec3<f32>, r2: vec3<f32>) -> vec4<f32> {
    var s = fma(vec4<f32>(r0.x), w.t0, a);
    s = fma(vec4<f32>(r0.y), w.t1, s);
    s = fma(vec4<f32>(r0.z), w.t2, s);
    s = fma(vec4<f32>(r1.x), w.t3, s);
    s = fma(vec4<f32>(r1.y), w.t4, s);
    s = fma(vec4<f32>(r1.z), w.t5, s);
    s = fma(vec4<f32>(r2.x), w.t6, s);
    s = fma(vec4<f32>(r2.y), w.t7, s);
    return fma(vec4<f32>(r2.z), w.t8, s);
}

// Block b of Acc (b a constant at every call, so the switch folds away).
fn acc_block(a: Acc, b: u32) -> vec4<f32> {
    switch b {
        case 0u: { return a.a0; }
        case 1u: { return a.a1; }
        case 2u: { return a.a2; }
        case 3u: { return a.a3; }
        case 4u: { return a.a4; }
        case 5u: { return a.a5; }
        case 6u: { return a.a6; }
        default: { return a.a7; }
    }
}

// a with block b replaced by v.
fn with_block(a: Acc, b: u32, v: vec4<f32>) -> Acc {
    var r = a;
    switch b {
        case 0u: { r.a0 = v; }
        case 1u: { r.a1 = v; }
        case 2u: { r.a2 = v; }
        case 3u: { r.a3 = v; }
        case 4u: { r.a4 = v; }
        case 5u: { r.a5 = v; }
        case 6u: { r.a6 = v; }
        default: { r.a7 = v; }
    }
    return r;
}

// Block b of a chain's sums plus the nine taps of its pixels, whose input
// rows are u0, u1, u2.
fn trip_block(c: Trip, b: u32, w: Taps, u0: Vals, u1: Vals, u2: Vals) -> Trip {
    var r = c;
    r.p0 = with_block(r.p0, b, patch_sum(acc_block(r.p0, b), w, columns(u0, 0u), columns(u1, 0u), columns(u2, 0u)));
    if (CHAIN > 1u) {
        r.p1 = with_block(r.p1, b, patch_sum(acc_block(r.p1, b), w, columns(u0, 1u), columns(u1, 1u), columns(u2, 1u)));
    }
    if (CHAIN > 2u) {
        r.p2 = with_block(r.p2, b, patch_sum(acc_block(r.p2, b), w, columns(u0, 2u), columns(u1, 2u), columns(u2, 2u)));
    }
    return r;
}

// Table tbl's sums of a chain (or with ROWS > 1, table 0's of a pair or
// triple: t0 the upper chain, t1 and t2 the lower) plus one input
// channel's nine taps, block by block: each block's sums take all nine
// taps in registers before the next block's. Tap by tap, every
// multiply-add stored its sum back to the stack (96-192 sums a lane do not
// fit in registers; llvmpipe's JIT code showed a multiply, an add from the
// stack and a store per tap); block by block `conv3x3-d13-fwd` took
// 29.0-29.5 against 34.6-35.0 ms and `-bwd-data` 28.0-28.2 against
// 34.1-34.9 (lavapipe, 2026-11-29, docs/KERNELS.md).
fn table_taps(c: Chain, tbl: u32, g: Rows, wb: u32, lane: u32) -> Chain {
    let m = gather_taps(tbl, wb, lane);
    var r = block_step(c, tbl, 0u, block_taps(m, tbl, wb, 0u), g);
    if (COB > 1u) { r = block_step(r, tbl, 1u, block_taps(m, tbl, wb, 1u), g); }
    if (COB > 2u) { r = block_step(r, tbl, 2u, block_taps(m, tbl, wb, 2u), g); }
    if (COB > 3u) { r = block_step(r, tbl, 3u, block_taps(m, tbl, wb, 3u), g); }
    if (COB > 4u) { r = block_step(r, tbl, 4u, block_taps(m, tbl, wb, 4u), g); }
    if (COB > 5u) { r = block_step(r, tbl, 5u, block_taps(m, tbl, wb, 5u), g); }
    if (COB > 6u) { r = block_step(r, tbl, 6u, block_taps(m, tbl, wb, 6u), g); }
    if (COB > 7u) { r = block_step(r, tbl, 7u, block_taps(m, tbl, wb, 7u), g); }
    return r;
}

// table_taps for block b: its rows w into table tbl's chain (or pair, triple).
fn block_step(c: Chain, tbl: u32, b: u32, w: Taps, g: Rows) -> Chain {
    var r = c;
    if (ROWS > 1u) {
        r.t0 = trip_block(r.t0, b, w, g.u0, g.u1, g.u2);
        r.t1 = trip_block(r.t1, b, w, g.u1, g.u2, g.u3);
        if (ROWS > 2u) { r.t2 = trip_block(r.t2, b, w, g.u2, g.u3, g.u4); }
        return r;
    }
    switch tbl {
        case 0u: { r.t0 = trip_block(r.t0, b, w, g.u0, g.u1, g.u2); }
        case 1u: { r.t1 = trip_block(r.t1, b, w, g.u0, g.u1, g.u2); }
        case 2u: { r.t2 = trip_block(r.t2, b, w, g.u0, g.u1, g.u2); }
        default: { r.t3 = trip_block(r.t3, b, w, g.u0, g.u1, g.u2); }
    }
    return r;
}

// A 1x1 chain's input values in the row starting at element `row` of the
// plane (columns past the row clamped into it: their pixels are not
// stored), from the plane or the interleaved copy.
fn k1_values(n: u32, plane: u32, ci: u32, row: u32, k: Cols, a: vec4<f32>) -> vec3<f32> {
    var at = vec3<u32>(plane + row) + k.at.yzw;
    if (X_INTERLEAVED) {
        at = interleaved_at(n, ci, vec3<u32>(row) + k.at.yzw);
    }
    var v = vec3<f32>(block_input(x_at(at.x), a), 0.0, 0.0);
    if (CHAIN > 1u) { v.y = block_input(x_at(at.y), a); }
    if (CHAIN > 2u) { v.z = block_input(x_at(at.z), a); }
    return v;
}

// The register-blocked convolution: an invocation computes 4 * COB output
// channels of its chain's pixels. The weights come from the uniform table
// at addresses shared by every invocation; the per-invocation loads are the
// input values, each reused by 4 * COB multiply-adds per pixel it feeds.
// The rows, columns and padding are worked out once, outside the channel
// loop, and the taps are spelled out: llvmpipe runs a loop as masked SIMD
// code, and the index arithmetic and nested tap loops inside the channel
// loop made this kernel 1.8x slower (2026-11-28, docs/KERNELS.md). No early
// return before the loop: a CPU adapter runs the workgroup as SIMD lanes
// and inactive lanes would only add masks.
fn blocked_sums(start: vec4<u32>, lane: u32, masked: bool) -> Chain {
    let hw = P.h * P.w;
    let s = i32(chain_stride());
    let d = i32(P.dilation);
    let last = vec2<i32>(i32(P.h) - 1, i32(P.w) - 1);
    let oy = i32(start.y);
    let ox = i32(start.z);
    // Input rows of the taps (K = 3: offsets -d, 0, +d; with ROWS > 1 also
    // +2d, the second chain's last, and with ROWS = 3 +3d, the third's).
    let iy = vec4<i32>(oy - d, oy, oy + d, oy + 2 * d);
    let ry = iy >= vec4<i32>(0) & iy <= vec4<i32>(last.x);
    let row = vec4<u32>(clamp(iy, vec4<i32>(0), vec4<i32>(last.x))) * P.w;
    let row4 = u32(min(oy + 3 * d, last.x)) * P.w;
    // A 1x1 pair or triple's second and third rows (s apart, as stored).
    let row1 = u32(min(oy + s, last.x)) * P.w;
    let row2 = u32(min(oy + 2 * s, last.x)) * P.w;
    let cx = vec4<i32>(ox - s, ox, ox + s, ox + 2 * s);
    let c4 = ox + 3 * s;
    let k = Cols(vec4<u32>(clamp(cx, vec4<i32>(0), vec4<i32>(last.y))),
                 cx >= vec4<i32>(0) & cx <= vec4<i32>(last.y), u32(min(c4, last.y)), c4 <= last.y);
    let base = (start.x * P.in_ctotal + P.in_coff) * hw;
    // With `masked` (K = 1): the first element of the chain's row in the
    // masked concatenation, and the mask's key.
    let mask_base = slice_index(start.x, 0u, row.y, hw, P.w_ctotal, P.w_coff);
    let key = dropout_key(P.drop_seed, P.drop_step);
    var c: Chain;
    for (var ci = 0u; ci < P.cin; ci++) {
        let plane = base + ci * hw;
        let wb = ci * K * K * COB;
        let a = affine_of(start.x, ci);
        if (K == 1u) {
            var v = k1_values(start.x, plane, ci, row.y, k, a);
            if (masked) {
                let m = mask_base + ci * hw;
                v = vec3<f32>(dropped(v.x, key, m + k.at.y), dropped(v.y, key, m + k.at.z),
                              dropped(v.z, key, m + k.at.w));
            }
            if (ROWS > 1u) {
                // A pair or triple of chains in neighbouring rows (one
                // table, no dropout: the host's choice): each table row
                // feeds all of them.
                let t = table_row(0u, wb, lane);
                c.t0 = trip_fma(c.t0, v, t);
                c.t1 = trip_fma(c.t1, k1_values(start.x, plane, ci, row1, k, a), t);
                if (ROWS > 2u) { c.t2 = trip_fma(c.t2, k1_values(start.x, plane, ci, row2, k, a), t); }
            } else {
                c = chain_step(c, v, wb, lane, 0u);
            }
        } else {
            var g: Rows;
            g.u0 = chain_values(plane + row.x, ry.x, k, a);
            g.u1 = chain_values(plane + row.y, ry.y, k, a);
            g.u2 = chain_values(plane + row.z, ry.z, k, a);
            if (ROWS > 1u) { g.u3 = chain_values(plane + row.w, ry.w, k, a); }
            if (ROWS > 2u) { g.u4 = chain_values(plane + row4, oy + 3 * d <= last.x, k, a); }
            c = table_taps(c, 0u, g, wb, lane);
            if (TABLES > 1u) { c = table_taps(c, 1u, g, wb, lane); }
            if (TABLES > 2u) { c = table_taps(c, 2u, g, wb, lane); }
            if (TABLES > 3u) { c = table_taps(c, 3u, g, wb, lane); }
        }
    }
    return c;
}

// Writes (or, with ACCUMULATE, adds) output channel k of a group, at
// `at` of y, if it exists.
fn store_one(at: u32, k: u32, value: f32) {
    var v = value;
    if (DROP_STORES) {
        v = dropped(v, mask_key, at + mask_shift);
    }
    if (k < VALID) {
        if (RESIDUAL) {
            y[at] += v + y[at + (P.res_coff - P.out_coff) * P.h * P.w];
        } else if (FIRST_WRITES) {
            // A select, not a branch: the load is made either way and
            // whatever the destination held before the first launch
            // (even a NaN) is discarded.
            y[at] = v + select(0.0, y[at], P.chunk > 0u);
        } else if (ACCUMULATE) {
            y[at] += v;
        } else {
            y[at] = v;
        }
    }
}

// The four output channels 4b .. 4b + 3 of a group, channel k at base + k *
// stride.
fn store_block(base: u32, stride: u32, b: u32, v: vec4<f32>) {
    store_one(base + 4u * b * stride, 4u * b, v.x);
    store_one(base + (4u * b + 1u) * stride, 4u * b + 1u, v.y);
    store_one(base + (4u * b + 2u) * stride, 4u * b + 2u, v.z);
    store_one(base + (4u * b + 3u) * stride, 4u * b + 3u, v.w);
}

// Writes (or, with ACCUMULATE, adds) the output channels of table tbl's
// part of a group (those of the VALID that exist) into y, channel k at
// base + k * stride, block by named block: the same stores from an array
// indexed in loops made the whole 2 -> 32 channel 1x1 forward kernel 4.5x
// slower on lavapipe (89 against 20 ms, 2026-11-28).
fn blocked_store(base: u32, stride: u32, tbl: u32, c: Acc) {
    let b0 = tbl * COB;
    store_block(base, stride, b0, c.a0);
    if (COB > 1u) { store_block(base, stride, b0 + 1u, c.a1); }
    if (COB > 2u) { store_block(base, stride, b0 + 2u, c.a2); }
    if (COB > 3u) { store_block(base, stride, b0 + 3u, c.a3); }
    if (COB > 4u) { store_block(base, stride, b0 + 4u, c.a4); }
    if (COB > 5u) { store_block(base, stride, b0 + 5u, c.a5); }
    if (COB > 6u) { store_block(base, stride, b0 + 6u, c.a6); }
    if (COB > 7u) { store_block(base, stride, b0 + 7u, c.a7); }
}

// The biases of block b of this group (the last channel's repeated past the
// end).
fn bias_block(b: u32) -> vec4<f32> {
    let first = (P.group * COB + b) * 4u;
    let last = P.cout - 1u;
    return vec4<f32>(bias[min(first, last)], bias[min(first + 1u, last)], bias[min(first + 2u, last)],
                     bias[min(first + 3u, last)]);
}

// The biases of table tbl's part of the group, block by block.
fn biases(tbl: u32) -> Acc {
    let b0 = tbl * COB;
    var b: Acc;
    b.a0 = bias_block(b0);
    if (COB > 1u) { b.a1 = bias_block(b0 + 1u); }
    if (COB > 2u) { b.a2 = bias_block(b0 + 2u); }
    if (COB > 3u) { b.a3 = bias_block(b0 + 3u); }
    if (COB > 4u) { b.a4 = bias_block(b0 + 4u); }
    if (COB > 5u) { b.a5 = bias_block(b0 + 5u); }
    if (COB > 6u) { b.a6 = bias_block(b0 + 6u); }
    if (COB > 7u) { b.a7 = bias_block(b0 + 7u); }
    return b;
}

// Stores table tbl's channels of the chain's pixels that exist into y
// (blocked_store), each plus b.
fn trip_store(start: vec4<u32>, tbl: u32, c: Trip, b: Acc) {
    let hw = P.h * P.w;
    let s = chain_stride();
    let base = slice_index(start.x, P.group * COB * 4u, start.y * P.w + start.z, hw, P.out_ctotal, P.out_coff);
    blocked_store(base, hw, tbl, row_fma(c.p0, 1.0, b));
    if ((CHAIN > 1u) && (start.z + s < P.w)) { blocked_store(base + s, hw, tbl, row_fma(c.p1, 1.0, b)); }
    if ((CHAIN > 2u) && (start.z + 2u * s < P.w)) { blocked_store(base + 2u * s, hw, tbl, row_fma(c.p2, 1.0, b)); }
}

// Stores the chain's sums, if it exists, table t's plus b.t<t>.p0
// (trip_store, table by table).
fn chain_store(start: vec4<u32>, c: Chain, b: Chain) {
    if (start.w == 0u) {
        return;
    }
    trip_store(start, 0u, c.t0, b.t0.p0);
    if (ROWS > 1u) {
        let s = chain_stride();
        if (start.y + s < P.h) { trip_store(start + vec4<u32>(0u, s, 0u, 0u), 0u, c.t1, b.t0.p0); }
        if ((ROWS > 2u) && (start.y + 2u * s < P.h)) {
            trip_store(start + vec4<u32>(0u, 2u * s, 0u, 0u), 0u, c.t2, b.t0.p0);
        }
    }
    if (TABLES > 1u) { trip_store(start, 1u, c.t1, b.t1.p0); }
    if (TABLES > 2u) { trip_store(start, 2u, c.t2, b.t2.p0); }
    if (TABLES > 3u) { trip_store(start, 3u, c.t3, b.t3.p0); }
}

// blocked_forward: y = conv(x) + bias for one output-channel group, or with
// ACCUMULATE, y += conv(x) (the later parts of a concatenation).
@compute @workgroup_size(WG_CHAIN)
fn blocked_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(subgroup_invocation_id) lane: u32, // @subgroup
                   ) {
    let lane = 0u; // @plain
    let start = chain_start(group_index(wid, nwg) * WG_CHAIN + lid.x);
    // The biases of each table's channels (zero with ACCUMULATE).
    var b: Chain;
    if (!ACCUMULATE) {
        b.t0.p0 = biases(0u);
        if (TABLES > 1u) { b.t1.p0 = biases(1u); }
        if (TABLES > 2u) { b.t2.p0 = biases(2u); }
        if (TABLES > 3u) { b.t3.p0 = biases(3u); }
    }
    chain_store(start, blocked_sums(start, lane, DROP_LOADS), b);
}

// blocked_data: the input gradient (the convolution of dy, bound as `x`,
// with transposed packed weights) written into, or added to, `y`.
@compute @workgroup_size(WG_CHAIN)
fn blocked_data(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(subgroup_invocation_id) lane: u32, // @subgroup
                ) {
    let lane = 0u; // @plain
    let start = chain_start(group_index(wid, nwg) * WG_CHAIN + lid.x);
    if (DROP_STORES) {
        // y's sample start.x from channel 0 of its view, against the
        // concatenation's (the group's channels and the pixel are the same
        // offsets in both).
        let hw = P.h * P.w;
        mask_shift = slice_index(start.x, 0u, 0u, hw, P.w_ctotal, P.w_coff) -
                     slice_index(start.x, 0u, 0u, hw, P.out_ctotal, P.out_coff);
        mask_key = dropout_key(P.drop_seed, P.drop_step);
    }
    var zero: Chain;
    chain_store(start, blocked_sums(start, lane, false), zero);
}

// interleave_channels: x's view (P.cin channels) copied into y as
// X_INTERLEAVED reads it, an invocation per (sample, tile, channel);
// pixels past the plane are zero. A workgroup takes 32 tiles of 8
// channels, each subgroup one tile's 8 channels: its stores are one run of
// 256 bytes, and the workgroup reads 8 planes, 1 KiB of each (a workgroup
// per tile of 256 channels, its reads spread over 256 planes, took 40 ms
// for the head's input on lavapipe, against 27). With VEC4 (planes of a
// multiple of 8 pixels) a tile is two vec4 loads.
const INTERLEAVE_GROUP: u32 = 32u;

@compute @workgroup_size(WG)
fn interleave_channels(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                       @builtin(num_workgroups) nwg: vec3<u32>) {
    let hw = P.h * P.w;
    let tiles = (hw + INTERLEAVE - 1u) / INTERLEAVE;
    let channel_blocks = (P.cin + 7u) / 8u;
    let tile_groups = (tiles + INTERLEAVE_GROUP - 1u) / INTERLEAVE_GROUP;
    let g = group_index(wid, nwg);
    let c = (g % channel_blocks) * 8u + lid.x % 8u;
    let tile = (g / channel_blocks % tile_groups) * INTERLEAVE_GROUP + lid.x / 8u;
    let n = g / (channel_blocks * tile_groups);
    if (n >= P.n || c >= P.cin || tile >= tiles) {
        return;
    }
    let p = tile * INTERLEAVE;
    let at = slice_index(n, c, p, hw, P.in_ctotal, P.in_coff);
    let out = ((n * tiles + tile) * P.cin + c) * 2u;
    if (VEC4) {
        y4[out] = x4[at / 4u];
        y4[out + 1u] = x4[at / 4u + 1u];
    } else {
        var v: array<f32, INTERLEAVE>;
        for (var t = 0u; t < INTERLEAVE; t++) {
            v[t] = select(0.0, x[min(at + t, at + hw - 1u - p)], p + t < hw);
        }
        y4[out] = vec4<f32>(v[0], v[1], v[2], v[3]);
        y4[out + 1u] = vec4<f32>(v[4], v[5], v[6], v[7]);
    }
}

// The narrow kernels (narrow_forward, narrow_data; one group of at most 4
// computed channels, COB = 1): blocked_sums pays a table row and its
// broadcast per tap for only 4 multiply-adds, so here an invocation takes a
// run of 8 pixels of one row instead (Acc's eight blocks are its pixels) and
// each weight row, loaded once, feeds all eight.
const NARROW_RUN: u32 = 8u;

// Whether a run's pixels lie chain_stride() apart (ox, ox + d, ...), so
// that the three taps of a kernel row read 10 columns for the run, each
// loaded once (a tap's right column for one pixel is the centre of the
// next), instead of 24 for 8 neighbouring pixels; on lavapipe every load is
// a loop over the lanes. Neighbours stay where a large dilation would leave
// most strided runs' pixels outside a narrow image (`narrow_runs` in
// src/ops/conv.rs chooses).
override STRIDED: bool = true;

// The distance between a run's pixels.
fn run_stride() -> u32 {
    return select(1u, chain_stride(), STRIDED);
}

// Runs per image row: blocks of NARROW_RUN * q columns each holding
// min(q, w) runs, the last one no more than it has columns (as chains).
fn runs_per_row() -> u32 {
    let q = run_stride();
    return slots(P.w, NARROW_RUN * q, min(q, P.w));
}

// The first column of run j of a row.
fn run_column(j: u32) -> u32 {
    let q = run_stride();
    let span = min(q, P.w);
    return NARROW_RUN * q * (j / span) + j % span;
}

// Input value at column ix of the row starting at `row`, or 0 in the
// padding (`ok`: the row is inside the image).
fn narrow_value(row: u32, ok: bool, ix: i32) -> f32 {
    let last = i32(P.w) - 1;
    return select(0.0, x[row + u32(clamp(ix, 0, last))], ok && ix >= 0 && ix <= last);
}

// One tap for a run of neighbours: column ix0 + t for pixel t, weights w4.
fn narrow_tap(c: Acc, row: u32, ok: bool, ix0: i32, w4: vec4<f32>) -> Acc {
    let lo = vec4<f32>(narrow_value(row, ok, ix0), narrow_value(row, ok, ix0 + 1), narrow_value(row, ok, ix0 + 2),
                       narrow_value(row, ok, ix0 + 3));
    let hi = vec4<f32>(narrow_value(row, ok, ix0 + 4), narrow_value(row, ok, ix0 + 5),
                       narrow_value(row, ok, ix0 + 6), narrow_value(row, ok, ix0 + 7));
    return run_fma(c, lo, hi, w4);
}

// The 10 input values a strided run's kernel row reads: column ix0 + (j -
// 1) d in value j (lo: 0-3, hi: 4-7, tail: 8-9).
struct Ten {
    lo: vec4<f32>,
    hi: vec4<f32>,
    tail: vec2<f32>,
}

fn narrow_ten(row: u32, ok: bool, ix0: i32, d: i32) -> Ten {
    return Ten(vec4<f32>(narrow_value(row, ok, ix0 - d), narrow_value(row, ok, ix0),
                         narrow_value(row, ok, ix0 + d), narrow_value(row, ok, ix0 + 2 * d)),
               vec4<f32>(narrow_value(row, ok, ix0 + 3 * d), narrow_value(row, ok, ix0 + 4 * d),
                         narrow_value(row, ok, ix0 + 5 * d), narrow_value(row, ok, ix0 + 6 * d)),
               vec2<f32>(narrow_value(row, ok, ix0 + 7 * d), narrow_value(row, ok, ix0 + 8 * d)));
}

// A strided run's three taps of one kernel row, table rows from `wb`:
// pixel t takes values t, t + 1 and t + 2.
fn ten_taps(c: Acc, v: Ten, wb: u32) -> Acc {
    var r = run_fma(c, v.lo, v.hi, wpack[wb]);
    r = run_fma(r, vec4<f32>(v.lo.yzw, v.hi.x), vec4<f32>(v.hi.yzw, v.tail.x), wpack[wb + 1u]);
    return run_fma(r, vec4<f32>(v.lo.zw, v.hi.xy), vec4<f32>(v.hi.zw, v.tail), wpack[wb + 2u]);
}

// The run's 8 pixels' accumulators plus their values (lo: pixels 0-3, hi:
// 4-7) times one table row w4.
fn run_fma(c: Acc, lo: vec4<f32>, hi: vec4<f32>, w4: vec4<f32>) -> Acc {
    var r = c;
    r.a0 = fma(vec4<f32>(lo.x), w4, r.a0);
    r.a1 = fma(vec4<f32>(lo.y), w4, r.a1);
    r.a2 = fma(vec4<f32>(lo.z), w4, r.a2);
    r.a3 = fma(vec4<f32>(lo.w), w4, r.a3);
    r.a4 = fma(vec4<f32>(hi.x), w4, r.a4);
    r.a5 = fma(vec4<f32>(hi.y), w4, r.a5);
    r.a6 = fma(vec4<f32>(hi.z), w4, r.a6);
    r.a7 = fma(vec4<f32>(hi.w), w4, r.a7);
    return r;
}

// Run i of the image as (sample, row, first column), runs never crossing rows.
fn narrow_run(i: u32) -> vec3<u32> {
    let per_row = runs_per_row();
    let row = i / per_row;
    return vec3<u32>(row / P.h, row % P.h, run_column(i % per_row));
}

// The sums of the run's pixels over every input channel and tap (the packed
// table as blocked_sums reads it, COB = 1).
fn narrow_sums(run: vec3<u32>) -> Acc {
    let hw = P.h * P.w;
    let d = i32(P.dilation);
    let base = (run.x * P.in_ctotal + P.in_coff) * hw;
    let ix0 = i32(run.z);
    var c: Acc;
    for (var ci = 0u; ci < P.cin; ci++) {
        let plane = base + ci * hw;
        let wb = ci * K * K;
        if (K == 1u) {
            // (Nested ifs: the specializer prunes an `if` on one constant.)
            if (VEC4) {
                let at = (plane + run.y * P.w + run.z) / 4u;
                c = run_fma(c, x4[at], x4[at + 1u], wpack[wb]);
            } else {
                c = narrow_tap(c, plane + run.y * P.w, true, ix0, wpack[wb]);
            }
        } else {
            for (var ky = 0u; ky < 3u; ky++) {
                let iy = i32(run.y) + (i32(ky) - 1) * d;
                let ok = iy >= 0 && iy < i32(P.h);
                let row = plane + u32(clamp(iy, 0, i32(P.h) - 1)) * P.w;
                if (STRIDED) {
                    c = ten_taps(c, narrow_ten(row, ok, ix0, d), wb + 3u * ky);
                } else {
                    c = narrow_tap(c, row, ok, ix0 - d, wpack[wb + 3u * ky]);
                    c = narrow_tap(c, row, ok, ix0, wpack[wb + 3u * ky + 1u]);
                    c = narrow_tap(c, row, ok, ix0 + d, wpack[wb + 3u * ky + 2u]);
                }
            }
        }
    }
    return c;
}

// Stores the run's pixels (those in the row), each with `b` added.
fn narrow_store(run: vec3<u32>, c: Acc, b: vec4<f32>) {
    let hw = P.h * P.w;
    let q = run_stride();
    let at = slice_index(run.x, 0u, run.y * P.w + run.z, hw, P.out_ctotal, P.out_coff);
    if (VEC4) {
        // Channel k's 8 pixels as two vec4s (the run is whole, q = 1):
        // pixel m's channels are c.a<m> + b.
        let lo = mat4x4<f32>(c.a0 + b, c.a1 + b, c.a2 + b, c.a3 + b);
        let hi = mat4x4<f32>(c.a4 + b, c.a5 + b, c.a6 + b, c.a7 + b);
        let lt = transpose(lo);
        let ht = transpose(hi);
        store_pixels(at, 0u, lt[0], ht[0]);
        store_pixels(at + hw, 1u, lt[1], ht[1]);
        store_pixels(at + 2u * hw, 2u, lt[2], ht[2]);
        store_pixels(at + 3u * hw, 3u, lt[3], ht[3]);
    } else {
        let len = min(NARROW_RUN, (P.w - run.z + q - 1u) / q);
        store_block(at, hw, 0u, c.a0 + b);
        if (len > 1u) { store_block(at + q, hw, 0u, c.a1 + b); }
        if (len > 2u) { store_block(at + 2u * q, hw, 0u, c.a2 + b); }
        if (len > 3u) { store_block(at + 3u * q, hw, 0u, c.a3 + b); }
        if (len > 4u) { store_block(at + 4u * q, hw, 0u, c.a4 + b); }
        if (len > 5u) { store_block(at + 5u * q, hw, 0u, c.a5 + b); }
        if (len > 6u) { store_block(at + 6u * q, hw, 0u, c.a6 + b); }
        if (len > 7u) { store_block(at + 7u * q, hw, 0u, c.a7 + b); }
    }
}

// narrow_store's 8 pixels of output channel k from element `at` of y (a
// multiple of 4), as two vec4s, if the channel exists; with ACCUMULATE
// added to what is there.
fn store_pixels(at: u32, k: u32, lo: vec4<f32>, hi: vec4<f32>) {
    if (k < VALID) {
        if (ACCUMULATE) {
            y4[at / 4u] += lo;
            y4[at / 4u + 1u] += hi;
        } else {
            y4[at / 4u] = lo;
            y4[at / 4u + 1u] = hi;
        }
    }
}

// Runs in the image (the narrow kernels' grid).
fn narrow_runs() -> u32 {
    return P.n * P.h * runs_per_row();
}

// narrow_forward: blocked_forward for COB = 1, by runs of pixels.
@compute @workgroup_size(WG)
fn narrow_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    let run = narrow_run(min(i, narrow_runs() - 1u));
    let c = narrow_sums(run);
    if (i >= narrow_runs()) {
        return;
    }
    narrow_store(run, c, select(bias_block(0u), vec4<f32>(0.0), ACCUMULATE));
}

// narrow_data: blocked_data for COB = 1, by runs of pixels.
@compute @workgroup_size(WG)
fn narrow_data(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    let run = narrow_run(min(i, narrow_runs() - 1u));
    let c = narrow_sums(run);
    if (i >= narrow_runs()) {
        return;
    }
    narrow_store(run, c, vec4<f32>(0.0));
}

// The windowed kernels (window_forward, window_data): the narrow kernels'
// sums with every input value read through a uniform window instead of the
// storage buffer. llvmpipe loads a storage value lane by lane but gathers a
// uniform one, 7-8x cheaper (lavapipe, 2026-11-28, docs/KERNELS.md), and the
// narrow kernels are nothing but loads (27 per output pixel for 3 input
// channels). A launch covers one sample and a band of output rows whose
// inputs fit 64 KiB windows, one per (input channel, kernel row); WIN_CIN
// (at most 4) input channels, K = 3.
override WIN_CIN: u32 = 1u;

// Element i of window k (a constant at every call, so the switch folds
// away).
fn window_load(k: u32, i: u32) -> f32 {
    let q = i >> 2u;
    let e = i & 3u;
    switch k {
        case 0u: { return win0[q][e]; }
        case 1u: { return win1[q][e]; }
        case 2u: { return win2[q][e]; }
        case 3u: { return win3[q][e]; }
        case 4u: { return win4[q][e]; }
        case 5u: { return win5[q][e]; }
        case 6u: { return win6[q][e]; }
        case 7u: { return win7[q][e]; }
        case 8u: { return win8[q][e]; }
        case 9u: { return win9[q][e]; }
        case 10u: { return win10[q][e]; }
        default: { return win11[q][e]; }
    }
}

// Input at column ix of the row starting at element `row` of window k, 0
// in the padding (`row_ok`: the row is in the image).
fn window_value(k: u32, row: i32, row_ok: bool, ix: i32) -> f32 {
    let ok = row_ok && ix >= 0 && ix < i32(P.w);
    return select(0.0, window_load(k, u32(max(row + ix, 0))), ok);
}

// narrow_tap through window k: column ix0 + t for pixel t.
fn window_tap(c: Acc, k: u32, row: i32, row_ok: bool, ix0: i32, w4: vec4<f32>) -> Acc {
    let lo = vec4<f32>(window_value(k, row, row_ok, ix0), window_value(k, row, row_ok, ix0 + 1),
                       window_value(k, row, row_ok, ix0 + 2), window_value(k, row, row_ok, ix0 + 3));
    let hi = vec4<f32>(window_value(k, row, row_ok, ix0 + 4), window_value(k, row, row_ok, ix0 + 5),
                       window_value(k, row, row_ok, ix0 + 6), window_value(k, row, row_ok, ix0 + 7));
    return run_fma(c, lo, hi, w4);
}

// narrow_ten through window k.
fn window_ten(k: u32, row: i32, row_ok: bool, ix0: i32, d: i32) -> Ten {
    return Ten(vec4<f32>(window_value(k, row, row_ok, ix0 - d), window_value(k, row, row_ok, ix0),
                         window_value(k, row, row_ok, ix0 + d), window_value(k, row, row_ok, ix0 + 2 * d)),
               vec4<f32>(window_value(k, row, row_ok, ix0 + 3 * d), window_value(k, row, row_ok, ix0 + 4 * d),
                         window_value(k, row, row_ok, ix0 + 5 * d), window_value(k, row, row_ok, ix0 + 6 * d)),
               vec2<f32>(window_value(k, row, row_ok, ix0 + 7 * d), window_value(k, row, row_ok, ix0 + 8 * d)));
}

// The 3 taps of kernel row ky (window k = ci * 3 + ky) for the run at
// (iy, ix0): the row's validity and start worked out once; table rows
// from 3 * k.
fn window_row(c: Acc, k: u32, iy: i32, ix0: i32) -> Acc {
    let d = i32(P.dilation);
    let row_ok = iy >= 0 && iy < i32(P.h);
    let row = P.win[k / 4u][k % 4u] + iy * i32(P.w);
    if (STRIDED) {
        return ten_taps(c, window_ten(k, row, row_ok, ix0, d), 3u * k);
    }
    var r = window_tap(c, k, row, row_ok, ix0 - d, wpack[3u * k]);
    r = window_tap(r, k, row, row_ok, ix0, wpack[3u * k + 1u]);
    return window_tap(r, k, row, row_ok, ix0 + d, wpack[3u * k + 2u]);
}

// The 9 taps of input channel ci (a constant) for the run at (oy, ix0),
// spelled out so every window index is a constant.
fn window_channel(c: Acc, ci: u32, oy: i32, ix0: i32) -> Acc {
    let d = i32(P.dilation);
    var r = window_row(c, ci * 3u, oy - d, ix0);
    r = window_row(r, ci * 3u + 1u, oy, ix0);
    return window_row(r, ci * 3u + 2u, oy + d, ix0);
}

// narrow_sums through the windows, the channels spelled out.
fn window_sums(run: vec3<u32>) -> Acc {
    let oy = i32(run.y);
    let ix0 = i32(run.z);
    var c: Acc;
    c = window_channel(c, 0u, oy, ix0);
    if (WIN_CIN > 1u) { c = window_channel(c, 1u, oy, ix0); }
    if (WIN_CIN > 2u) { c = window_channel(c, 2u, oy, ix0); }
    if (WIN_CIN > 3u) { c = window_channel(c, 3u, oy, ix0); }
    return c;
}

// Runs of this launch's band, and run i of it.
fn window_runs() -> u32 {
    return P.band_rows * runs_per_row();
}

fn window_run(i: u32) -> vec3<u32> {
    let per_row = runs_per_row();
    return vec3<u32>(P.band_n, P.band_y0 + i / per_row, run_column(i % per_row));
}

// window_forward: narrow_forward for one band of one sample.
@compute @workgroup_size(WG)
fn window_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    let run = window_run(min(i, window_runs() - 1u));
    let c = window_sums(run);
    if (i >= window_runs()) {
        return;
    }
    narrow_store(run, c, select(bias_block(0u), vec4<f32>(0.0), ACCUMULATE));
}

// window_data: narrow_data for one band of one sample.
@compute @workgroup_size(WG)
fn window_data(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    let run = window_run(min(i, window_runs() - 1u));
    let c = window_sums(run);
    if (i >= window_runs()) {
        return;
    }
    narrow_store(run, c, vec4<f32>(0.0));
}

// narrow_weight: the weight gradient for at most 4 output channels
// (COB = 1) without pack_dy's tables: an invocation takes a block of
// (ci, tap) rows (K = 3: the taps of NCB input channels; K = 1: 9 input
// channels) and one of SPLIT parts of the work, 36 multiply-adds per pixel
// for each 9 rows. K = 1: the parts split the pixels, walked row by row,
// loading dy's channels once and the 9 input values per pixel. K = 3: the
// parts split the chains of a row (pixels r, r + d, r + 2d, ... for each
// r < d), walked along the chain so that the input value a tap row takes
// at the right of one pixel is the centre of the next and the left of the
// one after: 3 input loads per pixel instead of 9 (llvmpipe loads storage
// lane by lane; the weight gradient of a 3 -> 3 layer, batch 2 at
// 256x256, went from 26.8 to 16-18 ms on lavapipe, 2026-11-28). With
// NCB > 1 the walk takes that many input channels side by side, loading
// dy's channels once a pixel for all of them instead of once for each (a
// walk is nothing but loads on lavapipe). The parts' sums go to `y` bound
// to a partials buffer [part][VALID channels][ci, tap], which
// reduce_partials adds in order.
override NCB: u32 = 1u;

@compute @workgroup_size(WG)
fn narrow_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    let kk = K * K;
    let ckk = P.cin * kk;
    let blocks = select((ckk + 8u) / 9u, (P.cin + NCB - 1u) / NCB, K == 3u);
    let b = i % blocks;
    let part = min(i / blocks, SPLIT - 1u);
    let hw = P.h * P.w;
    let d = i32(P.dilation);
    let last_c = P.cin - 1u;
    // dy's channels' offsets (those past VALID, Cout here, not loaded).
    let o = vec4<u32>(0u, 1u, 2u, 3u) * hw;
    // Input channel j's nine rows of sums in nj (K = 1: only n0).
    var n0: Nine;
    var n1: Nine;
    var n2: Nine;
    if (K == 1u) {
        if (VEC4) {
            // Four neighbouring pixels (a vec4) a step; the planes hold
            // whole vec4s, so none straddles two.
            let quads = P.n * hw / 4u;
            let h4 = hw / 4u;
            let per = (quads + SPLIT - 1u) / SPLIT;
            let ci = 9u * b;
            for (var q = min(part * per, quads); q < min((part + 1u) * per, quads); q++) {
                let n = q * 4u / hw;
                let p = q * 4u % hw;
                let dyb = slice_index(n, 0u, p, hw, P.out_ctotal, P.out_coff) / 4u;
                let xb = slice_index(n, 0u, p, hw, P.in_ctotal, P.in_coff) / 4u;
                // dy's channels k at the four pixels (zero past VALID).
                let d0 = dy4[dyb + o.x / 4u];
                var d1 = vec4<f32>(0.0);
                var d2 = vec4<f32>(0.0);
                var d3 = vec4<f32>(0.0);
                if (VALID > 1u) { d1 = dy4[dyb + o.y / 4u]; }
                if (VALID > 2u) { d2 = dy4[dyb + o.z / 4u]; }
                if (VALID > 3u) { d3 = dy4[dyb + o.w / 4u]; }
                n0.a.a0 = quad_fma(n0.a.a0, x4[xb + min(ci, last_c) * h4], d0, d1, d2, d3);
                n0.a.a1 = quad_fma(n0.a.a1, x4[xb + min(ci + 1u, last_c) * h4], d0, d1, d2, d3);
                n0.a.a2 = quad_fma(n0.a.a2, x4[xb + min(ci + 2u, last_c) * h4], d0, d1, d2, d3);
                n0.a.a3 = quad_fma(n0.a.a3, x4[xb + min(ci + 3u, last_c) * h4], d0, d1, d2, d3);
                n0.a.a4 = quad_fma(n0.a.a4, x4[xb + min(ci + 4u, last_c) * h4], d0, d1, d2, d3);
                n0.a.a5 = quad_fma(n0.a.a5, x4[xb + min(ci + 5u, last_c) * h4], d0, d1, d2, d3);
                n0.a.a6 = quad_fma(n0.a.a6, x4[xb + min(ci + 6u, last_c) * h4], d0, d1, d2, d3);
                n0.a.a7 = quad_fma(n0.a.a7, x4[xb + min(ci + 7u, last_c) * h4], d0, d1, d2, d3);
                n0.e = quad_fma(n0.e, x4[xb + min(ci + 8u, last_c) * h4], d0, d1, d2, d3);
            }
        } else {
            let pixels = P.n * hw;
            let per = (pixels + SPLIT - 1u) / SPLIT;
            let q1 = min((part + 1u) * per, pixels);
            var q = min(part * per, pixels);
            while (q < q1) {
                let n = q / hw;
                let p = q % hw;
                let py = p / P.w;
                let px0 = p % P.w;
                let len = min(P.w - px0, q1 - q);
                let dyb = slice_index(n, 0u, py * P.w, hw, P.out_ctotal, P.out_coff);
                // Input channels 9 b .. 9 b + 8 (the last repeated past Cin,
                // their products stored nowhere).
                let xb = slice_index(n, 0u, py * P.w, hw, P.in_ctotal, P.in_coff);
                let ci = 9u * b;
                for (var t = px0; t < px0 + len; t++) {
                    let g = dy_channels(dyb + t, o);
                    let at = xb + t;
                    n0.a.a0 = fma(vec4<f32>(x[at + min(ci, last_c) * hw]), g, n0.a.a0);
                    n0.a.a1 = fma(vec4<f32>(x[at + min(ci + 1u, last_c) * hw]), g, n0.a.a1);
                    n0.a.a2 = fma(vec4<f32>(x[at + min(ci + 2u, last_c) * hw]), g, n0.a.a2);
                    n0.a.a3 = fma(vec4<f32>(x[at + min(ci + 3u, last_c) * hw]), g, n0.a.a3);
                    n0.a.a4 = fma(vec4<f32>(x[at + min(ci + 4u, last_c) * hw]), g, n0.a.a4);
                    n0.a.a5 = fma(vec4<f32>(x[at + min(ci + 5u, last_c) * hw]), g, n0.a.a5);
                    n0.a.a6 = fma(vec4<f32>(x[at + min(ci + 6u, last_c) * hw]), g, n0.a.a6);
                    n0.a.a7 = fma(vec4<f32>(x[at + min(ci + 7u, last_c) * hw]), g, n0.a.a7);
                    n0.e = fma(vec4<f32>(x[at + min(ci + 8u, last_c) * hw]), g, n0.e);
                }
                q += len;
            }
        }
    } else {
        // Chains of input channels NCB b .. NCB b + NCB - 1: `m` per row
        // (one per residue of the column modulo d, at most one per column).
        let m = min(P.dilation, P.w);
        let chains = P.n * P.h * m;
        let per = (chains + SPLIT - 1u) / SPLIT;
        let ch1 = min((part + 1u) * per, chains);
        let c0 = NCB * b;
        for (var ch = min(part * per, chains); ch < ch1; ch++) {
            let n = ch / (P.h * m);
            let py = ch % (P.h * m) / m;
            let r = ch % m;
            let dyb = slice_index(n, 0u, py * P.w, hw, P.out_ctotal, P.out_coff);
            let iy = vec3<i32>(i32(py) - d, i32(py), i32(py) + d);
            let ok = iy >= vec3<i32>(0) & iy < vec3<i32>(i32(P.h));
            let rows = vec3<u32>(clamp(iy, vec3<i32>(0), vec3<i32>(i32(P.h) - 1))) * P.w;
            // Each channel's walk (the channels past Cin repeat the last,
            // their sums stored nowhere).
            var w0 = channel_walk(n, min(c0, last_c), rows, ok, r);
            var w1 = w0;
            var w2 = w0;
            if (NCB > 1u) { w1 = channel_walk(n, min(c0 + 1u, last_c), rows, ok, r); }
            if (NCB > 2u) { w2 = channel_walk(n, min(c0 + 2u, last_c), rows, ok, r); }
            for (var px = r; px < P.w; px += P.dilation) {
                // dy's channels at the pixel, loaded once for all NCB.
                let g = dy_channels(dyb + px, o);
                let ix = i32(px) + d;
                w0 = walk_step(w0, ok, ix);
                n0 = nine_fma(n0, w0, g);
                if (NCB > 1u) {
                    w1 = walk_step(w1, ok, ix);
                    n1 = nine_fma(n1, w1, g);
                }
                if (NCB > 2u) {
                    w2 = walk_step(w2, ok, ix);
                    n2 = nine_fma(n2, w2, g);
                }
            }
        }
    }
    if (i >= blocks * SPLIT) {
        return;
    }
    // Row r of every channel at (part * VALID + k) * ckk + r, from 9 NCB b:
    // K = 1 (NCB 1), rows 9 b .. 9 b + 8 (input channels); K = 3, the nine
    // taps of each of input channels NCB b .. NCB b + NCB - 1.
    let base = part * VALID * ckk;
    let r0 = 9u * NCB * b;
    nine_store(base, r0, ckk, n0);
    if (NCB > 1u) { nine_store(base, r0 + 9u, ckk, n1); }
    if (NCB > 2u) { nine_store(base, r0 + 18u, ckk, n2); }
}

// Nine rows of narrow_weight's sums, four output channels each.
struct Nine {
    a: Acc,
    e: vec4<f32>,
}

// Stores the rows r0 .. r0 + 8 of n that exist (r < ckk): row r of output
// channel k at base + k * ckk + r.
fn nine_store(base: u32, r0: u32, ckk: u32, n: Nine) {
    if (r0 < ckk) { store_block(base + r0, ckk, 0u, n.a.a0); }
    if (r0 + 1u < ckk) { store_block(base + r0 + 1u, ckk, 0u, n.a.a1); }
    if (r0 + 2u < ckk) { store_block(base + r0 + 2u, ckk, 0u, n.a.a2); }
    if (r0 + 3u < ckk) { store_block(base + r0 + 3u, ckk, 0u, n.a.a3); }
    if (r0 + 4u < ckk) { store_block(base + r0 + 4u, ckk, 0u, n.a.a4); }
    if (r0 + 5u < ckk) { store_block(base + r0 + 5u, ckk, 0u, n.a.a5); }
    if (r0 + 6u < ckk) { store_block(base + r0 + 6u, ckk, 0u, n.a.a6); }
    if (r0 + 7u < ckk) { store_block(base + r0 + 7u, ckk, 0u, n.a.a7); }
    if (r0 + 8u < ckk) { store_block(base + r0 + 8u, ckk, 0u, n.e); }
}

// One input channel's walk along a chain (K = 3): its three tap rows
// (`row`: each row's first element) and the values left of, at and right
// of the current pixel in each.
struct TapWalk {
    row: vec3<u32>,
    left: vec3<f32>,
    centre: vec3<f32>,
    right: vec3<f32>,
}

// The walk of the tap rows starting at `row` (`ok`: inside the image)
// before a chain's first pixel, column r (< d): the left of it padding,
// the value at r to be its centre after the first walk_step.
fn walk_start(row: vec3<u32>, ok: vec3<bool>, r: u32) -> TapWalk {
    let v = vec3<f32>(narrow_value(row.x, ok.x, i32(r)), narrow_value(row.y, ok.y, i32(r)),
                      narrow_value(row.z, ok.z, i32(r)));
    return TapWalk(row, vec3<f32>(0.0), vec3<f32>(0.0), v);
}

// walk_start for input channel c of sample n, its tap rows at `rows`
// (offsets within the plane).
fn channel_walk(n: u32, c: u32, rows: vec3<u32>, ok: vec3<bool>, r: u32) -> TapWalk {
    let plane = slice_index(n, c, 0u, P.h * P.w, P.in_ctotal, P.in_coff);
    return walk_start(rows + vec3<u32>(plane), ok, r);
}

// One pixel further: the centre becomes the left, the right the centre,
// and column ix the right (the only load).
fn walk_step(w: TapWalk, ok: vec3<bool>, ix: i32) -> TapWalk {
    let right = vec3<f32>(narrow_value(w.row.x, ok.x, ix), narrow_value(w.row.y, ok.y, ix),
                          narrow_value(w.row.z, ok.z, ix));
    return TapWalk(w.row, w.centre, w.right, right);
}

// n plus the walk's nine tap values (tap ky * 3 + kx: row ky, left / centre
// / right) times dy's channels g.
fn nine_fma(n: Nine, w: TapWalk, g: vec4<f32>) -> Nine {
    var r = n;
    r.a.a0 = fma(vec4<f32>(w.left.x), g, r.a.a0);
    r.a.a1 = fma(vec4<f32>(w.centre.x), g, r.a.a1);
    r.a.a2 = fma(vec4<f32>(w.right.x), g, r.a.a2);
    r.a.a3 = fma(vec4<f32>(w.left.y), g, r.a.a3);
    r.a.a4 = fma(vec4<f32>(w.centre.y), g, r.a.a4);
    r.a.a5 = fma(vec4<f32>(w.right.y), g, r.a.a5);
    r.a.a6 = fma(vec4<f32>(w.left.z), g, r.a.a6);
    r.a.a7 = fma(vec4<f32>(w.centre.z), g, r.a.a7);
    r.e = fma(vec4<f32>(w.right.z), g, r.e);
    return r;
}

// narrow_weight's dy at element `at` of channels 0-3 (channel k at at +
// o[k]): only the VALID that exist are loaded (seo2018's layers have 3,
// its output 1), the others zero.
fn dy_channels(at: u32, o: vec4<u32>) -> vec4<f32> {
    var g = vec4<f32>(dy[at + o.x], 0.0, 0.0, 0.0);
    if (VALID > 1u) { g.y = dy[at + o.y]; }
    if (VALID > 2u) { g.z = dy[at + o.z]; }
    if (VALID > 3u) { g.w = dy[at + o.w]; }
    return g;
}

// a plus the products of one input channel's values v at four pixels with
// dy's four channels there (d<k>: channel k's four pixels): pixel j adds
// v[j] times (d0[j], d1[j], d2[j], d3[j]).
fn quad_fma(a: vec4<f32>, v: vec4<f32>, d0: vec4<f32>, d1: vec4<f32>, d2: vec4<f32>, d3: vec4<f32>) -> vec4<f32> {
    var s = fma(vec4<f32>(v.x), vec4<f32>(d0.x, d1.x, d2.x, d3.x), a);
    s = fma(vec4<f32>(v.y), vec4<f32>(d0.y, d1.y, d2.y, d3.y), s);
    s = fma(vec4<f32>(v.z), vec4<f32>(d0.z, d1.z, d2.z, d3.z), s);
    return fma(vec4<f32>(v.w), vec4<f32>(d0.w, d1.w, d2.w, d3.w), s);
}

// pack_dy: chunks P.chunk, P.chunk + 1, ... of dy for output-channel group
// P.group, as many as `wpack_out` holds tables of PACK_LEN vec4s (one
// launch for several chunks: each launch costs about as much as packing a
// chunk on lavapipe), each as blocked_weight reads it through a window:
// [pixel][block] vec4s of 4 output channels, zero past the last pixel or
// channel. CPU adapters pack through windows instead (pack_dy_windows,
// below) wherever dy's buffer holds one.
@compute @workgroup_size(WG)
fn pack_dy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    let within = i % PACK_LEN;
    if (i >= arrayLength(&wpack_out) || within >= CHUNK * COB) {
        return;
    }
    let b = within % COB;
    let q = (P.chunk + i / PACK_LEN) * CHUNK + within / COB;
    let hw = P.h * P.w;
    let qc = min(q, P.n * hw - 1u);
    let base = slice_index(qc / hw, 0u, qc % hw, hw, P.out_ctotal, P.out_coff);
    // The block's four channels, clamped into range and zeroed past the
    // end (selects, not branches: llvmpipe runs both sides of a branch).
    let co = block_channels(b);
    let cc = min(co, vec4<u32>(P.cout - 1u)) * hw + vec4<u32>(base);
    let v = vec4<f32>(dy[cc.x], dy[cc.y], dy[cc.z], dy[cc.w]);
    wpack_out[i] = select(vec4<f32>(0.0), v, co < vec4<u32>(P.cout) & vec4<bool>(q < P.n * hw));
}

// pack_dy_windows: pack_dy with dy read through uniform windows, which
// llvmpipe gathers instead of loading lane by lane (lungnet step on
// lavapipe, 2026-11-29: the packing 92-124 -> 49-51 ms). A launch packs
// three blocks (12 channels) of group P.group, from block P.pack.z, for
// P.pack.y pixels of one sample, from pixel P.pack.x of the batch of chunks
// from chunk P.chunk that wpack_out holds; window 4j + m holds channel
// 4 (P.pack.z + j) + m of the sample's plane, the launch's first pixel at
// its element P.win[j][m] (blocks past COB are not packed; their windows
// repeat a channel, unread).
@compute @workgroup_size(WG)
fn pack_dy_windows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    if (i >= P.pack.y) {
        return;
    }
    window_block(0u, i);
    window_block(1u, i);
    window_block(2u, i);
}

// Block P.pack.z + j of pixel i of a pack_dy_windows launch, from windows
// 4j .. 4j + 3, zero past the last channel.
fn window_block(j: u32, i: u32) {
    let b = P.pack.z + j;
    if (b >= COB) {
        return;
    }
    let at = vec4<u32>(P.win[j]) + vec4<u32>(i);
    let v = vec4<f32>(window_load(4u * j, at.x), window_load(4u * j + 1u, at.y), window_load(4u * j + 2u, at.z),
                      window_load(4u * j + 3u, at.w));
    let q = P.pack.x + i;
    let ok = block_channels(b) < vec4<u32>(P.cout);
    wpack_out[q / CHUNK * PACK_LEN + q % CHUNK * COB + b] = select(vec4<f32>(0.0), v, ok);
}

// The four output channels of block b of group P.group (dy's table layout).
fn block_channels(b: u32) -> vec4<u32> {
    return vec4<u32>((P.group * COB + b) * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
}

// blocked_weight's stores of table tbl's channels for its trio's rows
// (those of the `rows` left), row m at base + m.
fn trio_store(base: u32, stride: u32, rows: u32, tbl: u32, c: Trip) {
    blocked_store(base, stride, tbl, c.p0);
    if (rows > 1u) { blocked_store(base + 1u, stride, tbl, c.p1); }
    if (rows > 2u) { blocked_store(base + 2u, stride, tbl, c.p2); }
}

// blocked_weight: one invocation per trio of (ci, tap) rows adds, for the
// TABLES blocks of 4 * COB output channels of its group, the products over
// CHUNKS chunks of pixels (weight_walk): dy from uniform tables (shared addresses), x the
// per-invocation loads. A trio is the three taps of one kernel row (K = 3)
// or three input channels (K = 1), its sums the three accumulators of a
// Chain (CHAIN = 3), so that each table row, fetched and broadcast once,
// feeds three rows. K = 3 walks each row of pixels along its chains (r,
// r + d, r + 2d, ... for each r < d), carrying the input values: the one
// the right tap reads at one pixel is the centre at the next and the left
// at the one after, 1 load per pixel instead of 3 (as narrow_weight). On
// lavapipe the weight gradient of a 32 -> 32 3x3 layer at 256x256,
// dilation 13, with its packing went from 255-263 to 142-161 ms
// (2026-11-28, docs/KERNELS.md). dw is bound as `y` (so it shares
// blocked_store). Chunk 0 overwrites dw, later chunks add (FIRST_WRITES):
// the chunks' dispatches run in order, so the sum is deterministic without
// atomics.
// With SPLIT > 1 (few input channels: the trios would leave threads idle)
// SPLIT invocations share a trio, each summing an equal part of each chunk
// into `y` bound to a partials buffer [part][VALID channels][ci, tap]
// (chunk 0 overwriting it, later chunks adding); reduce_partials then adds
// the parts in order, once.
@compute @workgroup_size(WG_WEIGHT)
fn blocked_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(subgroup_invocation_id) lane: u32, // @subgroup
                  ) {
    let lane = 0u; // @plain
    let kk = K * K;
    let ckk = P.cin * kk;
    let trios = select((P.cin + 2u) / 3u, P.cin * 3u, K == 3u);
    // Each part has whole workgroups: a subgroup's lanes must walk the same
    // pixels, as they share table rows through subgroup broadcasts.
    let groups_per_part = (trios + WG_WEIGHT - 1u) / WG_WEIGHT;
    let g = group_index(wid, nwg);
    let i = (g % groups_per_part) * WG_WEIGHT + lid.x;
    let w = WeightWalk(min(g / groups_per_part, SPLIT - 1u), min(i, trios - 1u), lane);
    var c: Chain;
    c = weight_walk(c, w, 0u);
    if (CHUNKS > 1u) { c = weight_walk(c, w, 1u); }
    if (CHUNKS > 2u) { c = weight_walk(c, w, 2u); }
    if (CHUNKS > 3u) { c = weight_walk(c, w, 3u); }
    if (CHUNKS > 4u) { c = weight_walk(c, w, 4u); }
    if (CHUNKS > 5u) { c = weight_walk(c, w, 5u); }
    if (CHUNKS > 6u) { c = weight_walk(c, w, 6u); }
    if (CHUNKS > 7u) { c = weight_walk(c, w, 7u); }
    if (CHUNKS > 8u) { c = weight_walk(c, w, 8u); }
    if (CHUNKS > 9u) { c = weight_walk(c, w, 9u); }
    if (CHUNKS > 10u) { c = weight_walk(c, w, 10u); }
    if (CHUNKS > 11u) { c = weight_walk(c, w, 11u); }
    if (CHUNKS > 12u) { c = weight_walk(c, w, 12u); }
    if (CHUNKS > 13u) { c = weight_walk(c, w, 13u); }
    if (i >= trios) {
        return;
    }
    let r0 = 3u * i;
    var base = (P.group * COB * 4u * P.w_ctotal + P.w_coff) * kk + r0;
    var stride = P.w_ctotal * kk;
    if (SPLIT > 1u) {
        base = w.part * VALID * ckk + r0;
        stride = ckk;
    }
    let rows = ckk - r0;
    trio_store(base, stride, rows, 0u, c.t0);
    if (TABLES > 1u) { trio_store(base, stride, rows, 1u, c.t1); }
    if (TABLES > 2u) { trio_store(base, stride, rows, 2u, c.t2); }
    if (TABLES > 3u) { trio_store(base, stride, rows, 3u, c.t3); }
}

// An invocation of blocked_weight: its part of the chunk's pixels, its
// trio (the last one for the spare lanes of the last workgroup, which walk
// its pixels and store nothing) and subgroup lane.
struct WeightWalk {
    part: u32,
    trio: u32,
    lane: u32,
}

// blocked_weight's sums over its part of chunk P.chunk + j, added to c:
// table j * TABLES + t holds block t's part of that chunk, added into
// c.t<t>, so a launch takes CHUNKS chunks of TABLES blocks (a launch's own
// cost, about 0.15 ms on lavapipe, was a third of a 32 -> 32 layer's
// weight gradient, 2026-11-28; 14 chunks a launch instead of 4 took it
// from 32-33 to 31 ms, 2026-11-29).
fn weight_walk(c0: Chain, w: WeightWalk, j: u32) -> Chain {
    var c = c0;
    let ic = w.trio;
    // The trio's first (ci, tap) row, and (K = 3) its kernel row's offset.
    let r0 = 3u * ic;
    let dy_off = select(0, (i32(ic % 3u) - 1) * i32(P.dilation), K == 3u);
    let hw = P.h * P.w;
    let pixels = P.n * hw;
    let q0 = (P.chunk + j) * CHUNK;
    // A launch's last chunks may lie past the end: nothing to walk.
    let count = select(0u, min(CHUNK, pixels - q0), q0 < pixels);
    let share = (count + SPLIT - 1u) / SPLIT;
    let q1 = q0 + min((w.part + 1u) * share, count);
    let last = i32(P.w) - 1;
    let d = P.dilation;
    // K = 1: the trio's input channels (the last repeated past Cin; those
    // rows are not stored).
    let chans = min(vec3<u32>(r0, r0 + 1u, r0 + 2u), vec3<u32>(P.cin - 1u));
    let ch = chans * hw;
    let key = dropout_key(P.drop_seed, P.drop_step);
    // Row by row: the divisions that find a row, its validity and its base
    // are paid once per row, not per pixel (llvmpipe runs a division as
    // eight scalar ones).
    var q = q0 + min(w.part * share, count);
    while (q < q1) {
        let p = q % hw;
        let px0 = p % P.w;
        let len = min(P.w - px0, q1 - q);
        let at = q - q0 - px0;
        if (K == 1u) {
            let row = slice_index(q / hw, 0u, p - px0, hw, P.in_ctotal, P.in_coff);
            let mask_row = slice_index(q / hw, 0u, p - px0, hw, P.w_ctotal, P.w_coff);
            let a0 = affine_row(q / hw, chans.x);
            let a1 = affine_row(q / hw, chans.y);
            let a2 = affine_row(q / hw, chans.z);
            for (var ox = px0; ox < px0 + len; ox++) {
                var v = vec3<f32>(block_input(x[row + ch.x + ox], a0), block_input(x[row + ch.y + ox], a1),
                                  block_input(x[row + ch.z + ox], a2));
                if (DROP_LOADS) {
                    let m = vec3<u32>(mask_row + ox) + ch;
                    v = vec3<f32>(dropped(v.x, key, m.x), dropped(v.y, key, m.y), dropped(v.z, key, m.z));
                }
                c = chain_step(c, v, (at + ox) * COB, w.lane, j * TABLES);
            }
        } else {
            let iy = i32(p / P.w) + dy_off;
            let row_ok = iy >= 0 && iy < i32(P.h);
            let row = slice_index(q / hw, ic / 3u, u32(clamp(iy, 0, i32(P.h) - 1)) * P.w, hw, P.in_ctotal,
                                  P.in_coff);
            let a = affine_row(q / hw, ic / 3u);
            for (var r = 0u; r < min(d, len); r++) {
                // Columns ox - d, ox, ox + d of the chain's pixel ox.
                var ix = i32(px0 + r) - i32(d);
                var left = select(0.0, block_input(x[row + u32(clamp(ix, 0, last))], a), row_ok && ix >= 0);
                var centre = select(0.0, block_input(x[row + px0 + r], a), row_ok);
                for (var ox = px0 + r; ox < px0 + len; ox += d) {
                    ix = i32(ox + d);
                    let right = select(0.0, block_input(x[row + u32(min(ix, last))], a), row_ok && ix <= last);
                    c = chain_step(c, vec3<f32>(left, centre, right), (at + ox) * COB, w.lane, j * TABLES);
                    left = centre;
                    centre = right;
                }
            }
        }
        q += len;
    }
    return c;
}



// table_data (K = 1, CPU adapters): the input gradient of a 1x1
// convolution read the way blocked_weight reads: dy from pack_dy's uniform
// tables (a pixel's row, fetched and broadcast once, shared by every lane),
// the weights held by the invocation. An invocation takes a trio of input
// channels (x's, whose gradient is written into `y` as x's layout: P.in_*)
// and walks chunk P.chunk; at each pixel its three sums over the group's
// TABLES blocks of output channels never leave registers and are stored
// once. blocked_data instead keeps 384 sums a lane (3 pixels x 128
// channels) on the stack, a load and a store for every multiply-add, and
// loads dy lane by lane from storage. One chunk a launch (not CHUNKS, as
// blocked_weight): each inlined walk lengthened a cold start by seconds.
const TD_CHANNELS: u32 = 128u;
var<private> td_w: array<vec3<f32>, TD_CHANNELS>;

@compute @workgroup_size(WG_WEIGHT)
fn table_data(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(subgroup_invocation_id) lane: u32, // @subgroup
              ) {
    let lane = 0u; // @plain
    let trios = (P.cin + 2u) / 3u;
    let i = group_index(wid, nwg) * WG_WEIGHT + lid.x;
    let trio = min(i, trios - 1u);
    let ci = min(vec3<u32>(3u * trio, 3u * trio + 1u, 3u * trio + 2u), vec3<u32>(P.cin - 1u));
    // The trio's weights for the group's output channels, zero past the last.
    let co0 = P.group * COB * 4u;
    for (var k = 0u; k < TABLES * COB * 4u; k++) {
        let at = min(co0 + k, P.cout - 1u) * P.w_ctotal + P.w_coff;
        td_w[k] = select(vec3<f32>(0.0), vec3<f32>(wt[at + ci.x], wt[at + ci.y], wt[at + ci.z]), co0 + k < P.cout);
    }
    mask_key = dropout_key(P.drop_seed, P.drop_step);
    let stored = select(0u, min(3u, P.cin - 3u * trio), i < trios);
    let hw = P.h * P.w;
    let pixels = P.n * hw;
    let q0 = P.chunk * CHUNK;
    let count = min(CHUNK, pixels - q0);
    var n = q0 / hw;
    var p = q0 % hw;
    table_data_mask(n);
    for (var at = 0u; at < count; at++) {
        var s = table_dot(vec3<f32>(0.0), 0u, at * COB, lane);
        if (TABLES > 1u) { s = table_dot(s, 1u, at * COB, lane); }
        if (TABLES > 2u) { s = table_dot(s, 2u, at * COB, lane); }
        if (TABLES > 3u) { s = table_dot(s, 3u, at * COB, lane); }
        let base = slice_index(n, 0u, p, hw, P.in_ctotal, P.in_coff);
        if (stored > 0u) { store_one(base + ci.x * hw, 0u, s.x); }
        if (stored > 1u) { store_one(base + ci.y * hw, 0u, s.y); }
        if (stored > 2u) { store_one(base + ci.z * hw, 0u, s.z); }
        p++;
        if (p == hw) {
            p = 0u;
            n++;
            table_data_mask(n);
        }
    }
}

// store_one's dropout mask for sample n in table_data: added to an index
// of y, the element's index in the masked concatenation (the weights'
// input channels); set when the walk enters a sample, not per pixel.
fn table_data_mask(n: u32) {
    if (DROP_STORES) {
        let hw = P.h * P.w;
        mask_shift = slice_index(n, 0u, 0u, hw, P.w_ctotal, P.w_coff) - slice_index(n, 0u, 0u, hw, P.in_ctotal, P.in_coff);
    }
}

// s plus table t's row wb (block t of the group's output channels: dy at
// one pixel) times the trio's weights for those channels.
fn table_dot(s: vec3<f32>, t: u32, wb: u32, lane: u32) -> vec3<f32> {
    let r = table_row(t, wb, lane);
    let k = t * COB * 4u;
    var v = block_dot(s, r.a0, k);
    if (COB > 1u) { v = block_dot(v, r.a1, k + 4u); }
    if (COB > 2u) { v = block_dot(v, r.a2, k + 8u); }
    if (COB > 3u) { v = block_dot(v, r.a3, k + 12u); }
    if (COB > 4u) { v = block_dot(v, r.a4, k + 16u); }
    if (COB > 5u) { v = block_dot(v, r.a5, k + 20u); }
    if (COB > 6u) { v = block_dot(v, r.a6, k + 24u); }
    if (COB > 7u) { v = block_dot(v, r.a7, k + 28u); }
    return v;
}

// s plus four output channels' dy (a) times their weights td_w[k ..].
fn block_dot(s: vec3<f32>, a: vec4<f32>, k: u32) -> vec3<f32> {
    var v = fma(vec3<f32>(a.x), td_w[k], s);
    v = fma(vec3<f32>(a.y), td_w[k + 1u], v);
    v = fma(vec3<f32>(a.z), td_w[k + 2u], v);
    return fma(vec3<f32>(a.w), td_w[k + 3u], v);
}

// reduce_partials: dw (bound as `y`) gets, or with ACCUMULATE adds, the sum
// of SPLIT partial sums [part][VALID channels][ci, tap] (bound as `x`;
// written by the weight kernels) in order: the same result
// whatever the scheduling. A workgroup takes REDUCE_ENTRIES entries, each
// summed by REDUCE_LANES invocations (every REDUCE_LANES-th part) whose sums
// are then added in lane order: chains of SPLIT / 32 loads on GPUs, not
// SPLIT (a GPU's weight gradient has up to 512 parts; one invocation per
// entry took 0.1 ms for a 3 -> 3 layer on an H200, 8 lanes 19 us),
// neighbouring invocations reading neighbouring entries. With REDUCE_LANES = 1 (CPU adapters: at most 16
// parts) one invocation sums an entry's parts and there is no barrier,
// which llvmpipe runs as a switch through every invocation of the
// workgroup: a 32 -> 32 3x3 layer's reduction took 0.8 ms with 8 lanes.
override REDUCE_LANES: u32 = 32u;
override REDUCE_ENTRIES: u32 = WG / REDUCE_LANES;
var<workgroup> lane_sums: array<f32, WG>;

// reduce_partials' store of entry k (output channel), rc (ci, tap).
fn reduced_store(k: u32, rc: u32, total: f32) {
    let at = ((P.group * COB * 4u + k) * P.w_ctotal + P.w_coff) * K * K + rc;
    if (ACCUMULATE) {
        y[at] += total;
    } else {
        y[at] = total;
    }
}

@compute @workgroup_size(WG)
fn reduce_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let kk = K * K;
    let ckk = P.cin * kk;
    let e = lid.x % REDUCE_ENTRIES;
    let lane = lid.x / REDUCE_ENTRIES;
    let i = group_index(wid, nwg) * REDUCE_ENTRIES + e;
    let k = i / ckk;
    let rc = i % ckk;
    var sum = 0.0;
    if (i < VALID * ckk) {
        for (var part = lane; part < SPLIT; part += REDUCE_LANES) {
            sum += x[(part * VALID + k) * ckk + rc];
        }
    }
    if (REDUCE_LANES == 1u) {
        if (i < VALID * ckk) {
            reduced_store(k, rc, sum);
        }
        return;
    }
    lane_sums[lid.x] = sum;
    workgroupBarrier();
    if (lane != 0u || i >= VALID * ckk) {
        return;
    }
    var total = 0.0;
    for (var l = 0u; l < REDUCE_LANES; l++) {
        total += lane_sums[l * REDUCE_ENTRIES + e];
    }
    reduced_store(k, rc, total);
}

// tiled_weight, for hardware GPUs: the weight gradient as a GEMM, dw's
// (Cout) x (Cin * K * K) entries each summed over the N x H x W pixels.
// A workgroup computes a tile of TILE_CO channels x TILE_R (ci, tap) rows
// over one of SPLIT parts of the pixels (split-K: a 32 -> 32 layer has only
// 5 tiles, far too few to fill a GPU on their own), TILE_Q pixels a step:
// dy's and x's values for the step are staged in workgroup memory (x read
// through the tap's dilated offset, zero in the padding: no im2col buffer),
// then every invocation adds its 4 x 4 outputs from registers. Each part
// writes its own partial sums [part][channel][ci, tap] (dw bound to a
// partials buffer), which reduce_partials adds in order: no float atomics.
const TILE_CO: u32 = 32u;
const TILE_R: u32 = 64u;
const TILE_Q: u32 = 32u;
// 8 x 16 invocations, each 4 channels x 4 rows.
const WG_TILED: u32 = 128u;
// Invocations staging each pixel of a step: each loads channels and rows
// lrow + STAGERS * i, in loops of a constant trip count, which a GPU's
// compiler can unroll to issue the loads together.
const STAGERS: u32 = WG_TILED / TILE_Q;
// Staged [pixel][channel or row], rows padded by one so that the stores,
// a step's pixels across neighbouring invocations, fall in distinct banks.
var<workgroup> dy_tile: array<f32, TILE_Q * (TILE_CO + 1u)>;
var<workgroup> x_tile: array<f32, TILE_Q * (TILE_R + 1u)>;

// Part `part` of SPLIT of the N x H x W pixels, in whole steps of TILE_Q:
// its first pixel and its end.
fn weight_part(part: u32, pixels: u32) -> vec2<u32> {
    let steps = (pixels + TILE_Q - 1u) / TILE_Q;
    let per_part = (steps + SPLIT - 1u) / SPLIT;
    return vec2<u32>(min(part * per_part * TILE_Q, pixels), min((part + 1u) * per_part * TILE_Q, pixels));
}

// Pixel q of a weight-gradient step: its sample, its place in the plane,
// its row and column, and whether it lies in the part (before `end`).
struct StagePixel {
    n: u32,
    p: u32,
    py: i32,
    px: i32,
    ok: bool,
}

fn stage_pixel(q: u32, end: u32, hw: u32) -> StagePixel {
    let p = q % hw;
    return StagePixel(q / hw, p, i32(p / P.w), i32(p % P.w), q < end);
}

// x at (ci, tap) row rr of pixel s, through the tap's dilated offset (the
// row's (ci, tap) costs divisions by the constant K * K only): zero in the
// padding, past the rows and past the part.
fn staged_x(s: StagePixel, rr: u32, hw: u32) -> f32 {
    let kk = K * K;
    let t = rr % kk;
    let half = i32(K / 2u);
    let iy = s.py + (i32(t / K) - half) * i32(P.dilation);
    let ix = s.px + (i32(t % K) - half) * i32(P.dilation);
    if (s.ok && rr < P.cin * kk && iy >= 0 && iy < i32(P.h) && ix >= 0 && ix < i32(P.w)) {
        return x[slice_index(s.n, rr / kk, u32(iy) * P.w + u32(ix), hw, P.in_ctotal, P.in_coff)];
    }
    return 0.0;
}

@compute @workgroup_size(WG_TILED)
fn tiled_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let kk = K * K;
    let ckk = P.cin * kk;
    let tiles_r = (ckk + TILE_R - 1u) / TILE_R;
    let tiles = ((P.cout + TILE_CO - 1u) / TILE_CO) * tiles_r;
    let g = group_index(wid, nwg);
    let part = g / tiles;
    let co0 = (g % tiles) / tiles_r * TILE_CO;
    let r0 = (g % tiles) % tiles_r * TILE_R;
    let hw = P.h * P.w;
    let range = weight_part(part, P.n * hw);
    // Staging: each invocation loads one pixel column (lq) of the step, for
    // channels and rows lrow, lrow + 4, ... (the loops below).
    let lq = lid.x % TILE_Q;
    let lrow = lid.x / TILE_Q;
    // Computing: channels tm + 8 i, rows tn + 16 j of the tile.
    let tm = lid.x / 16u;
    let tn = lid.x % 16u;
    var acc: Tile;
    for (var q0 = range.x; q0 < range.y; q0 += TILE_Q) {
        let s = stage_pixel(q0 + lq, range.y, hw);
        for (var i = 0u; i < TILE_CO / STAGERS; i++) {
            let c = lrow + STAGERS * i;
            var v = 0.0;
            if (s.ok && co0 + c < P.cout) {
                v = dy[slice_index(s.n, co0 + c, s.p, hw, P.out_ctotal, P.out_coff)];
            }
            dy_tile[lq * (TILE_CO + 1u) + c] = v;
        }
        for (var i = 0u; i < TILE_R / STAGERS; i++) {
            let r = lrow + STAGERS * i;
            x_tile[lq * (TILE_R + 1u) + r] = staged_x(s, r0 + r, hw);
        }
        workgroupBarrier();
        for (var k = 0u; k < TILE_Q; k++) {
            let d = k * (TILE_CO + 1u) + tm;
            let a = vec4<f32>(dy_tile[d], dy_tile[d + 8u], dy_tile[d + 16u], dy_tile[d + 24u]);
            let e = k * (TILE_R + 1u) + tn;
            acc = outer_fma(acc, a, vec4<f32>(x_tile[e], x_tile[e + 16u], x_tile[e + 32u], x_tile[e + 48u]));
        }
        workgroupBarrier();
    }
    tiled_store(part, co0 + tm, r0 + tn, ckk, acc.c0);
    tiled_store(part, co0 + tm + 8u, r0 + tn, ckk, acc.c1);
    tiled_store(part, co0 + tm + 16u, r0 + tn, ckk, acc.c2);
    tiled_store(part, co0 + tm + 24u, r0 + tn, ckk, acc.c3);
}

// tiled_weight_narrow, for hardware GPUs: tiled_weight for at most 4
// output channels (seo2018's layers), whose 32 x 64 tiles would be mostly
// padding (its 3 -> 3 3x3 layers took 0.1 ms each on an H200, 25 times the
// multiply-adds they need). A workgroup computes the 4 channels x NARROW_R
// (ci, tap) rows of one of SPLIT parts of the pixels, staged TILE_Q pixels
// a step as tiled_weight stages them (dy as one vec4 a pixel); invocation
// (row, quarter) adds the products of every fourth pixel of a step for its
// row and the 4 channels, and the quarters are added in order at the end:
// no float atomics, the same result whatever the scheduling.
const NARROW_R: u32 = 32u;
var<workgroup> dy_narrow: array<vec4<f32>, TILE_Q>;
var<workgroup> quarter_sums: array<vec4<f32>, WG_TILED>;

@compute @workgroup_size(WG_TILED)
fn tiled_weight_narrow(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                       @builtin(num_workgroups) nwg: vec3<u32>) {
    let kk = K * K;
    let ckk = P.cin * kk;
    let tiles = (ckk + NARROW_R - 1u) / NARROW_R;
    let g = group_index(wid, nwg);
    let part = g / tiles;
    let r0 = g % tiles * NARROW_R;
    let hw = P.h * P.w;
    let range = weight_part(part, P.n * hw);
    // Staging: pixel lq of the step, rows lrow, lrow + 4, ...; dy by the
    // first TILE_Q invocations.
    let lq = lid.x % TILE_Q;
    let lrow = lid.x / TILE_Q;
    // Computing: row tr, pixels tq, tq + 4, ... of the step.
    let tr = lid.x % NARROW_R;
    let tq = lid.x / NARROW_R;
    var acc = vec4<f32>(0.0);
    for (var q0 = range.x; q0 < range.y; q0 += TILE_Q) {
        let s = stage_pixel(q0 + lq, range.y, hw);
        if (lrow == 0u) {
            var v = vec4<f32>(0.0);
            for (var c = 0u; c < min(P.cout, 4u); c++) {
                if (s.ok) {
                    v[c] = dy[slice_index(s.n, c, s.p, hw, P.out_ctotal, P.out_coff)];
                }
            }
            dy_narrow[lq] = v;
        }
        for (var i = 0u; i < NARROW_R / STAGERS; i++) {
            let r = lrow + STAGERS * i;
            x_tile[lq * (NARROW_R + 1u) + r] = staged_x(s, r0 + r, hw);
        }
        workgroupBarrier();
        for (var k = tq; k < TILE_Q; k += WG_TILED / NARROW_R) {
            acc += dy_narrow[k] * x_tile[k * (NARROW_R + 1u) + tr];
        }
        workgroupBarrier();
    }
    quarter_sums[lid.x] = acc;
    workgroupBarrier();
    if (tq != 0u || r0 + tr >= ckk || part >= SPLIT) {
        return;
    }
    var total = acc;
    for (var j = 1u; j < WG_TILED / NARROW_R; j++) {
        total += quarter_sums[j * NARROW_R + tr];
    }
    for (var c = 0u; c < min(P.cout, 4u); c++) {
        dw[(part * P.cout + c) * ckk + r0 + tr] = total[c];
    }
}

// tap_weight, for hardware GPUs: tiled_weight for 1x1 and 3x3 kernels,
// with the (ci, tap) rows of a tile ordered so that the staging needs no
// per-value index arithmetic. A tile is 32 output channels x 72 rows: 8
// input channels' 9 taps (3x3) or 72 input channels (1x1), as 9 groups of
// 8 rows. Staging invocation (pixel lq, group lt) works out its pixel's
// tap lt once a step (for 1x1 its group's first channel) and loads 8
// channels at one offset, none behind a branch; tiled_weight's staging
// works out each value's (ci, tap) and pixel apart, by count about as many
// integer operations as the step's multiply-adds. The pixel moves by
// TAP_Q a step without a division. The sums read 4 channels and 4 rows as
// two vec4 loads of workgroup memory per 16 multiply-adds (tiled_weight:
// eight scalar loads). On an H200 a 32 -> 32 3x3 layer's weight gradient
// went 0.33-0.53 -> 0.16-0.19 ms, the head's 321 -> 128 one 1.5 -> 0.5-0.65
// (docs/PERFORMANCE.md).
const TAP_Q: u32 = 16u;
// 8 x 18 invocations, each 4 channels x 4 rows; 9 stagers a pixel.
const WG_TAP: u32 = 144u;
// Staged [pixel][channel / 4] and [pixel][row / 4], rows padded to 9 and
// 19 vec4s so that a step's pixels fall in different banks.
var<workgroup> tap_dy: array<vec4<f32>, TAP_Q * 9u>;
var<workgroup> tap_x: array<vec4<f32>, TAP_Q * 19u>;

// A staging invocation's pixel: its sample, row and column.
struct StepPixel {
    n: u32,
    py: u32,
    px: u32,
}

fn step_pixel(s: StepPixel, by: u32) -> StepPixel {
    var t = s;
    t.px += by;
    while (t.px >= P.w) {
        t.px -= P.w;
        t.py += 1u;
    }
    while (t.py >= P.h) {
        t.py -= P.h;
        t.n += 1u;
    }
    return t;
}

// Input channels a tile's rows span: 8 (their 9 taps) or 72.
fn tap_cin() -> u32 {
    return select(8u, 72u, K == 1u);
}

// x of 4 channels from c0 + c, zero for those past P.cin or where not
// `ok`: loads at index 0 where masked, so that none is behind a branch
// and a GPU issues them together.
fn tap_four(at: u32, c0: u32, c: u32, ok: bool) -> vec4<f32> {
    let hw = P.h * P.w;
    let cs = c0 + c + vec4<u32>(0u, 1u, 2u, 3u);
    let live = vec4<bool>(ok) & (cs < vec4<u32>(P.cin));
    let i = select(vec4<u32>(0u), at + (c + vec4<u32>(0u, 1u, 2u, 3u)) * hw, live);
    return select(vec4<f32>(0.0), vec4<f32>(x[i.x], x[i.y], x[i.z], x[i.w]), live);
}

// x of 8 channels from c0 at pixel s shifted by tap t (3x3; none for 1x1),
// zero in the padding, past the channels and for a pixel not `ok`, into
// row group t of step pixel lq's staged rows.
fn tap_stage(s: StepPixel, ok: bool, c0: u32, t: u32, lq: u32) {
    var iy = i32(s.py);
    var ix = i32(s.px);
    if (K == 3u) {
        iy += (i32(t / 3u) - 1) * i32(P.dilation);
        ix += (i32(t % 3u) - 1) * i32(P.dilation);
    }
    let in = ok && iy >= 0 && iy < i32(P.h) && ix >= 0 && ix < i32(P.w);
    let at = slice_index(s.n, c0, u32(iy) * P.w + u32(ix), P.h * P.w, P.in_ctotal, P.in_coff);
    tap_x[lq * 19u + t * 2u] = tap_four(at, c0, 0u, in);
    tap_x[lq * 19u + t * 2u + 1u] = tap_four(at, c0, 4u, in);
}

@compute @workgroup_size(WG_TAP)
fn tap_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let kk = K * K;
    let ckk = P.cin * kk;
    let tiles_r = (P.cin + tap_cin() - 1u) / tap_cin();
    let tiles = ((P.cout + TILE_CO - 1u) / TILE_CO) * tiles_r;
    let g = group_index(wid, nwg);
    let part = g / tiles;
    let co0 = (g % tiles) / tiles_r * TILE_CO;
    let ci0 = (g % tiles) % tiles_r * tap_cin();
    let hw = P.h * P.w;
    let range = weight_part(part, P.n * hw);
    // Staging: pixel lq of the step, tap (or group of 8 channels) lt, and
    // dy's channels 4 lt .. 4 lt + 3 for lt < 8.
    let lq = lid.x % TAP_Q;
    let lt = lid.x / TAP_Q;
    let first = select(ci0, ci0 + lt * 8u, K == 1u);
    let q = range.x + lq;
    var s = StepPixel(q / hw, q % hw / P.w, q % P.w);
    // Computing: channels 4 tm .. 4 tm + 3 (the accumulators), rows 4 tn ..
    // 4 tn + 3 (their components).
    let tm = lid.x / 18u;
    let tn = lid.x % 18u;
    var acc: Tile;
    for (var q0 = range.x; q0 < range.y; q0 += TAP_Q) {
        let ok = q0 + lq < range.y;
        tap_stage(s, ok, first, lt, lq);
        if (lt < 8u) {
            let at = slice_index(s.n, co0 + lt * 4u, s.py * P.w + s.px, hw, P.out_ctotal, P.out_coff);
            let live = vec4<bool>(ok) & (co0 + lt * 4u + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(P.cout));
            let i = select(vec4<u32>(0u), at + vec4<u32>(0u, 1u, 2u, 3u) * hw, live);
            tap_dy[lq * 9u + lt] = select(vec4<f32>(0.0), vec4<f32>(dy[i.x], dy[i.y], dy[i.z], dy[i.w]), live);
        }
        s = step_pixel(s, TAP_Q);
        workgroupBarrier();
        for (var k = 0u; k < TAP_Q; k++) {
            acc = outer_fma(acc, tap_dy[k * 9u + tm], tap_x[k * 19u + tn]);
        }
        workgroupBarrier();
    }
    tap_store(part, co0 + tm * 4u, ci0, tn * 4u, acc.c0);
    tap_store(part, co0 + tm * 4u + 1u, ci0, tn * 4u, acc.c1);
    tap_store(part, co0 + tm * 4u + 2u, ci0, tn * 4u, acc.c2);
    tap_store(part, co0 + tm * 4u + 3u, ci0, tn * 4u, acc.c3);
}

// Channel co's partial sums for a tile's rows l .. l + 3 (those that
// exist): row l is tap l / 8 of channel ci0 + l % 8 (3x3) or channel ci0 +
// l (1x1).
fn tap_store(part: u32, co: u32, ci0: u32, l: u32, v: vec4<f32>) {
    if (co >= P.cout || part >= SPLIT) {
        return;
    }
    let base = (part * P.cout + co) * P.cin * K * K;
    for (var j = 0u; j < 4u; j++) {
        let r = l + j;
        var ci = ci0 + r;
        var row = ci;
        if (K == 3u) {
            ci = ci0 + r % 8u;
            row = ci * 9u + r / 8u;
        }
        if (ci < P.cin) {
            dw[base + row] = v[j];
        }
    }
}

// Channel co's partial sums for rows r, r + 16, r + 32, r + 48 (those that
// exist) into part `part` of the partials buffer bound as `dw` (none past
// the last part: a grid folded into two dimensions has spare workgroups).
fn tiled_store(part: u32, co: u32, r: u32, ckk: u32, v: vec4<f32>) {
    if (co >= P.cout || part >= SPLIT) {
        return;
    }
    let base = (part * P.cout + co) * ckk;
    for (var j = 0u; j < 4u; j++) {
        if (r + 16u * j < ckk) {
            dw[base + r + 16u * j] = v[j];
        }
    }
}

// tiled_forward and tiled_data, for hardware GPUs: the convolution as an
// implicit GEMM, (Cout) x (pixels) outputs each summed over Cin * K * K
// (ci, tap) rows. A workgroup computes TILE_CO output channels x TILE_P
// pixels, TILE_S rows a step: the step's weights and input values are
// staged in workgroup memory (the input read through each tap's dilated
// offset, zero in the padding: no im2col buffer), then every invocation
// adds its 4 x 4 outputs from registers. P.cin, P.cout and the input and
// output views are the computed convolution's; with `transposed` (the
// input gradient) the weights are read transposed with the taps flipped,
// as pack_weights reads them.
const TILE_P: u32 = 64u;
const TILE_S: u32 = 32u;
var<workgroup> w_tile: array<f32, TILE_S * (TILE_CO + 1u)>;
var<workgroup> in_tile: array<f32, TILE_S * TILE_P>;

// An invocation's 4 x 4 sums of the tiled kernels: 4 output channels (the
// vectors) by 4 pixels (tiled_forward, tiled_data) or (ci, tap) rows (the
// weight gradients), the components.
struct Tile {
    c0: vec4<f32>,
    c1: vec4<f32>,
    c2: vec4<f32>,
    c3: vec4<f32>,
}

// c plus the outer product of a (4 channels) and b (4 pixels or rows).
fn outer_fma(c: Tile, a: vec4<f32>, b: vec4<f32>) -> Tile {
    return Tile(fma(vec4<f32>(a.x), b, c.c0), fma(vec4<f32>(a.y), b, c.c1), fma(vec4<f32>(a.z), b, c.c2),
                fma(vec4<f32>(a.w), b, c.c3));
}

fn tiled_weight_at(co: u32, r: u32) -> f32 {
    let kk = K * K;
    if (co >= P.cout || r >= P.cin * kk) {
        return 0.0;
    }
    let ci = r / kk;
    let t = r % kk;
    if (P.transposed != 0u) {
        return wt[(ci * P.w_ctotal + P.w_coff + co) * kk + (kk - 1u - t)];
    }
    return wt[(co * P.w_ctotal + P.w_coff + ci) * kk + t];
}

fn tiled_sums(co0: u32, q0: u32, lid: u32) -> Tile {
    let kk = K * K;
    let rows = P.cin * kk;
    let hw = P.h * P.w;
    // Staging: each invocation loads one pixel (column lq of the tile) for
    // rows lrow, lrow + 2, ...; the row's (ci, tap) costs divisions by the
    // constant K * K only.
    let lq = lid % TILE_P;
    let lrow = lid / TILE_P;
    let q = q0 + lq;
    let q_ok = q < P.n * hw;
    let n = q / hw;
    let p = q % hw;
    let py = i32(p / P.w);
    let px = i32(p % P.w);
    let in_base = (n * P.in_ctotal + P.in_coff) * hw;
    let half = i32(K / 2u);
    // Computing: channels co0 + tm + 8 i, pixels q0 + tn + 16 j.
    let tm = lid / 16u;
    let tn = lid % 16u;
    var c: Tile;
    for (var s0 = 0u; s0 < rows; s0 += TILE_S) {
        for (var e = lid; e < TILE_S * TILE_CO; e += WG_TILED) {
            w_tile[(e % TILE_S) * (TILE_CO + 1u) + e / TILE_S] = tiled_weight_at(co0 + e / TILE_S, s0 + e % TILE_S);
        }
        for (var r = lrow; r < TILE_S; r += WG_TILED / TILE_P) {
            let rr = s0 + r;
            let t = rr % kk;
            let iy = py + (i32(t / K) - half) * i32(P.dilation);
            let ix = px + (i32(t % K) - half) * i32(P.dilation);
            var v = 0.0;
            if (q_ok && rr < rows && iy >= 0 && iy < i32(P.h) && ix >= 0 && ix < i32(P.w)) {
                v = x[in_base + (rr / kk) * hw + u32(iy) * P.w + u32(ix)];
            }
            in_tile[r * TILE_P + lq] = v;
        }
        workgroupBarrier();
        for (var k = 0u; k < TILE_S; k++) {
            let d = k * (TILE_CO + 1u) + tm;
            let e = k * TILE_P + tn;
            let a = vec4<f32>(w_tile[d], w_tile[d + 8u], w_tile[d + 16u], w_tile[d + 24u]);
            c = outer_fma(c, a, vec4<f32>(in_tile[e], in_tile[e + 16u], in_tile[e + 32u], in_tile[e + 48u]));
        }
        workgroupBarrier();
    }
    return c;
}

// Channel co's outputs at pixels q, q + 16, q + 32, q + 48 (those that
// exist), plus `b`, written or with ACCUMULATE added into y.
fn tiled_store_pixels(co: u32, q: u32, b: f32, v: vec4<f32>) {
    let hw = P.h * P.w;
    if (co >= P.cout) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let qj = q + 16u * j;
        if (qj < P.n * hw) {
            let at = slice_index(qj / hw, co, qj % hw, hw, P.out_ctotal, P.out_coff);
            if (ACCUMULATE) {
                y[at] += v[j] + b;
            } else {
                y[at] = v[j] + b;
            }
        }
    }
}

// The tile of workgroup g: (first output channel, first pixel).
fn tiled_origin(g: u32) -> vec2<u32> {
    let tiles_co = (P.cout + TILE_CO - 1u) / TILE_CO;
    return vec2<u32>(g % tiles_co * TILE_CO, g / tiles_co * TILE_P);
}

// tiled_forward: y = conv(x) + bias, or with ACCUMULATE y += conv(x) (the
// later parts of a concatenation, whose bias the first part added).
@compute @workgroup_size(WG_TILED)
fn tiled_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = tiled_origin(group_index(wid, nwg));
    let c = tiled_sums(o.x, o.y, lid.x);
    let co = o.x + lid.x / 16u;
    let q = o.y + lid.x % 16u;
    let last = P.cout - 1u;
    let with_bias = select(1.0, 0.0, ACCUMULATE);
    tiled_store_pixels(co, q, with_bias * bias[min(co, last)], c.c0);
    tiled_store_pixels(co + 8u, q, with_bias * bias[min(co + 8u, last)], c.c1);
    tiled_store_pixels(co + 16u, q, with_bias * bias[min(co + 16u, last)], c.c2);
    tiled_store_pixels(co + 24u, q, with_bias * bias[min(co + 24u, last)], c.c3);
}

// tiled_data: the input gradient, written or with ACCUMULATE added into the
// gradient bound as y (params transposed: dy's channels in, dx's out).
@compute @workgroup_size(WG_TILED)
fn tiled_data(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = tiled_origin(group_index(wid, nwg));
    let c = tiled_sums(o.x, o.y, lid.x);
    let co = o.x + lid.x / 16u;
    let q = o.y + lid.x % 16u;
    tiled_store_pixels(co, q, 0.0, c.c0);
    tiled_store_pixels(co + 8u, q, 0.0, c.c1);
    tiled_store_pixels(co + 16u, q, 0.0, c.c2);
    tiled_store_pixels(co + 24u, q, 0.0, c.c3);
}
