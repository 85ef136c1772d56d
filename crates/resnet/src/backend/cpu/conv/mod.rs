//! Convolutions as implicit GEMMs over NHWC data.
//!
//! * forward: `y[m, co] = sum_k window(x)[m, k] * w[co, k]`, rows `m` are
//!   output pixels, `k = (ky, kx, ci)`;
//! * backward-data (gather form, no scatter, any stride):
//!   `dx[m', ci] = sum_k' window(dy)[m', k'] * w[co, ky, kx, ci]`, rows `m'`
//!   are input pixels and `k' = (ky, kx, co)`; a tap contributes only where
//!   `(iy + pad - ky * dil)` is a multiple of the stride;
//! * backward-filter: `dw[co, k] += sum_m dy[m, co] * window(x)[m, k]`, the
//!   reduction over pixels split across threads in a fixed way.
//!
//! The window never exists in memory: [`Window`] packs GEMM panels straight
//! from the image.

mod window;

use super::bf16;
use super::direct::{self, Elem, Panels, Residual, Rows, RowsMut};
use super::gemm::Epilogue;
use super::mem::AlignedVec;
use super::tile;
use super::winograd;
use crate::backend::Bf16;
use crate::backend::{ConvDesc, ConvStorage, FilterUse, InputRead};
use crate::error::{Error, Result};
use window::*;

/// A filter packed for the CPU kernels: one set of panels per group, or a
/// Winograd-transformed filter for the 3x3 stride-1 layers.
#[derive(Debug, Default)]
pub struct CpuFilter {
    groups: Vec<Panels>,
    scratch: Vec<f32>,
    winograd: Option<winograd::WinogradFilter>,
    /// bf16 panels per group (inference in bf16), over `bf16_cin` input channels.
    bf16: Vec<Panels<Bf16>>,
    bf16_cin: usize,
    /// int8 panels (inference in int8).
    int8: Option<super::int8::QPanels>,
    /// What it was prepared for: the layer (batch and size zero), the use and the algorithm.
    prepared: Option<(ConvDesc, FilterUse, CpuAlgo)>,
}

impl CpuFilter {
    /// The int8 panels of a filter prepared for [`FilterUse::ForwardInt8`].
    pub(super) fn int8(&self) -> Option<&super::int8::QPanels> {
        self.int8.as_ref()
    }

    /// Checks that the filter was prepared for `d`'s layer, for one of
    /// `uses`, with the algorithm `d` gets (a filter serves every shape of its
    /// algorithm, no other).
    pub fn check(&self, d: &ConvDesc, uses: &[FilterUse]) -> Result<()> {
        let layer = ConvDesc { n: 0, h: 0, w: 0, ..*d };
        match self.prepared {
            Some((l, u, a)) if l == layer && uses.contains(&u) && algorithm(d, u) == a => Ok(()),
            Some((_, u, a)) => Err(Error::Backend(format!(
                "a filter prepared for another layer, use or algorithm ({u:?}, {a:?}) used for {d:?}"
            ))),
            None => Err(Error::Backend("a convolution filter that was never prepared".into())),
        }
    }
}

/// The Winograd tile for a layer: 0 (direct), 2 or 4, chosen from the whole
/// descriptor as cuDNN chooses an algorithm: Winograd needs enough tiles to
/// fill the micro-kernel's rows (a 7x7 map at batch 1 has only four 4x4 tiles),
/// and channels enough for its transforms to pay. `RESNET_WINOGRAD=0|2|4`
/// overrides the choice (for benchmarks and tests).
fn winograd_tile(d: &ConvDesc) -> usize {
    if !winograd::applicable(d) {
        return 0;
    }
    if let Some(m) = forced_tile() {
        return m;
    }
    let tiles = |m: usize| d.n * d.out_h().div_ceil(m) * d.out_w().div_ceil(m);
    let enough = 4 * tile::MR;
    match () {
        _ if d.c_in < 16 || d.c_out < 16 => 0,
        _ if tiles(4) >= enough => 4,
        _ if tiles(2) >= enough => 2,
        _ => 0,
    }
}

/// The Winograd tile `RESNET_WINOGRAD` forces, if any.
fn forced_tile() -> Option<usize> {
    static MODE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| {
        std::env::var("RESNET_WINOGRAD").ok().and_then(|v| v.parse().ok()).filter(|m| [0, 2, 4].contains(m))
    })
}

/// Whether [`algorithm`] is the same for every batch and size of `d`'s
/// layer: all but the layers that may take Winograd, whose tile depends on
/// the number of tiles.
pub fn algorithm_is_fixed(d: &ConvDesc) -> bool {
    !winograd::applicable(d) || forced_tile().is_some() || d.c_in < 16 || d.c_out < 16
}

/// The CPU's convolution algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuAlgo {
    /// The indirect kernels over f32 panels (`direct.rs`).
    Direct,
    /// `F(m x m, 3 x 3)` Winograd, `m` 2 or 4 (`winograd.rs`).
    Winograd(u8),
    /// The indirect kernels over bf16 panels (`bf16.rs`).
    DirectBf16,
    /// The indirect kernels over int8 panels (`int8/`).
    DirectInt8,
}

/// The algorithm of a convolution for `usage` (see [`winograd_tile`]):
/// Winograd layers stay f32 in bf16 plans, and so do layers without a bf16
/// form.
pub fn algorithm(d: &ConvDesc, usage: FilterUse) -> CpuAlgo {
    match winograd_tile(d) {
        _ if usage == FilterUse::ForwardInt8 => CpuAlgo::DirectInt8,
        0 if usage == FilterUse::ForwardBf16 && bf16_channels(d).is_some() => CpuAlgo::DirectBf16,
        0 => CpuAlgo::Direct,
        m => CpuAlgo::Winograd(m as u8),
    }
}

/// What a convolution reads and writes in a bf16 plan (in descriptor terms:
/// batch and size do not enter). Pointwise layers with an even number of
/// channels per group round their input anyway, read and write bf16 rows
/// and a bf16 residual in their kernels; strided layers round their input;
/// 3x3 stride-1 layers round their f32 results as they write them (in the
/// Winograd output transform; other 3x3 layers compute their output in f32
/// and round it) and read a bf16 input at the cost of one rounding; the stem (a convolution over at most four channels on row
/// taps) writes bf16 rows. Every kernel but Winograd and split-tap tiles
/// reads a residual in its output rows in place, so the plan may put a 1x1
/// layer's output over its residual.
pub fn storage(d: &ConvDesc, usage: FilterUse) -> ConvStorage {
    let residual_in_output = d.kernel == [1, 1];
    if usage != FilterUse::ForwardBf16 {
        return ConvStorage { input: InputRead::F32, output_bf16: false, residual_bf16: false, residual_in_output };
    }
    let even = d.cin_g().is_multiple_of(2);
    let pointwise = d.kernel == [1, 1] && even;
    let three = d.kernel == [3, 3] && d.stride == [1, 1];
    let strided = d.stride != [1, 1] && even;
    let input = match () {
        _ if pointwise || strided => InputRead::Bf16,
        _ if three => InputRead::Bf16Rounding,
        _ => InputRead::F32,
    };
    let stem = d.groups == 1 && d.c_in <= 4;
    ConvStorage { input, output_bf16: pointwise || three || stem, residual_bf16: pointwise, residual_in_output }
}

/// Prepares `w` for `usage` with [`algorithm`]'s choice.
pub fn prepare(d: &ConvDesc, w: &[f32], usage: FilterUse, out: &mut CpuFilter) {
    out.prepared = None;
    match usage {
        FilterUse::Forward => prepare_forward(d, w, out),
        FilterUse::ForwardBf16 => prepare_forward_bf16(d, w, out),
        FilterUse::BackwardData => prepare_backward_data(d, w, out),
        FilterUse::ForwardInt8 => out.int8 = Some(super::int8::QPanels::pack(d, w)),
    }
    out.prepared = Some((ConvDesc { n: 0, h: 0, w: 0, ..*d }, usage, algorithm(d, usage)));
}

/// Elements of the filter [`prepare`] makes: Winograd's transformed filters
/// (`(m + 2)^2` taps, output channels in panels of `NR`), else panels of the
/// reduction by `NR` output channels per group.
pub fn prepared_len(d: &ConvDesc, usage: FilterUse) -> usize {
    let nr = tile::NR;
    let m = winograd_tile(d);
    let (c_out, c_in) = match usage {
        FilterUse::BackwardData => (d.c_in, d.c_out),
        _ => (d.c_out, d.c_in),
    };
    match usage {
        // Bytes, counted in f32s.
        FilterUse::ForwardInt8 => d.c_out.div_ceil(nr) * nr * d.k_len().next_multiple_of(4) / 4,
        _ if m > 0 => (m + 2) * (m + 2) * c_out.div_ceil(nr) * nr * c_in,
        FilterUse::BackwardData => d.groups * d.cin_g().div_ceil(nr) * nr * d.k_len() / d.cin_g() * d.cout_g(),
        _ => d.groups * d.cout_g().div_ceil(nr) * nr * d.k_len(),
    }
}

/// Packs OHWI weights for the forward pass: per group, `w[co][k]`.
pub fn prepare_forward(d: &ConvDesc, w: &[f32], out: &mut CpuFilter) {
    out.bf16.clear();
    let m = winograd_tile(d);
    if m > 0 {
        let wf = out.winograd.get_or_insert_with(Default::default);
        winograd::prepare(m, w, d.c_out, d.c_in, winograd::FilterSource::Forward, wf);
        return;
    }
    out.winograd = None;
    let (kl, cg) = (d.k_len(), d.cout_g());
    out.groups.resize_with(d.groups, Panels::default);
    for (g, p) in out.groups.iter_mut().enumerate() {
        p.pack(&w[g * cg * kl..(g + 1) * cg * kl], cg, kl, kl);
    }
}

/// Input channels of a layer's bf16 form. Row taps (the stem's three
/// colours) run as they are, an odd run ending in a half pair (`bf16.rs`);
/// otherwise an odd single-group input gets a zero channel, and grouped
/// layers with an odd number of channels per group have no bf16 form (they
/// stay in f32).
fn bf16_channels(d: &ConvDesc) -> Option<usize> {
    match () {
        _ if d.cin_g().is_multiple_of(2) || use_rows(d) => Some(d.c_in),
        _ if d.groups == 1 => Some(d.c_in + 1),
        _ => None,
    }
}

/// Packs OHWI weights for bf16 inference (see `bf16.rs`); layers without a
/// bf16 form are packed for f32.
pub fn prepare_forward_bf16(d: &ConvDesc, w: &[f32], out: &mut CpuFilter) {
    // Winograd layers stay f32: the transforms amplify rounding errors, far
    // too much for bf16 inputs, and at f32 they already beat direct bf16.
    let Some(cin) = bf16_channels(d).filter(|_| winograd_tile(d) == 0) else {
        return prepare_forward(d, w, out);
    };
    out.winograd = None;
    out.groups.clear();
    // Row taps of odd length: each kernel row's weights padded to whole pairs.
    let run = d.kernel[1] * d.c_in;
    if use_rows(d) && run % 2 == 1 {
        let kp = bf16::pairs(run);
        out.scratch.clear();
        for row in w.chunks(run) {
            out.scratch.extend_from_slice(row);
            out.scratch.push(0.0);
        }
        let k = d.kernel[0] * kp;
        out.bf16.resize_with(1, Panels::default);
        out.bf16[0].pack(&out.scratch, d.c_out, k, k);
        out.bf16_cin = cin;
        return;
    }
    let w = if cin == d.c_in {
        w
    } else {
        // One zero channel after every tap's last.
        out.scratch.clear();
        for tap in w.chunks(d.c_in) {
            out.scratch.extend_from_slice(tap);
            out.scratch.push(0.0);
        }
        &out.scratch
    };
    let d = ConvDesc { c_in: cin, ..*d };
    let (kl, cg) = (d.k_len(), d.cout_g());
    out.bf16.resize_with(d.groups, Panels::default);
    for (g, p) in out.bf16.iter_mut().enumerate() {
        p.pack(&w[g * cg * kl..(g + 1) * cg * kl], cg, kl, kl);
    }
    out.bf16_cin = cin;
}

thread_local! {
    /// bf16 copies of convolution inputs (taken out while the kernels run).
    static BF16_INPUT: std::cell::RefCell<AlignedVec<Bf16>> = const { std::cell::RefCell::new(AlignedVec::new()) };
}

/// Rounds an NHWC batch to bf16 with `cin` channels per pixel (zero-padded).
fn to_bf16(x: &[f32], c_in: usize, cin: usize, out: &mut AlignedVec<Bf16>) {
    use rayon::prelude::*;
    let pixels = x.len() / c_in;
    out.resize(pixels * cin, Bf16::default());
    if cin == c_in {
        const CHUNK: usize = 1 << 14;
        out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, s)| bf16::convert(s, o));
    } else {
        // Few channels (the stem): round a chunk of pixels at once, then
        // spread them out with their zero channels.
        const PIXELS: usize = 1 << 12;
        out.par_chunks_mut(PIXELS * cin).zip(x.par_chunks(PIXELS * c_in)).for_each(|(o, s)| spread(s, c_in, o, cin));
    }
}

/// Rounds pixels of `c_in` values into pixels of `cin` (more), the extra
/// channels zero.
fn spread(src: &[f32], c_in: usize, dst: &mut [Bf16], cin: usize) {
    let mut rounded = vec![Bf16::default(); src.len()];
    bf16::convert(src, &mut rounded);
    for (o, s) in dst.chunks_mut(cin).zip(rounded.chunks(c_in)) {
        // Element by element: a few values per pixel (a slice copy calls memmove).
        for (d, &v) in o.iter_mut().zip(s) {
            *d = v;
        }
        o[c_in..].fill(Bf16::default());
    }
}

/// Convolution forward in bf16 (the filter holds bf16 panels).
fn forward_bf16(
    d: &ConvDesc,
    x: Rows<'_>,
    f: &CpuFilter,
    y: RowsMut<'_>,
    epi: &Epilogue<'_>,
    residual: Option<Residual<'_>>,
) {
    let x = match x {
        // Stored in bf16 already: read in place.
        Rows::Bf16(x) if f.bf16_cin == d.c_in => {
            return forward_direct(d, x, &f.bf16, &PADDED_BF16, y, epi, residual);
        }
        Rows::Bf16(x) => &x.iter().map(|v| v.to_f32()).collect::<Vec<_>>()[..],
        Rows::F32(x) => x,
    };
    if d.kernel == [1, 1] && f.bf16_cin == d.c_in {
        // Each input run feeds one row group: round it as the tile is built.
        return run_groups(d, &f.bf16, y, epi, residual, |g| Rounded(forward_window(d, x, g)));
    }
    let dp = ConvDesc { c_in: f.bf16_cin, ..*d };
    if use_rows(&dp) {
        // The stem: round (adding a zero channel, if it has one) and pad in one pass.
        let put = |s: &[f32], o: &mut [Bf16]| match dp.c_in == d.c_in {
            true => bf16::convert(s, o),
            false => spread(s, d.c_in, o, dp.c_in),
        };
        let pad = |b: &mut AlignedVec<Bf16>| pad_input(&dp, x, d.c_in, b, put);
        let residual = residual.map(|r| (r, d.c_out));
        return with_rows(&dp, &PADDED_BF16, pad, |w| direct::run(w, &f.bf16[0], y, d.c_out, 0, epi, residual));
    }
    with_scratch(&BF16_INPUT, |buf| {
        to_bf16(x, d.c_in, f.bf16_cin, buf);
        forward_direct(&ConvDesc { c_in: f.bf16_cin, ..*d }, buf, &f.bf16, &PADDED_BF16, y, epi, residual);
    })
}

/// Convolution forward by the indirect kernels, one set of panels per group.
#[allow(clippy::too_many_arguments)]
fn forward_direct<T: Elem>(
    d: &ConvDesc,
    x: &[T],
    groups: &[Panels<T>],
    padded: &'static Scratch<T>,
    y: RowsMut<'_>,
    epi: &Epilogue<'_>,
    residual: Option<Residual<'_>>,
) {
    if use_rows(d) {
        // Few input channels (the stem): runs of kw * c values instead of c.
        let residual = residual.map(|r| (r, d.c_out));
        let run = |w: &RowWindow<'_, T>| direct::run(w, &groups[0], y, d.c_out, 0, epi, residual);
        return with_rows(d, padded, |b| pad_copy(d, x, b), run);
    }
    if let Some(ld) = spaced_stride::<T>(d) {
        // Rows a multiple of 4 KiB apart: read a copy with spaced pixels, of
        // only the pixels a strided 1x1 layer reads (a stride-1 layer over them).
        let sub = d.kernel == [1, 1] && d.pad == [0, 0];
        let dc = if sub { ConvDesc { h: d.out_h(), w: d.out_w(), stride: [1, 1], ..*d } } else { *d };
        return with_scratch(padded, |buf| {
            let len = space_pixels(d, x, if sub { d.stride } else { [1, 1] }, ld, buf);
            let window = |g| forward_window(&dc, x, g).over(&buf[..len], ld);
            run_groups(&dc, groups, y, epi, residual, window);
        });
    }
    run_groups(d, groups, y, epi, residual, |g| forward_window(d, x, g));
}

/// The pixel stride of a spaced copy of a layer's input, where the input
/// pixels of adjacent output pixels lie a multiple of 4 KiB apart (1024 or
/// 2048 f32 channels, or 512 with stride 2; 2048 bf16, or 1024 with stride
/// 2): then the twelve input rows of a micro-kernel call all fall into one
/// set of the L1 cache (8 ways) and evict each other at every cache line.
/// One cache line more per pixel spreads them over sets.
fn spaced_stride<T>(d: &ConvDesc) -> Option<usize> {
    let size = std::mem::size_of::<T>();
    let aliased = d.groups == 1 && (d.c_in * d.stride[1] * size).is_multiple_of(4096);
    aliased.then(|| d.c_in + 64 / size)
}

/// Copies every `step`-th pixel of each axis of `x` (an input of `d`) into
/// pixels of `ld` values (the rest left as is); returns the copy's length.
fn space_pixels<T: Elem>(d: &ConvDesc, x: &[T], step: [usize; 2], ld: usize, out: &mut AlignedVec<T>) -> usize {
    use rayon::prelude::*;
    let c = d.c_in;
    let (h, w) = (d.h.div_ceil(step[0]), d.w.div_ceil(step[1]));
    let len = d.n * h * w * ld;
    if out.len() < len {
        out.resize(len, T::default());
    }
    out[..len].par_chunks_mut(w * ld).enumerate().for_each(|(r, o)| {
        let (n, y) = (r / h, r % h);
        let row = &x[(n * d.h + y * step[0]) * d.w * c..][..d.w * c];
        for (o, s) in o.chunks_mut(ld).zip(row.chunks(c).step_by(step[1])) {
            o[..c].copy_from_slice(s);
        }
    });
    len
}

/// Runs each group's panels over its window (`window(g)`), with the group's
/// share of the epilogue.
fn run_groups<T: Elem, W: direct::Taps<T>>(
    d: &ConvDesc,
    groups: &[Panels<T>],
    mut y: RowsMut<'_>,
    epi: &Epilogue<'_>,
    residual: Option<Residual<'_>>,
    window: impl Fn(usize) -> W,
) {
    let cg = d.cout_g();
    for (g, panels) in groups.iter().enumerate() {
        let off = g * cg;
        let ge = Epilogue { scale: epi.scale.map(|s| &s[off..]), bias: epi.bias.map(|b| &b[off..]), ..*epi };
        let residual = residual.map(|r| (r.from(off), d.c_out));
        direct::run(&window(g), panels, y.from(off), d.c_out, 0, &ge, residual);
    }
}

/// Packs OHWI weights for the backward-data pass: per group,
/// `B[(tap, co)][ci] = w[co][tap][ci]`.
pub fn prepare_backward_data(d: &ConvDesc, w: &[f32], out: &mut CpuFilter) {
    out.bf16.clear();
    let (kl, cg, cig) = (d.k_len(), d.cout_g(), d.cin_g());
    let taps = d.kernel[0] * d.kernel[1];
    let m = winograd_tile(d);
    if m > 0 {
        // The gradient is a 3x3 convolution of dy with the flipped, transposed
        // filter: w'[ci][ky][kx][co] = w[co][2 - ky][2 - kx][ci].
        let wf = out.winograd.get_or_insert_with(Default::default);
        winograd::prepare(m, w, d.c_in, d.c_out, winograd::FilterSource::FlippedTransposed, wf);
        return;
    }
    out.winograd = None;
    out.groups.resize_with(d.groups, Panels::default);
    out.scratch.resize(taps * cg * cig, 0.0);
    for (g, p) in out.groups.iter_mut().enumerate() {
        let wg = &w[g * cg * kl..(g + 1) * cg * kl];
        // Reorder to [tap][co][ci] so that (tap, co) is one reduction index.
        for co in 0..cg {
            for t in 0..taps {
                let src = &wg[co * kl + t * cig..co * kl + (t + 1) * cig];
                out.scratch[(t * cg + co) * cig..(t * cg + co + 1) * cig].copy_from_slice(src);
            }
        }
        p.pack_transposed(&out.scratch, cig, taps * cg, cig);
    }
}

/// Convolution forward without an epilogue that also writes the per-channel
/// mean and biased variance of `y` into `stats` where the kernel computes them
/// on the way (Winograd layers); returns whether it did.
pub fn forward_stats(d: &ConvDesc, x: &[f32], f: &CpuFilter, y: &mut [f32], stats: &mut [f32]) -> bool {
    match (&f.winograd, f.bf16.is_empty()) {
        (Some(wf), true) => {
            winograd::forward(d, x, wf, y, &Epilogue::default(), Some(stats));
            true
        }
        _ => {
            forward(d, x, f, y, &Epilogue::default());
            false
        }
    }
}

/// Convolution forward with a fused epilogue.
pub fn forward(d: &ConvDesc, x: &[f32], f: &CpuFilter, y: &mut [f32], epi: &Epilogue<'_>) {
    let residual = epi.residual.map(|(r, ld)| {
        assert_eq!(ld, d.c_out, "a convolution's residual rows have c_out values");
        Residual::Rows(Rows::F32(r))
    });
    forward_f32(d, x, f, y, &Epilogue { residual: None, ..*epi }, residual);
}

/// [`forward`] with the residual apart from the epilogue (whose own is
/// ignored); a residual in the output rows only for single-tap windows.
fn forward_f32(
    d: &ConvDesc,
    x: &[f32],
    f: &CpuFilter,
    y: &mut [f32],
    epi: &Epilogue<'_>,
    residual: Option<Residual<'_>>,
) {
    match (&f.winograd, f.bf16.is_empty()) {
        (_, false) => forward_bf16(d, Rows::F32(x), f, RowsMut::F32(y), epi, residual),
        (Some(wf), true) => {
            let residual = match residual {
                Some(Residual::Rows(Rows::F32(r))) => Some((r, d.c_out)),
                None => None,
                Some(_) => unreachable!("forward_stored gives Winograd layers f32 residual rows"),
            };
            winograd::forward(d, x, wf, y, &Epilogue { residual, ..*epi }, None)
        }
        (None, true) => forward_direct(d, x, &f.groups, &PADDED, RowsMut::F32(y), epi, residual),
    }
}

/// Convolution forward over stored activations: input, output and residual
/// (rows of `c_out`) each f32 or bf16, as a bf16 inference plan keeps them.
/// `epi.residual` is ignored. Filters without bf16 panels compute in f32
/// between a widened input and a rounded output. A residual in the output
/// rows ([`Residual::InOutput`]) is read in place by 1x1 layers on the
/// indirect kernels, and from a copy elsewhere.
pub fn forward_stored(
    d: &ConvDesc,
    x: Rows<'_>,
    f: &CpuFilter,
    mut y: RowsMut<'_>,
    epi: &Epilogue<'_>,
    residual: Option<Residual<'_>>,
) {
    let epi = &Epilogue { residual: None, ..*epi };
    let in_place = d.kernel == [1, 1] && (matches!(y, RowsMut::F32(_)) || !f.bf16.is_empty());
    if matches!(residual, Some(Residual::InOutput)) && !in_place {
        let n = d.out_len();
        return match &mut y {
            RowsMut::F32(v) => {
                let copy = AlignedVec::from_slice(&v[..n]);
                forward_stored(d, x, f, y, epi, Some(Residual::Rows(Rows::F32(&copy))))
            }
            RowsMut::Bf16(v) => {
                let copy = AlignedVec::from_slice(&v[..n]);
                forward_stored(d, x, f, y, epi, Some(Residual::Rows(Rows::Bf16(&copy))))
            }
        };
    }
    let widen = |r: &[Bf16]| -> AlignedVec<f32> { r.iter().map(|b| b.to_f32()).collect() };
    if let (RowsMut::Bf16(yb), Some(wf)) = (&mut y, &f.winograd) {
        // Winograd rounds its own output rows (and widens stored input).
        let rw;
        let residual = match residual {
            Some(Residual::Rows(Rows::Bf16(r))) => {
                rw = widen(r);
                Some((&rw[..], d.c_out))
            }
            Some(Residual::Rows(Rows::F32(r))) => Some((r, d.c_out)),
            Some(Residual::InOutput) => unreachable!("3x3 layers read a residual in their output from a copy (above)"),
            None => None,
        };
        return winograd::forward_bf16(d, x, wf, yb, &Epilogue { residual, ..*epi });
    }
    // The bf16 kernels write bf16 rows where no tile's taps are split (each
    // would sum its parts in the output): 1x1 layers, and row windows over a
    // padded copy (the stem).
    let whole_taps = d.kernel == [1, 1] || use_rows(&ConvDesc { c_in: f.bf16_cin, ..*d });
    if let RowsMut::Bf16(yb) = &mut y
        && (f.bf16.is_empty() || !whole_taps)
    {
        // Otherwise compute in f32 and round.
        let mut out = AlignedVec::<f32>::zeroed(yb.len());
        forward_stored(d, x, f, RowsMut::F32(&mut out), epi, residual);
        return bf16::convert(&out, yb);
    }
    if !f.bf16.is_empty() {
        return forward_bf16(d, x, f, y, epi, residual);
    }
    let RowsMut::F32(y) = y else { unreachable!("bf16 outputs of f32 filters are computed above") };
    // Stored bf16 around an f32 filter (layers without a bf16 form): widen.
    let widened = match residual {
        Some(Residual::Rows(Rows::Bf16(r))) => Some(widen(r)),
        _ => None,
    };
    let residual = match &widened {
        Some(w) => Some(Residual::Rows(Rows::F32(w))),
        None => residual,
    };
    match x {
        Rows::F32(x) => forward_f32(d, x, f, y, epi, residual),
        Rows::Bf16(x) => forward_f32(d, &widen(x), f, y, epi, residual),
    }
}

/// Convolution backward-data (gather form).
pub fn backward_data(d: &ConvDesc, dy: &[f32], f: &CpuFilter, dx: &mut [f32], accumulate: bool) {
    let cig = d.cin_g();
    let epi = Epilogue { accumulate, ..Default::default() };
    if let Some(wf) = &f.winograd {
        // Stride 1: dx has dy's size; the transposed convolution pads by 2 - pad.
        let t = ConvDesc {
            h: d.out_h(),
            w: d.out_w(),
            c_in: d.c_out,
            c_out: d.c_in,
            pad: [2 - d.pad[0], 2 - d.pad[1]],
            ..*d
        };
        return winograd::forward(&t, dy, wf, dx, &epi, None);
    }
    for g in 0..d.groups {
        direct::run(&backward_window(d, dy, g), &f.groups[g], RowsMut::F32(&mut dx[g * cig..]), d.c_in, 0, &epi, None);
    }
}

/// Convolution backward-filter: `dw += correlation(x, dy)`, by outer products
/// read in place (see [`direct::filter_gradient`]).
pub fn backward_filter(d: &ConvDesc, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let (cg, kl) = (d.cout_g(), d.k_len());
    let m = winograd_tile(d);
    if m > 0 && winograd::filter_gradient_pays(d) {
        return winograd::filter_gradient(m, d, x, dy, dw);
    }
    if use_rows(d) {
        return with_rows(d, &PADDED, |b| pad_copy(d, x, b), |w| direct::filter_gradient(w, dy, d.c_out, d.c_out, dw));
    }
    for g in 0..d.groups {
        let dwg = &mut dw[g * cg * kl..(g + 1) * cg * kl];
        direct::filter_gradient(&forward_window(d, x, g), &dy[g * cg..], d.c_out, cg, dwg);
    }
}
