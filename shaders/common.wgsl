// Shared helpers, prepended to every kernel family's source when it is
// compiled (src/gpu/shaders.rs), so each family stays one file without
// copies of these.
//
// Grids: a dispatch is limited to 65535 workgroups per dimension, so the
// host folds long 1-D grids into 2-D ones (src/gpu/dispatch.rs, `Grid`);
// these helpers unfold them.

// Invocations per workgroup of every kernel, and the reduction width.
const WG: u32 = 256u;

// Index of this invocation in a folded 1-D grid of elements.
fn element_index(wid: vec3<u32>, lid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

// Index of this workgroup in a folded 1-D grid of workgroups.
fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// Flat index of (sample n, channel c, pixel p) in a channel slice of a
// buffer holding `c_total` channels, the slice starting at `c_off`. This is
// how a layer reads or writes its part of the concatenation buffer in place.
fn slice_index(n: u32, c: u32, p: u32, hw: u32, c_total: u32, c_off: u32) -> u32 {
    return (n * c_total + c_off + c) * hw + p;
}

// (n, c, p) of element i of an N x C x HW tensor, in NCHW order.
fn unflatten(i: u32, c: u32, hw: u32) -> vec3<u32> {
    return vec3<u32>(i / (hw * c), (i / hw) % c, i % hw);
}

// Pixels per invocation (or per trip of a strided loop) of the kernels that
// walk planes in runs, set by the host for every pipeline (Gpu::run_length):
// 8 on CPU adapters, where the per-plane values (statistics, offsets), the
// integer divisions that find the plane (eight scalar ones each on
// llvmpipe) and the loop's own bookkeeping are then paid once per run, not
// per element; 1 on GPUs, whose neighbouring invocations then read
// neighbouring elements (coalesced), as measured before runs existed.
override RUN: u32 = 1u;

// Runs covering `planes` planes of `hw` pixels (the grid of a run kernel).
fn plane_runs(planes: u32, hw: u32) -> u32 {
    return planes * ((hw + RUN - 1u) / RUN);
}

// Run i as (plane, first pixel); a run never crosses planes.
fn plane_run(i: u32, hw: u32) -> vec2<u32> {
    let per_plane = (hw + RUN - 1u) / RUN;
    return vec2<u32>(i / per_plane, (i % per_plane) * RUN);
}

var<workgroup> reduce_scratch: array<f32, WG>;

// Sum of `v` over the workgroup, in a fixed tree order: deterministic and
// free of float atomics. Every invocation of the workgroup must call it.
fn workgroup_sum(lid: u32, v: f32) -> f32 {
    return lanes_sum(lid, v, WG);
}

// workgroup_sum for a workgroup of `lanes` invocations (a power of two, at
// most WG).
fn lanes_sum(lid: u32, v: f32, lanes: u32) -> f32 {
    reduce_scratch[lid] = v;
    workgroupBarrier();
    for (var stride = lanes / 2u; stride > 0u; stride = stride >> 1u) {
        if (lid < stride) {
            reduce_scratch[lid] = reduce_scratch[lid] + reduce_scratch[lid + stride];
        }
        workgroupBarrier();
    }
    let total = reduce_scratch[0];
    workgroupBarrier();
    return total;
}

// The dropout mask (dropout.wgsl, and conv.wgsl's fused head dropout; the
// CPU's is nn::dropout_uniform): Chris Wellons' lowbias32 integer hash,
// chained over (seed, step, element index).
fn lowbias32(v: u32) -> u32 {
    var h = v;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}

// The mask's key for a seed and step, worked out once per invocation or run.
fn dropout_key(seed: u32, step: u32) -> u32 {
    return lowbias32(seed ^ lowbias32(step + 0x9e3779b9u));
}

// Uniform in [0, 1): the top 24 bits of the keyed hash of the element index.
fn dropout_uniform(key: u32, index: u32) -> f32 {
    return f32(lowbias32(index ^ key) >> 8u) * (1.0 / 16777216.0);
}
