//! Max pooling and global average pooling.
//!
//! Shapes: max pool `[n, h, w, c] -> [n, oh, ow, c]`; global average pool
//! `[n, h, w, c] -> [n, 1, 1, c]`.

use crate::backend::{Backend, PoolDesc};
use crate::error::Result;
use crate::tensor::Tensor;

/// Max pooling with a square window.
pub struct MaxPool2d<B: Backend> {
    /// Window size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Padding (implicit -inf).
    pub pad: usize,
    /// Output.
    pub y: Tensor<B>,
    /// Input gradient.
    pub dx: Tensor<B>,
}

impl<B: Backend> MaxPool2d<B> {
    /// A `kernel x kernel` max pool.
    pub fn new(kernel: usize, stride: usize, pad: usize) -> Self {
        Self { kernel, stride, pad, y: Tensor::empty(), dx: Tensor::empty() }
    }

    fn desc(&self, x: [usize; 4]) -> PoolDesc {
        PoolDesc { n: x[0], h: x[1], w: x[2], c: x[3], kernel: self.kernel, stride: self.stride, pad: self.pad }
    }

    /// Output shape.
    pub fn out_shape(&self, x: [usize; 4]) -> [usize; 4] {
        let d = self.desc(x);
        [x[0], d.out_h(), d.out_w(), x[3]]
    }

    /// Forward.
    pub fn forward(&mut self, b: &B, x: &Tensor<B>) -> Result<&Tensor<B>> {
        self.y.reshape(b, self.out_shape(x.shape))?;
        b.max_pool_forward(&self.desc(x.shape), &x.buf, &mut self.y.buf)?;
        Ok(&self.y)
    }

    /// Backward into `self.dx`.
    pub fn backward(&mut self, b: &B, x: &Tensor<B>, dy: &Tensor<B>) -> Result<()> {
        self.dx.reshape(b, x.shape)?;
        b.max_pool_backward(&self.desc(x.shape), &x.buf, &dy.buf, &mut self.dx.buf)
    }
}

/// Mean over all positions of each channel.
pub struct GlobalAvgPool<B: Backend> {
    /// Output `[n, 1, 1, c]`.
    pub y: Tensor<B>,
    /// Input gradient.
    pub dx: Tensor<B>,
}

impl<B: Backend> Default for GlobalAvgPool<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Backend> GlobalAvgPool<B> {
    /// A global average pool.
    pub fn new() -> Self {
        Self { y: Tensor::empty(), dx: Tensor::empty() }
    }

    /// Forward.
    pub fn forward(&mut self, b: &B, x: &Tensor<B>) -> Result<&Tensor<B>> {
        self.y.reshape(b, [x.shape[0], 1, 1, x.shape[3]])?;
        b.global_avg_pool_forward(x.shape[0], x.shape[1] * x.shape[2], x.shape[3], &x.buf, &mut self.y.buf)?;
        Ok(&self.y)
    }

    /// Backward into `self.dx`.
    pub fn backward(&mut self, b: &B, x: &Tensor<B>, dy: &Tensor<B>) -> Result<()> {
        self.dx.reshape(b, x.shape)?;
        b.global_avg_pool_backward(x.shape[0], x.shape[1] * x.shape[2], x.shape[3], &dy.buf, &mut self.dx.buf)
    }
}
