// Optimiser family: torch.optim.Adam and torch.optim.SGD updates, one
// invocation per parameter element. Step-dependent scalars (Adam's bias
// corrections) are computed on the host in f64 and written into Params
// before each step, so the kernel does no pow() in f32.

struct Params {
    len: u32,
    // Adam: lr / (1 - beta1^t); SGD: lr.
    step_size: f32,
    beta1: f32,
    beta2: f32,
    // Adam: sqrt(1 - beta2^t).
    bias2_sqrt: f32,
    eps: f32,
    weight_decay: f32,
    momentum: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> state_a: array<f32>;
@group(0) @binding(4) var<storage, read_write> state_b: array<f32>;

@compute @workgroup_size(WG)
fn adam(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    if (i >= P.len) {
        return;
    }
    let g = grad[i] + P.weight_decay * param[i];
    let m = P.beta1 * state_a[i] + (1.0 - P.beta1) * g;
    let v = P.beta2 * state_b[i] + (1.0 - P.beta2) * g * g;
    state_a[i] = m;
    state_b[i] = v;
    param[i] -= P.step_size * m / (sqrt(v) / P.bias2_sqrt + P.eps);
}

// state_a is the momentum buffer; state_b is unused by SGD.
@compute @workgroup_size(WG)
fn sgd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
       @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = element_index(wid, lid, nwg);
    if (i >= P.len) {
        return;
    }
    let g = grad[i] + P.weight_decay * param[i];
    let b = P.momentum * state_a[i] + g;
    state_a[i] = b;
    param[i] -= P.step_size * select(g, b, P.momentum != 0.0);
}
