//! Batch normalisation (Ioffe & Szegedy 2015) with PyTorch's semantics, and a
//! fused tail: `y = relu?(bn(x) + residual?)`. Fusing the residual add and the
//! ReLU into the norm saves two passes over memory in every block.
//!
//! Shapes: `x, y [n, h, w, c]`; parameters `[c]`.

use super::Visit;
use crate::backend::{Backend, BnGrads, BnParams, BnSaved, BnTail, DType};
use crate::error::Result;
use crate::model::Mode;
use crate::model::graph::key;
use crate::model::state::StateEntry;
use crate::tensor::{Param, ParamLayout, Tensor};

/// A batch-norm layer with an optional fused ReLU.
pub struct BatchNorm2d<B: Backend> {
    /// Channels.
    pub c: usize,
    /// Added to the variance (PyTorch: 1e-5).
    pub eps: f32,
    /// Weight of the new batch statistic in the running estimate (PyTorch: 0.1).
    pub momentum: f32,
    /// Apply ReLU after the (residual) sum.
    pub relu: bool,
    /// gamma.
    pub weight: Param<B>,
    /// beta.
    pub bias: Param<B>,
    /// Running mean.
    pub running_mean: B::Buf,
    /// Running (unbiased) variance.
    pub running_var: B::Buf,
    /// Training batches seen.
    pub num_batches_tracked: i64,
    /// Output of the last forward pass.
    pub y: Tensor<B>,
    /// Input gradient of the last backward pass.
    pub dx: Tensor<B>,
    /// Gradient at the residual sum (for the shortcut), when there was one.
    pub dsum: Tensor<B>,
    save_mean: B::Buf,
    save_invstd: B::Buf,
    had_residual: bool,
}

impl<B: Backend> BatchNorm2d<B> {
    /// A batch norm over `c` channels, gamma = 1, beta = 0, running stats (0, 1).
    pub fn new(b: &B, c: usize, relu: bool) -> Result<Self> {
        let mut weight = Param::zeros(b, &[c], ParamLayout::Plain)?;
        weight.value = b.upload(&vec![1.0f32; c])?;
        weight.is_scale_or_bias = true;
        let mut bias = Param::zeros(b, &[c], ParamLayout::Plain)?;
        bias.is_scale_or_bias = true;
        Ok(Self {
            c,
            eps: 1e-5,
            momentum: 0.1,
            relu,
            weight,
            bias,
            running_mean: b.alloc(DType::F32, c)?,
            running_var: b.upload(&vec![1.0f32; c])?,
            num_batches_tracked: 0,
            y: Tensor::empty(),
            dx: Tensor::empty(),
            dsum: Tensor::empty(),
            save_mean: b.alloc(DType::F32, c)?,
            save_invstd: b.alloc(DType::F32, c)?,
            had_residual: false,
        })
    }

    /// `y = relu?(bn(x) + residual?)`, with batch statistics in training mode.
    pub fn forward(&mut self, b: &B, x: &Tensor<B>, residual: Option<&Tensor<B>>, mode: Mode) -> Result<&Tensor<B>> {
        self.forward_with_stats(b, x, None, residual, mode)
    }

    /// [`BatchNorm2d::forward`] with the batch statistics of `x` when the
    /// convolution that produced it computed them (`Conv2d::forward_for_norm`).
    pub fn forward_with_stats(
        &mut self,
        b: &B,
        x: &Tensor<B>,
        stats: Option<&B::Buf>,
        residual: Option<&Tensor<B>>,
        mode: Mode,
    ) -> Result<&Tensor<B>> {
        assert_eq!(x.shape[3], self.c, "batch norm input has {} channels, expected {}", x.shape[3], self.c);
        if let Some(r) = residual {
            assert_eq!(r.shape, x.shape, "residual shape {:?} differs from {:?}", r.shape, x.shape);
        }
        self.had_residual = residual.is_some();
        self.y.reshape(b, x.shape)?;
        let rows = x.shape[0] * x.shape[1] * x.shape[2];
        let p = BnParams { weight: &self.weight.value, bias: &self.bias.value, eps: self.eps };
        let tail = BnTail { residual: residual.map(|r| &r.buf), relu: self.relu };
        match mode {
            Mode::Eval => b.bn_forward_inference(
                rows,
                self.c,
                &x.buf,
                &p,
                &self.running_mean,
                &self.running_var,
                &tail,
                &mut self.y.buf,
            )?,
            Mode::Train | Mode::Recompute => {
                let running = match mode {
                    Mode::Train => {
                        self.num_batches_tracked += 1;
                        Some((&mut self.running_mean, &mut self.running_var, self.momentum))
                    }
                    _ => None,
                };
                let saved = BnSaved { mean: &mut self.save_mean, invstd: &mut self.save_invstd };
                b.bn_forward_training(rows, self.c, &x.buf, stats, &p, running, saved, &tail, &mut self.y.buf)?;
            }
        }
        Ok(&self.y)
    }

    /// Writes `self.y` again after a training-mode forward pass of the same
    /// `x` without a residual, from the statistics it saved: the same bits
    /// (the training memory plan keeps `x` and recomputes `y` when backward
    /// needs it, rather than keeping both).
    pub fn recompute(&mut self, b: &B, x: &Tensor<B>) -> Result<&Tensor<B>> {
        debug_assert!(!self.had_residual, "a norm with a residual keeps its output");
        self.y.reshape(b, x.shape)?;
        let rows = x.shape[0] * x.shape[1] * x.shape[2];
        let p = BnParams { weight: &self.weight.value, bias: &self.bias.value, eps: self.eps };
        let tail = BnTail { residual: None, relu: self.relu };
        b.bn_forward_saved(rows, self.c, &x.buf, &p, &self.save_mean, &self.save_invstd, &tail, &mut self.y.buf)?;
        Ok(&self.y)
    }

    /// Backward of a training-mode forward pass: accumulates gamma and beta
    /// gradients, writes `self.dx`, and `self.dsum` when there was a residual.
    pub fn backward(&mut self, b: &B, x: &Tensor<B>, dy: &Tensor<B>) -> Result<()> {
        self.weight.ensure_grad(b)?;
        self.bias.ensure_grad(b)?;
        self.dx.reshape(b, x.shape)?;
        let rows = x.shape[0] * x.shape[1] * x.shape[2];
        let dsum = if self.had_residual {
            self.dsum.reshape(b, x.shape)?;
            Some(&mut self.dsum.buf)
        } else {
            None
        };
        let grads = BnGrads { dx: &mut self.dx.buf, dweight: &mut self.weight.grad, dbias: &mut self.bias.grad, dsum };
        let p = BnParams { weight: &self.weight.value, bias: &self.bias.value, eps: self.eps };
        // The output is read for the ReLU mask only; without a ReLU the
        // memory plan may have released it.
        let y = if self.relu { &self.y } else { x };
        debug_assert_eq!(y.shape, x.shape, "a norm with a ReLU needs its output (kept or recomputed) for backward");
        b.bn_backward(rows, self.c, &x.buf, &y.buf, self.relu, &dy.buf, &p, &self.save_mean, &self.save_invstd, grads)
    }
}

impl<B: Backend> Visit<B> for BatchNorm2d<B> {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, StateEntry<'_, B>)) {
        f(&key(prefix, "weight"), StateEntry::Param(&mut self.weight));
        f(&key(prefix, "bias"), StateEntry::Param(&mut self.bias));
        f(&key(prefix, "running_mean"), StateEntry::Buffer(&mut self.running_mean, self.c));
        f(&key(prefix, "running_var"), StateEntry::Buffer(&mut self.running_var, self.c));
        f(&key(prefix, "num_batches_tracked"), StateEntry::Counter(&mut self.num_batches_tracked));
    }
}
