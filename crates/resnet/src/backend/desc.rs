//! Descriptors: the geometry of an operation, in the backend's vocabulary.

/// A 2-D convolution over an NHWC batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvDesc {
    /// Batch size.
    pub n: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel size (height, width).
    pub kernel: [usize; 2],
    /// Stride (vertical, horizontal).
    pub stride: [usize; 2],
    /// Zero padding on each side (top/bottom, left/right).
    pub pad: [usize; 2],
    /// Dilation (vertical, horizontal).
    pub dilation: [usize; 2],
    /// Channel groups: `c_in` and `c_out` are both divisible by it.
    pub groups: usize,
}

impl ConvDesc {
    /// Output height.
    pub fn out_h(&self) -> usize {
        out_size(self.h, self.kernel[0], self.stride[0], self.pad[0], self.dilation[0])
    }
    /// Output width.
    pub fn out_w(&self) -> usize {
        out_size(self.w, self.kernel[1], self.stride[1], self.pad[1], self.dilation[1])
    }
    /// Input channels per group.
    pub fn cin_g(&self) -> usize {
        self.c_in / self.groups
    }
    /// Output channels per group.
    pub fn cout_g(&self) -> usize {
        self.c_out / self.groups
    }
    /// Length of one filter: `kh * kw * c_in / groups`.
    pub fn k_len(&self) -> usize {
        self.kernel[0] * self.kernel[1] * self.cin_g()
    }
    /// Elements in the input batch.
    pub fn in_len(&self) -> usize {
        self.n * self.h * self.w * self.c_in
    }
    /// Elements in the output batch.
    pub fn out_len(&self) -> usize {
        self.n * self.out_h() * self.out_w() * self.c_out
    }
    /// Elements in the weight tensor.
    pub fn weight_len(&self) -> usize {
        self.c_out * self.k_len()
    }
    /// True for a 1x1, unpadded convolution (a plain matrix product).
    pub fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.pad == [0, 0]
    }
}

/// Output size of a convolution or pooling window along one axis
/// (PyTorch's formula, floor mode). Zero when the window does not fit.
pub fn out_size(input: usize, kernel: usize, stride: usize, pad: usize, dilation: usize) -> usize {
    let span = dilation * (kernel - 1) + 1;
    let padded = input + 2 * pad;
    if padded < span { 0 } else { (padded - span) / stride + 1 }
}

/// A max-pooling window over an NHWC batch (floor mode, implicit -inf padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolDesc {
    /// Batch size.
    pub n: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// Window size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Padding on each side.
    pub pad: usize,
}

impl PoolDesc {
    /// Output height.
    pub fn out_h(&self) -> usize {
        out_size(self.h, self.kernel, self.stride, self.pad, 1)
    }
    /// Output width.
    pub fn out_w(&self) -> usize {
        out_size(self.w, self.kernel, self.stride, self.pad, 1)
    }
}

/// The option-A shortcut of the CIFAR ResNets (He 2015, sec. 4.2): identity
/// subsampled by `stride`, with zero channels added: `pad_before` in front of
/// the input's channels and the rest after, up to `c_out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PadShortcutDesc {
    /// Batch size.
    pub n: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels (>= c_in).
    pub c_out: usize,
    /// Spatial subsampling.
    pub stride: usize,
    /// Zero channels before the input's.
    pub pad_before: usize,
}

impl PadShortcutDesc {
    /// The shortcut from `c_in` to `c_out >= c_in` channels of an `n x h x w`
    /// batch, subsampled by `stride`, with `(c_out - c_in) / 2` zero channels in
    /// front of the input's (as the widely used PyTorch CIFAR ResNets pad).
    pub fn new(n: usize, h: usize, w: usize, c_in: usize, c_out: usize, stride: usize) -> Self {
        Self { n, h, w, c_in, c_out, stride, pad_before: (c_out - c_in) / 2 }
    }
    /// Output height.
    pub fn out_h(&self) -> usize {
        self.h.div_ceil(self.stride)
    }
    /// Output width.
    pub fn out_w(&self) -> usize {
        self.w.div_ceil(self.stride)
    }
    /// Elements in the input batch.
    pub fn in_len(&self) -> usize {
        self.n * self.h * self.w * self.c_in
    }
    /// Elements in the output batch.
    pub fn out_len(&self) -> usize {
        self.n * self.out_h() * self.out_w() * self.c_out
    }
}
