// Elementwise family: the activation (ReLU when slope = 0, LeakyReLU
// otherwise), its backward, and the per-layer residual add.
// One invocation per element of an (n, c, hw) view; `a` and `b` are channel
// slices (c_total, c_off) of their buffers.
//
// - act_forward:  b = act(a)            (src -> dst)
// - act_backward: b *= act'(a), where a is the activation's OUTPUT (y > 0
//   exactly where x > 0), in place on the gradient b
// - add:          b += a (src -> dst): the residual x_i += x_{i-1} and its
//   backward, between parts of the concatenation in separate buffers
// - add_within:   b += a, both slices of ONE buffer (bound once, read-write):
//   the same between parts that share a buffer, which cannot be bound
//   twice in one dispatch

struct Params {
    n: u32,
    c: u32,
    hw: u32,
    slope: f32,
    a_ctotal: u32,
    a_coff: u32,
    b_ctotal: u32,
    b_coff: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

// (index in a, index in b, 1 if element i exists else 0).
fn indices(i: u32) -> vec3<u32> {
    let e = unflatten(i, P.c, P.hw);
    return vec3<u32>(slice_index(e.x, e.y, e.z, P.hw, P.a_ctotal, P.a_coff),
                     slice_index(e.x, e.y, e.z, P.hw, P.b_ctotal, P.b_coff),
                     select(0u, 1u, i < P.n * P.c * P.hw));
}

@compute @workgroup_size(WG)
fn act_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let ix = indices(element_index(wid, lid, nwg));
    if (ix.z == 0u) {
        return;
    }
    let v = src[ix.x];
    dst[ix.y] = select(P.slope * v, v, v > 0.0);
}

@compute @workgroup_size(WG)
fn act_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let ix = indices(element_index(wid, lid, nwg));
    if (ix.z == 0u) {
        return;
    }
    dst[ix.y] = select(P.slope * dst[ix.y], dst[ix.y], src[ix.x] > 0.0);
}

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
       @builtin(num_workgroups) nwg: vec3<u32>) {
    let ix = indices(element_index(wid, lid, nwg));
    if (ix.z == 0u) {
        return;
    }
    dst[ix.y] += src[ix.x];
}

@compute @workgroup_size(WG)
fn add_within(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let ix = indices(element_index(wid, lid, nwg));
    if (ix.z == 0u) {
        return;
    }
    dst[ix.y] += dst[ix.x];
}
