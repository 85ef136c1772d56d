//! The int8 convolution as the loop that defines it.

use super::{DType, Error, RefBuf, Result, at, f32s, f32s_mut, floats, tap};
use crate::backend::{ConvDesc, QuantEpilogue, QuantResidual, Reference};

/// `y = epilogue(sum (x - zero) * w)` over exact i32 sums; padding reads the
/// zero point (a real zero). The epilogue's f32 operations are those of the
/// CPU's kernels, one by one (see [`QuantEpilogue`]).
pub(super) fn conv_forward(
    d: &ConvDesc,
    x: &RefBuf,
    w: &[f32],
    y: &mut RefBuf,
    q: &QuantEpilogue<'_, Reference>,
) -> Result<()> {
    if d.groups != 1 {
        return Err(Error::Backend("int8 convolutions are not grouped".into()));
    }
    let zero = q.input.zero as i32;
    let xq: Vec<i32> = match x.dtype {
        DType::U8 => floats(x, d.in_len())?.iter().map(|&v| v as i32).collect(),
        DType::F32 => f32s(x, d.in_len())?.iter().map(|&v| q.input.quantize(v) as i32).collect(),
        t => return Err(Error::Backend(format!("an int8 convolution of a {t:?} input"))),
    };
    let mult = f32s(q.multiplier, d.c_out)?;
    let bias = q.bias.map(|b| f32s(b, d.c_out)).transpose()?;
    let in_output = match q.residual {
        Some(QuantResidual::InOutput(_)) if y.dtype != DType::U8 || y.values.len() < d.out_len() => {
            return Err(Error::Backend("a residual in the output of an int8 convolution needs a u8 output".into()));
        }
        Some(QuantResidual::InOutput(_)) => y.values[..d.out_len()].to_vec(),
        _ => Vec::new(),
    };
    let residual = match q.residual {
        Some(QuantResidual::Apart(r, rq)) if r.dtype == DType::U8 => Some((floats(r, d.out_len())?, Some(rq))),
        Some(QuantResidual::Apart(r, _)) => Some((f32s(r, d.out_len())?, None)),
        Some(QuantResidual::InOutput(rq)) => Some((&in_output[..], Some(rq))),
        None => None,
    };
    let want = if q.output.is_some() { DType::U8 } else { DType::F32 };
    if y.dtype != want || y.values.len() < d.out_len() {
        return Err(Error::Backend(format!("int8 convolution: a {:?} output where {want:?} is written", y.dtype)));
    }
    // A u8 output's steps: every term times `1 / scale`.
    let steps = |v: f32| q.output.map_or(v, |o| v * (1.0 / o.scale));
    let (oh, ow) = (d.out_h(), d.out_w());
    for n in 0..d.n {
        for oy in 0..oh {
            for ox in 0..ow {
                for co in 0..d.c_out {
                    let mut acc = 0i32;
                    for ky in 0..d.kernel[0] {
                        let Some(iy) = tap(oy, ky, d.stride[0], d.pad[0], d.dilation[0], d.h) else { continue };
                        for kx in 0..d.kernel[1] {
                            let Some(ix) = tap(ox, kx, d.stride[1], d.pad[1], d.dilation[1], d.w) else { continue };
                            for ci in 0..d.c_in {
                                let xv = xq[at(n, iy, ix, ci, (d.h, d.w, d.c_in))] - zero;
                                let wv = w[((co * d.kernel[0] + ky) * d.kernel[1] + kx) * d.c_in + ci] as i32;
                                acc += xv * wv;
                            }
                        }
                    }
                    let o = at(n, oy, ox, co, (oh, ow, d.c_out));
                    let mut v = (acc as f32).mul_add(steps(mult[co]), steps(bias.map_or(0.0, |b| b[co])));
                    v = match residual {
                        Some((r, Some(rq))) => ((r[o] as i32 - rq.zero as i32) as f32).mul_add(steps(rq.scale), v),
                        Some((r, None)) => r[o].mul_add(steps(1.0), v),
                        None => v,
                    };
                    if q.relu {
                        v = crate::backend::relu(v);
                    }
                    y.values[o] = match q.output {
                        Some(oq) => ((v.round_ties_even() + oq.zero as f32).clamp(0.0, 255.0) as u8) as f32,
                        None => v,
                    };
                }
            }
        }
    }
    Ok(())
}

/// Global average pooling of u8 values: `sum as f32 * (scale / hw)`.
pub(super) fn global_avg_pool(n: usize, hw: usize, c: usize, x: &RefBuf, scale: f32, y: &mut RefBuf) -> Result<()> {
    if x.dtype != DType::U8 {
        return Err(Error::Backend(format!("int8 pooling of a {:?} buffer", x.dtype)));
    }
    let (x, y) = (floats(x, n * hw * c)?, f32s_mut(y, n * c)?);
    let k = scale / hw as f32;
    for i in 0..n {
        for ch in 0..c {
            let s: u32 = (0..hw).map(|p| x[(i * hw + p) * c + ch] as u32).sum();
            y[i * c + ch] = s as f32 * k;
        }
    }
    Ok(())
}
