//! Fully connected layer: `y = x · W^T + b`.
//!
//! Shapes: `x [n, 1, 1, c_in]` -> `y [n, 1, 1, c_out]`; `weight [c_out, c_in]`.

use super::Visit;
use crate::backend::Backend;
use crate::error::Result;
use crate::model::graph::key;
use crate::model::state::StateEntry;
use crate::tensor::{Param, ParamLayout, Tensor};

/// A linear layer with bias.
pub struct Linear<B: Backend> {
    /// Input features.
    pub c_in: usize,
    /// Output features.
    pub c_out: usize,
    /// `[c_out, c_in]`.
    pub weight: Param<B>,
    /// `[c_out]`.
    pub bias: Param<B>,
    /// Output.
    pub y: Tensor<B>,
    /// Input gradient.
    pub dx: Tensor<B>,
}

impl<B: Backend> Linear<B> {
    /// A zero-initialised linear layer.
    pub fn new(b: &B, c_in: usize, c_out: usize) -> Result<Self> {
        let mut bias = Param::zeros(b, &[c_out], ParamLayout::Plain)?;
        bias.is_scale_or_bias = true;
        Ok(Self {
            c_in,
            c_out,
            weight: Param::zeros(b, &[c_out, c_in], ParamLayout::Plain)?,
            bias,
            y: Tensor::empty(),
            dx: Tensor::empty(),
        })
    }

    /// Forward.
    pub fn forward(&mut self, b: &B, x: &Tensor<B>) -> Result<&Tensor<B>> {
        let n = x.shape[0];
        assert_eq!(x.len(), n * self.c_in, "linear input {:?} does not have {} features", x.shape, self.c_in);
        self.y.reshape(b, [n, 1, 1, self.c_out])?;
        let (w, bias) = (&self.weight.value, Some(&self.bias.value));
        b.linear_forward(n, self.c_in, self.c_out, &x.buf, w, bias, &mut self.y.buf)?;
        Ok(&self.y)
    }

    /// Accumulates parameter gradients and writes `self.dx`.
    pub fn backward(&mut self, b: &B, x: &Tensor<B>, dy: &Tensor<B>) -> Result<()> {
        let n = x.shape[0];
        self.weight.ensure_grad(b)?;
        self.bias.ensure_grad(b)?;
        self.dx.reshape(b, x.shape)?;
        b.linear_backward(
            n,
            self.c_in,
            self.c_out,
            &x.buf,
            &self.weight.value,
            &dy.buf,
            Some(&mut self.dx.buf),
            &mut self.weight.grad,
            Some(&mut self.bias.grad),
        )
    }
}

impl<B: Backend> Visit<B> for Linear<B> {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, StateEntry<'_, B>)) {
        f(&key(prefix, "weight"), StateEntry::Param(&mut self.weight));
        f(&key(prefix, "bias"), StateEntry::Param(&mut self.bias));
    }
}
