// Norm family: the norm block y = x + gamma * (x - mean) / sqrt(var + eps) + beta
// (MODEL.md), for instance norm (stats = 0: a group per (n, c) over H x W)
// and batch norm (stats = 1: a group per channel over N x H x W).
//
// Mapping:
// - moments: one workgroup per group; two passes over the group (mean,
//   then the centred sum of squares), each reduced in a fixed tree. Sound
//   on post-ReLU activations with large means, no float atomics;
// - apply: one invocation per element, statistics read per group. With
//   running statistics (inference) the host passes them as the moments
//   with stats = 1;
// - update_running: one invocation per channel, PyTorch's momentum update
//   with the unbiased variance;
// - backward_sums: one workgroup per group: sum(dy) and sum(dy * xhat);
// - backward_data: one invocation per element;
// - param_grads: one invocation per channel, summing its groups in order.
// x and y may be channel slices of larger buffers; dy has y's layout and
// dx has x's layout.

struct Params {
    n: u32,
    c: u32,
    hw: u32,
    stats: u32,
    x_ctotal: u32,
    x_coff: u32,
    y_ctotal: u32,
    y_coff: u32,
    eps: f32,
    momentum: f32,
    _pad0: u32,
    _pad1: u32,
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

fn group_count() -> u32 {
    return select(P.n * P.c, P.c, P.stats == 1u);
}

fn group_of(n: u32, c: u32) -> u32 {
    return select(n * P.c + c, c, P.stats == 1u);
}

// Elements per group.
fn group_size() -> u32 {
    return select(P.hw, P.n * P.hw, P.stats == 1u);
}

// The j-th element of group g as (n, c, p).
fn group_element(g: u32, j: u32) -> vec3<u32> {
    if (P.stats == 1u) {
        return vec3<u32>(j / P.hw, g, j % P.hw);
    }
    return vec3<u32>(g / P.c, g % P.c, j);
}

fn x_at(e: vec3<u32>) -> f32 {
    return x[slice_index(e.x, e.y, e.z, P.hw, P.x_ctotal, P.x_coff)];
}

fn dy_at(e: vec3<u32>) -> f32 {
    return dy[slice_index(e.x, e.y, e.z, P.hw, P.y_ctotal, P.y_coff)];
}

@compute @workgroup_size(WG)
fn moments(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    if (g >= group_count()) {
        return;
    }
    let count = group_size();
    var s = 0.0;
    for (var j = lid.x; j < count; j += WG) {
        s += x_at(group_element(g, j));
    }
    let mean = workgroup_sum(lid.x, s) / f32(count);
    var ss = 0.0;
    for (var j = lid.x; j < count; j += WG) {
        let d = x_at(group_element(g, j)) - mean;
        ss += d * d;
    }
    let variance = workgroup_sum(lid.x, ss) / f32(count);
    if (lid.x == 0u) {
        mean_out[g] = mean;
        var_out[g] = variance;
    }
}

@compute @workgroup_size(WG)
fn apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    if (i >= P.n * P.c * P.hw) {
        return;
    }
    let e = unflatten(i, P.c, P.hw);
    let g = group_of(e.x, e.y);
    let v = x_at(e);
    let xhat = (v - mean_in[g]) * inverseSqrt(var_in[g] + P.eps);
    y[slice_index(e.x, e.y, e.z, P.hw, P.y_ctotal, P.y_coff)] = v + gamma[e.y] * xhat + beta[e.y];
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

@compute @workgroup_size(WG)
fn backward_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    if (g >= group_count()) {
        return;
    }
    let inv = inverseSqrt(var_in[g] + P.eps);
    var s_dy = 0.0;
    var s_dy_xhat = 0.0;
    for (var j = lid.x; j < group_size(); j += WG) {
        let e = group_element(g, j);
        let d = dy_at(e);
        s_dy += d;
        s_dy_xhat += d * (x_at(e) - mean_in[g]) * inv;
    }
    let t_dy = workgroup_sum(lid.x, s_dy);
    let t_dy_xhat = workgroup_sum(lid.x, s_dy_xhat);
    if (lid.x == 0u) {
        sums_out[2u * g] = t_dy;
        sums_out[2u * g + 1u] = t_dy_xhat;
    }
}

@compute @workgroup_size(WG)
fn backward_data(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    if (i >= P.n * P.c * P.hw) {
        return;
    }
    let e = unflatten(i, P.c, P.hw);
    let g = group_of(e.x, e.y);
    let inv = inverseSqrt(var_in[g] + P.eps);
    let xhat = (x_at(e) - mean_in[g]) * inv;
    let count = f32(group_size());
    let d = dy_at(e);
    let mean_dy = sums_in[2u * g] / count;
    let mean_dy_xhat = sums_in[2u * g + 1u] / count;
    dx[slice_index(e.x, e.y, e.z, P.hw, P.x_ctotal, P.x_coff)] = d + gamma[e.y] * inv * (d - mean_dy - xhat * mean_dy_xhat);
}

@compute @workgroup_size(WG)
fn param_grads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = element_index(wid, lid, nwg);
    if (c >= P.c) {
        return;
    }
    var s_dy = 0.0;
    var s_dy_xhat = 0.0;
    let samples = select(P.n, 1u, P.stats == 1u);
    for (var n = 0u; n < samples; n++) {
        let g = group_of(n, c);
        s_dy += sums_in[2u * g];
        s_dy_xhat += sums_in[2u * g + 1u];
    }
    dgamma[c] = s_dy_xhat;
    dbeta[c] = s_dy;
}
