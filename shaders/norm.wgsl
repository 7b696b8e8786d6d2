// Norm family: the norm block y = x + gamma * (x - mean) / sqrt(var + eps) + beta
// (MODEL.md), for instance norm (a group per (n, c) over H x W)
// and batch norm (PER_CHANNEL: a group per channel over N x H x W).
//
// Mapping:
// - moments: one workgroup per group and part (PARTS: ranges of each
//   plane's pixels, so that a few groups still fill a GPU); one pass over
//   the part, each invocation's sums shifted by its first value, merged in
//   fixed trees (see part_moments). Sound on post-ReLU activations with
//   large means, no float atomics. With PARTS > 1, combine_moments (one
//   invocation per group; on GPUs combine_moments_wg, a workgroup per
//   group) then merges the parts' means and squared deviations in order
//   (Chan et al.'s pairwise update). Each
//   invocation reads runs of RUN pixels per trip: with one pixel a trip,
//   the loop's own cost made moments and backward_sums 1.3-1.6x slower on
//   lavapipe (2026-11-28);
// - apply: one invocation per run of RUN pixels of a plane (common.wgsl),
//   statistics read once per run. With
//   running statistics (inference) the host passes them as the moments
//   with PER_CHANNEL;
// - update_running: one invocation per channel, PyTorch's momentum update
//   with the unbiased variance;
// - backward_sums: one workgroup per group and part: sum(dy) and
//   sum(dy * xhat); with PARTS > 1, combine_sums (or combine_sums_wg)
//   adds the parts in order;
// - backward_data: one invocation per run of RUN pixels, likewise;
// - param_grads: one invocation per channel, summing its groups in order.
// With ACT the activation after the block is fused into apply and the
// backward kernels (see ACT). x and y may be channel slices of larger
// buffers; dy has y's layout and dx has x's layout.

struct Params {
    n: u32,
    c: u32,
    hw: u32,
    // apply with RESIDUAL: the residual's first channel in y's buffer.
    res_coff: u32,
    x_ctotal: u32,
    x_coff: u32,
    y_ctotal: u32,
    y_coff: u32,
    eps: f32,
    momentum: f32,
    // With ACT: the slope of the activation after the block (0 for ReLU).
    slope: f32,
    _pad1: u32,
    // backward_data: dx's layout (a deferred block's x is a slice of the
    // concatenation, its gradient a tensor of its own).
    dx_ctotal: u32,
    dx_coff: u32,
    _pad2: vec2<u32>,
    // The windowed reductions' windows k < WINDOWS (for the backward sums
    // k < SUMS_WINDOWS, dy's k + SUMS_WINDOWS): (first element of x's
    // window holding the parts, likewise for dy, part_out index of the
    // first part, elements in its parts; 0 for a window left empty).
    win: array<vec4<u32>, 14>,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read> mean_in: array<f32>;
@group(0) @binding(5) var<storage, read> var_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> var_out: array<f32>;
@group(0) @binding(8) var<storage, read_write> y: array<f32>;
@group(0) @binding(9) var<storage, read> dy: array<f32>;
@group(0) @binding(10) var<storage, read_write> dx: array<f32>;
@group(0) @binding(11) var<storage, read_write> sums_out: array<f32>;
@group(0) @binding(12) var<storage, read> sums_in: array<f32>;
@group(0) @binding(13) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(14) var<storage, read_write> dbeta: array<f32>;
@group(0) @binding(15) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(16) var<storage, read_write> running_var: array<f32>;
// moments_parts' and backward_sums_parts' results per (group, part), two
// values each.
@group(0) @binding(17) var<storage, read_write> part_out: array<f32>;
// param_grads_and_bias: the gradient of the bias of the convolution before
// the block.
@group(0) @binding(18) var<storage, read_write> input_bias_grad: array<f32>;
// With AFFINE: the deferred block's table (see store_moments).
@group(0) @binding(33) var<storage, read_write> affine_out: array<vec4<f32>>;
// apply and backward_data with VEC4 (the host's choice: runs of a multiple
// of 4 pixels that divide the planes, so every run is whole and starts on
// a vec4): x, y, dy and dx read and written as vec4s, since llvmpipe loads
// storage in a loop over the lanes that takes a vec4's four components in
// one trip (src/ops/norm.rs, vec4_runs).
@group(0) @binding(40) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(41) var<storage, read_write> y4: array<vec4<f32>>;
@group(0) @binding(42) var<storage, read> dy4: array<vec4<f32>>;
@group(0) @binding(43) var<storage, read_write> dx4: array<vec4<f32>>;
override VEC4: bool = false;

// Batch norm (a group per channel) or instance norm (a group per (n, c)),
// fixed per pipeline: on llvmpipe a branch on a uniform runs both sides, and
// each side here has integer divisions.
override PER_CHANNEL: bool = false;
// The activation that follows the block, fused: apply writes act(y) and the
// backward kernels take the gradient of act(y), masking it by the sign of
// y worked out again (block_value), so the block's output before the
// activation is never stored and no pass over memory applies it.
override ACT: bool = false;
// Parts each group's statistics are split into (see moments).
override PARTS: u32 = 1u;
// A deferred block (src/model/graph.rs): its output is never stored, the
// convolutions that read it apply it as they load (conv.wgsl's LAZY), and
// no apply pass runs. The kernel that writes a group's statistics then
// also writes, for each of its (sample, channel), the entry (mean, k =
// gamma * inv, beta, slope) at the channel's index in x's buffer (n *
// x_ctotal + x_coff + c), with k worked out as apply does; P.slope is the
// activation's slope, 1 without one.
override AFFINE: bool = false;

// The block's output for input v of a group with mean `mean`, k = gamma * inv
// and beta: the one formula of apply and the backward masks, so both see the
// same sign.
fn block_value(v: f32, mean: f32, k: f32, beta_c: f32) -> f32 {
    return v + fma(v - mean, k, beta_c);
}

// block_value of four values (VEC4).
fn block_value4(v: vec4<f32>, mean: f32, k: f32, beta_c: f32) -> vec4<f32> {
    return v + fma(v - vec4<f32>(mean), vec4<f32>(k), vec4<f32>(beta_c));
}

// act'(u) as a factor, or 1 without ACT.
fn act_factor(u: f32) -> f32 {
    return select(1.0, select(P.slope, 1.0, u > 0.0), ACT);
}

// act_factor of four values (VEC4).
fn act4(u: vec4<f32>) -> vec4<f32> {
    return select(vec4<f32>(1.0), select(vec4<f32>(P.slope), vec4<f32>(1.0), u > vec4<f32>(0.0)), ACT);
}

fn group_count() -> u32 {
    return select(P.n * P.c, P.c, PER_CHANNEL);
}

// Elements per group.
fn group_size() -> u32 {
    return select(P.hw, P.n * P.hw, PER_CHANNEL);
}

// Group g's planes: (first sample, samples, channel).
fn group_planes(g: u32) -> vec3<u32> {
    if (PER_CHANNEL) {
        return vec3<u32>(0u, P.n, g);
    }
    return vec3<u32>(g / P.c, 1u, g % P.c);
}

// Workgroup w's part of a group: (group, first pixel, end pixel) of each of
// the group's planes, in whole runs.
fn part_range(w: u32) -> vec3<u32> {
    let runs = (P.hw + RUN - 1u) / RUN;
    let per = (runs + PARTS - 1u) / PARTS * RUN;
    let part = w % PARTS;
    return vec3<u32>(w / PARTS, min(part * per, P.hw), min((part + 1u) * per, P.hw));
}

// Elements in part `part` of a group.
fn part_size(part: u32) -> u32 {
    if (WINDOWED) {
        let j = part % ((P.hw + PART_LEN - 1u) / PART_LEN);
        return min(PART_LEN, P.hw - j * PART_LEN);
    }
    let r = part_range(part);
    return (r.z - r.y) * select(1u, P.n, PER_CHANNEL);
}

// The run of RUN pixels of invocation i (common.wgsl).
struct Run {
    group: u32,
    channel: u32,
    // Its first element in x, in y (and dy) and in dx.
    x_at: u32,
    y_at: u32,
    dx_at: u32,
    // Pixels in the run (fewer than RUN at the end of a plane).
    len: u32,
}

fn run_at(i: u32) -> Run {
    let r = plane_run(i, P.hw);
    let n = r.x / P.c;
    let c = r.x % P.c;
    return Run(select(r.x, c, PER_CHANNEL), c, slice_index(n, c, r.y, P.hw, P.x_ctotal, P.x_coff),
               slice_index(n, c, r.y, P.hw, P.y_ctotal, P.y_coff), slice_index(n, c, r.y, P.hw, P.dx_ctotal, P.dx_coff),
               min(RUN, P.hw - r.y));
}

// An invocation's moments, from its `count` values' sums s and ss of
// deviations from `shift`, merged with the workgroup's as Chan et al. do
// in two fixed-order tree sums into the mean and sum of squared
// deviations of the `size` values the workgroup summed (every invocation
// of the workgroup must call it).
fn merge_moments(lid: u32, lanes: u32, shift: f32, s: f32, ss: f32, count: u32, size: u32) -> vec2<f32> {
    let k = f32(max(count, 1u));
    let mine = shift + s / k;
    let mean = lanes_sum(lid, f32(count) * mine, lanes) / f32(max(size, 1u));
    let dev = mine - mean;
    return vec2<f32>(mean, lanes_sum(lid, max(ss - s * s / k, 0.0) + f32(count) * dev * dev, lanes));
}

// Part w's mean and sum of squared deviations from it (every invocation of
// the workgroup must call it), in one pass over x: each invocation sums its
// values' deviations from the first of them (and their squares), which
// stays sound on post-ReLU activations with large means (the shift is one
// of the values), then the invocations' means and squared deviations are
// merged as Chan et al. do, in two fixed-order tree sums. Two passes (the
// mean, then the centred squares) read x twice: on lavapipe, which loads
// storage memory lane by lane, that made moments 1.8x slower (seo2018's
// per step: 61-65 against 35 ms, 2026-11-28).
fn part_moments(w: u32, lid: u32) -> vec2<f32> {
    let r = part_range(w);
    let gp = group_planes(r.x);
    let first = r.y + lid * RUN;
    let shift = select(0.0, x[slice_index(gp.x, gp.z, min(first, P.hw - 1u), P.hw, P.x_ctotal, P.x_coff)],
                       first < r.z);
    var s = 0.0;
    var ss = 0.0;
    var count = 0u;
    for (var n = gp.x; n < gp.x + gp.y; n++) {
        let base = slice_index(n, gp.z, 0u, P.hw, P.x_ctotal, P.x_coff);
        for (var j = first; j < r.z; j += WG * RUN) {
            for (var t = 0u; t < RUN; t++) {
                if (j + t < r.z) {
                    let d = x[base + j + t] - shift;
                    s += d;
                    ss += d * d;
                    count++;
                }
            }
        }
    }
    return merge_moments(lid, WG, shift, s, ss, count, part_size(w));
}

// moments: one workgroup per group (PARTS = 1).
@compute @workgroup_size(WG)
fn moments(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    if (g >= group_count()) {
        return;
    }
    let m = part_moments(g, lid.x);
    if (lid.x == 0u) {
        store_moments(g, m.x, m.y / f32(group_size()));
    }
}

// Group g's mean and variance, and with AFFINE its table entries.
fn store_moments(g: u32, mean: f32, variance: f32) {
    mean_out[g] = mean;
    var_out[g] = variance;
    if (AFFINE) {
        let gp = group_planes(g);
        let a = vec4<f32>(mean, gamma[gp.z] * inverseSqrt(variance + P.eps), beta[gp.z], P.slope);
        for (var n = gp.x; n < gp.x + gp.y; n++) {
            affine_out[n * P.x_ctotal + P.x_coff + gp.z] = a;
        }
    }
}

// moments_parts: one workgroup per (group, part), its moments into
// part_out for combine_moments.
@compute @workgroup_size(WG)
fn moments_parts(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = group_index(wid, nwg);
    if (w >= group_count() * PARTS) {
        return;
    }
    let m = part_moments(w, lid.x);
    if (lid.x == 0u) {
        part_out[2u * w] = m.x;
        part_out[2u * w + 1u] = m.y;
    }
}

// Group g's parts first, first + stride, ... (part_out) merged in that
// order as Chan et al. do: (count, mean, sum of squared deviations).
fn merged_parts(g: u32, first: u32, stride: u32) -> vec3<f32> {
    var count = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    for (var part = first; part < PARTS; part += stride) {
        let nb = f32(part_size(part));
        if (nb > 0.0) {
            let w = g * PARTS + part;
            let delta = part_out[2u * w] - mean;
            let total = count + nb;
            mean += delta * nb / total;
            m2 += part_out[2u * w + 1u] + delta * delta * count * nb / total;
            count = total;
        }
    }
    return vec3<f32>(count, mean, m2);
}

// combine_moments: one invocation per group merges its parts in part order
// (CPU adapters: few parts, and a workgroup barrier is dear there).
@compute @workgroup_size(WG)
fn combine_moments(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = element_index(wid, lid, nwg);
    if (g >= group_count()) {
        return;
    }
    let m = merged_parts(g, 0u, 1u);
    store_moments(g, m.y, m.z / m.x);
}

// combine_moments_wg: a workgroup per group (GPUs: up to 512 parts, whose
// chain of dependent loads in one invocation took 40 us on an H200).
// Invocation l merges parts l, l + WG, ... in order, then the invocations'
// moments are merged in two fixed-order tree sums (as merge_moments does):
// the same result whatever the scheduling.
@compute @workgroup_size(WG)
fn combine_moments_wg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    if (g >= group_count()) {
        return;
    }
    let m = merged_parts(g, lid.x, WG);
    let count = f32(group_size());
    let mean = workgroup_sum(lid.x, m.x * m.y) / count;
    let dev = m.y - mean;
    let m2 = workgroup_sum(lid.x, m.z + m.x * dev * dev);
    if (lid.x == 0u) {
        store_moments(g, mean, m2 / count);
    }
}

// apply: y = x + k * (x - mean) + beta, k = gamma * inv worked out once per
// run of RUN pixels. (Not x * (1 + k) + shift: with a small variance k is
// large and that form loses x - mean to rounding.) With RESIDUAL the layer's
// residual, channels from res_coff of y's own buffer (the concatenation's
// parts share one), is added after the activation: one pass fewer over
// memory than a separate add.
override RESIDUAL: bool = false;

@compute @workgroup_size(WG)
fn apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    if (i >= plane_runs(P.n * P.c, P.hw)) {
        return;
    }
    let r = run_at(i);
    let g = r.group;
    let k = gamma[r.channel] * inverseSqrt(var_in[g] + P.eps);
    let mean = mean_in[g];
    let shift = beta[r.channel];
    if (VEC4) {
        for (var t = 0u; t < RUN; t += 4u) {
            let x0 = x4[(r.x_at + t) / 4u];
            let u = block_value4(x0, mean, k, shift);
            var v = u * act4(u);
            if (RESIDUAL) {
                v += y4[(r.y_at - P.y_coff * P.hw + P.res_coff * P.hw + t) / 4u];
            }
            y4[(r.y_at + t) / 4u] = v;
        }
    } else {
        for (var t = 0u; t < RUN; t++) {
            if (t < r.len) {
                let u = block_value(x[r.x_at + t], mean, k, shift);
                var v = u * act_factor(u);
                if (RESIDUAL) {
                    v += y[r.y_at - P.y_coff * P.hw + P.res_coff * P.hw + t];
                }
                y[r.y_at + t] = v;
            }
        }
    }
}

@compute @workgroup_size(WG)
fn update_running(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = element_index(wid, lid, nwg);
    if (c >= P.c) {
        return;
    }
    let count = f32(P.n * P.hw);
    let unbias = count / max(count - 1.0, 1.0);
    running_mean[c] = (1.0 - P.momentum) * running_mean[c] + P.momentum * mean_in[c];
    running_var[c] = (1.0 - P.momentum) * running_var[c] + P.momentum * var_in[c] * unbias;
}

// Part w's sum(dy) and sum(dy * xhat) (every invocation of the workgroup
// must call it).
fn part_sums(w: u32, lid: u32) -> vec2<f32> {
    let r = part_range(w);
    let g = r.x;
    let inv = inverseSqrt(var_in[g] + P.eps);
    let mean = mean_in[g];
    let gp = group_planes(g);
    let k = gamma[gp.z] * inv;
    let beta_c = beta[gp.z];
    var s_dy = 0.0;
    var s_dy_xhat = 0.0;
    for (var n = gp.x; n < gp.x + gp.y; n++) {
        let xb = slice_index(n, gp.z, 0u, P.hw, P.x_ctotal, P.x_coff);
        let yb = slice_index(n, gp.z, 0u, P.hw, P.y_ctotal, P.y_coff);
        for (var j = r.y + lid * RUN; j < r.z; j += WG * RUN) {
            for (var t = 0u; t < RUN; t++) {
                if (j + t < r.z) {
                    let v = x[xb + j + t];
                    let d = dy[yb + j + t] * act_factor(block_value(v, mean, k, beta_c));
                    s_dy += d;
                    s_dy_xhat += d * (v - mean) * inv;
                }
            }
        }
    }
    let t_dy = workgroup_sum(lid, s_dy);
    return vec2<f32>(t_dy, workgroup_sum(lid, s_dy_xhat));
}

// Group g's sum(dy) and sum(dy * xhat) into sums_out.
fn store_sums(g: u32, t: vec2<f32>) {
    sums_out[2u * g] = t.x;
    sums_out[2u * g + 1u] = t.y;
}

// backward_sums: one workgroup per group (PARTS = 1).
@compute @workgroup_size(WG)
fn backward_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    if (g >= group_count()) {
        return;
    }
    let t = part_sums(g, lid.x);
    if (lid.x == 0u) {
        store_sums(g, t);
    }
}

// backward_sums_parts: one workgroup per (group, part), its sums into
// part_out for combine_sums.
@compute @workgroup_size(WG)
fn backward_sums_parts(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                       @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = group_index(wid, nwg);
    if (w >= group_count() * PARTS) {
        return;
    }
    let t = part_sums(w, lid.x);
    if (lid.x == 0u) {
        part_out[2u * w] = t.x;
        part_out[2u * w + 1u] = t.y;
    }
}

// Group g's parts first, first + stride, ... (part_out) added in that
// order: (sum(dy), sum(dy * xhat)).
fn summed_parts(g: u32, first: u32, stride: u32) -> vec2<f32> {
    var t = vec2<f32>(0.0);
    for (var part = first; part < PARTS; part += stride) {
        let w = g * PARTS + part;
        t += vec2<f32>(part_out[2u * w], part_out[2u * w + 1u]);
    }
    return t;
}

// combine_sums: one invocation per group adds its parts' sums in order
// (CPU adapters, as combine_moments).
@compute @workgroup_size(WG)
fn combine_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = element_index(wid, lid, nwg);
    if (g >= group_count()) {
        return;
    }
    store_sums(g, summed_parts(g, 0u, 1u));
}

// combine_sums_wg: a workgroup per group (GPUs, as combine_moments_wg),
// the invocations' sums added in a fixed-order tree.
@compute @workgroup_size(WG)
fn combine_sums_wg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    if (g >= group_count()) {
        return;
    }
    let t = summed_parts(g, lid.x, WG);
    let s_dy = workgroup_sum(lid.x, t.x);
    let s_dy_xhat = workgroup_sum(lid.x, t.y);
    if (lid.x == 0u) {
        store_sums(g, vec2<f32>(s_dy, s_dy_xhat));
    }
}

// backward_data: dx = dy + k * (dy - mean(dy) - xhat * mean(dy * xhat)),
// k = gamma * inv, as dx = (1 + k) * dy + b * xhat + c with the group's
// values worked out once per run of RUN pixels.
@compute @workgroup_size(WG)
fn backward_data(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    if (i >= plane_runs(P.n * P.c, P.hw)) {
        return;
    }
    let r = run_at(i);
    let g = r.group;
    let inv = inverseSqrt(var_in[g] + P.eps);
    let count = f32(group_size());
    let mean_dy = sums_in[2u * g] / count;
    let mean_dy_xhat = sums_in[2u * g + 1u] / count;
    let k = gamma[r.channel] * inv;
    let a = 1.0 + k;
    let b = -k * mean_dy_xhat;
    let c = -k * mean_dy;
    let mean = mean_in[g];
    let beta_c = beta[r.channel];
    if (VEC4) {
        for (var t = 0u; t < RUN; t += 4u) {
            let v = x4[(r.x_at + t) / 4u];
            let d = dy4[(r.y_at + t) / 4u] * act4(block_value4(v, mean, k, beta_c));
            dx4[(r.dx_at + t) / 4u] = fma(vec4<f32>(a), d, fma(vec4<f32>(b), (v - vec4<f32>(mean)) * inv, vec4<f32>(c)));
        }
    } else {
        for (var t = 0u; t < RUN; t++) {
            if (t < r.len) {
                let v = x[r.x_at + t];
                let d = dy[r.y_at + t] * act_factor(block_value(v, mean, k, beta_c));
                dx[r.dx_at + t] = fma(a, d, fma(b, (v - mean) * inv, c));
            }
        }
    }
}

// Channel c's sums of dy and dy * xhat over its groups, in order.
fn channel_sums(c: u32) -> vec2<f32> {
    var s = vec2<f32>(0.0);
    let samples = select(P.n, 1u, PER_CHANNEL);
    for (var n = 0u; n < samples; n++) {
        let g = select(n * P.c + c, c, PER_CHANNEL);
        s += vec2<f32>(sums_in[2u * g], sums_in[2u * g + 1u]);
    }
    return s;
}

// Writes channel c's dgamma and dbeta; returns dbeta.
fn store_param_grads(c: u32) -> f32 {
    let s = channel_sums(c);
    dgamma[c] = s.y;
    dbeta[c] = s.x;
    return s.x;
}

@compute @workgroup_size(WG)
fn param_grads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = element_index(wid, lid, nwg);
    if (c >= P.c) {
        return;
    }
    store_param_grads(c);
}

// param_grads_and_bias: param_grads, and the same sum of dy as the gradient
// of the bias of the convolution whose output is x: that bias's gradient is
// the sum of the block's input gradient, and the block's normalised term
// contributes nothing to it (the xhat of a group sum to zero), leaving the
// identity's, the sum of dy: dbeta. It replaces a pass over dx.
@compute @workgroup_size(WG)
fn param_grads_and_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                        @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = element_index(wid, lid, nwg);
    if (c >= P.c) {
        return;
    }
    input_bias_grad[c] = store_param_grads(c);
}

// The windowed reductions (moments_windows, backward_sums_windows) for CPU
// adapters. llvmpipe loads storage memory lane by lane, a uniform buffer by
// gathers: a scratch reduction of 32 planes of 256x256 took 3.4-4.1 ms
// through 64 KiB windows against 14-15 ms from storage (2026-11-28,
// docs/KERNELS.md). So a launch binds fourteen windows of x (the backward
// sums: seven of x, seven of dy), each holding up to WINDOW_PARTS
// consecutive parts of PART_LEN elements of one plane (P.win), and its
// workgroup w sums part w of every window into
// part_out; combine_moments and combine_sums then merge a group's parts
// (PARTS: its planes' parts, plane by plane) in order. PART_LEN is 4096
// where every window starts aligned, else 4080, which leaves room in a
// window for the start's rounding down to the offset alignment (`PART_LENS`
// in src/ops/norm.rs).
override WINDOWED: bool = false;
override PART_LEN: u32 = 4080u;
const WINDOW_PARTS: u32 = 4u;
// Invocations of a windowed workgroup: one SIMD batch on llvmpipe, each
// summing 128 vec4s of a part. The tree sums cost more than the loads with
// more: lungnet step profiles, moments and backward sums per step, 78 and
// 83 ms with 8, 89 and 110 with 16, 114 and 143 with 32, 164 and 181 with
// 64, 456 and 550 with 256 (storage: 196 and 340; lavapipe, 2026-11-28).
const WIN_WG: u32 = 8u;
// Windows a launch binds (with P, the fifteen uniform buffers a stage may
// have on lavapipe), and backward_sums_windows' windows of x (as many of
// dy). Per launch about 0.05 ms go to the launch itself, about half of a
// four-window launch (lavapipe, 2026-11-28).
const WINDOWS: u32 = 14u;
const SUMS_WINDOWS: u32 = 7u;
@group(0) @binding(19) var<uniform> ww0: array<vec4<f32>, 4096>;
@group(0) @binding(20) var<uniform> ww1: array<vec4<f32>, 4096>;
@group(0) @binding(21) var<uniform> ww2: array<vec4<f32>, 4096>;
@group(0) @binding(22) var<uniform> ww3: array<vec4<f32>, 4096>;
@group(0) @binding(23) var<uniform> ww4: array<vec4<f32>, 4096>;
@group(0) @binding(24) var<uniform> ww5: array<vec4<f32>, 4096>;
@group(0) @binding(25) var<uniform> ww6: array<vec4<f32>, 4096>;
@group(0) @binding(26) var<uniform> ww7: array<vec4<f32>, 4096>;
@group(0) @binding(27) var<uniform> ww8: array<vec4<f32>, 4096>;
@group(0) @binding(28) var<uniform> ww9: array<vec4<f32>, 4096>;
@group(0) @binding(29) var<uniform> ww10: array<vec4<f32>, 4096>;
@group(0) @binding(30) var<uniform> ww11: array<vec4<f32>, 4096>;
@group(0) @binding(31) var<uniform> ww12: array<vec4<f32>, 4096>;
@group(0) @binding(32) var<uniform> ww13: array<vec4<f32>, 4096>;

// Vec4 q of window k (a constant at every call: the switch folds away).
// moments_windows reads x through all WINDOWS; backward_sums_windows x
// through the first SUMS_WINDOWS, dy through the rest. One accessor for
// both: a pipeline binds every variable its entry's code names, so both
// entries bind all fourteen.
fn window(k: u32, q: u32) -> vec4<f32> {
    switch k {
        case 0u: { return ww0[q]; }
        case 1u: { return ww1[q]; }
        case 2u: { return ww2[q]; }
        case 3u: { return ww3[q]; }
        case 4u: { return ww4[q]; }
        case 5u: { return ww5[q]; }
        case 6u: { return ww6[q]; }
        case 7u: { return ww7[q]; }
        case 8u: { return ww8[q]; }
        case 9u: { return ww9[q]; }
        case 10u: { return ww10[q]; }
        case 11u: { return ww11[q]; }
        case 12u: { return ww12[q]; }
        default: { return ww13[q]; }
    }
}

// Part w of window k: its elements [x, y) in x's window and its index in
// part_out (empty where the window has fewer parts).
fn window_part(k: u32, w: u32) -> vec3<u32> {
    let s = P.win[k];
    let a = s.x + min(w * PART_LEN, s.w);
    return vec3<u32>(a, s.x + min((w + 1u) * PART_LEN, s.w), s.z + w);
}

// Which of vec4 q's elements lie in [r.x, r.y).
fn in_part(q: u32, r: vec3<u32>) -> vec4<bool> {
    let e = vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u);
    return e >= vec4<u32>(r.x) & e < vec4<u32>(r.y);
}

// The moments of part w of window k into part_out.
fn window_moments(k: u32, w: u32, lid: u32) {
    let r = window_part(k, w);
    let shift = window(k, min(r.x / 4u, 4095u))[r.x % 4u];
    var s = vec4<f32>(0.0);
    var ss = vec4<f32>(0.0);
    var count = vec4<u32>(0u);
    for (var q = r.x / 4u + lid; 4u * q < r.y; q += WIN_WG) {
        let ok = in_part(q, r);
        let d = select(vec4<f32>(0.0), window(k, q) - shift, ok);
        s += d;
        ss += d * d;
        count += select(vec4<u32>(0u), vec4<u32>(1u), ok);
    }
    let m = merge_moments(lid, WIN_WG, shift, dot(s, vec4<f32>(1.0)), dot(ss, vec4<f32>(1.0)),
                          count.x + count.y + count.z + count.w, r.y - r.x);
    if (lid == 0u && r.y > r.x) {
        part_out[2u * r.z] = m.x;
        part_out[2u * r.z + 1u] = m.y;
    }
}

@compute @workgroup_size(WIN_WG)
fn moments_windows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = group_index(wid, nwg);
    window_moments(0u, w, lid.x);
    window_moments(1u, w, lid.x);
    window_moments(2u, w, lid.x);
    window_moments(3u, w, lid.x);
    window_moments(4u, w, lid.x);
    window_moments(5u, w, lid.x);
    window_moments(6u, w, lid.x);
    window_moments(7u, w, lid.x);
    window_moments(8u, w, lid.x);
    window_moments(9u, w, lid.x);
    window_moments(10u, w, lid.x);
    window_moments(11u, w, lid.x);
    window_moments(12u, w, lid.x);
    window_moments(13u, w, lid.x);
}

// dy masked by the activation's derivative at the block's output for x's
// values v (part_sums' and backward_data's factor, element by element).
fn masked_dy(v: vec4<f32>, d: vec4<f32>, mean: f32, k: f32, beta_c: f32) -> vec4<f32> {
    return d * vec4<f32>(act_factor(block_value(v.x, mean, k, beta_c)), act_factor(block_value(v.y, mean, k, beta_c)),
                         act_factor(block_value(v.z, mean, k, beta_c)), act_factor(block_value(v.w, mean, k, beta_c)));
}

// sum(dy) and sum(dy * xhat) of part w of window k into part_out. x's and
// dy's windows start at the same offset within a vec4 (the host's check).
fn window_sums(k: u32, w: u32, lid: u32) {
    let r = window_part(k, w);
    let g = P.win[k].z / PARTS;
    let c = select(g % P.c, g, PER_CHANNEL);
    let inv = inverseSqrt(var_in[g] + P.eps);
    let mean = mean_in[g];
    let kc = gamma[c] * inv;
    let beta_c = beta[c];
    // dy's vec4 for x's vec4 q (u32 arithmetic wraps; the sum is in range).
    let dq = P.win[k].y / 4u - P.win[k].x / 4u;
    var s_dy = vec4<f32>(0.0);
    var s_dy_xhat = vec4<f32>(0.0);
    for (var q = r.x / 4u + lid; 4u * q < r.y; q += WIN_WG) {
        let v = window(k, q);
        let d = select(vec4<f32>(0.0), masked_dy(v, window(k + SUMS_WINDOWS, q + dq), mean, kc, beta_c),
                       in_part(q, r));
        s_dy += d;
        s_dy_xhat += d * (v - mean) * inv;
    }
    let t_dy = lanes_sum(lid, dot(s_dy, vec4<f32>(1.0)), WIN_WG);
    let t_dy_xhat = lanes_sum(lid, dot(s_dy_xhat, vec4<f32>(1.0)), WIN_WG);
    if (lid == 0u && r.y > r.x) {
        part_out[2u * r.z] = t_dy;
        part_out[2u * r.z + 1u] = t_dy_xhat;
    }
}

@compute @workgroup_size(WIN_WG)
fn backward_sums_windows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                         @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = group_index(wid, nwg);
    window_sums(0u, w, lid.x);
    window_sums(1u, w, lid.x);
    window_sums(2u, w, lid.x);
    window_sums(3u, w, lid.x);
    window_sums(4u, w, lid.x);
    window_sums(5u, w, lid.x);
    window_sums(6u, w, lid.x);
}
