//! Descriptions of the network's operations, shared by the CPU reference
//! (`cpu/`) and the GPU kernels (`ops/`), so both read the same constants.

/// Epsilon of every norm (MODEL.md: eps = 1e-3 for instance and batch norm).
pub const NORM_EPS: f32 = 1e-3;

/// Momentum of the running-statistics update (PyTorch BatchNorm2d default).
pub const BN_MOMENTUM: f32 = 0.1;

/// Over which elements a norm takes its statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormStats {
    /// Instance norm: one group per (n, c), over H x W.
    PerSample,
    /// Batch norm in training: one group per channel, over N x H x W.
    PerChannel,
}

impl NormStats {
    /// Number of statistic groups for `n` samples of `c` channels.
    pub fn groups(self, n: usize, c: usize) -> usize {
        match self {
            NormStats::PerSample => n * c,
            NormStats::PerChannel => c,
        }
    }

    /// The group holding sample `n`, channel `c`.
    pub fn group(self, n: usize, c: usize, channels: usize) -> usize {
        match self {
            NormStats::PerSample => n * channels + c,
            NormStats::PerChannel => c,
        }
    }
}

/// ReLU (`slope` 0) or LeakyReLU (`slope` > 0): `y = x > 0 ? x : slope * x`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Activation {
    pub slope: f32,
}

impl Activation {
    pub const RELU: Activation = Activation { slope: 0.0 };
    /// PyTorch's default LeakyReLU slope.
    pub const LEAKY_RELU: Activation = Activation { slope: 0.01 };
}

/// Which terms a sigmoid output is trained with (MODEL.md: BCE, soft Dice or their sum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SigmoidLoss {
    pub bce: bool,
    pub dice: bool,
}

/// torch.optim.Adam's hyper-parameters (weight decay in PyTorch's L2 form).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adam {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Adam {
    /// PyTorch's defaults at learning rate `lr`.
    pub fn with_lr(lr: f32) -> Self {
        Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// torch.optim.SGD's hyper-parameters (no dampening, no Nesterov).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

/// The dropout mask's counter-based hash: a seed, a step and an element's
/// index within its tensor reproduce the same keep/drop decision on the CPU
/// and in `shaders/dropout.wgsl` (`dropout_uniform`), with no mask buffer.
///
/// The hash is Chris Wellons' `lowbias32`, chained over (seed, step, index);
/// the top 24 bits give a uniform in [0, 1) exactly representable in f32.
pub fn dropout_uniform(seed: u32, step: u32, index: u32) -> f32 {
    let key = lowbias32(seed ^ lowbias32(step.wrapping_add(0x9e37_79b9)));
    let bits = lowbias32(index ^ key);
    (bits >> 8) as f32 * (1.0 / 16_777_216.0)
}

fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// Whether dropout with probability `p` keeps the element (inverted dropout
/// scales kept elements by 1 / (1 - p)).
pub fn dropout_keeps(seed: u32, step: u32, index: u32, p: f32) -> bool {
    dropout_uniform(seed, step, index) >= p
}
