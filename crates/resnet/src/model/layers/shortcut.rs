//! The option-A shortcut (He 2015, sec. 4.2): identity, subsampled by the
//! stride, with the extra channels zero. No parameters.
//!
//! Which channels are zero is a convention the paper leaves open; we pad
//! `(c_out - c_in) / 2` channels on each side, as the widely used PyTorch
//! CIFAR ResNets do (`F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))`).
//!
//! Shapes: `[n, h, w, c_in] -> [n, ceil(h/s), ceil(w/s), c_out]`.

use crate::backend::{Backend, PadShortcutDesc};
use crate::error::Result;
use crate::tensor::Tensor;

/// Zero-padded identity shortcut.
pub struct PadShortcut<B: Backend> {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Spatial subsampling.
    pub stride: usize,
    /// Output.
    pub y: Tensor<B>,
}

impl<B: Backend> PadShortcut<B> {
    /// A shortcut from `c_in` to `c_out >= c_in` channels.
    pub fn new(c_in: usize, c_out: usize, stride: usize) -> Self {
        Self { c_in, c_out, stride, y: Tensor::empty() }
    }

    fn desc(&self, x: [usize; 4]) -> PadShortcutDesc {
        PadShortcutDesc::new(x[0], x[1], x[2], self.c_in, self.c_out, self.stride)
    }

    /// Output shape.
    pub fn out_shape(&self, x: [usize; 4]) -> [usize; 4] {
        let d = self.desc(x);
        [x[0], d.out_h(), d.out_w(), self.c_out]
    }

    /// Forward.
    pub fn forward(&mut self, b: &B, x: &Tensor<B>) -> Result<&Tensor<B>> {
        self.y.reshape(b, self.out_shape(x.shape))?;
        b.pad_shortcut_forward(&self.desc(x.shape), &x.buf, &mut self.y.buf)?;
        Ok(&self.y)
    }

    /// Adds the input gradient into `dx`.
    pub fn backward_accumulate(&self, b: &B, x_shape: [usize; 4], dy: &Tensor<B>, dx: &mut Tensor<B>) -> Result<()> {
        b.pad_shortcut_backward(&self.desc(x_shape), &dy.buf, &mut dx.buf, true)
    }
}
