//! A backend that computes nothing and counts memory. The training memory
//! plan ([`crate::model::MemoryPlan`]) runs a network's own training steps
//! on it: the same layers, the same pool, the same buffers lent and given
//! back, so the planned peak is what the code does, by construction. Buffers
//! grow as the CPU backend's do (to the length asked, or twice their
//! capacity), and prepared filters take the size the wrapped backend gives
//! them ([`Backend::prepared_filter_len`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{
    Backend, BnGrads, BnParams, BnSaved, BnTail, Buffer, ConvDesc, ConvEpilogue, DType, Element, FilterUse,
    PadShortcutDesc, PoolDesc, SgdStep,
};
use crate::error::Result;

/// Bytes held now and at most.
#[derive(Debug, Default)]
pub struct Meter {
    live: AtomicU64,
    peak: AtomicU64,
}

impl Meter {
    /// `(live, peak)` bytes.
    pub fn get(&self) -> (u64, u64) {
        (self.live.load(Ordering::Relaxed), self.peak.load(Ordering::Relaxed))
    }

    fn add(&self, bytes: u64) {
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
    }

    fn sub(&self, bytes: u64) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// [`Counting`]'s buffer: a type, a length and the bytes it holds.
#[derive(Debug, Default)]
pub struct CountBuf {
    dtype: DType,
    len: usize,
    capacity: u64,
    meter: Option<Arc<Meter>>,
}

impl Buffer for CountBuf {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for CountBuf {
    fn drop(&mut self) {
        if let Some(m) = &self.meter {
            m.sub(self.capacity);
        }
    }
}

/// [`Counting`]'s prepared filter: the bytes the wrapped backend's would hold.
#[derive(Debug, Default)]
pub struct CountFilter(CountBuf);

/// Counts the memory backend `B` would use, computing nothing.
#[derive(Clone)]
pub struct Counting<B: Backend> {
    inner: B,
    meter: Arc<Meter>,
}

impl<B: Backend> Counting<B> {
    /// A counter for `inner`'s memory.
    pub fn new(inner: B) -> Self {
        Self { inner, meter: Arc::default() }
    }

    /// The meter.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// Makes `buf` hold `bytes`, growing as the CPU backend's arrays grow.
    fn hold(&self, buf: &mut CountBuf, bytes: u64) {
        if bytes > buf.capacity {
            let cap = bytes.max(2 * buf.capacity);
            self.meter.add(cap - buf.capacity);
            buf.capacity = cap;
            buf.meter = Some(self.meter.clone());
        }
    }
}

impl<B: Backend> Backend for Counting<B> {
    type Buf = CountBuf;
    type Filter = CountFilter;
    type Algo = B::Algo;

    fn describe(&self) -> String {
        format!("memory count of {}", self.inner.describe())
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<CountBuf> {
        let mut buf = CountBuf { dtype, len, capacity: 0, meter: None };
        self.hold(&mut buf, (len * dtype.size()) as u64);
        Ok(buf)
    }
    fn write<T: Element>(&self, dst: &mut CountBuf, src: &[T]) -> Result<()> {
        self.resize(dst, T::DTYPE, src.len())
    }
    fn download(&self, buf: &CountBuf) -> Result<Vec<f32>> {
        Ok(vec![0.0; buf.len])
    }
    fn resize(&self, buf: &mut CountBuf, dtype: DType, len: usize) -> Result<()> {
        self.hold(buf, (len * dtype.size()) as u64);
        (buf.dtype, buf.len) = (dtype, len);
        Ok(())
    }
    fn fill(&self, _: &mut CountBuf, _: f32) -> Result<()> {
        Ok(())
    }

    fn conv_algorithm(&self, d: &ConvDesc, usage: FilterUse) -> B::Algo {
        self.inner.conv_algorithm(d, usage)
    }
    fn prepared_filter_len(&self, d: &ConvDesc, usage: FilterUse) -> usize {
        self.inner.prepared_filter_len(d, usage)
    }
    fn prepare_filter(&self, d: &ConvDesc, _: &CountBuf, usage: FilterUse, out: &mut CountFilter) -> Result<()> {
        let len = self.inner.prepared_filter_len(d, usage);
        self.resize(&mut out.0, DType::F32, len)
    }
    fn conv_forward(
        &self,
        _: &ConvDesc,
        _: &CountBuf,
        _: &CountFilter,
        _: &mut CountBuf,
        _: &ConvEpilogue<'_, Self>,
    ) -> Result<()> {
        Ok(())
    }
    fn conv_forward_stats(
        &self,
        d: &ConvDesc,
        _: &CountBuf,
        _: &CountFilter,
        _: &mut CountBuf,
        stats: &mut CountBuf,
    ) -> Result<bool> {
        self.resize(stats, DType::F32, 2 * d.c_out)?;
        Ok(true)
    }
    fn conv_backward_data(&self, _: &ConvDesc, _: &CountBuf, _: &CountFilter, _: &mut CountBuf, _: bool) -> Result<()> {
        Ok(())
    }
    fn conv_backward_filter(&self, _: &ConvDesc, _: &CountBuf, _: &CountBuf, _: &mut CountBuf) -> Result<()> {
        Ok(())
    }

    fn bn_forward_inference(
        &self,
        _: usize,
        _: usize,
        _: &CountBuf,
        _: &BnParams<'_, Self>,
        _: &CountBuf,
        _: &CountBuf,
        _: &BnTail<'_, Self>,
        _: &mut CountBuf,
    ) -> Result<()> {
        Ok(())
    }
    fn bn_forward_training(
        &self,
        _: usize,
        c: usize,
        _: &CountBuf,
        _: Option<&CountBuf>,
        _: &BnParams<'_, Self>,
        _: Option<(&mut CountBuf, &mut CountBuf, f32)>,
        saved: BnSaved<'_, Self>,
        _: &BnTail<'_, Self>,
        _: &mut CountBuf,
    ) -> Result<()> {
        self.resize(saved.mean, DType::F32, c)?;
        self.resize(saved.invstd, DType::F32, c)
    }
    fn bn_forward_saved(
        &self,
        _: usize,
        _: usize,
        _: &CountBuf,
        _: &BnParams<'_, Self>,
        _: &CountBuf,
        _: &CountBuf,
        _: &BnTail<'_, Self>,
        _: &mut CountBuf,
    ) -> Result<()> {
        Ok(())
    }
    fn bn_backward(
        &self,
        _: usize,
        _: usize,
        _: &CountBuf,
        _: &CountBuf,
        _: bool,
        _: &CountBuf,
        _: &BnParams<'_, Self>,
        _: &CountBuf,
        _: &CountBuf,
        _: BnGrads<'_, Self>,
    ) -> Result<()> {
        Ok(())
    }

    fn max_pool_forward(&self, _: &PoolDesc, _: &CountBuf, _: &mut CountBuf) -> Result<()> {
        Ok(())
    }
    fn max_pool_backward(&self, _: &PoolDesc, _: &CountBuf, _: &CountBuf, _: &mut CountBuf) -> Result<()> {
        Ok(())
    }
    fn global_avg_pool_forward(&self, _: usize, _: usize, _: usize, _: &CountBuf, _: &mut CountBuf) -> Result<()> {
        Ok(())
    }
    fn global_avg_pool_backward(&self, _: usize, _: usize, _: usize, _: &CountBuf, _: &mut CountBuf) -> Result<()> {
        Ok(())
    }

    fn linear_forward(
        &self,
        _: usize,
        _: usize,
        _: usize,
        _: &CountBuf,
        _: &CountBuf,
        _: Option<&CountBuf>,
        _: &mut CountBuf,
    ) -> Result<()> {
        Ok(())
    }
    fn linear_backward(
        &self,
        _: usize,
        _: usize,
        _: usize,
        _: &CountBuf,
        _: &CountBuf,
        _: &CountBuf,
        _: Option<&mut CountBuf>,
        _: &mut CountBuf,
        _: Option<&mut CountBuf>,
    ) -> Result<()> {
        Ok(())
    }

    fn add(&self, _: &CountBuf, _: &CountBuf, _: bool, _: &mut CountBuf) -> Result<()> {
        Ok(())
    }
    fn add_assign(&self, _: &mut CountBuf, _: &CountBuf) -> Result<()> {
        Ok(())
    }
    fn pad_shortcut_forward(&self, _: &PadShortcutDesc, _: &CountBuf, _: &mut CountBuf) -> Result<()> {
        Ok(())
    }
    fn pad_shortcut_backward(&self, _: &PadShortcutDesc, _: &CountBuf, _: &mut CountBuf, _: bool) -> Result<()> {
        Ok(())
    }

    fn softmax_cross_entropy(
        &self,
        _: usize,
        _: usize,
        _: &CountBuf,
        _: &CountBuf,
        _: f32,
        _: &mut CountBuf,
        _: &mut CountBuf,
        _: usize,
    ) -> Result<()> {
        Ok(())
    }
    fn sgd_update(&self, _: &SgdStep, _: &mut CountBuf, _: &CountBuf, _: &mut CountBuf) -> Result<()> {
        Ok(())
    }
    fn sum_squares(&self, _: &CountBuf) -> Result<f64> {
        Ok(0.0)
    }
}
