// Convolution family: 'same' zero padding, stride 1, a K x K kernel (K is the
// pipeline constant, 3 or 1) with any dilation, weights OIHW, bias.
//
// Mapping (the plain baseline; tiled variants come with kernel tuning):
// - forward: one invocation per output element (n, co, y, x), summing
//   Cin * K * K taps;
// - backward_data: one invocation per input element (n, ci, y, x): the
//   transposed convolution, optionally accumulated into the destination
//   (a concat slice collects gradients from several consumers);
// - backward_weight: one workgroup per weight (co, ci, ky, kx), its
//   invocations striding over N x H x W and reduced in a fixed tree;
// - backward_bias: one workgroup per output channel, likewise.
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
    _pad: u32,
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
