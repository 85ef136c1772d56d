//! Compute backends: where the arithmetic happens.
//!
//! Layers never compute anything themselves; they describe an operation with a
//! descriptor ([`ConvDesc`], [`PoolDesc`], ...) and call a [`Backend`]. The
//! vocabulary is cuDNN's (convolution forward, backward-data, backward-filter;
//! batch-norm forward-inference, forward-training and backward; pooling
//! forward and backward), so that a CUDA backend maps onto cuDNN and cuBLAS one
//! to one. Memory is the backend's own ([`Backend::Buf`]: host memory here,
//! device allocations there), and a buffer knows its element type
//! ([`DType`]). Every operation that could fail on a device (allocation,
//! transfer, launch) returns a [`Result`].
//!
//! Generic code asks the backend, in descriptor terms, what it does best: the
//! algorithm a convolution gets at a given shape ([`Backend::conv_algorithm`]),
//! which element types a convolution of a bf16 plan reads and writes and
//! whether its residual may live in its output buffer
//! ([`Backend::conv_storage`]). The rules of a backend's kernels stay in the
//! backend.
//!
//! Activations are NHWC (`[batch, height, width, channels]`, channels
//! fastest). Convolution weights are stored as `[out, kh, kw, in/groups]`
//! (OHWI); PyTorch's OIHW layout is converted when a state dict is read or
//! written. See `docs/ARCHITECTURE.md` for why.
//!
//! [`cpu::Cpu`] is the fast CPU backend; [`reference::Reference`] is a plain,
//! obviously correct one that the conformance tests (`tests/conformance.rs`)
//! hold every backend to.

pub mod counting;
pub mod cpu;
mod desc;
pub mod reference;

pub use cpu::Cpu;
pub use desc::{ConvDesc, PadShortcutDesc, PoolDesc, out_size};
pub use reference::Reference;

/// ReLU as PyTorch computes it: NaN stays NaN (a NaN in the weights or the
/// input must not turn into a plausible answer). The vector kernels get the
/// same rule from `_mm512_max_ps(0, x)`, which returns its second operand
/// when either is NaN.
#[inline(always)]
pub(crate) fn relu(x: f32) -> f32 {
    if x < 0.0 { 0.0 } else { x }
}

use crate::error::Result;

/// For the test suites (not part of the API): see [`for_each_backend!`](crate::for_each_backend).
#[doc(hidden)]
pub mod testing {
    /// How much work a test may ask of a backend: the reference backend
    /// (plain f64 loops, one thread) runs the smaller cases only.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Scale {
        /// Every case.
        Full,
        /// The cases that take the reference backend a second or so.
        Light,
    }
}

/// Instantiates each listed `fn name<B: Backend>(b: &B, scale: Scale)` as a
/// test on every backend, one module per backend: the backend-generic test
/// suites (conformance, golden, training) all run through this list, so a
/// new backend is one line here.
#[doc(hidden)]
#[macro_export]
macro_rules! for_each_backend {
    ($($test:ident),* $(,)?) => {
        mod reference {
            $(#[test] fn $test() {
                super::$test(&$crate::backend::Reference::new(), $crate::backend::testing::Scale::Light)
            })*
        }
        mod cpu {
            $(#[test] fn $test() {
                super::$test(&$crate::backend::Cpu::new(Some(2)).unwrap(), $crate::backend::testing::Scale::Full)
            })*
        }
    };
}

/// The element type of a backend buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    #[default]
    F32,
    /// bfloat16: the upper half of an f32 (8 exponent bits, 7 mantissa bits).
    Bf16,
    /// 32-bit unsigned integer (class labels).
    U32,
    /// 8-bit unsigned integer: the activations of an int8 plan (their scale
    /// and zero point live with the plan, not the buffer).
    U8,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::Bf16 => 2,
            DType::U8 => 1,
        }
    }
}

/// A bf16 number: the upper 16 bits of an f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl Bf16 {
    /// Rounds to the nearest bf16, ties to even (NaN stays NaN).
    pub fn from_f32(v: f32) -> Self {
        let b = v.to_bits();
        if v.is_nan() {
            return Self((b >> 16) as u16 | 0x40);
        }
        let round = 0x7fff + ((b >> 16) & 1);
        Self((b.wrapping_add(round) >> 16) as u16)
    }

    /// The exact f32 value.
    pub fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}

/// Host element types that can be copied into a backend buffer.
pub trait Element: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The buffer type that holds them.
    const DTYPE: DType;
    /// The values, by type.
    fn host(values: &[Self]) -> HostSlice<'_>;
}

/// Host values on their way to a backend buffer.
#[derive(Clone, Copy, Debug)]
pub enum HostSlice<'a> {
    /// Floats.
    F32(&'a [f32]),
    /// bf16 values.
    Bf16(&'a [Bf16]),
    /// Labels.
    U32(&'a [u32]),
    /// Quantized activations.
    U8(&'a [u8]),
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn host(values: &[f32]) -> HostSlice<'_> {
        HostSlice::F32(values)
    }
}

impl Element for Bf16 {
    const DTYPE: DType = DType::Bf16;
    fn host(values: &[Bf16]) -> HostSlice<'_> {
        HostSlice::Bf16(values)
    }
}

impl Element for u8 {
    const DTYPE: DType = DType::U8;
    fn host(values: &[u8]) -> HostSlice<'_> {
        HostSlice::U8(values)
    }
}

impl Element for u32 {
    const DTYPE: DType = DType::U32;
    fn host(values: &[u32]) -> HostSlice<'_> {
        HostSlice::U32(values)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for super::Bf16 {}
    impl Sealed for u32 {}
    impl Sealed for u8 {}
}

/// What every backend buffer knows about itself.
pub trait Buffer: Default + Send + Sync + std::fmt::Debug {
    /// Element type.
    fn dtype(&self) -> DType;
    /// Number of elements.
    fn len(&self) -> usize;
    /// True when it holds no elements.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a convolution's output is finished (fused into the kernel's
/// epilogue): `y = relu?(conv(x) + bias + residual)`.
pub struct ConvEpilogue<'a, B: Backend> {
    /// Per-output-channel addend (a folded batch norm's shift), f32.
    pub bias: Option<&'a B::Buf>,
    /// Added element-wise; same shape as the output, f32 or (where
    /// [`ConvStorage::residual_bf16`] allows) bf16.
    pub residual: Option<&'a B::Buf>,
    /// Clamp at zero.
    pub relu: bool,
    /// The output buffer already holds the residual (then `residual` is
    /// `None`): it is added as `residual` would be and overwritten. Asked for
    /// only where [`ConvStorage::residual_in_output`] allows.
    pub residual_in_output: bool,
}

impl<B: Backend> Default for ConvEpilogue<'_, B> {
    fn default() -> Self {
        Self { bias: None, residual: None, relu: false, residual_in_output: false }
    }
}

/// Affine quantization of a tensor: `real = scale * (q - zero)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quant {
    /// The real value of one step.
    pub scale: f32,
    /// The stored value of a real zero.
    pub zero: u8,
}

impl Quant {
    /// `x` quantized: `round(x * (1 / scale)) + zero` (ties to even), clamped
    /// to `0..=255` (NaN gives 0). Every backend quantizes with these
    /// operations, so their bits agree.
    #[inline]
    pub fn quantize(self, x: f32) -> u8 {
        let q = (x * (1.0 / self.scale)).round_ties_even() + self.zero as f32;
        q.clamp(0.0, 255.0) as u8
    }
}

/// The epilogue of an int8 convolution ([`Backend::conv_forward_int8`]):
/// the i32 sums `acc` of `(x - x.zero) * w` become
/// `y = relu?(acc * multiplier + bias + residual)` in f32 by fused
/// multiply-adds: `fma(acc, m, b)`, then `fma(r - r.zero, r.scale, y)` for a
/// u8 residual or `fma(r, 1, y)` for an f32 one. For a u8 output `m`, `b` and
/// the residual's scale are first multiplied by `1 / output.scale`, so that
/// `y` counts output steps: the stored value is `round(y) + output.zero`
/// (ties to even), clamped to `0..=255`, NaN giving 0. Every backend performs
/// exactly these operations, so their bits agree.
pub struct QuantEpilogue<'a, B: Backend> {
    /// How the input is quantized: a u8 input's zero point, or how an f32
    /// input is quantized as it is read (the first layer's).
    pub input: Quant,
    /// Per output channel: the input's scale times the channel's weight scale, f32.
    pub multiplier: &'a B::Buf,
    /// Per-output-channel addend (the folded batch norm's shift), f32.
    pub bias: Option<&'a B::Buf>,
    /// Added after the bias.
    pub residual: Option<QuantResidual<'a, B>>,
    /// Clamp at zero.
    pub relu: bool,
    /// `Some(q)`: store u8 quantized by `q`; `None`: store f32.
    pub output: Option<Quant>,
}

/// The residual an int8 convolution adds.
pub enum QuantResidual<'a, B: Backend> {
    /// A buffer of its own: f32, or u8 quantized as given.
    Apart(&'a B::Buf, Quant),
    /// u8 values quantized as given, already in the (u8) output buffer:
    /// each is read just before it is overwritten (an int8 convolution
    /// never stores partial sums).
    InOutput(Quant),
}

/// What a prepared filter is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FilterUse {
    /// `conv_forward` in f32.
    Forward,
    /// `conv_forward` at inference in bf16: bf16 weights and inputs, f32 sums
    /// and epilogue (where the backend has no bf16 form of a layer, it runs
    /// in f32).
    ForwardBf16,
    /// `conv_backward_data`.
    BackwardData,
    /// [`Backend::conv_forward_int8`]: the weights are integers in
    /// `-127..=127` (per-output-channel symmetric quantization), held as f32.
    ForwardInt8,
}

/// The arithmetic of inference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 throughout.
    #[default]
    F32,
    /// Convolutions on bf16 weights and inputs with f32 sums; the rest f32.
    Bf16,
    /// Convolutions on int8 weights and uint8 activations with i32 sums,
    /// requantized in their epilogue (weights quantized by `resnet quantize`).
    Int8,
}

impl std::str::FromStr for Precision {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            "int8" => Ok(Self::Int8),
            _ => Err(crate::Error::Invalid(format!("unknown precision {s:?} (expected f32, bf16 or int8)"))),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
        })
    }
}

/// How a convolution reads an input stored in bf16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputRead {
    /// It reads f32 only.
    F32,
    /// It rounds its input to bf16 anyway: a bf16 input changes nothing.
    Bf16,
    /// It computes on f32 input; a bf16 input costs one rounding of what it
    /// reads (the rounding every bf16 layer applies to its input).
    Bf16Rounding,
}

/// The element types a convolution reads and writes in an inference plan,
/// and whether its residual may share its output buffer: the backend's
/// answer, in descriptor terms, to the plan compiler
/// ([`Backend::conv_storage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvStorage {
    /// How it reads a bf16 input.
    pub input: InputRead,
    /// It writes bf16 output, exactly the rounding of its f32 result, where
    /// that is worth it (the plan then stores the value in bf16 if every
    /// reader takes it so).
    pub output_bf16: bool,
    /// It reads a bf16 residual.
    pub residual_bf16: bool,
    /// Its output may be written over its residual
    /// ([`ConvEpilogue::residual_in_output`]), each residual value read just
    /// before it is overwritten.
    pub residual_in_output: bool,
}

/// Per-channel batch-norm parameters.
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

/// The kernels a device provides. Shapes come from the descriptors; buffers
/// hold f32 unless an operation says otherwise. Methods that write a buffer
/// overwrite it unless they say they accumulate; output buffers have the
/// right element type and length (see [`Backend::resize`]).
pub trait Backend: Clone + Send + Sync + 'static {
    /// A device allocation. `Default` is an empty f32 buffer (no allocation).
    type Buf: Buffer;
    /// A convolution filter prepared for one use and one algorithm.
    type Filter: Send + Sync + Default + std::fmt::Debug;
    /// A convolution algorithm (see [`Backend::conv_algorithm`]).
    type Algo: Copy + Eq + std::hash::Hash + Send + Sync + std::fmt::Debug;

    /// A short description (e.g. `cpu (2 threads, avx512)`).
    fn describe(&self) -> String;

    /// Whether inference in `precision` runs natively (faster than f32).
    /// Elsewhere bf16 gives the same results slowly, and callers should run
    /// in f32 instead.
    fn supports(&self, precision: Precision) -> bool {
        precision == Precision::F32
    }

    /// Runs `f`, which issues a sequence of operations, where they start
    /// fastest (the CPU backend: on one of its pool threads, the others
    /// waiting for work). The default just calls `f`.
    fn scope<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    // ---- memory ----
    /// A buffer of `len` zeros of `dtype`.
    fn alloc(&self, dtype: DType, len: usize) -> Result<Self::Buf>;
    /// A buffer holding a copy of `data`.
    fn upload<T: Element>(&self, data: &[T]) -> Result<Self::Buf> {
        let mut buf = self.alloc(T::DTYPE, 0)?;
        self.write(&mut buf, data)?;
        Ok(buf)
    }
    /// Overwrites `dst` with host data, giving it `src`'s type and length
    /// (reusing its memory when it can).
    fn write<T: Element>(&self, dst: &mut Self::Buf, src: &[T]) -> Result<()>;
    /// Copies an f32 or bf16 buffer to host memory, as f32.
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// Makes `buf` hold `len` elements of `dtype`, reusing its allocation
    /// when it can. The contents are unspecified afterwards.
    fn resize(&self, buf: &mut Self::Buf, dtype: DType, len: usize) -> Result<()>;
    /// Sets every element of an f32 buffer to `value`.
    fn fill(&self, buf: &mut Self::Buf, value: f32) -> Result<()>;

    // ---- convolution ----
    /// The algorithm a convolution of descriptor `d` gets for `usage`, chosen
    /// from the whole descriptor (batch and size included) as cuDNN chooses
    /// one. A filter prepared for it serves every descriptor with the same
    /// answer.
    fn conv_algorithm(&self, d: &ConvDesc, usage: FilterUse) -> Self::Algo;
    /// Whether [`Backend::conv_algorithm`] gives the same answer for every
    /// batch and size of `d`'s layer. A compiled model then prepares the
    /// filter once and keeps no copy of the weights; elsewhere it keeps them
    /// to prepare the filter a new shape's algorithm needs. The default: the
    /// answer may depend on the shape.
    fn conv_algorithm_is_fixed(&self, d: &ConvDesc, usage: FilterUse) -> bool {
        let _ = (d, usage);
        false
    }
    /// Elements (f32) of the filter [`Backend::prepare_filter`] makes for `d`
    /// and `usage`, for memory plans. The default: the weights' own size.
    fn prepared_filter_len(&self, d: &ConvDesc, usage: FilterUse) -> usize {
        let _ = usage;
        d.weight_len()
    }
    /// Which element types a convolution prepared for `usage` reads and
    /// writes, in descriptor terms (batch and size ignored). The default
    /// keeps everything in f32.
    fn conv_storage(&self, d: &ConvDesc, usage: FilterUse) -> ConvStorage {
        let _ = (d, usage);
        ConvStorage { input: InputRead::F32, output_bf16: false, residual_bf16: false, residual_in_output: false }
    }
    /// Whether max pooling reads and writes bf16 (exactly: the maximum of
    /// bf16 values is a bf16 value). The default: f32 only.
    fn max_pool_bf16(&self) -> bool {
        false
    }
    /// Prepares an OHWI weight tensor for `usage` with the algorithm
    /// [`Backend::conv_algorithm`] gives for `d`.
    fn prepare_filter(&self, d: &ConvDesc, weight: &Self::Buf, usage: FilterUse, out: &mut Self::Filter) -> Result<()>;
    /// `y = epilogue(conv(x, w))`. `x` and `y` are f32 or bf16 as
    /// [`Backend::conv_storage`] allows.
    fn conv_forward(
        &self,
        d: &ConvDesc,
        x: &Self::Buf,
        w: &Self::Filter,
        y: &mut Self::Buf,
        epi: &ConvEpilogue<'_, Self>,
    ) -> Result<()>;
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
    ) -> Result<bool> {
        let _ = stats;
        self.conv_forward(d, x, w, y, &ConvEpilogue::default())?;
        Ok(false)
    }
    /// `dx (+)= conv_transpose(dy, w)`; accumulates into `dx` when asked.
    fn conv_backward_data(
        &self,
        d: &ConvDesc,
        dy: &Self::Buf,
        w: &Self::Filter,
        dx: &mut Self::Buf,
        accumulate: bool,
    ) -> Result<()>;
    /// `dw += correlation(x, dy)` (accumulates).
    fn conv_backward_filter(&self, d: &ConvDesc, x: &Self::Buf, dy: &Self::Buf, dw: &mut Self::Buf) -> Result<()>;

    /// An int8 convolution: `x` u8 (stored with `q.input`'s zero point) or
    /// f32 (quantized with `q.input` as it is read), `w` prepared for
    /// [`FilterUse::ForwardInt8`], exact i32 sums, and `q`'s epilogue; `y`
    /// u8 or f32 as `q.output_scale` says. Backends without int8 refuse.
    fn conv_forward_int8(
        &self,
        d: &ConvDesc,
        x: &Self::Buf,
        w: &Self::Filter,
        y: &mut Self::Buf,
        q: &QuantEpilogue<'_, Self>,
    ) -> Result<()> {
        let _ = (d, x, w, y, q);
        Err(crate::Error::Backend(format!("{} has no int8 convolutions", self.describe())))
    }

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
    ) -> Result<()>;
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
    ) -> Result<()>;
    /// The output of a training-mode forward pass again, from the statistics it
    /// saved (`mean`, `invstd`) and the same `x` and parameters: the same values
    /// it wrote, bit for bit. Training recomputes a norm's output this way
    /// rather than keeping it for the backward pass.
    #[allow(clippy::too_many_arguments)]
    fn bn_forward_saved(
        &self,
        rows: usize,
        c: usize,
        x: &Self::Buf,
        p: &BnParams<'_, Self>,
        mean: &Self::Buf,
        invstd: &Self::Buf,
        tail: &BnTail<'_, Self>,
        y: &mut Self::Buf,
    ) -> Result<()>;
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
    ) -> Result<()>;

    // ---- pooling ----
    /// Max pooling; `x` and `y` f32, bf16 where [`Backend::max_pool_bf16`],
    /// or u8 (where the backend has int8 convolutions).
    fn max_pool_forward(&self, d: &PoolDesc, x: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    /// Max-pool backward: each output's gradient goes to the first maximum of
    /// its window (PyTorch's tie rule). Overwrites `dx`.
    fn max_pool_backward(&self, d: &PoolDesc, x: &Self::Buf, dy: &Self::Buf, dx: &mut Self::Buf) -> Result<()>;
    /// Mean over the `hw` positions of each of `n` images: `[n, hw, c] -> [n, c]`.
    fn global_avg_pool_forward(&self, n: usize, hw: usize, c: usize, x: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    /// Backward of the global average pool. Overwrites `dx`.
    fn global_avg_pool_backward(&self, n: usize, hw: usize, c: usize, dy: &Self::Buf, dx: &mut Self::Buf)
    -> Result<()>;
    /// Global average pooling of u8 values of scale `scale` (zero point 0)
    /// into f32: `y = sum as f32 * (scale / hw as f32)`.
    #[allow(clippy::too_many_arguments)]
    fn global_avg_pool_int8(
        &self,
        n: usize,
        hw: usize,
        c: usize,
        x: &Self::Buf,
        scale: f32,
        y: &mut Self::Buf,
    ) -> Result<()> {
        let _ = (n, hw, c, x, scale, y);
        Err(crate::Error::Backend(format!("{} has no int8 pooling", self.describe())))
    }

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
    ) -> Result<()>;
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
    ) -> Result<()>;

    // ---- element-wise ----
    /// `y = relu?(a + b)`.
    fn add(&self, a: &Self::Buf, b: &Self::Buf, relu: bool, y: &mut Self::Buf) -> Result<()>;
    /// `y += x`.
    fn add_assign(&self, y: &mut Self::Buf, x: &Self::Buf) -> Result<()>;
    /// Option-A shortcut forward (f32, or u8 where the backend has int8 convolutions).
    fn pad_shortcut_forward(&self, d: &PadShortcutDesc, x: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    /// Option-A shortcut backward: `dx (+)= subsample-slice(dy)`.
    fn pad_shortcut_backward(
        &self,
        d: &PadShortcutDesc,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
        accumulate: bool,
    ) -> Result<()>;

    // ---- loss and optimiser ----
    /// Softmax cross-entropy over `[n, classes]` logits with the labels of
    /// `labels` (a u32 buffer of `n`) and optional label smoothing (PyTorch's
    /// `CrossEntropyLoss`, mean reduction). Writes `dlogits` (the gradient of
    /// the mean loss) and, into the f32 buffer `metrics` at `2 * slot` and
    /// `2 * slot + 1`, the mean loss and the number of images whose label has
    /// the largest logit (ties go to the lower class), so that a training
    /// loop reads them back once per log interval, not once per step.
    #[allow(clippy::too_many_arguments)]
    fn softmax_cross_entropy(
        &self,
        n: usize,
        classes: usize,
        logits: &Self::Buf,
        labels: &Self::Buf,
        smoothing: f32,
        dlogits: &mut Self::Buf,
        metrics: &mut Self::Buf,
        slot: usize,
    ) -> Result<()>;
    /// One SGD step on a parameter: `PyTorch torch.optim.SGD` semantics.
    fn sgd_update(
        &self,
        step: &SgdStep,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        momentum_buf: &mut Self::Buf,
    ) -> Result<()>;
    /// Sum of squares (for gradient norms).
    fn sum_squares(&self, x: &Self::Buf) -> Result<f64>;
}
