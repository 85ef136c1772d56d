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

pub mod bf16;
pub mod conv;
pub mod direct;
pub mod gemm;
pub mod norm;
pub mod ops;
pub mod pool;
pub mod winograd;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::{
    Backend, BnGrads, BnParams, BnSaved, BnTail, ConvDesc, ConvEpilogue, FilterUse, PadShortcutDesc, PoolDesc, SgdStep,
    Storage,
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

    /// Runs `f` inside this backend's thread pool.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
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

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type Filter = conv::CpuFilter;

    fn describe(&self) -> String {
        let bf16 = if bf16::native() { ", avx512-bf16" } else { "" };
        format!("cpu ({} threads, {}{bf16})", self.threads, isa_name())
    }

    fn native_bf16(&self) -> bool {
        bf16::native()
    }

    /// Runs `f` on a pool thread while the other threads wait for its work
    /// spinning (`rayon::yield_now`) instead of going to sleep: rayon parks an
    /// idle worker after about 33 `sched_yield`s (~20 us here), shorter than
    /// the uneven end of most operations, and waking it again costs more than
    /// that. ONNX Runtime's pool spins the same way. Called from outside the
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

    fn zeros(&self, len: usize) -> Vec<f32> {
        vec![0.0; len]
    }
    fn upload(&self, data: &[f32]) -> Vec<f32> {
        data.to_vec()
    }
    fn download(&self, buf: &Vec<f32>) -> Vec<f32> {
        buf.clone()
    }
    fn write(&self, dst: &mut Vec<f32>, src: &[f32]) {
        dst.clear();
        dst.extend_from_slice(src);
    }
    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn ensure_len(&self, buf: &mut Vec<f32>, len: usize) {
        if buf.len() != len {
            buf.resize(len, 0.0);
        }
    }
    fn fill(&self, buf: &mut Vec<f32>, value: f32) {
        buf.fill(value);
    }
    fn copy(&self, src: &Vec<f32>, dst: &mut Vec<f32>) {
        dst.copy_from_slice(src);
    }

    fn prepare_filter(&self, d: &ConvDesc, weight: &Vec<f32>, usage: FilterUse, out: &mut conv::CpuFilter) {
        self.install(|| match usage {
            FilterUse::Forward => conv::prepare_forward(d, weight, out),
            FilterUse::ForwardBf16 => conv::prepare_forward_bf16(d, weight, out),
            FilterUse::BackwardData => conv::prepare_backward_data(d, weight, out),
        });
    }

    fn conv_forward(
        &self,
        d: &ConvDesc,
        x: &Vec<f32>,
        w: &conv::CpuFilter,
        y: &mut Vec<f32>,
        e: &ConvEpilogue<'_, Self>,
    ) {
        debug_assert_eq!(x.len(), d.in_len());
        debug_assert_eq!(y.len(), d.out_len());
        if e.residual_in_output {
            return self.conv_forward_stored(d, x, Storage::F32, w, y, Storage::F32, e, Storage::F32);
        }
        let epi = gemm::Epilogue {
            accumulate: false,
            scale: e.scale.map(|v| v.as_slice()),
            bias: e.bias.map(|v| v.as_slice()),
            residual: e.residual.map(|v| (v.as_slice(), d.c_out)),
            relu: e.relu,
        };
        self.install(|| conv::forward(d, x, w, y, &epi));
    }

    fn conv_forward_stats(
        &self,
        d: &ConvDesc,
        x: &Vec<f32>,
        w: &conv::CpuFilter,
        y: &mut Vec<f32>,
        stats: &mut Vec<f32>,
    ) -> bool {
        debug_assert_eq!(x.len(), d.in_len());
        debug_assert_eq!(y.len(), d.out_len());
        stats.resize(2 * d.c_out, 0.0);
        self.install(|| conv::forward_stats(d, x, w, y, stats))
    }

    fn conv_forward_stored(
        &self,
        d: &ConvDesc,
        x: &Vec<f32>,
        x_storage: Storage,
        w: &conv::CpuFilter,
        y: &mut Vec<f32>,
        y_storage: Storage,
        e: &ConvEpilogue<'_, Self>,
        residual_storage: Storage,
    ) {
        let epi = gemm::Epilogue {
            accumulate: false,
            scale: e.scale.map(|v| v.as_slice()),
            bias: e.bias.map(|v| v.as_slice()),
            residual: None,
            relu: e.relu,
        };
        let x = rows(x, x_storage, d.in_len());
        let residual = match (e.residual, e.residual_in_output) {
            (Some(r), false) => Some(direct::Residual::Rows(rows(r, residual_storage, d.out_len()))),
            (None, true) => Some(direct::Residual::InOutput),
            (None, false) => None,
            (Some(_), true) => panic!("a residual both in the output and apart"),
        };
        let y = rows_mut(y, y_storage, d.out_len());
        self.install(|| conv::forward_stored(d, x, w, y, &epi, residual));
    }

    fn conv_backward_data(
        &self,
        d: &ConvDesc,
        dy: &Vec<f32>,
        w: &conv::CpuFilter,
        dx: &mut Vec<f32>,
        accumulate: bool,
    ) {
        debug_assert_eq!(dy.len(), d.out_len());
        debug_assert_eq!(dx.len(), d.in_len());
        self.install(|| conv::backward_data(d, dy, w, dx, accumulate));
    }

    fn conv_backward_filter(&self, d: &ConvDesc, x: &Vec<f32>, dy: &Vec<f32>, dw: &mut Vec<f32>) {
        debug_assert_eq!(dw.len(), d.weight_len());
        self.install(|| conv::backward_filter(d, x, dy, dw));
    }

    fn bn_forward_inference(
        &self,
        _rows: usize,
        c: usize,
        x: &Vec<f32>,
        p: &BnParams<'_, Self>,
        running_mean: &Vec<f32>,
        running_var: &Vec<f32>,
        tail: &BnTail<'_, Self>,
        y: &mut Vec<f32>,
    ) {
        self.install(|| {
            norm::forward_inference(
                c,
                x,
                p.weight,
                p.bias,
                running_mean,
                running_var,
                p.eps,
                tail.residual.map(|v| v.as_slice()),
                tail.relu,
                y,
            )
        });
    }

    fn bn_forward_training(
        &self,
        rows: usize,
        c: usize,
        x: &Vec<f32>,
        batch_stats: Option<&Vec<f32>>,
        p: &BnParams<'_, Self>,
        running: Option<(&mut Vec<f32>, &mut Vec<f32>, f32)>,
        saved: BnSaved<'_, Self>,
        tail: &BnTail<'_, Self>,
        y: &mut Vec<f32>,
    ) {
        let running = running.map(|(m, v, mom)| (m.as_mut_slice(), v.as_mut_slice(), mom));
        self.install(|| {
            norm::forward_training(
                rows,
                c,
                x,
                p.weight,
                p.bias,
                p.eps,
                batch_stats.map(|v| v.as_slice()),
                running,
                saved.mean,
                saved.invstd,
                tail.residual.map(|v| v.as_slice()),
                tail.relu,
                y,
            )
        });
    }

    fn bn_backward(
        &self,
        rows: usize,
        c: usize,
        x: &Vec<f32>,
        y: &Vec<f32>,
        relu: bool,
        dy: &Vec<f32>,
        p: &BnParams<'_, Self>,
        mean: &Vec<f32>,
        invstd: &Vec<f32>,
        g: BnGrads<'_, Self>,
    ) {
        let dsum = g.dsum.map(|v| v.as_mut_slice());
        let params = (p.weight.as_slice(), p.bias.as_slice());
        self.install(|| norm::backward(rows, c, x, y, relu, dy, params, mean, invstd, g.dx, g.dweight, g.dbias, dsum));
    }

    fn max_pool_forward(&self, d: &PoolDesc, x: &Vec<f32>, y: &mut Vec<f32>) {
        self.install(|| pool::max_forward(d, x, y));
    }
    fn max_pool_forward_stored(
        &self,
        d: &PoolDesc,
        x: &Vec<f32>,
        x_storage: Storage,
        y: &mut Vec<f32>,
        y_storage: Storage,
    ) {
        let x = rows(x, x_storage, d.n * d.h * d.w * d.c);
        let y = rows_mut(y, y_storage, d.n * d.out_h() * d.out_w() * d.c);
        self.install(|| pool::max_forward_stored(d, x, y));
    }
    fn max_pool_backward(&self, d: &PoolDesc, x: &Vec<f32>, dy: &Vec<f32>, dx: &mut Vec<f32>) {
        self.install(|| pool::max_backward(d, x, dy, dx));
    }
    fn global_avg_pool_forward(&self, _n: usize, hw: usize, c: usize, x: &Vec<f32>, y: &mut Vec<f32>) {
        self.install(|| pool::gap_forward(hw, c, x, y));
    }
    fn global_avg_pool_backward(&self, _n: usize, hw: usize, c: usize, dy: &Vec<f32>, dx: &mut Vec<f32>) {
        self.install(|| pool::gap_backward(hw, c, dy, dx));
    }

    fn linear_forward(
        &self,
        n: usize,
        c_in: usize,
        c_out: usize,
        x: &Vec<f32>,
        w: &Vec<f32>,
        b: Option<&Vec<f32>>,
        y: &mut Vec<f32>,
    ) {
        use gemm::{BSource, Epilogue, OutMat, Strided};
        let a = Strided { data: x, row_stride: c_in, k_stride: 1 };
        let bw = Strided { data: w, row_stride: c_in, k_stride: 1 };
        let epi = Epilogue { bias: b.map(|v| v.as_slice()), ..Default::default() };
        self.install(|| gemm::gemm(n, c_out, c_in, &a, BSource::Operand(&bw), OutMat { data: y, ld: c_out }, &epi));
    }

    fn linear_backward(
        &self,
        n: usize,
        c_in: usize,
        c_out: usize,
        x: &Vec<f32>,
        w: &Vec<f32>,
        dy: &Vec<f32>,
        dx: Option<&mut Vec<f32>>,
        dw: &mut Vec<f32>,
        db: Option<&mut Vec<f32>>,
    ) {
        use gemm::{BSource, Epilogue, OutMat, Strided};
        self.install(|| {
            if let Some(dx) = dx {
                let a = Strided { data: dy, row_stride: c_out, k_stride: 1 };
                let b = Strided { data: w, row_stride: 1, k_stride: c_in };
                gemm::gemm(
                    n,
                    c_in,
                    c_out,
                    &a,
                    BSource::Operand(&b),
                    OutMat { data: dx, ld: c_in },
                    &Epilogue::default(),
                );
            }
            let a = Strided { data: dy, row_stride: 1, k_stride: c_out };
            let b = Strided { data: x, row_stride: 1, k_stride: c_in };
            let epi = Epilogue { accumulate: true, ..Default::default() };
            gemm::gemm(c_out, c_in, n, &a, BSource::Operand(&b), OutMat { data: dw, ld: c_in }, &epi);
            if let Some(db) = db {
                for row in dy.chunks_exact(c_out) {
                    for (o, &v) in db.iter_mut().zip(row) {
                        *o += v;
                    }
                }
            }
        });
    }

    fn relu_forward(&self, x: &Vec<f32>, y: &mut Vec<f32>) {
        self.install(|| ops::map(x, y, |v| v.max(0.0)));
    }
    fn relu_backward(&self, y: &Vec<f32>, dy: &Vec<f32>, dx: &mut Vec<f32>) {
        self.install(|| ops::zip_map(y, dy, dx, |yv, g| if yv > 0.0 { g } else { 0.0 }));
    }
    fn add(&self, a: &Vec<f32>, b: &Vec<f32>, relu: bool, y: &mut Vec<f32>) {
        self.install(|| {
            if relu { ops::zip_map(a, b, y, |p, q| (p + q).max(0.0)) } else { ops::zip_map(a, b, y, |p, q| p + q) }
        });
    }
    fn add_assign(&self, y: &mut Vec<f32>, x: &Vec<f32>) {
        self.install(|| ops::update(y, x, |a, b| a + b));
    }
    fn pad_shortcut_forward(&self, d: &PadShortcutDesc, x: &Vec<f32>, y: &mut Vec<f32>) {
        self.install(|| ops::pad_shortcut_forward(d, x, y));
    }
    fn pad_shortcut_backward(&self, d: &PadShortcutDesc, dy: &Vec<f32>, dx: &mut Vec<f32>, accumulate: bool) {
        self.install(|| ops::pad_shortcut_backward(d, dy, dx, accumulate));
    }

    fn softmax_cross_entropy(
        &self,
        _n: usize,
        classes: usize,
        logits: &Vec<f32>,
        labels: &[u32],
        smoothing: f32,
        dlogits: &mut Vec<f32>,
    ) -> f32 {
        self.install(|| ops::softmax_cross_entropy(classes, logits, labels, smoothing, dlogits))
    }
    fn sgd_update(&self, step: &SgdStep, param: &mut Vec<f32>, grad: &Vec<f32>, momentum_buf: &mut Vec<f32>) {
        self.install(|| ops::sgd(step, param, grad, momentum_buf));
    }
    fn sum_squares(&self, x: &Vec<f32>) -> f64 {
        // Collect the chunk sums and add them in order: reproducible.
        let parts: Vec<f64> = self.install(|| {
            x.par_chunks(1 << 14).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()).collect()
        });
        parts.iter().sum()
    }
}

/// A buffer's first `len` activations as stored.
fn rows(buf: &[f32], storage: Storage, len: usize) -> direct::Rows<'_> {
    match storage {
        Storage::F32 => direct::Rows::F32(&buf[..len]),
        Storage::Bf16 => {
            assert!(2 * buf.len() >= len, "bf16 buffer too small");
            // SAFETY: Bf16 is two bytes with alignment 2 (<= f32's 4); the
            // buffer's f32 slots hold at least len bf16 values.
            direct::Rows::Bf16(unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), len) })
        }
    }
}

/// [`rows`] for writing.
fn rows_mut(buf: &mut [f32], storage: Storage, len: usize) -> direct::RowsMut<'_> {
    match storage {
        Storage::F32 => direct::RowsMut::F32(&mut buf[..len]),
        Storage::Bf16 => {
            assert!(2 * buf.len() >= len, "bf16 buffer too small");
            // SAFETY: Bf16 is two bytes with alignment 2 (<= f32's 4); the
            // buffer's f32 slots hold at least len bf16 values.
            direct::RowsMut::Bf16(unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast(), len) })
        }
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
mod tests {
    use super::*;

    /// The scope's spinners must end however `f` ends: nested scopes, parallel
    /// work inside, and a panic (which must reach the caller, not hang).
    #[test]
    fn scope_runs_nested_parallel_work_and_passes_panics_on() {
        for threads in [1, 2, 3] {
            let cpu = Cpu::new(Some(threads)).unwrap();
            let sum: u64 = cpu.scope(|| cpu.scope(|| (0..10_000u64).into_par_iter().map(|v| v * v).sum()));
            assert_eq!(sum, (0..10_000u64).map(|v| v * v).sum::<u64>());
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                cpu.scope(|| (0..100).into_par_iter().for_each(|i| assert!(i != 57, "task {i} fails")))
            }));
            assert!(caught.is_err(), "the panic reaches the caller");
            assert_eq!(cpu.scope(rayon::current_num_threads), threads, "the pool still works");
        }
    }
}
