//! Compute backends: where the arithmetic happens.
//!
//! Layers never compute anything themselves; they describe an operation with a
//! descriptor ([`ConvDesc`], [`PoolDesc`], ...) and call a [`Backend`]. The
//! vocabulary is cuDNN's (convolution forward, backward-data, backward-filter;
//! batch-norm forward-inference, forward-training and backward; pooling
//! forward and backward), so that a CUDA backend maps onto cuDNN and cuBLAS one
//! to one. Memory is the backend's own ([`Backend::Buf`]): host vectors here,
//! device allocations there.
//!
//! Activations are NHWC (`[batch, height, width, channels]`, channels
//! fastest). Convolution weights are stored as `[out, kh, kw, in/groups]`
//! (OHWI); PyTorch's OIHW layout is converted when a state dict is read or
//! written. See `docs/ARCHITECTURE.md` for why.

pub mod cpu;
pub mod reference;

pub use cpu::Cpu;

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

/// How a convolution's output is finished (fused into the GEMM's epilogue on
/// the CPU): `y = relu?(conv(x) * scale + bias + residual)`.
pub struct ConvEpilogue<'a, B: Backend> {
    /// Per-output-channel multiplier (a folded batch norm).
    pub scale: Option<&'a B::Buf>,
    /// Per-output-channel addend (a conv bias or folded batch norm).
    pub bias: Option<&'a B::Buf>,
    /// Added element-wise; same shape as the output.
    pub residual: Option<&'a B::Buf>,
    /// Clamp at zero.
    pub relu: bool,
    /// The output buffer already holds the residual (then `residual` is
    /// `None`): it is added as `residual` would be and overwritten. An
    /// inference plan stores a bottleneck's output over its residual, which
    /// halves the memory the widest layers touch (see `InferencePlan`).
    pub residual_in_output: bool,
}

impl<B: Backend> Default for ConvEpilogue<'_, B> {
    fn default() -> Self {
        Self { scale: None, bias: None, residual: None, relu: false, residual_in_output: false }
    }
}

/// What a prepared filter is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterUse {
    /// `conv_forward`.
    Forward,
    /// `conv_forward` at inference in bf16: bf16 weights and inputs, f32 sums
    /// and epilogue (layers without a bf16 form run in f32).
    ForwardBf16,
    /// `conv_backward_data`.
    BackwardData,
}

/// How an activation is kept in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Storage {
    /// One f32 per element.
    #[default]
    F32,
    /// One bf16 per element, two to each f32 slot of the buffer (the first
    /// `len.div_ceil(2)` slots): half the memory traffic of f32.
    Bf16,
}

/// The arithmetic of inference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 throughout.
    #[default]
    F32,
    /// Convolutions on bf16 weights and inputs with f32 sums; the rest f32.
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            _ => Err(crate::Error::Invalid(format!("unknown precision {s:?} (expected f32 or bf16)"))),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

/// Per-channel batch-norm parameters and statistics.
pub struct BnParams<'a, B: Backend> {
    /// gamma.
    pub weight: &'a B::Buf,
    /// beta.
    pub bias: &'a B::Buf,
    /// Numerical guard added to the variance.
    pub eps: f32,
}

/// What comes after a batch norm, fused into its kernel:
/// `y = relu?(bn(x) + residual?)`.
pub struct BnTail<'a, B: Backend> {
    /// Added after normalisation (the shortcut of a residual block).
    pub residual: Option<&'a B::Buf>,
    /// Clamp at zero.
    pub relu: bool,
}

/// The statistics a training-mode batch norm saves for its backward pass.
pub struct BnSaved<'a, B: Backend> {
    /// Batch mean per channel.
    pub mean: &'a mut B::Buf,
    /// 1 / sqrt(biased batch variance + eps) per channel.
    pub invstd: &'a mut B::Buf,
}

/// Gradient outputs of a batch-norm backward pass.
pub struct BnGrads<'a, B: Backend> {
    /// Gradient for the input (overwritten).
    pub dx: &'a mut B::Buf,
    /// Accumulated gradient of gamma.
    pub dweight: &'a mut B::Buf,
    /// Accumulated gradient of beta.
    pub dbias: &'a mut B::Buf,
    /// When the forward pass had a fused ReLU and residual, the gradient that
    /// reached the sum (before the ReLU) is also written here, for the shortcut.
    pub dsum: Option<&'a mut B::Buf>,
}

/// Hyper-parameters of one SGD update (PyTorch semantics).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdStep {
    /// Learning rate.
    pub lr: f32,
    /// Momentum factor (0 for none).
    pub momentum: f32,
    /// Dampening of the momentum buffer update.
    pub dampening: f32,
    /// L2 penalty added to the gradient.
    pub weight_decay: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// The momentum buffer is uninitialised (first step): it takes the gradient.
    pub first: bool,
}

/// The kernels a device provides. All buffers hold f32; shapes come from the
/// descriptors. Methods that write a buffer overwrite it unless they say they
/// accumulate.
pub trait Backend: Clone + Send + Sync + 'static {
    /// A device allocation of f32 values.
    type Buf: Send + Sync + std::fmt::Debug;
    /// A convolution filter prepared for one use (CPU: GEMM panels).
    type Filter: Send + Sync + Default + std::fmt::Debug;

    /// A short description (e.g. `cpu (2 threads, avx512)`).
    fn describe(&self) -> String;

    /// Whether bf16 convolutions run natively (faster than f32). Elsewhere
    /// they give the same results slowly, and callers should fall back to f32.
    fn native_bf16(&self) -> bool {
        false
    }

    /// Runs `f`, which issues a sequence of operations, where they start
    /// fastest. The CPU backend runs it on one of its pool threads: each
    /// operation then starts on a running thread instead of handing work to a
    /// sleeping one and waiting for the answer (tens of microseconds per
    /// operation on a VM). The default just calls `f`.
    fn scope<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    // ---- memory ----
    /// A buffer of `len` zeros.
    fn zeros(&self, len: usize) -> Self::Buf;
    /// A buffer holding a copy of `data`.
    fn upload(&self, data: &[f32]) -> Self::Buf;
    /// Copies a buffer to host memory.
    fn download(&self, buf: &Self::Buf) -> Vec<f32>;
    /// Overwrites `dst` with host data, resizing it (reusing its memory) as needed.
    fn write(&self, dst: &mut Self::Buf, src: &[f32]);
    /// Number of elements.
    fn len(&self, buf: &Self::Buf) -> usize;
    /// Makes `buf` hold `len` elements, reusing its allocation when it can.
    /// The contents are unspecified afterwards.
    fn ensure_len(&self, buf: &mut Self::Buf, len: usize);
    /// Sets every element to `value`.
    fn fill(&self, buf: &mut Self::Buf, value: f32);
    /// Overwrites `dst` with `src` (same length).
    fn copy(&self, src: &Self::Buf, dst: &mut Self::Buf);

    // ---- convolution ----
    /// Prepares an OHWI weight tensor for `conv_forward` or `conv_backward_data`.
    fn prepare_filter(&self, d: &ConvDesc, weight: &Self::Buf, usage: FilterUse, out: &mut Self::Filter);
    /// `y = epilogue(conv(x, w))`.
    fn conv_forward(
        &self,
        d: &ConvDesc,
        x: &Self::Buf,
        w: &Self::Filter,
        y: &mut Self::Buf,
        epi: &ConvEpilogue<'_, Self>,
    );
    /// [`Backend::conv_forward`] over activations stored as a bf16 inference
    /// plan keeps them: the input, the output and the epilogue's residual
    /// each in f32 or bf16 ([`Storage`]). The default stores f32 only.
    #[allow(clippy::too_many_arguments)]
    fn conv_forward_stored(
        &self,
        d: &ConvDesc,
        x: &Self::Buf,
        x_storage: Storage,
        w: &Self::Filter,
        y: &mut Self::Buf,
        y_storage: Storage,
        epi: &ConvEpilogue<'_, Self>,
        residual_storage: Storage,
    ) {
        assert!(
            [x_storage, y_storage, residual_storage].iter().all(|&s| s == Storage::F32),
            "this backend stores activations in f32 only"
        );
        self.conv_forward(d, x, w, y, epi);
    }
    /// `y = conv(x)` (no epilogue) for a training-mode batch norm that
    /// follows: where the backend can, it also computes the per-channel mean
    /// and biased variance of `y` on the way, into `stats` (`[mean; c_out]`,
    /// then `[var; c_out]`, resized as needed), and returns true; the batch
    /// norm then need not read `y` once more for them. The default only runs
    /// the convolution.
    fn conv_forward_stats(
        &self,
        d: &ConvDesc,
        x: &Self::Buf,
        w: &Self::Filter,
        y: &mut Self::Buf,
        stats: &mut Self::Buf,
    ) -> bool {
        let _ = stats;
        self.conv_forward(d, x, w, y, &ConvEpilogue::default());
        false
    }
    /// `dx (+)= conv_transpose(dy, w)`; accumulates into `dx` when asked.
    fn conv_backward_data(&self, d: &ConvDesc, dy: &Self::Buf, w: &Self::Filter, dx: &mut Self::Buf, accumulate: bool);
    /// `dw += correlation(x, dy)` (accumulates).
    fn conv_backward_filter(&self, d: &ConvDesc, x: &Self::Buf, dy: &Self::Buf, dw: &mut Self::Buf);

    // ---- batch norm (per channel over `rows = n*h*w` rows of `c` channels) ----
    /// Inference: normalise with running statistics.
    #[allow(clippy::too_many_arguments)]
    fn bn_forward_inference(
        &self,
        rows: usize,
        c: usize,
        x: &Self::Buf,
        p: &BnParams<'_, Self>,
        running_mean: &Self::Buf,
        running_var: &Self::Buf,
        tail: &BnTail<'_, Self>,
        y: &mut Self::Buf,
    );
    /// Training: normalise with batch statistics, save them, and update the
    /// running estimates (`momentum` weight on the new value; unbiased variance).
    /// `batch_stats`: the statistics of `x` when [`Backend::conv_forward_stats`]
    /// computed them.
    #[allow(clippy::too_many_arguments)]
    fn bn_forward_training(
        &self,
        rows: usize,
        c: usize,
        x: &Self::Buf,
        batch_stats: Option<&Self::Buf>,
        p: &BnParams<'_, Self>,
        running: Option<(&mut Self::Buf, &mut Self::Buf, f32)>,
        saved: BnSaved<'_, Self>,
        tail: &BnTail<'_, Self>,
        y: &mut Self::Buf,
    );
    /// Backward of a training-mode batch norm (with its fused tail: `y` is the
    /// forward output, for the ReLU mask when `relu` is set; `p` the forward's
    /// parameters, unchanged since).
    #[allow(clippy::too_many_arguments)]
    fn bn_backward(
        &self,
        rows: usize,
        c: usize,
        x: &Self::Buf,
        y: &Self::Buf,
        relu: bool,
        dy: &Self::Buf,
        p: &BnParams<'_, Self>,
        mean: &Self::Buf,
        invstd: &Self::Buf,
        grads: BnGrads<'_, Self>,
    );

    // ---- pooling ----
    /// Max pooling.
    fn max_pool_forward(&self, d: &PoolDesc, x: &Self::Buf, y: &mut Self::Buf);
    /// Max pooling over stored activations (see `conv_forward_stored`): the
    /// maximum of bf16 values is a bf16 value, so a bf16 input loses nothing
    /// and a bf16 output only rounds what its bf16 readers would round. The
    /// default handles f32 only.
    fn max_pool_forward_stored(
        &self,
        d: &PoolDesc,
        x: &Self::Buf,
        x_storage: Storage,
        y: &mut Self::Buf,
        y_storage: Storage,
    ) {
        assert!(x_storage == Storage::F32 && y_storage == Storage::F32, "this backend stores activations in f32 only");
        self.max_pool_forward(d, x, y);
    }
    /// Max-pool backward: each output's gradient goes to the first maximum of
    /// its window (PyTorch's tie rule). Overwrites `dx`.
    fn max_pool_backward(&self, d: &PoolDesc, x: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf);
    /// Mean over the `hw` positions of each of `n` images: `[n, hw, c] -> [n, c]`.
    fn global_avg_pool_forward(&self, n: usize, hw: usize, c: usize, x: &Self::Buf, y: &mut Self::Buf);
    /// Backward of the global average pool. Overwrites `dx`.
    fn global_avg_pool_backward(&self, n: usize, hw: usize, c: usize, dy: &Self::Buf, dx: &mut Self::Buf);

    // ---- dense ----
    /// `y[n, out] = x[n, in] · w[out, in]^T + b`.
    #[allow(clippy::too_many_arguments)]
    fn linear_forward(
        &self,
        n: usize,
        c_in: usize,
        c_out: usize,
        x: &Self::Buf,
        w: &Self::Buf,
        b: Option<&Self::Buf>,
        y: &mut Self::Buf,
    );
    /// Gradients of a linear layer: `dx = dy · w` (overwritten), and
    /// accumulated `dw += dy^T · x`, `db += sum(dy)`.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        n: usize,
        c_in: usize,
        c_out: usize,
        x: &Self::Buf,
        w: &Self::Buf,
        dy: &Self::Buf,
        dx: Option<&mut Self::Buf>,
        dw: &mut Self::Buf,
        db: Option<&mut Self::Buf>,
    );

    // ---- element-wise ----
    /// `y = max(x, 0)`.
    fn relu_forward(&self, x: &Self::Buf, y: &mut Self::Buf);
    /// `dx = dy * (y > 0)`.
    fn relu_backward(&self, y: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf);
    /// `y = relu?(a + b)`.
    fn add(&self, a: &Self::Buf, b: &Self::Buf, relu: bool, y: &mut Self::Buf);
    /// `y += x`.
    fn add_assign(&self, y: &mut Self::Buf, x: &Self::Buf);
    /// Option-A shortcut forward.
    fn pad_shortcut_forward(&self, d: &PadShortcutDesc, x: &Self::Buf, y: &mut Self::Buf);
    /// Option-A shortcut backward: `dx (+)= subsample-slice(dy)`.
    fn pad_shortcut_backward(&self, d: &PadShortcutDesc, dy: &Self::Buf, dx: &mut Self::Buf, accumulate: bool);

    // ---- loss and optimiser ----
    /// Softmax cross-entropy over `[n, classes]` logits with integer labels and
    /// optional label smoothing (PyTorch's `CrossEntropyLoss`, mean reduction).
    /// Writes `dlogits` (gradient of the mean loss) and returns the mean loss.
    fn softmax_cross_entropy(
        &self,
        n: usize,
        classes: usize,
        logits: &Self::Buf,
        labels: &[u32],
        smoothing: f32,
        dlogits: &mut Self::Buf,
    ) -> f32;
    /// One SGD step on a parameter: `PyTorch torch.optim.SGD` semantics.
    fn sgd_update(&self, step: &SgdStep, param: &mut Self::Buf, grad: &Self::Buf, momentum_buf: &mut Self::Buf);
    /// Sum of squares (for gradient norms).
    fn sum_squares(&self, x: &Self::Buf) -> f64;
}
