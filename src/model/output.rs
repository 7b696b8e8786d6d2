//! From the network's raw output to a per-pixel foreground score and
//! decision (MODEL.md): the class-1 probability of a 2-class softmax, the
//! sigmoid, or the linear output itself, compared with the threshold;
//! multi-class softmax takes the argmax (ties to the lower class), and a
//! pixel counts as foreground when its class is not 0.

use super::config::{ModelConfig, OutputKind};

/// The network's output after its output function: softmax over channels,
/// sigmoid, or the linear output as it is. `logits` is one sample, C x plane.
pub fn activate(cfg: &ModelConfig, logits: &[f32], plane: usize) -> Vec<f32> {
    let c = cfg.out_channels;
    match cfg.output {
        OutputKind::Linear => logits.to_vec(),
        OutputKind::Sigmoid => logits.iter().map(|&z| 1.0 / (1.0 + (-z).exp())).collect(),
        OutputKind::Softmax => {
            let mut out = vec![0.0; c * plane];
            for p in 0..plane {
                let max = (0..c).map(|k| logits[k * plane + p]).fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = (0..c).map(|k| (logits[k * plane + p] - max).exp()).sum();
                for k in 0..c {
                    out[k * plane + p] = (logits[k * plane + p] - max).exp() / sum;
                }
            }
            out
        }
    }
}

/// Foreground scores from an activated output (C x plane): the class-1
/// probability of a 2-class softmax, the sigmoid or linear value; for
/// multi-class softmax 1.0 where the argmax is not class 0, else 0.0.
pub fn scores(cfg: &ModelConfig, output: &[f32], plane: usize) -> Vec<f32> {
    let c = cfg.out_channels;
    match cfg.output {
        OutputKind::Softmax if c == 2 => output[plane..2 * plane].to_vec(),
        OutputKind::Softmax => (0..plane)
            .map(|p| {
                let best = (0..c).fold(0, |b, k| if output[k * plane + p] > output[b * plane + p] { k } else { b });
                if best == 0 {
                    0.0
                } else {
                    1.0
                }
            })
            .collect(),
        _ => output[..plane].to_vec(),
    }
}

/// Foreground scores straight from one sample's logits.
pub fn foreground_scores(cfg: &ModelConfig, logits: &[f32], plane: usize) -> Vec<f32> {
    scores(cfg, &activate(cfg, logits, plane), plane)
}

/// The decision threshold MODEL.md sets when the checkpoint records none.
pub const DEFAULT_THRESHOLD: f32 = 0.5;
