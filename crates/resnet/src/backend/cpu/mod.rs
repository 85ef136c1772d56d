//! The CPU backend: NHWC f32 kernels on one rayon thread pool.
//!
//! Every kernel runs inside the backend's own pool, sized by `--threads`, so
//! the whole program uses exactly that many compute threads.

/// Defines a function whose body is compiled twice, for the baseline target
/// and with AVX-512F enabled, and runs the version this CPU supports: the
/// element-wise passes (batch norm, ReLU masks) are written as plain loops
/// that the compiler vectorises, 16 lanes wide where it may.
macro_rules! wide_fn {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            if $crate::backend::cpu::gemm::isa() == $crate::backend::cpu::gemm::Isa::Avx512 {
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                // SAFETY: the CPU has avx512f (checked by `isa`).
                return unsafe { avx512($($arg),*) };
            }
            body($($arg),*)
        }
    };
}

pub(crate) mod bf16;
mod conv;
mod direct;
mod gemm;
pub(crate) mod int8;
mod kernel;
mod mem;
mod norm;
mod ops;
mod pool;
mod tile;
mod winograd;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

pub use conv::{CpuAlgo, CpuFilter};
pub use int8::native as int8_native;
pub use mem::{CpuBuf, allocated, reset_peak};

use super::{
    Backend, BnGrads, BnParams, BnSaved, BnTail, Buffer, ConvDesc, ConvEpilogue, ConvStorage, DType, Element,
    FilterUse, PadShortcutDesc, PoolDesc, Precision, QuantEpilogue, QuantResidual, SgdStep,
};
use crate::error::{Error, Result};

/// The CPU backend: a thread pool.
#[derive(Clone)]
pub struct Cpu {
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
}

impl std::fmt::Debug for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cpu({} threads)", self.threads)
    }
}

/// The most threads [`Cpu::new`] accepts.
pub const MAX_THREADS: usize = 1024;

impl Cpu {
    /// A backend with `threads` compute threads (`None`: one per available core).
    pub fn new(threads: Option<usize>) -> Result<Self> {
        let threads = match threads {
            Some(0) => return Err(Error::Invalid("--threads must be at least 1".into())),
            Some(t) if t > MAX_THREADS => {
                return Err(Error::Invalid(format!("--threads {t} is more than the supported {MAX_THREADS}")));
            }
            Some(t) => t,
            None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("resnet-cpu-{i}"))
            .build()
            .map_err(|e| Error::Invalid(format!("cannot start {threads} threads: {e}")))?;
        Ok(Self { pool: Arc::new(pool), threads })
    }

    /// Number of compute threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Whether this CPU runs the bf16 kernels natively (AVX-512-BF16;
    /// `RESNET_NO_BF16` turns them off).
    pub fn native_bf16() -> bool {
        bf16::native()
    }

    /// Runs `f` inside this backend's thread pool.
    fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

fn isa_name() -> &'static str {
    match gemm::isa() {
        gemm::Isa::Avx512 => "avx512",
        gemm::Isa::Avx2 => "avx2",
        gemm::Isa::Generic => "generic",
    }
}

/// An f32 buffer's values and the element count a descriptor expects of it.
fn f32s(buf: &CpuBuf, len: usize) -> Result<&[f32]> {
    let v = buf.f32()?;
    v.get(..len).ok_or_else(|| short(v.len(), len))
}

/// The first `len` u8 values of `buf` (which must hold u8).
fn u8s(buf: &CpuBuf, len: usize) -> Result<&[u8]> {
    let v = buf.u8()?;
    v.get(..len).ok_or_else(|| short(v.len(), len))
}

/// [`u8s`] for writing.
fn u8s_mut(buf: &mut CpuBuf, len: usize) -> Result<&mut [u8]> {
    let v = buf.u8_mut()?;
    let have = v.len();
    v.get_mut(..len).ok_or_else(|| short(have, len))
}

/// [`f32s`] for writing.
fn f32s_mut(buf: &mut CpuBuf, len: usize) -> Result<&mut [f32]> {
    let v = buf.f32_mut()?;
    let have = v.len();
    v.get_mut(..len).ok_or_else(|| short(have, len))
}

fn short(have: usize, want: usize) -> Error {
    Error::Backend(format!("a buffer of {have} elements where {want} are needed"))
}

/// A buffer's first `len` activations, f32 or bf16.
fn rows(buf: &CpuBuf, len: usize) -> Result<direct::Rows<'_>> {
    Ok(match buf.dtype() {
        DType::Bf16 => direct::Rows::Bf16(buf.bf16()?.get(..len).ok_or_else(|| short(buf.len(), len))?),
        _ => direct::Rows::F32(f32s(buf, len)?),
    })
}

/// [`rows`] for writing.
fn rows_mut(buf: &mut CpuBuf, len: usize) -> Result<direct::RowsMut<'_>> {
    let have = buf.len();
    Ok(match buf.dtype() {
        DType::Bf16 => direct::RowsMut::Bf16(buf.bf16_mut()?.get_mut(..len).ok_or_else(|| short(have, len))?),
        _ => direct::RowsMut::F32(f32s_mut(buf, len)?),
    })
}

impl Backend for Cpu {
    type Buf = CpuBuf;
    type Filter = CpuFilter;
    type Algo = CpuAlgo;

    fn describe(&self) -> String {
        let bf16 = if bf16::native() { ", avx512-bf16" } else { "" };
        let vnni = if int8::native() { ", avx512-vnni" } else { "" };
        let plural = if self.threads == 1 { "" } else { "s" };
        format!("cpu ({} thread{plural}, {}{bf16}{vnni})", self.threads, isa_name())
    }

    /// int8 runs everywhere (portable kernels where the CPU lacks VNNI:
    /// correct, and slower than f32; see [`int8::native`]).
    fn supports(&self, precision: Precision) -> bool {
        precision != Precision::Bf16 || bf16::native()
    }

    /// Runs `f` on a pool thread while the other threads wait for its work
    /// spinning (`rayon::yield_now`) instead of going to sleep: rayon parks an
    /// idle worker after a few dozen `sched_yield`s, sooner than the uneven
    /// end of most operations, and waking it again costs more than that. ONNX Runtime's pool spins the same way. Called from outside the
    /// pool, `f` runs on pool thread 0 every time (`ThreadPool::broadcast`),
    /// so that each thread works on the same parts of the buffers from one
    /// call to the next.
    fn scope<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        if self.threads == 1 {
            return self.install(f);
        }
        if rayon::current_thread_index().is_none() {
            // From outside the pool: the same thread (index 0) runs every
            // pass, so each thread keeps writing the same parts of the plan's
            // buffers from one pass to the next (see ARCHITECTURE.md, "Which
            // thread touches which data").
            let job = std::sync::Mutex::new(Some(f));
            let result = std::sync::Mutex::new(None);
            let done = AtomicBool::new(false);
            self.pool.broadcast(|ctx| {
                if ctx.index() == 0 {
                    let _stop = SetOnDrop(&done);
                    let f = job.lock().unwrap_or_else(|e| e.into_inner()).take();
                    let r = f.map(|f| f());
                    *result.lock().unwrap_or_else(|e| e.into_inner()) = r;
                } else {
                    while !done.load(Ordering::Acquire) {
                        if rayon::yield_now() != Some(rayon::Yield::Executed) {
                            std::hint::spin_loop();
                        }
                    }
                }
            });
            return result.into_inner().unwrap_or_else(|e| e.into_inner()).expect("thread 0 ran the job");
        }
        self.install(|| {
            let done = AtomicBool::new(false);
            let owner = rayon::current_thread_index();
            rayon::scope(|s| {
                for _ in 1..self.threads {
                    // Stealers take the oldest job first, so the spinners are
                    // taken before any work `f` pushes. The thread running `f`
                    // may still pop one (when `f` waits on another pool): it
                    // must not spin, or it would wait for itself.
                    s.spawn(|_| {
                        if rayon::current_thread_index() == owner {
                            return;
                        }
                        while !done.load(Ordering::Acquire) {
                            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                                std::hint::spin_loop();
                            }
                        }
                    });
                }
                // Set even if `f` panics, so the scope can end.
                let _stop = SetOnDrop(&done);
                f()
            })
        })
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<CpuBuf> {
        CpuBuf::zeroed(dtype, len)
    }
    fn write<T: Element>(&self, dst: &mut CpuBuf, src: &[T]) -> Result<()> {
        dst.write(src)
    }
    fn download(&self, buf: &CpuBuf) -> Result<Vec<f32>> {
        match buf.dtype() {
            DType::F32 => Ok(buf.f32()?.to_vec()),
            DType::Bf16 => Ok(buf.bf16()?.iter().map(|v| v.to_f32()).collect()),
            DType::U8 => Ok(buf.u8()?.iter().map(|&v| v as f32).collect()),
            DType::U32 => Err(Error::Backend("labels are not downloaded as floats".into())),
        }
    }
    fn resize(&self, buf: &mut CpuBuf, dtype: DType, len: usize) -> Result<()> {
        if (buf.dtype(), buf.len()) != (dtype, len) {
            buf.resize(dtype, len)?;
        }
        Ok(())
    }
    fn fill(&self, buf: &mut CpuBuf, value: f32) -> Result<()> {
        buf.f32_mut()?.fill(value);
        Ok(())
    }

    fn conv_algorithm(&self, d: &ConvDesc, usage: FilterUse) -> CpuAlgo {
        conv::algorithm(d, usage)
    }
    fn conv_algorithm_is_fixed(&self, d: &ConvDesc, usage: FilterUse) -> bool {
        usage == FilterUse::ForwardInt8 || conv::algorithm_is_fixed(d)
    }
    fn conv_storage(&self, d: &ConvDesc, usage: FilterUse) -> ConvStorage {
        conv::storage(d, usage)
    }
    fn max_pool_bf16(&self) -> bool {
        true
    }

    fn prepared_filter_len(&self, d: &ConvDesc, usage: FilterUse) -> usize {
        conv::prepared_len(d, usage)
    }

    fn prepare_filter(&self, d: &ConvDesc, weight: &CpuBuf, usage: FilterUse, out: &mut CpuFilter) -> Result<()> {
        let w = f32s(weight, d.weight_len())?;
        self.install(|| conv::prepare(d, w, usage, out));
        Ok(())
    }

    fn conv_forward(
        &self,
        d: &ConvDesc,
        x: &CpuBuf,
        w: &CpuFilter,
        y: &mut CpuBuf,
        e: &ConvEpilogue<'_, Self>,
    ) -> Result<()> {
        w.check(d, &[FilterUse::Forward, FilterUse::ForwardBf16])?;
        let epi = gemm::Epilogue {
            accumulate: false,
            scale: None,
            bias: e.bias.map(|v| f32s(v, d.c_out)).transpose()?,
            residual: None,
            relu: e.relu,
        };
        let x = rows(x, d.in_len())?;
        let residual = match (e.residual, e.residual_in_output) {
            (Some(r), false) => Some(direct::Residual::Rows(rows(r, d.out_len())?)),
            (None, true) => Some(direct::Residual::InOutput),
            (None, false) => None,
            (Some(_), true) => return Err(Error::Backend("a residual both in the output and apart".into())),
        };
        let y = rows_mut(y, d.out_len())?;
        self.install(|| conv::forward_stored(d, x, w, y, &epi, residual));
        Ok(())
    }

    fn conv_forward_int8(
        &self,
        d: &ConvDesc,
        x: &CpuBuf,
        w: &CpuFilter,
        y: &mut CpuBuf,
        q: &QuantEpilogue<'_, Self>,
    ) -> Result<()> {
        w.check(d, &[FilterUse::ForwardInt8])?;
        let panels = w.int8().ok_or_else(|| Error::Backend("an int8 filter without panels".into()))?;
        let (n, m) = (d.c_out, d.out_len());
        let p = int8::Params {
            multiplier: f32s(q.multiplier, n)?,
            bias: q.bias.map(|b| f32s(b, n)).transpose()?,
            relu: q.relu,
        };
        let src = match x.dtype() {
            DType::U8 => int8::Src::U8(u8s(x, d.in_len())?, q.input.zero),
            _ => int8::Src::F32(f32s(x, d.in_len())?, q.input),
        };
        let res = match q.residual {
            Some(QuantResidual::Apart(r, s)) if r.dtype() == DType::U8 => Some(int8::Res::U8(u8s(r, m)?, s)),
            Some(QuantResidual::Apart(r, _)) => Some(int8::Res::F32(f32s(r, m)?)),
            Some(QuantResidual::InOutput(_)) if q.output.is_none() => {
                return Err(Error::Backend("a residual in an f32 output of an int8 convolution".into()));
            }
            Some(QuantResidual::InOutput(s)) => Some(int8::Res::InOutput(s)),
            None => None,
        };
        let dst = match q.output {
            Some(o) => int8::Dst::U8(u8s_mut(y, m)?, o),
            None => int8::Dst::F32(f32s_mut(y, m)?),
        };
        self.install(|| int8::conv(d, src, panels, &p, res, dst));
        Ok(())
    }

    fn conv_forward_stats(
        &self,
        d: &ConvDesc,
        x: &CpuBuf,
        w: &CpuFilter,
        y: &mut CpuBuf,
        stats: &mut CpuBuf,
    ) -> Result<bool> {
        w.check(d, &[FilterUse::Forward])?;
        let (x, y) = (f32s(x, d.in_len())?, f32s_mut(y, d.out_len())?);
        stats.resize(DType::F32, 2 * d.c_out)?;
        let stats = stats.f32_mut()?;
        Ok(self.install(|| conv::forward_stats(d, x, w, y, stats)))
    }

    fn conv_backward_data(
        &self,
        d: &ConvDesc,
        dy: &CpuBuf,
        w: &CpuFilter,
        dx: &mut CpuBuf,
        accumulate: bool,
    ) -> Result<()> {
        w.check(d, &[FilterUse::BackwardData])?;
        let (dy, dx) = (f32s(dy, d.out_len())?, f32s_mut(dx, d.in_len())?);
        self.install(|| conv::backward_data(d, dy, w, dx, accumulate));
        Ok(())
    }

    fn conv_backward_filter(&self, d: &ConvDesc, x: &CpuBuf, dy: &CpuBuf, dw: &mut CpuBuf) -> Result<()> {
        let (x, dy, dw) = (f32s(x, d.in_len())?, f32s(dy, d.out_len())?, f32s_mut(dw, d.weight_len())?);
        self.install(|| conv::backward_filter(d, x, dy, dw));
        Ok(())
    }

    fn bn_forward_inference(
        &self,
        rows: usize,
        c: usize,
        x: &CpuBuf,
        p: &BnParams<'_, Self>,
        running_mean: &CpuBuf,
        running_var: &CpuBuf,
        tail: &BnTail<'_, Self>,
        y: &mut CpuBuf,
    ) -> Result<()> {
        let (x, y) = (f32s(x, rows * c)?, f32s_mut(y, rows * c)?);
        let (gamma, beta) = (f32s(p.weight, c)?, f32s(p.bias, c)?);
        let (mean, var) = (f32s(running_mean, c)?, f32s(running_var, c)?);
        let residual = tail.residual.map(|r| f32s(r, rows * c)).transpose()?;
        self.install(|| norm::forward_inference(c, x, gamma, beta, mean, var, p.eps, residual, tail.relu, y));
        Ok(())
    }

    fn bn_forward_training(
        &self,
        rows: usize,
        c: usize,
        x: &CpuBuf,
        batch_stats: Option<&CpuBuf>,
        p: &BnParams<'_, Self>,
        running: Option<(&mut CpuBuf, &mut CpuBuf, f32)>,
        saved: BnSaved<'_, Self>,
        tail: &BnTail<'_, Self>,
        y: &mut CpuBuf,
    ) -> Result<()> {
        let (x, y) = (f32s(x, rows * c)?, f32s_mut(y, rows * c)?);
        let (gamma, beta) = (f32s(p.weight, c)?, f32s(p.bias, c)?);
        let stats = batch_stats.map(|s| f32s(s, 2 * c)).transpose()?;
        let running = match running {
            Some((m, v, mom)) => Some((f32s_mut(m, c)?, f32s_mut(v, c)?, mom)),
            None => None,
        };
        for b in [&mut *saved.mean, &mut *saved.invstd] {
            b.resize(DType::F32, c)?;
        }
        let (mean, invstd) = (saved.mean.f32_mut()?, saved.invstd.f32_mut()?);
        let residual = tail.residual.map(|r| f32s(r, rows * c)).transpose()?;
        self.install(|| {
            norm::forward_training(rows, c, x, gamma, beta, p.eps, stats, running, mean, invstd, residual, tail.relu, y)
        });
        Ok(())
    }

    fn bn_forward_saved(
        &self,
        rows: usize,
        c: usize,
        x: &CpuBuf,
        p: &BnParams<'_, Self>,
        mean: &CpuBuf,
        invstd: &CpuBuf,
        tail: &BnTail<'_, Self>,
        y: &mut CpuBuf,
    ) -> Result<()> {
        let (x, y) = (f32s(x, rows * c)?, f32s_mut(y, rows * c)?);
        let (gamma, beta) = (f32s(p.weight, c)?, f32s(p.bias, c)?);
        let (mean, invstd) = (f32s(mean, c)?, f32s(invstd, c)?);
        let residual = tail.residual.map(|r| f32s(r, rows * c)).transpose()?;
        self.install(|| norm::forward_saved(c, x, gamma, beta, mean, invstd, residual, tail.relu, y));
        Ok(())
    }

    fn bn_backward(
        &self,
        rows: usize,
        c: usize,
        x: &CpuBuf,
        y: &CpuBuf,
        relu: bool,
        dy: &CpuBuf,
        p: &BnParams<'_, Self>,
        mean: &CpuBuf,
        invstd: &CpuBuf,
        g: BnGrads<'_, Self>,
    ) -> Result<()> {
        let n = rows * c;
        let (x, y, dy) = (f32s(x, n)?, f32s(y, n)?, f32s(dy, n)?);
        let params = (f32s(p.weight, c)?, f32s(p.bias, c)?);
        let (mean, invstd) = (f32s(mean, c)?, f32s(invstd, c)?);
        let (dx, dweight, dbias) = (f32s_mut(g.dx, n)?, f32s_mut(g.dweight, c)?, f32s_mut(g.dbias, c)?);
        let dsum = g.dsum.map(|v| f32s_mut(v, n)).transpose()?;
        self.install(|| norm::backward(rows, c, x, y, relu, dy, params, mean, invstd, dx, dweight, dbias, dsum));
        Ok(())
    }

    fn max_pool_forward(&self, d: &PoolDesc, x: &CpuBuf, y: &mut CpuBuf) -> Result<()> {
        if x.dtype() == DType::U8 {
            let (x, y) = (u8s(x, d.n * d.h * d.w * d.c)?, u8s_mut(y, d.n * d.out_h() * d.out_w() * d.c)?);
            self.install(|| int8::max_pool(d, x, y));
            return Ok(());
        }
        let x = rows(x, d.n * d.h * d.w * d.c)?;
        let y = rows_mut(y, d.n * d.out_h() * d.out_w() * d.c)?;
        self.install(|| pool::max_forward_stored(d, x, y));
        Ok(())
    }
    fn max_pool_backward(&self, d: &PoolDesc, x: &CpuBuf, dy: &CpuBuf, dx: &mut CpuBuf) -> Result<()> {
        let n_in = d.n * d.h * d.w * d.c;
        let (x, dy) = (f32s(x, n_in)?, f32s(dy, d.n * d.out_h() * d.out_w() * d.c)?);
        let dx = f32s_mut(dx, n_in)?;
        self.install(|| pool::max_backward(d, x, dy, dx));
        Ok(())
    }
    fn global_avg_pool_forward(&self, n: usize, hw: usize, c: usize, x: &CpuBuf, y: &mut CpuBuf) -> Result<()> {
        let (x, y) = (f32s(x, n * hw * c)?, f32s_mut(y, n * c)?);
        self.install(|| pool::gap_forward(hw, c, x, y));
        Ok(())
    }
    fn global_avg_pool_int8(
        &self,
        n: usize,
        hw: usize,
        c: usize,
        x: &CpuBuf,
        scale: f32,
        y: &mut CpuBuf,
    ) -> Result<()> {
        let (x, y) = (u8s(x, n * hw * c)?, f32s_mut(y, n * c)?);
        self.install(|| int8::gap(hw, c, x, scale, y));
        Ok(())
    }
    fn global_avg_pool_backward(&self, n: usize, hw: usize, c: usize, dy: &CpuBuf, dx: &mut CpuBuf) -> Result<()> {
        let (dy, dx) = (f32s(dy, n * c)?, f32s_mut(dx, n * hw * c)?);
        self.install(|| pool::gap_backward(hw, c, dy, dx));
        Ok(())
    }

    fn linear_forward(
        &self,
        n: usize,
        c_in: usize,
        c_out: usize,
        x: &CpuBuf,
        w: &CpuBuf,
        b: Option<&CpuBuf>,
        y: &mut CpuBuf,
    ) -> Result<()> {
        use gemm::{Epilogue, OutMat, Strided};
        let (x, w) = (f32s(x, n * c_in)?, f32s(w, c_out * c_in)?);
        let bias = b.map(|v| f32s(v, c_out)).transpose()?;
        let y = f32s_mut(y, n * c_out)?;
        let a = Strided { data: x, row_stride: c_in, k_stride: 1 };
        let bw = Strided { data: w, row_stride: c_in, k_stride: 1 };
        let epi = Epilogue { bias, ..Default::default() };
        self.install(|| gemm::gemm(n, c_out, c_in, &a, &bw, OutMat { data: y, ld: c_out }, &epi));
        Ok(())
    }

    fn linear_backward(
        &self,
        n: usize,
        c_in: usize,
        c_out: usize,
        x: &CpuBuf,
        w: &CpuBuf,
        dy: &CpuBuf,
        dx: Option<&mut CpuBuf>,
        dw: &mut CpuBuf,
        db: Option<&mut CpuBuf>,
    ) -> Result<()> {
        use gemm::{Epilogue, OutMat, Strided};
        let (x, w, dy) = (f32s(x, n * c_in)?, f32s(w, c_out * c_in)?, f32s(dy, n * c_out)?);
        let dx = dx.map(|v| f32s_mut(v, n * c_in)).transpose()?;
        let dw = f32s_mut(dw, c_out * c_in)?;
        let db = db.map(|v| f32s_mut(v, c_out)).transpose()?;
        self.install(|| {
            if let Some(dx) = dx {
                let a = Strided { data: dy, row_stride: c_out, k_stride: 1 };
                let b = Strided { data: w, row_stride: 1, k_stride: c_in };
                gemm::gemm(n, c_in, c_out, &a, &b, OutMat { data: dx, ld: c_in }, &Epilogue::default());
            }
            let a = Strided { data: dy, row_stride: 1, k_stride: c_out };
            let b = Strided { data: x, row_stride: 1, k_stride: c_in };
            let epi = Epilogue { accumulate: true, ..Default::default() };
            gemm::gemm(c_out, c_in, n, &a, &b, OutMat { data: dw, ld: c_in }, &epi);
            if let Some(db) = db {
                for row in dy.chunks_exact(c_out) {
                    for (o, &v) in db.iter_mut().zip(row) {
                        *o += v;
                    }
                }
            }
        });
        Ok(())
    }

    fn add(&self, a: &CpuBuf, b: &CpuBuf, relu: bool, y: &mut CpuBuf) -> Result<()> {
        let n = y.len();
        let (a, b, y) = (f32s(a, n)?, f32s(b, n)?, y.f32_mut()?);
        self.install(|| {
            if relu {
                ops::zip_map(a, b, y, |p, q| crate::backend::relu(p + q))
            } else {
                ops::zip_map(a, b, y, |p, q| p + q)
            }
        });
        Ok(())
    }
    fn add_assign(&self, y: &mut CpuBuf, x: &CpuBuf) -> Result<()> {
        let n = y.len();
        let (x, y) = (f32s(x, n)?, y.f32_mut()?);
        self.install(|| ops::update(y, x, |a, b| a + b));
        Ok(())
    }
    fn pad_shortcut_forward(&self, d: &PadShortcutDesc, x: &CpuBuf, y: &mut CpuBuf) -> Result<()> {
        if x.dtype() == DType::U8 {
            let (x, y) = (u8s(x, d.in_len())?, u8s_mut(y, d.out_len())?);
            self.install(|| ops::pad_shortcut_forward(d, x, y));
            return Ok(());
        }
        let (x, y) = (f32s(x, d.in_len())?, f32s_mut(y, d.out_len())?);
        self.install(|| ops::pad_shortcut_forward(d, x, y));
        Ok(())
    }
    fn pad_shortcut_backward(&self, d: &PadShortcutDesc, dy: &CpuBuf, dx: &mut CpuBuf, accumulate: bool) -> Result<()> {
        let (dy, dx) = (f32s(dy, d.out_len())?, f32s_mut(dx, d.in_len())?);
        self.install(|| ops::pad_shortcut_backward(d, dy, dx, accumulate));
        Ok(())
    }

    fn softmax_cross_entropy(
        &self,
        n: usize,
        classes: usize,
        logits: &CpuBuf,
        labels: &CpuBuf,
        smoothing: f32,
        dlogits: &mut CpuBuf,
        metrics: &mut CpuBuf,
        slot: usize,
    ) -> Result<()> {
        let labels = labels.u32()?.get(..n).ok_or_else(|| short(labels.len(), n))?;
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes) {
            return Err(Error::Backend(format!("label {bad} of a {classes}-class problem")));
        }
        let (logits, dlogits) = (f32s(logits, n * classes)?, f32s_mut(dlogits, n * classes)?);
        let out = f32s_mut(metrics, 2 * slot + 2)?;
        let (loss, correct) = self.install(|| ops::softmax_cross_entropy(classes, logits, labels, smoothing, dlogits));
        out[2 * slot] = loss;
        out[2 * slot + 1] = correct as f32;
        Ok(())
    }
    fn sgd_update(&self, step: &SgdStep, param: &mut CpuBuf, grad: &CpuBuf, momentum_buf: &mut CpuBuf) -> Result<()> {
        let n = param.len();
        let (p, g, m) = (param.f32_mut()?, f32s(grad, n)?, f32s_mut(momentum_buf, n)?);
        self.install(|| ops::sgd(step, p, g, m));
        Ok(())
    }
    fn sum_squares(&self, x: &CpuBuf) -> Result<f64> {
        let x = x.f32()?;
        // Collect the chunk sums and add them in order: reproducible.
        let parts: Vec<f64> = self.install(|| {
            x.par_chunks(1 << 14).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()).collect()
        });
        Ok(parts.iter().sum())
    }
}

/// The machine's peak f32 rate in GFLOP/s on `cpu`'s threads: every thread
/// runs independent multiply-add chains that never touch memory (the ceiling
/// the kernels are measured against).
pub fn peak_gflops(cpu: &Cpu) -> f64 {
    let per_thread = |iters: u64| -> f64 {
        #[cfg(target_arch = "x86_64")]
        if gemm::isa() == gemm::Isa::Avx512 {
            /// Twelve independent chains: enough to cover the multiply-add latency.
            #[target_feature(enable = "avx512f")]
            fn fma_loop(iters: u64) -> f32 {
                use std::arch::x86_64::*;
                let mut acc = [_mm512_set1_ps(0.0); 12];
                let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
                for _ in 0..iters {
                    for v in acc.iter_mut() {
                        *v = _mm512_fmadd_ps(*v, a, b);
                    }
                }
                let mut s = _mm512_setzero_ps();
                for v in acc {
                    s = _mm512_add_ps(s, v);
                }
                _mm512_reduce_add_ps(s)
            }
            // SAFETY: the CPU has avx512f.
            std::hint::black_box(unsafe { fma_loop(iters) });
            // 12 chains x 16 lanes x 2 FLOP per multiply-add.
            return (iters * 12 * 32) as f64;
        }
        let mut acc = [[0.0f32; 8]; 12];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                for x in v.iter_mut() {
                    *x = x.mul_add(0.999_999, 1e-7);
                }
            }
        }
        std::hint::black_box(acc);
        (iters * 12 * 16) as f64
    };
    let iters = 20_000_000u64;
    cpu.install(|| {
        let t = std::time::Instant::now();
        let flops: f64 = (0..cpu.threads()).into_par_iter().map(|_| per_thread(iters)).sum();
        flops / t.elapsed().as_secs_f64() / 1e9
    })
}

#[cfg(test)]
mod tests;
