//! Oracle of the `fma_chains` microbenchmark (the copy's oracle is the
//! identity): the same f32 chains, fused multiply-adds as WGSL's `fma`.

/// The chains' constants (shaders/bench.wgsl's M and C).
const M: f32 = 1.0 - 1.0 / 1024.0;
const C: f32 = 1.0 / 1024.0;

/// Output of one invocation from its 4 seeds (`iters` a multiple of 4).
pub fn fma_chains(seeds: [f32; 4], iters: u32) -> [f32; 4] {
    let mut out = [0.0f32; 4];
    for (lane, &seed) in seeds.iter().enumerate() {
        let mut acc: [f32; 8] = std::array::from_fn(|k| seed + 0.125 * k as f32);
        for _ in 0..iters {
            for a in &mut acc {
                *a = a.mul_add(M, C);
            }
        }
        out[lane] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    }
    out
}
