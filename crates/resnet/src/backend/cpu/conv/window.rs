//! The windows the indirect kernels read a convolution's input through:
//! one run of channels per (pixel, tap) in place ([`Window`]), row taps over
//! a zero-padded copy for layers with few channels ([`RowWindow`]), runs
//! rounded to bf16 as each tile is built ([`Rounded`]), and the per-thread
//! scratch they use.

use crate::backend::Bf16;
use crate::backend::ConvDesc;
use crate::backend::cpu::bf16;
use crate::backend::cpu::direct::{self, Elem};
use crate::backend::cpu::mem::{AlignedVec, Pod};
use crate::backend::cpu::tile;

/// A sliding-window view of one group of channels of an NHWC image, seen as a
/// matrix with one row per destination pixel and one column per
/// `(ky, kx, channel)` tap.
///
/// The source pixel of destination pixel `(y, x)` at tap `(ky, kx)` is
/// `((y * mul + add + ky * tap) / div)` along each axis, and exists only when
/// the division is exact and the result is inside the image.
#[derive(Clone, Copy)]
pub struct Window<'a, T = f32> {
    src: &'a [T],
    src_h: usize,
    src_w: usize,
    /// Channels per source pixel (the row stride of the NHWC image).
    src_c: usize,
    /// First channel of the group.
    c_off: usize,
    /// Channels per tap.
    c_len: usize,
    dst_h: usize,
    dst_w: usize,
    kh: usize,
    kw: usize,
    mul: [isize; 2],
    add: [isize; 2],
    tap: [isize; 2],
    div: [isize; 2],
}

impl<'a, T> Window<'a, T> {
    /// The same window over `src`, a copy of its source with `ld` values per pixel.
    pub(super) fn over(self, src: &'a [T], ld: usize) -> Self {
        Window { src, src_c: ld, ..self }
    }

    /// Source coordinate along one axis, or None when outside or inexact.
    #[inline(always)]
    fn coord(&self, axis: usize, dst: usize, k: usize, size: usize) -> Option<usize> {
        let num = dst as isize * self.mul[axis] + self.add[axis] + k as isize * self.tap[axis];
        let d = self.div[axis];
        if d == 1 {
            // The forward window (and stride-1 backward): no division.
            return (num >= 0 && (num as usize) < size).then_some(num as usize);
        }
        if num < 0 || num % d != 0 {
            return None;
        }
        let v = (num / d) as usize;
        (v < size).then_some(v)
    }
}

/// The window for the indirect kernels: one channel run per (pixel, tap).
impl<T: Elem> direct::Taps<T> for Window<'_, T> {
    fn rows(&self) -> usize {
        self.src.len() / (self.src_h * self.src_w * self.src_c).max(1) * self.dst_h * self.dst_w
    }
    fn taps(&self) -> usize {
        self.kh * self.kw
    }
    fn klen(&self) -> usize {
        self.c_len
    }
    fn source_len(&self) -> usize {
        self.src.len()
    }
    fn fill(&self, m0: usize, zero: *const T, out: &mut [[*const T; tile::MR]], _own: &mut AlignedVec<T>) {
        let rows = direct::Taps::rows(self);
        let base = self.src.as_ptr();
        // Walk the pixels incrementally (no divisions after the first).
        let mut x = m0 % self.dst_w;
        let mut y = (m0 / self.dst_w) % self.dst_h;
        let mut n = m0 / (self.dst_w * self.dst_h);
        let mut sy = [None; 16];
        let kh = self.kh.min(16);
        let row_taps = |y: usize, sy: &mut [Option<usize>; 16]| {
            for (ky, s) in sy.iter_mut().enumerate().take(kh) {
                *s = self.coord(0, y, ky, self.src_h);
            }
        };
        row_taps(y, &mut sy);
        for i in 0..tile::MR {
            if m0 + i >= rows {
                out.iter_mut().for_each(|t| t[i] = zero);
                continue;
            }
            let img = n * self.src_h;
            for kx in 0..self.kw {
                let sx = self.coord(1, x, kx, self.src_w);
                for ky in 0..self.kh {
                    let yy = if ky < 16 { sy[ky] } else { self.coord(0, y, ky, self.src_h) };
                    out[ky * self.kw + kx][i] = match (yy, sx) {
                        // SAFETY: (yy, sx) is inside the image, so the run is inside `src`.
                        (Some(yy), Some(sx)) => unsafe {
                            base.add(((img + yy) * self.src_w + sx) * self.src_c + self.c_off)
                        },
                        _ => zero,
                    };
                }
            }
            x += 1;
            if x == self.dst_w {
                x = 0;
                y += 1;
                if y == self.dst_h {
                    y = 0;
                    n += 1;
                }
                row_taps(y, &mut sy);
            }
        }
    }
}

impl direct::TapColumns for Window<'_, f32> {
    fn fill_tap(&self, m0: usize, count: usize, t: usize, zero: *const f32, out: &mut Vec<*const f32>) {
        let base = self.src.as_ptr();
        let (ky, kx) = (t / self.kw, t % self.kw);
        let mut x = m0 % self.dst_w;
        let mut y = (m0 / self.dst_w) % self.dst_h;
        let mut n = m0 / (self.dst_w * self.dst_h);
        let mut sy = self.coord(0, y, ky, self.src_h);
        for _ in 0..count {
            out.push(match (sy, self.coord(1, x, kx, self.src_w)) {
                // SAFETY: (sy, sx) is inside the image, so the run is inside `src`.
                (Some(sy), Some(sx)) => unsafe {
                    base.add(((n * self.src_h + sy) * self.src_w + sx) * self.src_c + self.c_off)
                },
                _ => zero,
            });
            // Next pixel, without divisions.
            x += 1;
            if x == self.dst_w {
                x = 0;
                y += 1;
                if y == self.dst_h {
                    y = 0;
                    n += 1;
                }
                sy = self.coord(0, y, ky, self.src_h);
            }
        }
    }
}

/// A convolution over a zero-padded copy of its input, with one tap per
/// kernel *row*: a row of `kw` pixels is `kw * c_in` contiguous floats. For
/// layers with few input channels (the 7x7 stem has three) this gives the
/// micro-kernel runs of 21 floats instead of 3.
pub(super) struct RowWindow<'a, T = f32> {
    /// The padded input, `[n][hp][wp][c]`.
    padded: &'a [T],
    hp: usize,
    wp: usize,
    c: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    stride: [usize; 2],
    dil_y: usize,
}

impl<T: Elem> direct::Taps<T> for RowWindow<'_, T> {
    fn rows(&self) -> usize {
        self.padded.len() / (self.hp * self.wp * self.c) * self.oh * self.ow
    }
    fn taps(&self) -> usize {
        self.kh
    }
    fn klen(&self) -> usize {
        self.kw * self.c
    }
    fn source_len(&self) -> usize {
        self.padded.len()
    }
    fn fill(&self, m0: usize, zero: *const T, out: &mut [[*const T; tile::MR]], _own: &mut AlignedVec<T>) {
        let rows = direct::Taps::rows(self);
        let row_step = self.dil_y * self.wp * self.c;
        for i in 0..tile::MR {
            let m = m0 + i;
            // One division per pixel; the kernel rows are a fixed step apart.
            let first = if m < rows { Some(self.run(m, 0)) } else { None };
            for (ky, t) in out.iter_mut().enumerate().take(self.kh) {
                // SAFETY: every kernel row of an output pixel lies inside the padded input.
                t[i] = first.map_or(zero, |p| unsafe { p.add(ky * row_step) });
            }
        }
    }
}

impl direct::TapColumns for RowWindow<'_, f32> {
    fn fill_tap(&self, m0: usize, count: usize, t: usize, _zero: *const f32, out: &mut Vec<*const f32>) {
        out.extend((m0..m0 + count).map(|m| self.run(m, t)));
    }
}

impl<T> RowWindow<'_, T> {
    /// Start of kernel row `ky` of output pixel `m` (always inside the padded input).
    fn run(&self, m: usize, ky: usize) -> *const T {
        let (ox, oy, n) = (m % self.ow, (m / self.ow) % self.oh, m / (self.ow * self.oh));
        let (iy, ix) = (oy * self.stride[0] + ky * self.dil_y, ox * self.stride[1]);
        self.padded[((n * self.hp + iy) * self.wp + ix) * self.c..].as_ptr()
    }
}

/// Whether a convolution runs on a padded copy with row taps (see [`RowWindow`]).
pub(super) fn use_rows(d: &ConvDesc) -> bool {
    d.groups == 1 && d.kernel[1] > 1 && d.dilation[1] == 1 && d.c_in * d.kernel[1] <= 64 && d.c_in <= 4
}

/// Copies an NHWC batch into a zero-padded buffer of `d.c_in` channels, rows
/// in parallel: `put(src, dst)` writes one image row, `d.w` source pixels of
/// `c_src` values into `d.w` pixels of `d.c_in`.
pub(super) fn pad_input<S: Sync, T: Elem>(
    d: &ConvDesc,
    x: &[S],
    c_src: usize,
    out: &mut AlignedVec<T>,
    put: impl Fn(&[S], &mut [T]) + Sync,
) -> (usize, usize) {
    use rayon::prelude::*;
    let (hp, wp) = (d.h + 2 * d.pad[0], d.w + 2 * d.pad[1]);
    let c = d.c_in;
    // Every value is written below, padding included, by the threads that
    // fill the rows (not zeroed once more by this one first).
    out.truncate(d.n * hp * wp * c);
    out.resize(d.n * hp * wp * c, T::default());
    out.par_chunks_mut(wp * c).enumerate().for_each(|(r, row)| {
        let (n, yp) = (r / hp, r % hp);
        if (d.pad[0]..d.pad[0] + d.h).contains(&yp) {
            let src = &x[(n * d.h + yp - d.pad[0]) * d.w * c_src..][..d.w * c_src];
            let (left, rest) = row.split_at_mut(d.pad[1] * c);
            let (mid, right) = rest.split_at_mut(d.w * c);
            left.fill(T::default());
            put(src, mid);
            right.fill(T::default());
        } else {
            row.fill(T::default());
        }
    });
    (hp, wp)
}

/// [`pad_input`] for same-type rows.
pub(super) fn pad_copy<T: Elem>(d: &ConvDesc, x: &[T], out: &mut AlignedVec<T>) -> (usize, usize) {
    pad_input(d, x, d.c_in, out, |s, o| o.copy_from_slice(s))
}

/// A per-thread scratch vector, taken out while the kernels run.
pub(super) type Scratch<T> = std::thread::LocalKey<std::cell::RefCell<AlignedVec<T>>>;

/// Runs `f` on this thread's `scratch` vector, taken out meanwhile: work this
/// thread picks up while `f` waits on others (rayon) may take it in turn,
/// which a borrow held across `f` would not allow.
pub(super) fn with_scratch<T: Pod, R>(scratch: &'static Scratch<T>, f: impl FnOnce(&mut AlignedVec<T>) -> R) -> R {
    let mut buf = scratch.with(|p| std::mem::take(&mut *p.borrow_mut()));
    let r = f(&mut buf);
    scratch.with(|p| *p.borrow_mut() = buf);
    r
}

thread_local! {
    /// Padded inputs for row-tap convolutions.
    pub(super) static PADDED: std::cell::RefCell<AlignedVec<f32>> = const { std::cell::RefCell::new(AlignedVec::new()) };
    /// Padded bf16 inputs for row-tap convolutions.
    pub(super) static PADDED_BF16: std::cell::RefCell<AlignedVec<Bf16>> = const { std::cell::RefCell::new(AlignedVec::new()) };
}

/// Runs `f` with a row window over a padded copy of the input, made by
/// `pad` (see [`pad_input`]) in `scratch`.
pub(super) fn with_rows<T: Elem, R>(
    d: &ConvDesc,
    scratch: &'static Scratch<T>,
    pad: impl FnOnce(&mut AlignedVec<T>) -> (usize, usize),
    f: impl FnOnce(&RowWindow<'_, T>) -> R,
) -> R {
    with_scratch(scratch, |buf| {
        let (hp, wp) = pad(buf);
        f(&RowWindow {
            padded: buf,
            hp,
            wp,
            c: d.c_in,
            oh: d.out_h(),
            ow: d.out_w(),
            kh: d.kernel[0],
            kw: d.kernel[1],
            stride: d.stride,
            dil_y: d.dilation[0],
        })
    })
}

/// Forward window: output pixels over input `x`, group `g`.
pub(super) fn forward_window<'a, T>(d: &ConvDesc, x: &'a [T], g: usize) -> Window<'a, T> {
    Window {
        src: x,
        src_h: d.h,
        src_w: d.w,
        src_c: d.c_in,
        c_off: g * d.cin_g(),
        c_len: d.cin_g(),
        dst_h: d.out_h(),
        dst_w: d.out_w(),
        kh: d.kernel[0],
        kw: d.kernel[1],
        mul: [d.stride[0] as isize, d.stride[1] as isize],
        add: [-(d.pad[0] as isize), -(d.pad[1] as isize)],
        tap: [d.dilation[0] as isize, d.dilation[1] as isize],
        div: [1, 1],
    }
}

/// Backward-data window: input pixels over output gradient `dy`, group `g`.
pub(super) fn backward_window<'a>(d: &ConvDesc, dy: &'a [f32], g: usize) -> Window<'a> {
    Window {
        src: dy,
        src_h: d.out_h(),
        src_w: d.out_w(),
        src_c: d.c_out,
        c_off: g * d.cout_g(),
        c_len: d.cout_g(),
        dst_h: d.h,
        dst_w: d.w,
        kh: d.kernel[0],
        kw: d.kernel[1],
        mul: [1, 1],
        add: [d.pad[0] as isize, d.pad[1] as isize],
        tap: [-(d.dilation[0] as isize), -(d.dilation[1] as isize)],
        div: [d.stride[0] as isize, d.stride[1] as isize],
    }
}

/// A forward window over f32 input whose runs are rounded to bf16 as each
/// tile is built. For a 1x1 convolution every input run feeds one row group
/// (once per task that computes some of its panels: usually one), so this
/// reads the input about once, where a rounding pass first would also write
/// a bf16 copy and read it back.
pub(super) struct Rounded<'a>(pub(super) Window<'a, f32>);

impl direct::Taps<Bf16> for Rounded<'_> {
    fn rows(&self) -> usize {
        direct::Taps::rows(&self.0)
    }
    fn taps(&self) -> usize {
        direct::Taps::taps(&self.0)
    }
    fn klen(&self) -> usize {
        self.0.c_len
    }
    fn fill(&self, m0: usize, zero: *const Bf16, out: &mut [[*const Bf16; tile::MR]], own: &mut AlignedVec<Bf16>) {
        let (klen, taps) = (self.0.c_len, direct::Taps::taps(&self.0));
        let zero32 = tile::zeros::<f32>(klen);
        // One tap (1x1 layers) without an allocation.
        let (mut one, mut many) = ([[zero32; tile::MR]; 1], Vec::new());
        let runs: &mut [[*const f32; tile::MR]] = if taps == 1 {
            &mut one
        } else {
            many.resize(taps, [zero32; tile::MR]);
            &mut many
        };
        direct::Taps::fill(&self.0, m0, zero32, runs, &mut AlignedVec::new());
        // Sized once: the pointers below must stay valid. Runs lie one cache
        // line further apart than their length (see `spaced_stride`).
        let ld = klen + 32;
        own.resize(taps * tile::MR * ld, Bf16::default());
        for (t, (src, dst)) in runs.iter().zip(out.iter_mut()).enumerate() {
            for (i, (&r, d)) in src.iter().zip(dst.iter_mut()).enumerate() {
                if r == zero32 {
                    *d = zero;
                    continue;
                }
                let o = &mut own[(t * tile::MR + i) * ld..][..klen];
                // SAFETY: the window's runs are `klen` readable floats.
                bf16::convert(unsafe { std::slice::from_raw_parts(r, klen) }, o);
                *d = o.as_ptr();
            }
        }
    }
}
