//! Activation tensors and trainable parameters.

use crate::backend::{Backend, Buffer, DType};
use crate::error::{Error, Result};

/// A batch of activations in NHWC layout, held by a backend.
///
/// Layers own their output tensors and reuse them from one call to the next:
/// [`Tensor::reshape`] only reallocates when the element count changes.
pub struct Tensor<B: Backend> {
    /// `[batch, height, width, channels]`.
    pub shape: [usize; 4],
    /// The values, channels fastest.
    pub buf: B::Buf,
}

impl<B: Backend> std::fmt::Debug for Tensor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?}", self.shape)
    }
}

impl<B: Backend> Default for Tensor<B> {
    fn default() -> Self {
        Self { shape: [0; 4], buf: B::Buf::default() }
    }
}

impl<B: Backend> Tensor<B> {
    /// An empty f32 tensor (shape all zeros, no allocation); layers start with these.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A tensor of zeros.
    pub fn zeros(b: &B, shape: [usize; 4]) -> Result<Self> {
        Ok(Self { shape, buf: b.alloc(DType::F32, shape.iter().product())? })
    }

    /// A tensor holding `data` (NHWC).
    pub fn from_host(b: &B, shape: [usize; 4], data: &[f32]) -> Result<Self> {
        if data.len() != shape.iter().product::<usize>() {
            return Err(Error::Invalid(format!("{} values do not fill a tensor of shape {shape:?}", data.len())));
        }
        Ok(Self { shape, buf: b.upload(data)? })
    }

    /// A tensor from an NCHW batch (PyTorch's layout).
    pub fn from_nchw(b: &B, n: usize, c: usize, h: usize, w: usize, data: &[f32]) -> Result<Self> {
        if data.len() != n * c * h * w {
            return Err(Error::Invalid(format!("{} values do not fill a [{n}, {c}, {h}, {w}] batch", data.len())));
        }
        Self::from_host(b, [n, h, w, c], &crate::backend::reference::nchw_to_nhwc(data, n, c, h, w))
    }

    /// Overwrites the tensor with an NHWC batch from host memory, reusing its memory.
    pub fn write(&mut self, b: &B, shape: [usize; 4], data: &[f32]) -> Result<()> {
        if data.len() != shape.iter().product::<usize>() {
            return Err(Error::Invalid(format!("{} values do not fill a tensor of shape {shape:?}", data.len())));
        }
        self.shape = shape;
        b.write(&mut self.buf, data)
    }

    /// Gives the tensor a new shape (f32), reusing its memory when it can.
    pub fn reshape(&mut self, b: &B, shape: [usize; 4]) -> Result<()> {
        self.reshape_as(b, shape, DType::F32)
    }

    /// Gives the tensor a new shape and element type, reusing its memory when it can.
    pub fn reshape_as(&mut self, b: &B, shape: [usize; 4], dtype: DType) -> Result<()> {
        self.shape = shape;
        b.resize(&mut self.buf, dtype, shape.iter().product())
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the tensor holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the values to the host (NHWC, f32).
    pub fn to_host(&self, b: &B) -> Result<Vec<f32>> {
        b.download(&self.buf)
    }
}

/// How a parameter's values are laid out relative to PyTorch's tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamLayout {
    /// Same order as PyTorch.
    Plain,
    /// A convolution filter stored OHWI; PyTorch's is OIHW.
    ConvOhwi,
}

/// A trainable tensor: value and accumulated gradient.
pub struct Param<B: Backend> {
    /// PyTorch's shape (e.g. `[out, in/groups, kh, kw]` for a filter).
    pub shape: Vec<usize>,
    /// Memory order of `value` and `grad`.
    pub layout: ParamLayout,
    /// The values.
    pub value: B::Buf,
    /// The gradient; empty until [`Param::ensure_grad`] (inference needs none).
    pub grad: B::Buf,
    /// Incremented whenever `value` changes, so that derived data (packed
    /// filters) knows when to refresh.
    pub version: u64,
    /// Whether weight decay applies (false for BN and bias parameters when the
    /// optimiser exempts them; set by the layer).
    pub is_scale_or_bias: bool,
}

impl<B: Backend> Param<B> {
    /// A zero parameter.
    pub fn zeros(b: &B, shape: &[usize], layout: ParamLayout) -> Result<Self> {
        Ok(Self {
            shape: shape.to_vec(),
            layout,
            value: b.alloc(DType::F32, shape.iter().product())?,
            grad: B::Buf::default(),
            version: 0,
            is_scale_or_bias: false,
        })
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Allocates (if needed) and zeroes the gradient.
    pub fn zero_grad(&mut self, b: &B) -> Result<()> {
        let n = self.numel();
        b.resize(&mut self.grad, DType::F32, n)?;
        b.fill(&mut self.grad, 0.0)
    }

    /// Allocates the gradient if it is not there yet.
    pub fn ensure_grad(&mut self, b: &B) -> Result<()> {
        if self.grad.len() != self.numel() {
            self.zero_grad(b)?;
        }
        Ok(())
    }

    /// Replaces the values from host memory in PyTorch's order.
    pub fn set_from_torch(&mut self, b: &B, data: &[f32]) -> Result<()> {
        self.value = b.upload(&to_internal(self.layout, &self.shape, data))?;
        self.version += 1;
        Ok(())
    }

    /// The values in PyTorch's order.
    pub fn to_torch(&self, b: &B) -> Result<Vec<f32>> {
        Ok(to_torch(self.layout, &self.shape, &b.download(&self.value)?))
    }
}

/// PyTorch order -> internal order.
pub fn to_internal(layout: ParamLayout, shape: &[usize], data: &[f32]) -> Vec<f32> {
    match layout {
        ParamLayout::Plain => data.to_vec(),
        ParamLayout::ConvOhwi => {
            let (o, i, kh, kw) = (shape[0], shape[1], shape[2], shape[3]);
            crate::backend::reference::oihw_to_ohwi(data, o, i, kh, kw)
        }
    }
}

/// Internal order -> PyTorch order.
pub fn to_torch(layout: ParamLayout, shape: &[usize], data: &[f32]) -> Vec<f32> {
    match layout {
        ParamLayout::Plain => data.to_vec(),
        ParamLayout::ConvOhwi => {
            let (o, i, kh, kw) = (shape[0], shape[1], shape[2], shape[3]);
            crate::backend::reference::ohwi_to_oihw(data, o, i, kh, kw)
        }
    }
}
