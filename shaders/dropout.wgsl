// Dropout family: inverted dropout, b = a * keep / (1 - p), with the keep
// decision hashed from (seed, step, element index), so the
// backward pass (the same kernel on the gradient: dropout is linear) and the
// CPU reference (src/nn.rs, `dropout_uniform`) reproduce the mask exactly
// without a mask buffer. One invocation per run of RUN pixels of a plane
// (common.wgsl); a and b are channel
// slices of their buffers. The hashed index is the element's index in the
// whole tensor the mask covers (m_ctotal channels, this view at m_coff): the
// concatenation is dropped out part by part with the mask of the whole.

struct Params {
    n: u32,
    c: u32,
    hw: u32,
    p: f32,
    seed: u32,
    step: u32,
    a_ctotal: u32,
    a_coff: u32,
    b_ctotal: u32,
    b_coff: u32,
    m_ctotal: u32,
    m_coff: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(WG)
fn apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    if (i >= plane_runs(P.n * P.c, P.hw)) {
        return;
    }
    let r = plane_run(i, P.hw);
    let n = r.x / P.c;
    let c = r.x % P.c;
    let m = slice_index(n, c, r.y, P.hw, P.m_ctotal, P.m_coff);
    let a = slice_index(n, c, r.y, P.hw, P.a_ctotal, P.a_coff);
    let b = slice_index(n, c, r.y, P.hw, P.b_ctotal, P.b_coff);
    let key = dropout_key(P.seed, P.step);
    let kept = 1.0 - P.p;
    let end = min(RUN, P.hw - r.y);
    for (var t = 0u; t < RUN; t++) {
        if (t < end) {
            let keep = dropout_uniform(key, m + t) >= P.p;
            dst[b + t] = select(0.0, src[a + t] / kept, keep);
        }
    }
}
