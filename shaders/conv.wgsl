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

// Output channels per invocation of `blocked_*`, in vec4 blocks (1..8).
override COB: u32 = 8u;
// vec4s in one uniform table (64 KiB).
const PACK_LEN: u32 = 4096u;
// Pixels of dy in one table for blocked_weight.
override CHUNK: u32 = PACK_LEN / COB;
// Invocations per workgroup of blocked_weight: its grid is only Cin * K * K
// invocations per group, so small workgroups spread it over more cores.
const WG_WEIGHT: u32 = 64u;

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

@compute @workgroup_size(WG)
fn backward_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let co = group_index(wid, nwg);
    if (co >= P.cout) {
        return;
    }
    let hw = P.h * P.w;
    var acc = 0.0;
    for (var j = lid.x; j < P.n * hw; j += WG) {
        acc += dy[slice_index(j / hw, co, j % hw, hw, P.out_ctotal, P.out_coff)];
    }
    let total = workgroup_sum(lid.x, acc);
    if (lid.x == 0u) {
        db[co] = total;
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

// The pixel (n, p) of invocation `lid` in workgroup `g`, clamped into range,
// and whether it exists.
fn blocked_pixel(g: u32, lid: u32) -> vec3<u32> {
    let pixels = P.n * P.h * P.w;
    let q = g * WG + lid;
    let qc = min(q, pixels - 1u);
    return vec3<u32>(qc / (P.h * P.w), qc % (P.h * P.w), select(0u, 1u, q < pixels));
}

// The register-blocked convolution: one invocation per pixel computes 4 * COB
// output channels in vec4 accumulators. The weights come from the uniform
// table at addresses shared by every invocation (they depend only on the
// loop counters); the one per-invocation load is the input pixel, reused by
// 4 * COB multiply-adds. No early return before the loops: a CPU adapter
// runs the workgroup as SIMD lanes and inactive lanes would only add masks.
fn blocked_sums(n: u32, p: u32, lane: u32) -> array<vec4<f32>, 8> {
    let hw = P.h * P.w;
    let oy = i32(p / P.w);
    let ox = i32(p % P.w);
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    let kk = K * K;
    let half = i32(K / 2u);
    let d = i32(P.dilation);
    for (var ci = 0u; ci < P.cin; ci++) {
        let plane = (n * P.in_ctotal + P.in_coff + ci) * hw;
        for (var ky = 0u; ky < K; ky++) {
            let iy = oy + (i32(ky) - half) * d;
            let row_ok = iy >= 0 && iy < i32(P.h);
            let row = plane + u32(clamp(iy, 0, i32(P.h) - 1)) * P.w;
            for (var kx = 0u; kx < K; kx++) {
                let ix = ox + (i32(kx) - half) * d;
                let ok = row_ok && ix >= 0 && ix < i32(P.w);
                let v = vec4<f32>(select(0.0, x[row + u32(clamp(ix, 0, i32(P.w) - 1))], ok));
                // Named accumulators, spelled out here and in blocked_weight:
                // through a helper taking a pointer to an array, blocked_weight
                // ran 1.7x slower on lavapipe (measured 2026-11-27).
                let wb = (ci * kk + ky * K + kx) * COB;
                let mine = wpack[wb + min(lane % 8u, COB - 1u)]; // @subgroup
                a0 = fma(v, subgroupBroadcast(mine, 0u), a0); // @subgroup
                a0 = fma(v, wpack[wb], a0); // @plain
                if (COB > 1u) { a1 = fma(v, subgroupBroadcast(mine, 1u), a1); } // @subgroup
                if (COB > 1u) { a1 = fma(v, wpack[wb + 1u], a1); } // @plain
                if (COB > 2u) { a2 = fma(v, subgroupBroadcast(mine, 2u), a2); } // @subgroup
                if (COB > 2u) { a2 = fma(v, wpack[wb + 2u], a2); } // @plain
                if (COB > 3u) { a3 = fma(v, subgroupBroadcast(mine, 3u), a3); } // @subgroup
                if (COB > 3u) { a3 = fma(v, wpack[wb + 3u], a3); } // @plain
                if (COB > 4u) { a4 = fma(v, subgroupBroadcast(mine, 4u), a4); } // @subgroup
                if (COB > 4u) { a4 = fma(v, wpack[wb + 4u], a4); } // @plain
                if (COB > 5u) { a5 = fma(v, subgroupBroadcast(mine, 5u), a5); } // @subgroup
                if (COB > 5u) { a5 = fma(v, wpack[wb + 5u], a5); } // @plain
                if (COB > 6u) { a6 = fma(v, subgroupBroadcast(mine, 6u), a6); } // @subgroup
                if (COB > 6u) { a6 = fma(v, wpack[wb + 6u], a6); } // @plain
                if (COB > 7u) { a7 = fma(v, subgroupBroadcast(mine, 7u), a7); } // @subgroup
                if (COB > 7u) { a7 = fma(v, wpack[wb + 7u], a7); } // @plain
            }
        }
    }
    return array<vec4<f32>, 8>(a0, a1, a2, a3, a4, a5, a6, a7);
}

// Writes (or, with `accumulate`, adds) the 4 * COB output channels of
// pixel px.
fn blocked_store(px: vec3<u32>, acc: array<vec4<f32>, 8>) {
    for (var b = 0u; b < COB; b++) {
        for (var j = 0u; j < 4u; j++) {
            let co = (P.group * COB + b) * 4u + j;
            if (co < P.cout) {
                let i = slice_index(px.x, co, px.y, P.h * P.w, P.out_ctotal, P.out_coff);
                if (P.accumulate != 0u) {
                    y[i] += acc[b][j];
                } else {
                    y[i] = acc[b][j];
                }
            }
        }
    }
}

// blocked_forward: y = conv(x) + bias for one output-channel group, or with
// `accumulate`, y += conv(x) (the later parts of a concatenation).
@compute @workgroup_size(WG)
fn blocked_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(subgroup_invocation_id) lane: u32, // @subgroup
                   ) {
    let lane = 0u; // @plain
    let px = blocked_pixel(group_index(wid, nwg), lid.x);
    var acc = blocked_sums(px.x, px.y, lane);
    if (px.z == 0u) {
        return;
    }
    if (P.accumulate == 0u) {
        for (var b = 0u; b < COB; b++) {
            for (var j = 0u; j < 4u; j++) {
                let co = min((P.group * COB + b) * 4u + j, P.cout - 1u);
                acc[b][j] += bias[co];
            }
        }
    }
    blocked_store(px, acc);
}

// blocked_data: the input gradient (the convolution of dy, bound as `x`,
// with transposed packed weights) written into, or added to, `y`.
@compute @workgroup_size(WG)
fn blocked_data(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(subgroup_invocation_id) lane: u32, // @subgroup
                ) {
    let lane = 0u; // @plain
    let px = blocked_pixel(group_index(wid, nwg), lid.x);
    let acc = blocked_sums(px.x, px.y, lane);
    if (px.z == 0u) {
        return;
    }
    blocked_store(px, acc);
}

// pack_dy: chunk P.chunk of dy for output-channel group P.group, as
// blocked_weight reads it: [pixel][block] vec4s of 4 output channels, zero
// past the last pixel or channel.
@compute @workgroup_size(WG)
fn pack_dy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    if (i >= CHUNK * COB) {
        return;
    }
    let b = i % COB;
    let q = P.chunk * CHUNK + i / COB;
    let hw = P.h * P.w;
    var v = vec4<f32>(0.0);
    if (q < P.n * hw) {
        for (var j = 0u; j < 4u; j++) {
            let co = (P.group * COB + b) * 4u + j;
            if (co < P.cout) {
                v[j] = dy[slice_index(q / hw, co, q % hw, hw, P.out_ctotal, P.out_coff)];
            }
        }
    }
    wpack_out[i] = v;
}

// blocked_weight: one invocation per (ci, tap) adds, for the 4 * COB output
// channels of its group, the products over one chunk of pixels: dy from the
// uniform table (shared addresses), x the one per-invocation load. Chunk 0
// overwrites dw, later chunks add: the chunks' dispatches run in order, so
// the sum is deterministic without atomics or a reduction pass.
@compute @workgroup_size(WG_WEIGHT)
fn blocked_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(subgroup_invocation_id) lane: u32, // @subgroup
                  ) {
    let lane = 0u; // @plain
    let kk = K * K;
    let r = group_index(wid, nwg) * WG_WEIGHT + lid.x;
    let rc = min(r, P.cin * kk - 1u);
    let ci = rc / kk;
    let t = rc % kk;
    let half = i32(K / 2u);
    let dy_off = (i32(t / K) - half) * i32(P.dilation);
    let dx_off = (i32(t % K) - half) * i32(P.dilation);
    let hw = P.h * P.w;
    let pixels = P.n * hw;
    let q0 = P.chunk * CHUNK;
    let count = min(CHUNK, pixels - q0);
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    for (var k = 0u; k < count; k++) {
        let q = q0 + k;
        let n = q / hw;
        let p = q % hw;
        let iy = i32(p / P.w) + dy_off;
        let ix = i32(p % P.w) + dx_off;
        let ok = iy >= 0 && iy < i32(P.h) && ix >= 0 && ix < i32(P.w);
        let pc = u32(clamp(iy, 0, i32(P.h) - 1)) * P.w + u32(clamp(ix, 0, i32(P.w) - 1));
        let v = vec4<f32>(select(0.0, x[slice_index(n, ci, pc, hw, P.in_ctotal, P.in_coff)], ok));
        let wb = k * COB;
        let mine = wpack[wb + min(lane % 8u, COB - 1u)]; // @subgroup
        a0 = fma(v, subgroupBroadcast(mine, 0u), a0); // @subgroup
        a0 = fma(v, wpack[wb], a0); // @plain
        if (COB > 1u) { a1 = fma(v, subgroupBroadcast(mine, 1u), a1); } // @subgroup
        if (COB > 1u) { a1 = fma(v, wpack[wb + 1u], a1); } // @plain
        if (COB > 2u) { a2 = fma(v, subgroupBroadcast(mine, 2u), a2); } // @subgroup
        if (COB > 2u) { a2 = fma(v, wpack[wb + 2u], a2); } // @plain
        if (COB > 3u) { a3 = fma(v, subgroupBroadcast(mine, 3u), a3); } // @subgroup
        if (COB > 3u) { a3 = fma(v, wpack[wb + 3u], a3); } // @plain
        if (COB > 4u) { a4 = fma(v, subgroupBroadcast(mine, 4u), a4); } // @subgroup
        if (COB > 4u) { a4 = fma(v, wpack[wb + 4u], a4); } // @plain
        if (COB > 5u) { a5 = fma(v, subgroupBroadcast(mine, 5u), a5); } // @subgroup
        if (COB > 5u) { a5 = fma(v, wpack[wb + 5u], a5); } // @plain
        if (COB > 6u) { a6 = fma(v, subgroupBroadcast(mine, 6u), a6); } // @subgroup
        if (COB > 6u) { a6 = fma(v, wpack[wb + 6u], a6); } // @plain
        if (COB > 7u) { a7 = fma(v, subgroupBroadcast(mine, 7u), a7); } // @subgroup
        if (COB > 7u) { a7 = fma(v, wpack[wb + 7u], a7); } // @plain
    }
    if (r >= P.cin * kk) {
        return;
    }
    let acc = array<vec4<f32>, 8>(a0, a1, a2, a3, a4, a5, a6, a7);
    for (var b = 0u; b < COB; b++) {
        for (var j = 0u; j < 4u; j++) {
            let co = (P.group * COB + b) * 4u + j;
            if (co < P.cout) {
                let i = (co * P.w_ctotal + P.w_coff) * kk + r;
                if (P.chunk == 0u) {
                    dw[i] = acc[b][j];
                } else {
                    dw[i] += acc[b][j];
                }
            }
        }
    }
}
