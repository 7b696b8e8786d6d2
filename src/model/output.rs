//! From the network's raw output to a per-pixel foreground score and
//! decision (MODEL.md): the class-1 probability of a 2-class softmax, the
//! sigmoid, or the linear output itself, compared with the threshold;
//! multi-class softmax takes the argmax (ties to the lower class), and a
//! pixel counts as foreground when its class is not 0.

use super::config::{ModelConfig, OutputKind};

/// Foreground scores of one sample's logits (C x H x W), H x W values.
/// Multi-class outputs give 1.0 where the argmax is not class 0, else 0.0.
pub fn foreground_scores(cfg: &ModelConfig, logits: &[f32], plane: usize) -> Vec<f32> {
    let c = cfg.out_channels;
    match cfg.output {
        OutputKind::Linear => logits[..plane].to_vec(),
        OutputKind::Sigmoid => logits[..plane].iter().map(|&z| 1.0 / (1.0 + (-z).exp())).collect(),
        OutputKind::Softmax if c == 2 => (0..plane)
            .map(|p| {
                let (z0, z1) = (logits[p], logits[plane + p]);
                // softmax's class-1 probability, stable for large logits.
                1.0 / (1.0 + (z0 - z1).exp())
            })
            .collect(),
        OutputKind::Softmax => (0..plane)
            .map(|p| {
                let best = (0..c).fold(0, |b, k| if logits[k * plane + p] > logits[b * plane + p] { k } else { b });
                if best == 0 {
                    0.0
                } else {
                    1.0
                }
            })
            .collect(),
    }
}

/// The decision threshold MODEL.md sets when the checkpoint records none.
pub const DEFAULT_THRESHOLD: f32 = 0.5;
