//! Channel concatenation and its backward (the split of the gradient).
//! The GPU path never copies: each producer writes its channel slice of one
//! buffer. This is the plain statement of what that must equal.

use super::Tensor;

pub fn concat(parts: &[&Tensor]) -> Tensor {
    let first = parts.first().expect("concat of nothing").shape;
    let channels = parts.iter().map(|t| t.shape.c).sum();
    let mut out = Tensor::zeros(first.with_c(channels));
    let plane = first.plane();
    for n in 0..first.n {
        let mut c0 = 0;
        for t in parts {
            assert_eq!((t.shape.n, t.shape.h, t.shape.w), (first.n, first.h, first.w), "concat shapes");
            let src = &t.data[t.shape.index(n, 0, 0, 0)..][..t.shape.c * plane];
            let dst = out.shape.index(n, c0, 0, 0);
            out.data[dst..dst + src.len()].copy_from_slice(src);
            c0 += t.shape.c;
        }
    }
    out
}

/// Channels `[c0, c0 + c)` of `t`: the gradient slice one part of a concat receives.
pub fn channels(t: &Tensor, c0: usize, c: usize) -> Tensor {
    let s = t.shape;
    let mut out = Tensor::zeros(s.with_c(c));
    for n in 0..s.n {
        let src = &t.data[s.index(n, c0, 0, 0)..][..c * s.plane()];
        let dst = out.shape.index(n, 0, 0, 0);
        out.data[dst..dst + src.len()].copy_from_slice(src);
    }
    out
}
