// Loss family: output functions and losses, with their gradients with
// respect to the logits. Targets hold one value per pixel (a class index for
// softmax, 0 or 1 otherwise); m = n * hw pixels.
//
// Batch-wide sums need no float atomics: reduce (ONE workgroup) sums the
// per-pixel terms in a fixed order into sums = [s0, s1, s2, loss]; the loss
// is the only value a training step may read back. With PARTS > 1,
// reduce_parts first sums PARTS ranges of pixels, a workgroup each, and
// reduce sums their sums in order (one workgroup over 131072 pixels took
// 0.11 ms on an H200). Terms per pixel
// (softmax: w * nll, w; sigmoid: bce, p * t, p + t; mse: (z - t)^2); the
// host binds class weights of 1 for unweighted cross-entropy.
//
// Two stages where the gradient's normaliser is known before the step
// (softmax_loss, sigmoid_loss for BCE alone, mse_loss: terms, probabilities
// and gradient in one pass, then reduce); three where it is not (Dice:
// sigmoid_terms, reduce, sigmoid_grad from the sums).

struct Params {
    n: u32,
    c: u32,
    hw: u32,
    kind: u32,
    bce: u32,
    dice: u32,
    _pad0: u32,
    _pad1: u32,
}

const SOFTMAX: u32 = 0u;
const SIGMOID: u32 = 1u;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> truth: array<f32>;
@group(0) @binding(3) var<storage, read> class_weights: array<f32>;
@group(0) @binding(4) var<storage, read_write> probs: array<f32>;
@group(0) @binding(5) var<storage, read_write> terms: array<f32>;
@group(0) @binding(6) var<storage, read> terms_in: array<f32>;
@group(0) @binding(7) var<storage, read_write> sums: array<f32>;
@group(0) @binding(8) var<storage, read> sums_in: array<f32>;
@group(0) @binding(9) var<storage, read_write> grad: array<f32>;
@group(0) @binding(10) var<storage, read> weight_total: array<f32>;

fn pixels() -> u32 {
    return P.n * P.hw;
}

fn logit_index(pixel: u32, c: u32) -> u32 {
    return (pixel / P.hw * P.c + c) * P.hw + pixel % P.hw;
}

fn max_logit(pixel: u32) -> f32 {
    var m = logits[logit_index(pixel, 0u)];
    for (var c = 1u; c < P.c; c++) {
        m = max(m, logits[logit_index(pixel, c)]);
    }
    return m;
}

fn sum_exp(pixel: u32, m: f32) -> f32 {
    var s = 0.0;
    for (var c = 0u; c < P.c; c++) {
        s += exp(logits[logit_index(pixel, c)] - m);
    }
    return s;
}

fn sigmoid(z: f32) -> f32 {
    let e = exp(-abs(z));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), z >= 0.0);
}

// softmax_loss: probabilities, the terms and the gradient in one pass over
// the logits. The gradient's normaliser, the batch's total class weight,
// depends only on the targets, so the host sums it when it writes them
// (`Loss::write_target`) and no batch-wide sum on the device comes first.
@compute @workgroup_size(WG)
fn softmax_loss(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    if (i >= pixels()) {
        return;
    }
    let m = max_logit(i);
    let s = sum_exp(i, m);
    let y = u32(truth[i]);
    let w = class_weights[y];
    let scale = w / weight_total[0];
    for (var c = 0u; c < P.c; c++) {
        let k = logit_index(i, c);
        let p = exp(logits[k] - m) / s;
        probs[k] = p;
        grad[k] = scale * (p - select(0.0, 1.0, c == y));
    }
    terms[3u * i] = w * (log(s) + m - logits[logit_index(i, y)]);
    terms[3u * i + 1u] = w;
    terms[3u * i + 2u] = 0.0;
}

// The sigmoid output and loss terms of pixel i (its probability returned).
fn sigmoid_pixel(i: u32) -> f32 {
    let z = logits[i];
    let t = truth[i];
    let p = sigmoid(z);
    probs[i] = p;
    // softplus(z) - t z, stable for large |z|.
    terms[3u * i] = max(z, 0.0) + log(1.0 + exp(-abs(z))) - t * z;
    terms[3u * i + 1u] = p * t;
    terms[3u * i + 2u] = p + t;
    return p;
}

// sigmoid_terms: the first of three stages where Dice is on (its gradient
// needs the batch's sums, reduce's output).
@compute @workgroup_size(WG)
fn sigmoid_terms(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    if (i >= pixels()) {
        return;
    }
    sigmoid_pixel(i);
}

// sigmoid_loss: binary cross-entropy alone, terms and gradient in one pass
// (its normaliser is the pixel count).
@compute @workgroup_size(WG)
fn sigmoid_loss(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    if (i >= pixels()) {
        return;
    }
    grad[i] = (sigmoid_pixel(i) - truth[i]) / f32(pixels());
}

// mse_loss: terms and gradient in one pass.
@compute @workgroup_size(WG)
fn mse_loss(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    if (i >= pixels()) {
        return;
    }
    let d = logits[i] - truth[i];
    terms[3u * i] = d * d;
    terms[3u * i + 1u] = 0.0;
    terms[3u * i + 2u] = 0.0;
    grad[i] = 2.0 * d / f32(pixels());
}

override PARTS: u32 = 1u;

// Rows first..end of terms_in summed by the workgroup (every invocation of
// it must call it), in a fixed order.
fn rows_sum(lid: u32, first: u32, end: u32) -> vec3<f32> {
    var a = vec3<f32>(0.0);
    for (var i = first + lid; i < end; i += WG) {
        a += vec3<f32>(terms_in[3u * i], terms_in[3u * i + 1u], terms_in[3u * i + 2u]);
    }
    let s0 = workgroup_sum(lid, a.x);
    let s1 = workgroup_sum(lid, a.y);
    return vec3<f32>(s0, s1, workgroup_sum(lid, a.z));
}

// reduce_parts: workgroup w's range of the pixels' terms summed into row w
// of `terms` (bound to the parts' sums).
@compute @workgroup_size(WG)
fn reduce_parts(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = group_index(wid, nwg);
    if (w >= PARTS) {
        return;
    }
    let per = (pixels() + PARTS - 1u) / PARTS;
    let s = rows_sum(lid.x, min(w * per, pixels()), min((w + 1u) * per, pixels()));
    if (lid.x == 0u) {
        terms[3u * w] = s.x;
        terms[3u * w + 1u] = s.y;
        terms[3u * w + 2u] = s.z;
    }
}

// reduce: the sums and the loss from terms_in, the pixels' terms or with
// PARTS > 1 the parts' sums.
@compute @workgroup_size(WG)
fn reduce(@builtin(local_invocation_id) lid: vec3<u32>) {
    let s = rows_sum(lid.x, 0u, select(pixels(), PARTS, PARTS > 1u));
    let s0 = s.x;
    let s1 = s.y;
    let s2 = s.z;
    if (lid.x == 0u) {
        let m = f32(pixels());
        var loss = s0 / m;
        if (P.kind == SOFTMAX) {
            loss = s0 / s1;
        } else if (P.kind == SIGMOID) {
            loss = select(0.0, s0 / m, P.bce != 0u) + select(0.0, 1.0 - (2.0 * s1 + 1.0) / (s2 + 1.0), P.dice != 0u);
        }
        sums[0] = s0;
        sums[1] = s1;
        sums[2] = s2;
        sums[3] = loss;
    }
}

// sigmoid_grad: the third stage with Dice on.
@compute @workgroup_size(WG)
fn sigmoid_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    if (i >= pixels()) {
        return;
    }
    let p = sigmoid(logits[i]);
    let t = truth[i];
    var g = 0.0;
    if (P.bce != 0u) {
        g += (p - t) / f32(pixels());
    }
    if (P.dice != 0u) {
        let num = 2.0 * sums_in[1] + 1.0;
        let den = sums_in[2] + 1.0;
        g += -(2.0 * t * den - num) / (den * den) * p * (1.0 - p);
    }
    grad[i] = g;
}

