// Elementwise family: the activation (ReLU when slope = 0, LeakyReLU
// otherwise), its backward, and the per-layer residual add.
// One invocation per run of RUN pixels of an (n, c, hw) view; `a`, `b`
// and `g` are channel slices (c_total, c_off) of their buffers.
//
// - act_forward:  b = act(a)            (src -> dst)
// - act_backward: b = g * act'(a), where a is the activation's output or
//   its input (the same sign), g the output's gradient (grad -> dst): out
//   of place, since g may lie in the concatenation's gradient beside the
//   block input's, which the convolution's data pass then writes
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
    g_ctotal: u32,
    g_coff: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> grad: array<f32>;

// Invocation i's run of RUN pixels (common.wgsl): (first index in a,
// first index in b, pixels in the run; 0 past the last run).
fn run_indices(i: u32) -> vec3<u32> {
    if (i >= plane_runs(P.n * P.c, P.hw)) {
        return vec3<u32>(0u);
    }
    let r = plane_run(i, P.hw);
    return vec3<u32>(run_start(r, P.a_ctotal, P.a_coff), run_start(r, P.b_ctotal, P.b_coff), min(RUN, P.hw - r.y));
}

// The first index of run r (plane, first pixel) in a slice (c_total, c_off).
fn run_start(r: vec2<u32>, c_total: u32, c_off: u32) -> u32 {
    return slice_index(r.x / P.c, r.x % P.c, r.y, P.hw, c_total, c_off);
}

@compute @workgroup_size(WG)
fn act_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = run_indices(element_index(wid, lid, nwg));
    for (var t = 0u; t < RUN; t++) {
        if (t < r.z) {
            let v = src[r.x + t];
            dst[r.y + t] = select(P.slope * v, v, v > 0.0);
        }
    }
}

@compute @workgroup_size(WG)
fn act_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    let r = run_indices(i);
    let at = run_start(plane_run(i, P.hw), P.g_ctotal, P.g_coff);
    for (var t = 0u; t < RUN; t++) {
        if (t < r.z) {
            let g = grad[at + t];
            dst[r.y + t] = select(P.slope * g, g, src[r.x + t] > 0.0);
        }
    }
}

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
       @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = run_indices(element_index(wid, lid, nwg));
    for (var t = 0u; t < RUN; t++) {
        if (t < r.z) {
            dst[r.y + t] += src[r.x + t];
        }
    }
}

@compute @workgroup_size(WG)
fn add_within(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = run_indices(element_index(wid, lid, nwg));
    for (var t = 0u; t < RUN; t++) {
        if (t < r.z) {
            dst[r.y + t] += dst[r.x + t];
        }
    }
}
