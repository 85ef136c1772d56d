//! Per-sample transforms: geometry (augmentation or torchvision's eval
//! resize-and-crop), channel conversion and normalisation to f32 HWC.

use serde::{Deserialize, Serialize};

use resnet::error::{Error, Result};
use resnet::preprocess::{RgbImage, center_crop, resize_bilinear, resize_shorter};
use resnet::rng::Rng;

/// What happens to an image's geometry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Geometry {
    /// Unchanged.
    Identity,
    /// Zero-pad `pad` pixels on every side, then a random crop of the
    /// original size (He et al. 2015's CIFAR augmentation).
    PadCrop {
        /// Padding.
        pad: usize,
    },
    /// torchvision's `RandomResizedCrop(size)`: scale (0.08, 1), ratio (3/4, 4/3).
    RandomResizedCrop {
        /// Output side.
        size: usize,
    },
    /// torchvision's eval transform: `Resize(resize)` + `CenterCrop(crop)`.
    ResizeCrop {
        /// Shorter side after resizing.
        resize: usize,
        /// Output side.
        crop: usize,
    },
}

/// A complete per-sample transform.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleTransform {
    /// Geometry.
    pub geometry: Geometry,
    /// Random horizontal flip (p = 0.5).
    pub flip: bool,
    /// Zero-pad small images to this square size first (e.g. 28 -> 32).
    pub pad_to: Option<usize>,
    /// Output channels (gray is replicated to 3; RGB becomes luma for 1).
    pub channels: usize,
    /// Per-output-channel mean.
    pub mean: Vec<f32>,
    /// Per-output-channel standard deviation.
    pub std: Vec<f32>,
}

/// An 8-bit image with any channel count, HWC.
pub struct Pixels<'a> {
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// Data.
    pub data: std::borrow::Cow<'a, [u8]>,
}

impl SampleTransform {
    /// Output `(height, width)` for inputs of `(h, w)` (all inputs of a batch
    /// must give the same).
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let (h, w) = self.pad_to.map_or((h, w), |p| (h.max(p), w.max(p)));
        match self.geometry {
            Geometry::Identity | Geometry::PadCrop { .. } => (h, w),
            Geometry::RandomResizedCrop { size } => (size, size),
            Geometry::ResizeCrop { crop, .. } => (crop, crop),
        }
    }

    /// Checks the transform against the data's channels.
    pub fn validate(&self, in_channels: usize) -> Result<()> {
        if !(self.channels == 1 || self.channels == 3) || !(in_channels == 1 || in_channels == 3) {
            return Err(Error::Invalid(format!(
                "images have {in_channels} channels and the model {}: only 1 and 3 are supported",
                self.channels
            )));
        }
        if self.mean.len() != self.channels || self.std.len() != self.channels || self.std.contains(&0.0) {
            return Err(Error::Invalid("normalisation needs one mean and one non-zero std per channel".into()));
        }
        Ok(())
    }

    /// Applies the transform; writes `out_h * out_w * channels` values into `out`.
    pub fn apply(&self, img: Pixels<'_>, rng: &mut Rng, out: &mut [f32]) {
        let img = match self.pad_to {
            Some(p) if img.h < p || img.w < p => pad_center(&img, p),
            _ => img,
        };
        let img = match &self.geometry {
            Geometry::Identity => img,
            Geometry::PadCrop { pad } => pad_crop(&img, *pad, rng),
            Geometry::RandomResizedCrop { size } => random_resized_crop(&img, *size, rng),
            Geometry::ResizeCrop { resize, crop } => {
                let rgb = to_rgb(&img);
                let g = center_crop(&resize_shorter(&rgb, *resize), *crop);
                Pixels { h: g.height, w: g.width, c: 3, data: g.data.into() }
            }
        };
        let flip = self.flip && rng.uniform() < 0.5;
        let (h, w, c) = (img.h, img.w, img.c);
        debug_assert_eq!(out.len(), h * w * self.channels);
        for y in 0..h {
            for x in 0..w {
                let sx = if flip { w - 1 - x } else { x };
                let px = &img.data[(y * w + sx) * c..][..c];
                let o = &mut out[(y * w + x) * self.channels..][..self.channels];
                match (c, self.channels) {
                    (1, 1) | (3, 3) => {
                        for ch in 0..c {
                            o[ch] = (px[ch] as f32 / 255.0 - self.mean[ch]) / self.std[ch];
                        }
                    }
                    (1, 3) => {
                        for ((ov, &m), &s) in o.iter_mut().zip(&self.mean).zip(&self.std) {
                            *ov = (px[0] as f32 / 255.0 - m) / s;
                        }
                    }
                    _ => {
                        let l = (px[0] as u32 * 19595 + px[1] as u32 * 38470 + px[2] as u32 * 7471 + 0x8000) >> 16;
                        o[0] = (l as f32 / 255.0 - self.mean[0]) / self.std[0];
                    }
                }
            }
        }
    }
}

fn pad_center<'a>(img: &Pixels<'_>, p: usize) -> Pixels<'a> {
    let (nh, nw) = (img.h.max(p), img.w.max(p));
    let (top, left) = ((nh - img.h) / 2, (nw - img.w) / 2);
    let mut data = vec![0u8; nh * nw * img.c];
    for y in 0..img.h {
        data[((y + top) * nw + left) * img.c..][..img.w * img.c]
            .copy_from_slice(&img.data[y * img.w * img.c..][..img.w * img.c]);
    }
    Pixels { h: nh, w: nw, c: img.c, data: data.into() }
}

fn pad_crop<'a>(img: &Pixels<'_>, pad: usize, rng: &mut Rng) -> Pixels<'a> {
    let (h, w, c) = (img.h, img.w, img.c);
    let dy = rng.below(2 * pad + 1) as isize - pad as isize;
    let dx = rng.below(2 * pad + 1) as isize - pad as isize;
    let mut data = vec![0u8; h * w * c];
    for y in 0..h {
        let sy = y as isize + dy;
        if sy < 0 || sy >= h as isize {
            continue;
        }
        for x in 0..w {
            let sx = x as isize + dx;
            if sx < 0 || sx >= w as isize {
                continue;
            }
            let s = (sy as usize * w + sx as usize) * c;
            data[(y * w + x) * c..][..c].copy_from_slice(&img.data[s..s + c]);
        }
    }
    Pixels { h, w, c, data: data.into() }
}

fn to_rgb(img: &Pixels<'_>) -> RgbImage {
    let data = if img.c == 3 { img.data.to_vec() } else { img.data.iter().flat_map(|&v| [v; 3]).collect() };
    RgbImage { width: img.w, height: img.h, data }
}

/// torchvision's `RandomResizedCrop` parameters and Pillow's bilinear resize.
fn random_resized_crop<'a>(img: &Pixels<'_>, size: usize, rng: &mut Rng) -> Pixels<'a> {
    let (h, w) = (img.h, img.w);
    let area = (h * w) as f64;
    let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    let mut chosen = None;
    for _ in 0..10 {
        let target = area * (0.08 + rng.uniform() * 0.92);
        let ratio = (lo + rng.uniform() * (hi - lo)).exp();
        let cw = (target * ratio).sqrt().round() as usize;
        let ch = (target / ratio).sqrt().round() as usize;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            chosen = Some((rng.below(h - ch + 1), rng.below(w - cw + 1), ch, cw));
            break;
        }
    }
    // Fallback: the whole image, clamped to the ratio range, centred.
    let (top, left, ch, cw) = chosen.unwrap_or_else(|| {
        let r = w as f64 / h as f64;
        let (ch, cw) = if r < 0.75 {
            ((w as f64 / 0.75).round() as usize, w)
        } else if r > 4.0 / 3.0 {
            (h, (h as f64 * 4.0 / 3.0).round() as usize)
        } else {
            (h, w)
        };
        ((h - ch.min(h)) / 2, (w - cw.min(w)) / 2, ch.min(h), cw.min(w))
    });
    let rgb = to_rgb(img);
    let mut crop = Vec::with_capacity(ch * cw * 3);
    for y in top..top + ch {
        crop.extend_from_slice(&rgb.data[(y * w + left) * 3..][..cw * 3]);
    }
    let out = resize_bilinear(&RgbImage { width: cw, height: ch, data: crop }, size, size);
    Pixels { h: size, w: size, c: 3, data: out.data.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_crop_keeps_size_and_content_shifts() {
        let data: Vec<u8> = (0..16).collect();
        let t = SampleTransform {
            geometry: Geometry::PadCrop { pad: 1 },
            flip: false,
            pad_to: None,
            channels: 1,
            mean: vec![0.0],
            std: vec![1.0 / 255.0],
        };
        let mut out = vec![0.0; 16];
        let mut seen_shift = false;
        for s in 0..20 {
            t.apply(Pixels { h: 4, w: 4, c: 1, data: data.as_slice().into() }, &mut Rng::new(s), &mut out);
            // Every output value is 0 (padding) or an input value.
            assert!(out.iter().all(|&v| v == 0.0 || (v as usize) < 16));
            seen_shift |= out[5] != 5.0;
        }
        assert!(seen_shift);
        let flip = SampleTransform { geometry: Geometry::Identity, flip: true, ..t.clone() };
        let mut flipped = false;
        for s in 0..10 {
            flip.apply(Pixels { h: 4, w: 4, c: 1, data: data.as_slice().into() }, &mut Rng::new(s), &mut out);
            flipped |= out[0] == 3.0;
        }
        assert!(flipped);
        let padded = SampleTransform { geometry: Geometry::Identity, flip: false, pad_to: Some(6), ..t };
        assert_eq!(padded.out_size(4, 4), (6, 6));
        let mut out = vec![0.0; 36];
        padded.apply(Pixels { h: 4, w: 4, c: 1, data: data.as_slice().into() }, &mut Rng::new(0), &mut out);
        assert_eq!(out[7], 0.0 * 255.0);
        assert_eq!(out[8], 1.0);
    }
}
