//! 2-D convolution, no bias (every ResNet convolution is followed by a batch
//! norm, which makes a bias redundant).
//!
//! Shapes: `x [n, h, w, c_in]` -> `y [n, oh, ow, c_out]`; weight
//! `[c_out, c_in/groups, kh, kw]` in PyTorch's naming, stored OHWI.

use super::{Visit, take};
use crate::backend::{Backend, ConvDesc, ConvEpilogue, FilterUse};
use crate::error::Result;
use crate::model::Mode;
use crate::model::graph::{Conv, key};
use crate::model::state::StateEntry;
use crate::tensor::{Param, ParamLayout, Tensor};

/// A convolution layer.
pub struct Conv2d<B: Backend> {
    /// Channels, kernel, stride, padding, dilation, groups.
    pub geometry: Conv,
    /// The filter.
    pub weight: Param<B>,
    /// Output of the last forward pass.
    pub y: Tensor<B>,
    /// Input gradient of the last backward pass.
    pub dx: Tensor<B>,
    /// Batch statistics of `y` from the last [`Conv2d::forward_for_norm`]
    /// that the backend computed on the way.
    stats: B::Buf,
    fwd: PreparedFilter<B>,
    bwd: PreparedFilter<B>,
}

/// A filter prepared from the weights of one version for one algorithm.
struct PreparedFilter<B: Backend> {
    filter: B::Filter,
    /// `(weight version, algorithm)` it was prepared for.
    key: Option<(u64, B::Algo)>,
}

impl<B: Backend> Default for PreparedFilter<B> {
    fn default() -> Self {
        Self { filter: B::Filter::default(), key: None }
    }
}

impl<B: Backend> PreparedFilter<B> {
    /// The filter for `d`, prepared again when the weights changed or the
    /// backend picks another algorithm for this shape.
    fn get(&mut self, b: &B, d: &ConvDesc, weight: &Param<B>, usage: FilterUse) -> Result<&B::Filter> {
        let key = (weight.version, b.conv_algorithm(d, usage));
        if self.key != Some(key) {
            self.key = None;
            b.prepare_filter(d, &weight.value, usage, &mut self.filter)?;
            self.key = Some(key);
        }
        Ok(&self.filter)
    }
}

impl<B: Backend> Conv2d<B> {
    /// A `k x k` convolution with `pad`, `stride` and `groups` (dilation 1).
    pub fn new(b: &B, c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, groups: usize) -> Result<Self> {
        Self::with_geometry(b, Conv::square(c_in, c_out, k, stride, pad, groups))
    }

    /// The general form.
    pub fn with_geometry(b: &B, geometry: Conv) -> Result<Self> {
        Ok(Self {
            geometry,
            weight: Param::zeros(b, &geometry.weight_shape(), ParamLayout::ConvOhwi)?,
            y: Tensor::empty(),
            dx: Tensor::empty(),
            stats: B::Buf::default(),
            fwd: PreparedFilter::default(),
            bwd: PreparedFilter::default(),
        })
    }

    /// The descriptor for an input of shape `x` (NHWC).
    pub fn desc(&self, x: [usize; 4]) -> ConvDesc {
        self.geometry.desc(x[0], x[1], x[2])
    }

    /// Output shape for an input shape.
    pub fn out_shape(&self, x: [usize; 4]) -> [usize; 4] {
        let d = self.desc(x);
        [x[0], d.out_h(), d.out_w(), self.geometry.c_out]
    }

    /// `y = conv(x)` for a batch norm that follows: in training mode, also the
    /// batch statistics of `y` where the backend computes them on the way
    /// (see [`Backend::conv_forward_stats`]), for `BatchNorm2d::forward_with_stats`.
    pub fn forward_for_norm(&mut self, b: &B, x: &Tensor<B>, mode: Mode) -> Result<(&Tensor<B>, Option<&B::Buf>)> {
        if mode == Mode::Eval {
            return Ok((self.forward(b, x)?, None));
        }
        let d = self.prepare_forward(b, x)?;
        let w = self.fwd.get(b, &d, &self.weight, FilterUse::Forward)?;
        let known = b.conv_forward_stats(&d, &x.buf, w, &mut self.y.buf, &mut self.stats)?;
        // The weights change at every training step: the filter serves this pass
        // only (one is alive at a time, as the training memory plan counts them).
        self.fwd = PreparedFilter::default();
        Ok((&self.y, known.then_some(&self.stats)))
    }

    /// Checks the input and shapes `y`.
    fn prepare_forward(&mut self, b: &B, x: &Tensor<B>) -> Result<ConvDesc> {
        let c_in = self.geometry.c_in;
        assert_eq!(x.shape[3], c_in, "conv input has {} channels, expected {c_in}", x.shape[3]);
        self.y.reshape(b, self.out_shape(x.shape))?;
        Ok(self.desc(x.shape))
    }

    /// `y = conv(x)`. The prepared filter stays for the next call while the
    /// weights do not change (evaluation, frozen layers); a training pass
    /// releases it (see [`Conv2d::forward_for_norm`], [`Conv2d::release_filters`]).
    pub fn forward(&mut self, b: &B, x: &Tensor<B>) -> Result<&Tensor<B>> {
        let d = self.prepare_forward(b, x)?;
        let w = self.fwd.get(b, &d, &self.weight, FilterUse::Forward)?;
        b.conv_forward(&d, &x.buf, w, &mut self.y.buf, &ConvEpilogue::default())?;
        Ok(&self.y)
    }

    /// Drops the prepared filters (they are prepared again when needed).
    pub fn release_filters(&mut self) {
        (self.fwd, self.bwd) = (PreparedFilter::default(), PreparedFilter::default());
    }

    /// Accumulates the filter gradient and, when `want_dx`, writes `self.dx`.
    pub fn backward(&mut self, b: &B, x: &Tensor<B>, dy: &Tensor<B>, want_dx: bool) -> Result<()> {
        let mut dx = take(&mut self.dx);
        let r = if want_dx {
            dx.reshape(b, x.shape).and_then(|_| self.backward_into(b, x, dy, Some((&mut dx, false))))
        } else {
            self.backward_into(b, x, dy, None)
        };
        self.dx = dx;
        r
    }

    /// Accumulates the filter gradient and adds the input gradient to `dx`.
    pub fn backward_accumulate(&mut self, b: &B, x: &Tensor<B>, dy: &Tensor<B>, dx: &mut Tensor<B>) -> Result<()> {
        self.backward_into(b, x, dy, Some((dx, true)))
    }

    fn backward_into(
        &mut self,
        b: &B,
        x: &Tensor<B>,
        dy: &Tensor<B>,
        dx: Option<(&mut Tensor<B>, bool)>,
    ) -> Result<()> {
        let d = self.desc(x.shape);
        self.weight.ensure_grad(b)?;
        b.conv_backward_filter(&d, &x.buf, &dy.buf, &mut self.weight.grad)?;
        if let Some((dx, accumulate)) = dx {
            let w = self.bwd.get(b, &d, &self.weight, FilterUse::BackwardData)?;
            b.conv_backward_data(&d, &dy.buf, w, &mut dx.buf, accumulate)?;
            // The weights change before the next backward pass (see `forward`).
            self.bwd = PreparedFilter::default();
        }
        Ok(())
    }
}

impl<B: Backend> Visit<B> for Conv2d<B> {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, StateEntry<'_, B>)) {
        f(&key(prefix, "weight"), StateEntry::Param(&mut self.weight));
    }
}
