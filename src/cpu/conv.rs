//! 2-D convolution, stride 1, odd square kernel (3x3 or 1x1), any dilation,
//! zero padding that keeps H and W ("same": a k x k kernel with dilation d
//! pads by d * (k / 2)), with bias. Weights are OIHW.

// Index loops written as the formulas read: this is the oracle, clarity first.
#![allow(clippy::needless_range_loop)]

use super::Tensor;
use crate::shape::Shape;

/// The input coordinate that kernel tap `k` of output coordinate `o` reads,
/// or `None` where it falls in the zero padding.
fn tap(o: usize, k: usize, radius: usize, dilation: usize, size: usize) -> Option<usize> {
    let i = o as isize + (k as isize - radius as isize) * dilation as isize;
    (0..size as isize).contains(&i).then_some(i as usize)
}

fn radius(w: &Tensor) -> usize {
    assert_eq!(w.shape.h, w.shape.w, "square kernels only");
    assert_eq!(w.shape.h % 2, 1, "odd kernels only");
    w.shape.h / 2
}

pub fn forward(x: &Tensor, w: &Tensor, bias: &[f64], dilation: usize) -> Tensor {
    let (xs, ws) = (x.shape, w.shape);
    assert_eq!(ws.c, xs.c, "weight input channels");
    assert_eq!(bias.len(), ws.n, "bias length");
    let r = radius(w);
    let mut y = Tensor::zeros(Shape::new(xs.n, ws.n, xs.h, xs.w));
    for n in 0..xs.n {
        for co in 0..ws.n {
            for oy in 0..xs.h {
                for ox in 0..xs.w {
                    let mut acc = bias[co];
                    for ci in 0..xs.c {
                        for ky in 0..ws.h {
                            let Some(iy) = tap(oy, ky, r, dilation, xs.h) else {
                                continue;
                            };
                            for kx in 0..ws.w {
                                let Some(ix) = tap(ox, kx, r, dilation, xs.w) else {
                                    continue;
                                };
                                acc += x.at(n, ci, iy, ix) * w.at(co, ci, ky, kx);
                            }
                        }
                    }
                    y.data[y.shape.index(n, co, oy, ox)] = acc;
                }
            }
        }
    }
    y
}

pub struct ConvGrads {
    pub dx: Tensor,
    pub dw: Tensor,
    pub db: Vec<f64>,
}

/// Gradients of `forward` with respect to its input, weights and bias,
/// given the output gradient `dy`. Written as the adjoint of the forward
/// loop (scatter), the most direct statement of the math.
pub fn backward(x: &Tensor, w: &Tensor, dy: &Tensor, dilation: usize) -> ConvGrads {
    let (xs, ws) = (x.shape, w.shape);
    assert_eq!(dy.shape, Shape::new(xs.n, ws.n, xs.h, xs.w), "output gradient shape");
    let r = radius(w);
    let mut dx = Tensor::zeros(xs);
    let mut dw = Tensor::zeros(ws);
    let mut db = vec![0.0; ws.n];
    for n in 0..xs.n {
        for co in 0..ws.n {
            for oy in 0..xs.h {
                for ox in 0..xs.w {
                    let g = dy.at(n, co, oy, ox);
                    db[co] += g;
                    for ci in 0..xs.c {
                        for ky in 0..ws.h {
                            let Some(iy) = tap(oy, ky, r, dilation, xs.h) else {
                                continue;
                            };
                            for kx in 0..ws.w {
                                let Some(ix) = tap(ox, kx, r, dilation, xs.w) else {
                                    continue;
                                };
                                let xi = xs.index(n, ci, iy, ix);
                                let wi = ws.index(co, ci, ky, kx);
                                dx.data[xi] += g * w.data[wi];
                                dw.data[wi] += g * x.data[xi];
                            }
                        }
                    }
                }
            }
        }
    }
    ConvGrads { dx, dw, db }
}
