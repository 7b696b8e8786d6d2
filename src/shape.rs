//! Tensor shapes. Every activation is NCHW and every convolution weight OIHW
//! (MODEL.md), so one four-axis type covers both; vectors (biases, norm
//! parameters) are `[1, C, 1, 1]`.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape {
    pub const fn new(n: usize, c: usize, h: usize, w: usize) -> Self {
        Self { n, c, h, w }
    }

    /// A per-channel vector (bias, gamma, beta, running statistics).
    pub const fn vector(len: usize) -> Self {
        Self::new(1, len, 1, 1)
    }

    pub const fn numel(&self) -> usize {
        self.n * self.c * self.h * self.w
    }

    /// Pixels per plane (H * W).
    pub const fn plane(&self) -> usize {
        self.h * self.w
    }

    /// Flat NCHW index.
    pub const fn index(&self, n: usize, c: usize, y: usize, x: usize) -> usize {
        ((n * self.c + c) * self.h + y) * self.w + x
    }

    /// The same shape with another batch size.
    pub const fn with_n(&self, n: usize) -> Self {
        Self::new(n, self.c, self.h, self.w)
    }

    /// The same shape with another channel count.
    pub const fn with_c(&self, c: usize) -> Self {
        Self::new(self.n, c, self.h, self.w)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}x{}", self.n, self.c, self.h, self.w)
    }
}
