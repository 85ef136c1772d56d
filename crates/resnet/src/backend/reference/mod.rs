//! The reference backend: every operation of [`Backend`] as the plain loop
//! that defines it, over NHWC data, sums in f64, one thread. Slow and
//! obviously correct; the conformance tests (`tests/conformance.rs`) hold
//! every other backend to it, and the golden tests check it against PyTorch.
//!
//! bf16 is emulated: a bf16 buffer holds f32 values that are exactly bf16
//! (rounded to nearest, ties to even, when written), and a convolution
//! prepared for [`FilterUse::ForwardBf16`] rounds its weights and its input
//! to bf16 before the f64 sums.
//!
//! int8 is exact integer arithmetic (`int8.rs`): u8 buffers hold integers
//! as f32, sums are i32, and the epilogue is the CPU's sequence of f32
//! operations, so that every backend's bits agree.
//!
//! Also here (`layout.rs`): layout conversions and a plain NCHW convolution, used to turn
//! PyTorch's tensors into ours and by the kernel tests.

use super::{
    Backend, BnGrads, BnParams, BnSaved, BnTail, Buffer, ConvDesc, ConvEpilogue, ConvStorage, DType, Element,
    FilterUse, HostSlice, InputRead, PadShortcutDesc, PoolDesc, Precision, QuantEpilogue, SgdStep,
};
use crate::error::{Error, Result};

mod int8;
mod layout;

pub use layout::{conv2d_nchw, nchw_to_nhwc, nhwc_to_nchw, ohwi_to_oihw, oihw_to_ohwi};

/// The reference backend (stateless).
#[derive(Clone, Copy, Debug, Default)]
pub struct Reference;

impl Reference {
    /// The reference backend.
    pub fn new() -> Self {
        Reference
    }
}

/// A buffer of the reference backend: f32 values (exactly bf16 in a bf16
/// buffer), or u32 labels.
#[derive(Clone, Debug, Default)]
pub struct RefBuf {
    dtype: DType,
    values: Vec<f32>,
    labels: Vec<u32>,
}

impl Buffer for RefBuf {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        if self.dtype == DType::U32 { self.labels.len() } else { self.values.len() }
    }
}

/// A prepared filter: the OHWI weights (rounded to bf16 for bf16 use).
#[derive(Clone, Debug, Default)]
pub struct RefFilter {
    weights: Vec<f32>,
    bf16: bool,
}

/// `v` rounded to the nearest bf16 (ties to even), as an f32.
pub fn round_bf16(v: f32) -> f32 {
    super::Bf16::from_f32(v).to_f32()
}

fn floats(b: &RefBuf, len: usize) -> Result<&[f32]> {
    match b.dtype {
        DType::U32 => Err(Error::Backend("a u32 buffer where floats were expected".into())),
        _ if b.values.len() < len => Err(Error::Backend(format!("{} elements where {len} are needed", b.values.len()))),
        _ => Ok(&b.values[..len]),
    }
}

fn f32s(b: &RefBuf, len: usize) -> Result<&[f32]> {
    if b.dtype != DType::F32 {
        return Err(Error::Backend(format!("a {:?} buffer where f32 was expected", b.dtype)));
    }
    floats(b, len)
}

fn f32s_mut(b: &mut RefBuf, len: usize) -> Result<&mut [f32]> {
    f32s(b, len)?;
    Ok(&mut b.values[..len])
}

/// [`floats`] for writing.
fn floats_mut(b: &mut RefBuf, len: usize) -> Result<&mut [f32]> {
    floats(b, len)?;
    Ok(&mut b.values[..len])
}

/// A filter prepared for `d`'s layer has its weights.
fn check_filter(d: &ConvDesc, w: &RefFilter) -> Result<()> {
    match w.weights.len() == d.weight_len() {
        true => Ok(()),
        false => Err(Error::Backend(format!("a filter of {} weights for {d:?}", w.weights.len()))),
    }
}

/// Stores `v` in `y[i]` as `y`'s type keeps it.
fn store(y: &mut RefBuf, i: usize, v: f32) {
    y.values[i] = if y.dtype == DType::Bf16 { round_bf16(v) } else { v };
}

/// The NHWC offset of pixel `(n, y, x)`, channel `c`, in maps of `h x w x ch`.
fn at(n: usize, y: usize, x: usize, c: usize, (h, w, ch): (usize, usize, usize)) -> usize {
    ((n * h + y) * w + x) * ch + c
}

/// The input coordinate of output `o` at tap `k`, if inside `0..size`.
fn tap(o: usize, k: usize, stride: usize, pad: usize, dil: usize, size: usize) -> Option<usize> {
    let i = (o * stride + k * dil) as isize - pad as isize;
    (0..size as isize).contains(&i).then_some(i as usize)
}

impl Backend for Reference {
    type Buf = RefBuf;
    type Filter = RefFilter;
    type Algo = ();

    fn describe(&self) -> String {
        "reference (plain loops, 1 thread)".into()
    }

    fn supports(&self, _: Precision) -> bool {
        true
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<RefBuf> {
        let mut b = RefBuf::default();
        self.resize(&mut b, dtype, len)?;
        Ok(b)
    }

    fn write<T: Element>(&self, dst: &mut RefBuf, src: &[T]) -> Result<()> {
        self.resize(dst, T::DTYPE, src.len())?;
        match T::host(src) {
            HostSlice::F32(v) => dst.values.copy_from_slice(v),
            HostSlice::Bf16(v) => dst.values.iter_mut().zip(v).for_each(|(o, b)| *o = b.to_f32()),
            HostSlice::U32(v) => dst.labels.copy_from_slice(v),
            HostSlice::U8(v) => dst.values.iter_mut().zip(v).for_each(|(o, &b)| *o = b as f32),
        }
        Ok(())
    }

    fn download(&self, buf: &RefBuf) -> Result<Vec<f32>> {
        Ok(floats(buf, buf.len())?.to_vec())
    }

    fn resize(&self, buf: &mut RefBuf, dtype: DType, len: usize) -> Result<()> {
        buf.dtype = dtype;
        if dtype == DType::U32 {
            buf.values.clear();
            buf.labels.resize(len, 0);
        } else {
            buf.labels.clear();
            buf.values.resize(len, 0.0);
            if dtype == DType::Bf16 {
                buf.values.iter_mut().for_each(|v| *v = round_bf16(*v));
            }
        }
        Ok(())
    }

    fn fill(&self, buf: &mut RefBuf, value: f32) -> Result<()> {
        let n = buf.len();
        f32s_mut(buf, n)?.fill(value);
        Ok(())
    }

    fn conv_algorithm(&self, _: &ConvDesc, _: FilterUse) {}

    fn conv_algorithm_is_fixed(&self, _: &ConvDesc, _: FilterUse) -> bool {
        true
    }

    /// Every form is supported: bf16 convolutions round their input anyway,
    /// any output is rounded on storing, and a residual in the output buffer
    /// is read before the output is written.
    fn conv_storage(&self, _: &ConvDesc, usage: FilterUse) -> ConvStorage {
        let bf16 = usage == FilterUse::ForwardBf16;
        ConvStorage {
            input: if bf16 { InputRead::Bf16 } else { InputRead::F32 },
            output_bf16: bf16,
            residual_bf16: bf16,
            residual_in_output: true,
        }
    }

    fn max_pool_bf16(&self) -> bool {
        true
    }

    fn prepare_filter(&self, d: &ConvDesc, weight: &RefBuf, usage: FilterUse, out: &mut RefFilter) -> Result<()> {
        let w = f32s(weight, d.weight_len())?;
        let bf16 = usage == FilterUse::ForwardBf16;
        out.weights = match usage {
            FilterUse::ForwardBf16 => w.iter().map(|&v| round_bf16(v)).collect(),
            // As the CPU packs them: integers in -127..=127.
            FilterUse::ForwardInt8 => w.iter().map(|&v| v.clamp(-127.0, 127.0).trunc()).collect(),
            _ => w.to_vec(),
        };
        out.bf16 = bf16;
        Ok(())
    }

    fn conv_forward(
        &self,
        d: &ConvDesc,
        x: &RefBuf,
        w: &RefFilter,
        y: &mut RefBuf,
        e: &ConvEpilogue<'_, Self>,
    ) -> Result<()> {
        check_filter(d, w)?;
        let x = floats(x, d.in_len())?;
        let x: Vec<f32> = if w.bf16 { x.iter().map(|&v| round_bf16(v)).collect() } else { x.to_vec() };
        let bias = e.bias.map(|b| f32s(b, d.c_out)).transpose()?;
        if y.dtype == DType::U32 || y.len() < d.out_len() {
            return Err(Error::Backend("conv_forward: bad output buffer".into()));
        }
        let residual: Option<Vec<f32>> = match (e.residual, e.residual_in_output) {
            (Some(r), false) => Some(floats(r, d.out_len())?.to_vec()),
            (None, true) => Some(y.values[..d.out_len()].to_vec()),
            (None, false) => None,
            (Some(_), true) => return Err(Error::Backend("a residual both in the output and apart".into())),
        };
        let (oh, ow) = (d.out_h(), d.out_w());
        let (cig, cog) = (d.cin_g(), d.cout_g());
        for n in 0..d.n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for co in 0..d.c_out {
                        let g = co / cog;
                        let mut s = 0.0f64;
                        for ky in 0..d.kernel[0] {
                            let Some(iy) = tap(oy, ky, d.stride[0], d.pad[0], d.dilation[0], d.h) else { continue };
                            for kx in 0..d.kernel[1] {
                                let Some(ix) = tap(ox, kx, d.stride[1], d.pad[1], d.dilation[1], d.w) else {
                                    continue;
                                };
                                for ci in 0..cig {
                                    let xv = x[at(n, iy, ix, g * cig + ci, (d.h, d.w, d.c_in))];
                                    let wv = w.weights[((co * d.kernel[0] + ky) * d.kernel[1] + kx) * cig + ci];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                        let o = at(n, oy, ox, co, (oh, ow, d.c_out));
                        let mut v = s as f32 + bias.map_or(0.0, |b| b[co]);
                        v += residual.as_ref().map_or(0.0, |r| r[o]);
                        store(y, o, if e.relu { crate::backend::relu(v) } else { v });
                    }
                }
            }
        }
        Ok(())
    }

    fn conv_forward_int8(
        &self,
        d: &ConvDesc,
        x: &RefBuf,
        w: &RefFilter,
        y: &mut RefBuf,
        q: &QuantEpilogue<'_, Self>,
    ) -> Result<()> {
        check_filter(d, w)?;
        int8::conv_forward(d, x, &w.weights, y, q)
    }

    fn conv_backward_data(
        &self,
        d: &ConvDesc,
        dy: &RefBuf,
        w: &RefFilter,
        dx: &mut RefBuf,
        accumulate: bool,
    ) -> Result<()> {
        check_filter(d, w)?;
        let dy = f32s(dy, d.out_len())?;
        let dx = f32s_mut(dx, d.in_len())?;
        let (oh, ow) = (d.out_h(), d.out_w());
        let (cig, cog) = (d.cin_g(), d.cout_g());
        let mut acc = vec![0.0f64; d.in_len()];
        for n in 0..d.n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for co in 0..d.c_out {
                        let g = dy[at(n, oy, ox, co, (oh, ow, d.c_out))] as f64;
                        let grp = co / cog;
                        for ky in 0..d.kernel[0] {
                            let Some(iy) = tap(oy, ky, d.stride[0], d.pad[0], d.dilation[0], d.h) else { continue };
                            for kx in 0..d.kernel[1] {
                                let Some(ix) = tap(ox, kx, d.stride[1], d.pad[1], d.dilation[1], d.w) else {
                                    continue;
                                };
                                for ci in 0..cig {
                                    let wv = w.weights[((co * d.kernel[0] + ky) * d.kernel[1] + kx) * cig + ci];
                                    acc[at(n, iy, ix, grp * cig + ci, (d.h, d.w, d.c_in))] += g * wv as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        for (o, a) in dx.iter_mut().zip(acc) {
            *o = if accumulate { *o + a as f32 } else { a as f32 };
        }
        Ok(())
    }

    fn conv_backward_filter(&self, d: &ConvDesc, x: &RefBuf, dy: &RefBuf, dw: &mut RefBuf) -> Result<()> {
        let (x, dy) = (f32s(x, d.in_len())?, f32s(dy, d.out_len())?);
        let dw = f32s_mut(dw, d.weight_len())?;
        let (oh, ow) = (d.out_h(), d.out_w());
        let (cig, cog) = (d.cin_g(), d.cout_g());
        for co in 0..d.c_out {
            let grp = co / cog;
            for ky in 0..d.kernel[0] {
                for kx in 0..d.kernel[1] {
                    for ci in 0..cig {
                        let mut s = 0.0f64;
                        for n in 0..d.n {
                            for oy in 0..oh {
                                let Some(iy) = tap(oy, ky, d.stride[0], d.pad[0], d.dilation[0], d.h) else {
                                    continue;
                                };
                                for ox in 0..ow {
                                    let Some(ix) = tap(ox, kx, d.stride[1], d.pad[1], d.dilation[1], d.w) else {
                                        continue;
                                    };
                                    let xv = x[at(n, iy, ix, grp * cig + ci, (d.h, d.w, d.c_in))] as f64;
                                    s += xv * dy[at(n, oy, ox, co, (oh, ow, d.c_out))] as f64;
                                }
                            }
                        }
                        dw[((co * d.kernel[0] + ky) * d.kernel[1] + kx) * cig + ci] += s as f32;
                    }
                }
            }
        }
        Ok(())
    }

    fn bn_forward_inference(
        &self,
        rows: usize,
        c: usize,
        x: &RefBuf,
        p: &BnParams<'_, Self>,
        running_mean: &RefBuf,
        running_var: &RefBuf,
        tail: &BnTail<'_, Self>,
        y: &mut RefBuf,
    ) -> Result<()> {
        let (mean, var) = (f32s(running_mean, c)?, f32s(running_var, c)?);
        let invstd: Vec<f64> = var.iter().map(|&v| 1.0 / (v as f64 + p.eps as f64).sqrt()).collect();
        let mean: Vec<f64> = mean.iter().map(|&m| m as f64).collect();
        normalize(rows, c, x, &mean, &invstd, p, tail, y)
    }

    fn bn_forward_training(
        &self,
        rows: usize,
        c: usize,
        x: &RefBuf,
        _batch_stats: Option<&RefBuf>,
        p: &BnParams<'_, Self>,
        running: Option<(&mut RefBuf, &mut RefBuf, f32)>,
        saved: BnSaved<'_, Self>,
        tail: &BnTail<'_, Self>,
        y: &mut RefBuf,
    ) -> Result<()> {
        let xs = f32s(x, rows * c)?;
        let mut mean = vec![0.0f64; c];
        let mut var = vec![0.0f64; c];
        for r in 0..rows {
            for ch in 0..c {
                mean[ch] += xs[r * c + ch] as f64 / rows as f64;
            }
        }
        for r in 0..rows {
            for ch in 0..c {
                var[ch] += (xs[r * c + ch] as f64 - mean[ch]).powi(2) / rows as f64;
            }
        }
        let invstd: Vec<f64> = var.iter().map(|&v| 1.0 / (v + p.eps as f64).sqrt()).collect();
        if let Some((rm, rv, momentum)) = running {
            let (rm, rv) = (f32s_mut(rm, c)?, f32s_mut(rv, c)?);
            let unbias = if rows > 1 { rows as f64 / (rows as f64 - 1.0) } else { 1.0 };
            let m = momentum as f64;
            for ch in 0..c {
                rm[ch] = ((1.0 - m) * rm[ch] as f64 + m * mean[ch]) as f32;
                rv[ch] = ((1.0 - m) * rv[ch] as f64 + m * var[ch] * unbias) as f32;
            }
        }
        self.resize(saved.mean, DType::F32, c)?;
        self.resize(saved.invstd, DType::F32, c)?;
        saved.mean.values.iter_mut().zip(&mean).for_each(|(o, &m)| *o = m as f32);
        saved.invstd.values.iter_mut().zip(&invstd).for_each(|(o, &s)| *o = s as f32);
        // Normalised with the statistics as saved (f32), so that
        // `bn_forward_saved` reproduces the output exactly.
        self.bn_forward_saved(rows, c, x, p, saved.mean, saved.invstd, tail, y)
    }

    fn bn_forward_saved(
        &self,
        rows: usize,
        c: usize,
        x: &RefBuf,
        p: &BnParams<'_, Self>,
        mean: &RefBuf,
        invstd: &RefBuf,
        tail: &BnTail<'_, Self>,
        y: &mut RefBuf,
    ) -> Result<()> {
        let mean: Vec<f64> = f32s(mean, c)?.iter().map(|&v| v as f64).collect();
        let invstd: Vec<f64> = f32s(invstd, c)?.iter().map(|&v| v as f64).collect();
        normalize(rows, c, x, &mean, &invstd, p, tail, y)
    }

    fn bn_backward(
        &self,
        rows: usize,
        c: usize,
        x: &RefBuf,
        y: &RefBuf,
        relu: bool,
        dy: &RefBuf,
        p: &BnParams<'_, Self>,
        mean: &RefBuf,
        invstd: &RefBuf,
        g: BnGrads<'_, Self>,
    ) -> Result<()> {
        let n = rows * c;
        let (x, y, dy) = (f32s(x, n)?, f32s(y, n)?, f32s(dy, n)?);
        let (gamma, mean, invstd) = (f32s(p.weight, c)?, f32s(mean, c)?, f32s(invstd, c)?);
        // The gradient at the sum (before the ReLU).
        let dz: Vec<f64> = (0..n).map(|i| if relu && y[i] <= 0.0 { 0.0 } else { dy[i] as f64 }).collect();
        if let Some(dsum) = g.dsum {
            f32s_mut(dsum, n)?.iter_mut().zip(&dz).for_each(|(o, &v)| *o = v as f32);
        }
        let xhat = |i: usize| (x[i] as f64 - mean[i % c] as f64) * invstd[i % c] as f64;
        let mut sum = vec![0.0f64; c];
        let mut dot = vec![0.0f64; c];
        for i in 0..n {
            sum[i % c] += dz[i];
            dot[i % c] += dz[i] * xhat(i);
        }
        let (dweight, dbias) = (f32s_mut(g.dweight, c)?, f32s_mut(g.dbias, c)?);
        for ch in 0..c {
            dweight[ch] += dot[ch] as f32;
            dbias[ch] += sum[ch] as f32;
        }
        let dx = f32s_mut(g.dx, n)?;
        let m = rows as f64;
        for i in 0..n {
            let ch = i % c;
            let k = gamma[ch] as f64 * invstd[ch] as f64 / m;
            dx[i] = (k * (m * dz[i] - sum[ch] - xhat(i) * dot[ch])) as f32;
        }
        Ok(())
    }

    fn max_pool_forward(&self, d: &PoolDesc, x: &RefBuf, y: &mut RefBuf) -> Result<()> {
        let x = floats(x, d.n * d.h * d.w * d.c)?.to_vec();
        for_each_window(d, |o, inputs| {
            // NaN wins, as in PyTorch.
            let m = inputs.map(|i| x[i]).fold(f32::NEG_INFINITY, |m, v| if v > m || v.is_nan() { v } else { m });
            store(y, o, m);
        });
        Ok(())
    }

    fn max_pool_backward(&self, d: &PoolDesc, x: &RefBuf, dy: &RefBuf, dx: &mut RefBuf) -> Result<()> {
        let x = f32s(x, d.n * d.h * d.w * d.c)?;
        let dy = f32s(dy, d.n * d.out_h() * d.out_w() * d.c)?;
        let dx = f32s_mut(dx, d.n * d.h * d.w * d.c)?;
        dx.fill(0.0);
        for_each_window(d, |o, inputs| {
            // The first maximum in scan order takes the gradient.
            let best = inputs.fold(None, |b: Option<usize>, i| match b {
                Some(j) if x[i] <= x[j] => Some(j),
                _ => Some(i),
            });
            if let Some(i) = best {
                dx[i] += dy[o];
            }
        });
        Ok(())
    }

    fn global_avg_pool_forward(&self, n: usize, hw: usize, c: usize, x: &RefBuf, y: &mut RefBuf) -> Result<()> {
        let x = f32s(x, n * hw * c)?;
        let y = f32s_mut(y, n * c)?;
        for i in 0..n {
            for ch in 0..c {
                let s: f64 = (0..hw).map(|p| x[(i * hw + p) * c + ch] as f64).sum();
                y[i * c + ch] = (s / hw as f64) as f32;
            }
        }
        Ok(())
    }

    fn global_avg_pool_int8(
        &self,
        n: usize,
        hw: usize,
        c: usize,
        x: &RefBuf,
        scale: f32,
        y: &mut RefBuf,
    ) -> Result<()> {
        int8::global_avg_pool(n, hw, c, x, scale, y)
    }

    fn global_avg_pool_backward(&self, n: usize, hw: usize, c: usize, dy: &RefBuf, dx: &mut RefBuf) -> Result<()> {
        let dy = f32s(dy, n * c)?;
        let dx = f32s_mut(dx, n * hw * c)?;
        for (i, v) in dx.iter_mut().enumerate() {
            let (img, ch) = (i / (hw * c), i % c);
            *v = (dy[img * c + ch] as f64 / hw as f64) as f32;
        }
        Ok(())
    }

    fn linear_forward(
        &self,
        n: usize,
        c_in: usize,
        c_out: usize,
        x: &RefBuf,
        w: &RefBuf,
        b: Option<&RefBuf>,
        y: &mut RefBuf,
    ) -> Result<()> {
        let (x, w) = (f32s(x, n * c_in)?, f32s(w, c_out * c_in)?);
        let b = b.map(|b| f32s(b, c_out)).transpose()?;
        let y = f32s_mut(y, n * c_out)?;
        for i in 0..n {
            for o in 0..c_out {
                let s: f64 = (0..c_in).map(|k| x[i * c_in + k] as f64 * w[o * c_in + k] as f64).sum();
                y[i * c_out + o] = s as f32 + b.map_or(0.0, |b| b[o]);
            }
        }
        Ok(())
    }

    fn linear_backward(
        &self,
        n: usize,
        c_in: usize,
        c_out: usize,
        x: &RefBuf,
        w: &RefBuf,
        dy: &RefBuf,
        dx: Option<&mut RefBuf>,
        dw: &mut RefBuf,
        db: Option<&mut RefBuf>,
    ) -> Result<()> {
        let (x, w, dy) = (f32s(x, n * c_in)?, f32s(w, c_out * c_in)?, f32s(dy, n * c_out)?);
        if let Some(dx) = dx {
            let dx = f32s_mut(dx, n * c_in)?;
            for i in 0..n {
                for k in 0..c_in {
                    let s: f64 = (0..c_out).map(|o| dy[i * c_out + o] as f64 * w[o * c_in + k] as f64).sum();
                    dx[i * c_in + k] = s as f32;
                }
            }
        }
        let dw = f32s_mut(dw, c_out * c_in)?;
        for o in 0..c_out {
            for k in 0..c_in {
                let s: f64 = (0..n).map(|i| dy[i * c_out + o] as f64 * x[i * c_in + k] as f64).sum();
                dw[o * c_in + k] += s as f32;
            }
        }
        if let Some(db) = db {
            let db = f32s_mut(db, c_out)?;
            for o in 0..c_out {
                db[o] += (0..n).map(|i| dy[i * c_out + o] as f64).sum::<f64>() as f32;
            }
        }
        Ok(())
    }

    fn add(&self, a: &RefBuf, b: &RefBuf, relu: bool, y: &mut RefBuf) -> Result<()> {
        let n = y.len();
        let (a, b) = (f32s(a, n)?.to_vec(), f32s(b, n)?.to_vec());
        for (i, o) in f32s_mut(y, n)?.iter_mut().enumerate() {
            let v = a[i] + b[i];
            *o = if relu { crate::backend::relu(v) } else { v };
        }
        Ok(())
    }

    fn add_assign(&self, y: &mut RefBuf, x: &RefBuf) -> Result<()> {
        let n = y.len();
        let x = f32s(x, n)?.to_vec();
        f32s_mut(y, n)?.iter_mut().zip(x).for_each(|(o, v)| *o += v);
        Ok(())
    }

    fn pad_shortcut_forward(&self, d: &PadShortcutDesc, x: &RefBuf, y: &mut RefBuf) -> Result<()> {
        let (oh, ow) = (d.out_h(), d.out_w());
        if x.dtype != y.dtype || !matches!(x.dtype, DType::F32 | DType::U8) {
            return Err(Error::Backend(format!("pad shortcut from {:?} to {:?}", x.dtype, y.dtype)));
        }
        let (x, y) = (floats(x, d.in_len())?, floats_mut(y, d.out_len())?);
        for n in 0..d.n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for co in 0..d.c_out {
                        let v = co
                            .checked_sub(d.pad_before)
                            .filter(|&ci| ci < d.c_in)
                            .map_or(0.0, |ci| x[at(n, oy * d.stride, ox * d.stride, ci, (d.h, d.w, d.c_in))]);
                        y[at(n, oy, ox, co, (oh, ow, d.c_out))] = v;
                    }
                }
            }
        }
        Ok(())
    }

    fn pad_shortcut_backward(&self, d: &PadShortcutDesc, dy: &RefBuf, dx: &mut RefBuf, accumulate: bool) -> Result<()> {
        let (oh, ow) = (d.out_h(), d.out_w());
        let (dy, dx) = (f32s(dy, d.out_len())?, f32s_mut(dx, d.in_len())?);
        if !accumulate {
            dx.fill(0.0);
        }
        for n in 0..d.n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ci in 0..d.c_in {
                        let g = dy[at(n, oy, ox, ci + d.pad_before, (oh, ow, d.c_out))];
                        dx[at(n, oy * d.stride, ox * d.stride, ci, (d.h, d.w, d.c_in))] += g;
                    }
                }
            }
        }
        Ok(())
    }

    fn softmax_cross_entropy(
        &self,
        n: usize,
        classes: usize,
        logits: &RefBuf,
        labels: &RefBuf,
        smoothing: f32,
        dlogits: &mut RefBuf,
        metrics: &mut RefBuf,
        slot: usize,
    ) -> Result<()> {
        if labels.dtype != DType::U32 || labels.labels.len() < n {
            return Err(Error::Backend("softmax_cross_entropy: labels must be a u32 buffer of n".into()));
        }
        let z = f32s(logits, n * classes)?;
        let g = f32s_mut(dlogits, n * classes)?;
        let (mut loss, mut correct) = (0.0f64, 0usize);
        for i in 0..n {
            let y = labels.labels[i] as usize;
            if y >= classes {
                return Err(Error::Backend(format!("label {y} of a {classes}-class problem")));
            }
            let row = &z[i * classes..(i + 1) * classes];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
            for (j, &v) in row.iter().enumerate() {
                let q = smoothing as f64 / classes as f64 + if j == y { 1.0 - smoothing as f64 } else { 0.0 };
                let logp = v as f64 - lse;
                loss -= q * logp;
                g[i * classes + j] = ((logp.exp() - q) / n as f64) as f32;
            }
            // Correct when no logit beats the label's (ties go to the lower class).
            correct +=
                !row.iter().enumerate().any(|(j, &v)| v > row[y] || (v == row[y] && j < y) || v.is_nan()) as usize;
        }
        let m = f32s_mut(metrics, 2 * slot + 2)?;
        m[2 * slot] = (loss / n as f64) as f32;
        m[2 * slot + 1] = correct as f32;
        Ok(())
    }

    fn sgd_update(&self, s: &SgdStep, param: &mut RefBuf, grad: &RefBuf, momentum: &mut RefBuf) -> Result<()> {
        let n = param.len();
        let (g, buf, p) = (f32s(grad, n)?, f32s_mut(momentum, n)?, f32s_mut(param, n)?);
        for i in 0..n {
            let mut step = g[i] + s.weight_decay * p[i];
            if s.momentum != 0.0 {
                buf[i] = if s.first { step } else { s.momentum * buf[i] + (1.0 - s.dampening) * step };
                step = if s.nesterov { step + s.momentum * buf[i] } else { buf[i] };
            }
            p[i] -= s.lr * step;
        }
        Ok(())
    }

    fn sum_squares(&self, x: &RefBuf) -> Result<f64> {
        Ok(f32s(x, x.len())?.iter().map(|&v| v as f64 * v as f64).sum())
    }
}

/// `y = tail((x - mean) * invstd * gamma + beta)`, in f64 rounded once.
#[allow(clippy::too_many_arguments)]
fn normalize(
    rows: usize,
    c: usize,
    x: &RefBuf,
    mean: &[f64],
    invstd: &[f64],
    p: &BnParams<'_, Reference>,
    tail: &BnTail<'_, Reference>,
    y: &mut RefBuf,
) -> Result<()> {
    let n = rows * c;
    let x = f32s(x, n)?;
    let (gamma, beta) = (f32s(p.weight, c)?, f32s(p.bias, c)?);
    let residual = tail.residual.map(|r| f32s(r, n)).transpose()?.map(<[f32]>::to_vec);
    let y = f32s_mut(y, n)?;
    for i in 0..n {
        let ch = i % c;
        let mut v = (x[i] as f64 - mean[ch]) * invstd[ch] * gamma[ch] as f64 + beta[ch] as f64;
        v += residual.as_ref().map_or(0.0, |r| r[i] as f64);
        y[i] = if tail.relu { crate::backend::relu(v as f32) } else { v as f32 };
    }
    Ok(())
}

/// Calls `f(output index, input indices of its window)` for every output of
/// a max pool, the window's inputs in scan order (rows, then columns).
fn for_each_window(d: &PoolDesc, mut f: impl FnMut(usize, &mut dyn Iterator<Item = usize>)) {
    let (oh, ow) = (d.out_h(), d.out_w());
    for n in 0..d.n {
        for oy in 0..oh {
            for ox in 0..ow {
                for ch in 0..d.c {
                    let mut inputs =
                        (0..d.kernel).flat_map(|ky| (0..d.kernel).map(move |kx| (ky, kx))).filter_map(|(ky, kx)| {
                            let iy = tap(oy, ky, d.stride, d.pad, 1, d.h)?;
                            let ix = tap(ox, kx, d.stride, d.pad, 1, d.w)?;
                            Some(at(n, iy, ix, ch, (d.h, d.w, d.c)))
                        });
                    f(at(n, oy, ox, ch, (oh, ow, d.c)), &mut inputs);
                }
            }
        }
    }
}
