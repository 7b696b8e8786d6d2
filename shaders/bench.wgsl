// Bench family: the two microbenchmarks that `dilaseg bench` divides its
// workloads' rates by (BENCH.md's "fraction of peak"). CPU oracle:
// cpu::bench.
//
// - fma_chains: per invocation, CHAINS independent multiply-add chains of
//   `iters` steps each (`iters` a multiple of 4) (independent so the adapter can overlap their
//   latencies), seeded from `src`; the sum goes to `dst` so no step is dead
//   code. `iters` is a uniform, so the compiler cannot fold the loop.
// - copy: dst = src, vec4 at a time: the bandwidth any streaming kernel
//   can hope for.

struct Params {
    len: u32,
    iters: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

// Contracts towards 1: a -> a * M + (1 - M) stays finite for any length.
const M: f32 = 0.9990234375;
const C: f32 = 0.0009765625;

@compute @workgroup_size(WG)
fn fma_chains(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    if (i >= P.len) {
        return;
    }
    // Eight vec4 accumulators: 32 independent chains, four steps per trip
    // so the loop's own bookkeeping is small beside the arithmetic.
    var a0 = src[i];
    var a1 = a0 + vec4<f32>(0.125);
    var a2 = a0 + vec4<f32>(0.25);
    var a3 = a0 + vec4<f32>(0.375);
    var a4 = a0 + vec4<f32>(0.5);
    var a5 = a0 + vec4<f32>(0.625);
    var a6 = a0 + vec4<f32>(0.75);
    var a7 = a0 + vec4<f32>(0.875);
    let m = vec4<f32>(M);
    let c = vec4<f32>(C);
    for (var k = 0u; k < P.iters; k += 4u) {
        a0 = fma(fma(fma(fma(a0, m, c), m, c), m, c), m, c);
        a1 = fma(fma(fma(fma(a1, m, c), m, c), m, c), m, c);
        a2 = fma(fma(fma(fma(a2, m, c), m, c), m, c), m, c);
        a3 = fma(fma(fma(fma(a3, m, c), m, c), m, c), m, c);
        a4 = fma(fma(fma(fma(a4, m, c), m, c), m, c), m, c);
        a5 = fma(fma(fma(fma(a5, m, c), m, c), m, c), m, c);
        a6 = fma(fma(fma(fma(a6, m, c), m, c), m, c), m, c);
        a7 = fma(fma(fma(fma(a7, m, c), m, c), m, c), m, c);
    }
    dst[i] = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
}

@compute @workgroup_size(WG)
fn copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    // One vec4 per invocation: on lavapipe this measured 1.6 GB/s against
    // 1.0 GB/s for a grid-stride loop (2026-11-27), and a GPU coalesces it.
    let i = element_index(wid, lid, nwg);
    if (i < P.len) {
        dst[i] = src[i];
    }
}
