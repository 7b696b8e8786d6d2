//! Parameter values on the host: initialisation (MODEL.md) and lookup by
//! name. The checkpoint writes them and the GPU graph uploads them.

use super::config::Init;
use super::{Architecture, ParamKind, ParamSpec};
use crate::rng::Rng;

/// Every tensor of a model, in `Architecture::params` order.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSet {
    pub specs: Vec<ParamSpec>,
    pub values: Vec<Vec<f32>>,
}

impl ParamSet {
    /// MODEL.md's initialisation: conv weights by the config's `init`
    /// (he_normal: std sqrt(2 / fan_in), fan_in = Cin * kh * kw), all drawn
    /// in checkpoint order from one generator seeded with `seed`; biases 0,
    /// gamma 1, beta 0, running mean 0, running var 1.
    pub fn init(arch: &Architecture, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let specs = arch.params();
        let values = specs
            .iter()
            .map(|s| {
                let n = s.shape.numel();
                match s.kind {
                    ParamKind::ConvWeight => {
                        let std = match arch.config.init {
                            Init::HeNormal => (2.0 / (s.shape.c * s.shape.h * s.shape.w) as f64).sqrt(),
                            Init::NormalStd(std) => std as f64,
                        };
                        (0..n).map(|_| (rng.normal() * std) as f32).collect()
                    }
                    ParamKind::NormWeight | ParamKind::RunningVar => vec![1.0; n],
                    ParamKind::ConvBias | ParamKind::NormBias | ParamKind::RunningMean => vec![0.0; n],
                }
            })
            .collect();
        ParamSet { specs, values }
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| s.name == name)
    }

    /// The values of tensor `name`. Panics on a name the architecture does
    /// not have: callers derive names from the same architecture.
    pub fn get(&self, name: &str) -> &[f32] {
        let i = self.index(name).unwrap_or_else(|| panic!("no parameter {name}"));
        &self.values[i]
    }

    pub fn get_f64(&self, name: &str) -> Vec<f64> {
        self.get(name).iter().map(|&v| v as f64).collect()
    }
}
