//! Image decoding and torchvision's evaluation transform, bit for bit.
//!
//! torchvision's ImageNet pipeline is `PIL.Image.open(f).convert("RGB")`,
//! `Resize(256)` (shorter side, Pillow's antialiased bilinear), `CenterCrop(224)`,
//! `ToTensor()`, `Normalize(mean, std)`. Each step is reproduced here:
//!
//! * decoding follows Pillow's conversions to RGB: alpha is dropped, gray is
//!   replicated, 16-bit RGB keeps the high byte, and 16-bit gray is *clipped*
//!   at 255 (Pillow's `I;16 -> RGB` rule); EXIF orientation is ignored, as PIL
//!   does by default;
//! * the resize is Pillow's two-pass convolution resampler with its 22-bit
//!   fixed-point coefficients and 8-bit intermediate image, so results are
//!   identical, not merely close (written here rather than taken from a crate
//!   because identity with Pillow is the point and is tested pixel for pixel);
//! * sizes and crop offsets use torchvision's formulas (truncation for the
//!   long side, Python's round-half-even for the crop offset).

use std::path::Path;

use crate::error::{Error, Result};

mod jpeg;

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` bytes.
    pub data: Vec<u8>,
}

/// Largest accepted image side.
pub const MAX_SIDE: u32 = 1 << 16;

/// Most pixels an image may have: Pillow's `MAX_IMAGE_PIXELS`, its guard
/// against decompression bombs.
pub const MAX_PIXELS: u64 = 89_478_485;

/// Most bytes of raw image data one byte of a PNG can inflate to (deflate's
/// limit is about 1032:1). With the pixel format this bounds the canvas a
/// real file can hold; a file claiming more is refused before its canvas is
/// allocated.
const PNG_MAX_RATIO: u64 = 1_100;

/// Most pixels one byte of a JPEG can hold: a flat 4:2:0 image needs about
/// 12 bits for 256 pixels.
const JPEG_MAX_PIXELS_PER_BYTE: u64 = 512;

/// Decodes a JPEG or PNG file to RGB with Pillow's conversion rules.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb(&bytes).map_err(|m| Error::format(path, m))
}

/// Decodes image bytes (JPEG or PNG) to RGB with Pillow's conversion rules.
pub fn decode_rgb(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    use ::image::{DynamicImage, ImageDecoder, ImageFormat};
    match ::image::guess_format(bytes) {
        Ok(ImageFormat::Png) => {}
        Ok(ImageFormat::Jpeg) => return jpeg::decode(bytes, |w, h| check_size(w, h, bytes, true)),
        Ok(f) => return Err(format!("unsupported image format {f:?} (JPEG and PNG are supported)")),
        Err(_) => return Err("not an image (JPEG and PNG are supported)".into()),
    }
    let decoder = ::image::codecs::png::PngDecoder::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("not a valid image: {e}"))?;
    let (w, h) = decoder.dimensions();
    check_size(w, h, bytes, false)?;
    let img = DynamicImage::from_decoder(decoder).map_err(|e| format!("not a valid image: {e}"))?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    let mut data = Vec::with_capacity(width * height * 3);
    match &img {
        DynamicImage::ImageRgb8(b) => data.extend_from_slice(b.as_raw()),
        DynamicImage::ImageRgba8(b) => b.as_raw().chunks_exact(4).for_each(|p| data.extend_from_slice(&p[..3])),
        DynamicImage::ImageLuma8(b) => b.as_raw().iter().for_each(|&v| data.extend_from_slice(&[v; 3])),
        DynamicImage::ImageLumaA8(b) => b.as_raw().chunks_exact(2).for_each(|p| data.extend_from_slice(&[p[0]; 3])),
        // Pillow reads 16-bit gray as mode I;16 and clips it to 0..255 when converting.
        DynamicImage::ImageLuma16(b) => b.as_raw().iter().for_each(|&v| data.extend_from_slice(&[v.min(255) as u8; 3])),
        // 16-bit gray+alpha and colour images are read keeping the high byte.
        DynamicImage::ImageLumaA16(b) => {
            b.as_raw().chunks_exact(2).for_each(|p| data.extend_from_slice(&[(p[0] >> 8) as u8; 3]))
        }
        DynamicImage::ImageRgb16(b) => data.extend(b.as_raw().iter().map(|&v| (v >> 8) as u8)),
        DynamicImage::ImageRgba16(b) => {
            b.as_raw().chunks_exact(4).for_each(|p| data.extend(p[..3].iter().map(|&v| (v >> 8) as u8)))
        }
        other => data.extend_from_slice(other.to_rgb8().as_raw()),
    }
    Ok(RgbImage { width, height, data })
}

/// Refuses, before its canvas is allocated, an image over the size limits or
/// with more pixels than its `bytes` can hold.
fn check_size(w: u32, h: u32, bytes: &[u8], is_jpeg: bool) -> std::result::Result<(), String> {
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(format!("image size {w}x{h} is not supported (1 to {MAX_SIDE} pixels a side)"));
    }
    let pixels = w as u64 * h as u64;
    if pixels > MAX_PIXELS {
        return Err(format!(
            "image of {w}x{h} = {pixels} pixels is over the limit of {MAX_PIXELS} pixels (a decompression bomb?)"
        ));
    }
    let file = bytes.len() as u64;
    let plausible = if is_jpeg {
        pixels <= JPEG_MAX_PIXELS_PER_BYTE * file
    } else {
        pixels * png_bits_per_pixel(bytes) <= PNG_MAX_RATIO * 8 * file
    };
    if !plausible {
        return Err(format!(
            "image claims {w}x{h} = {pixels} pixels in a file of {file} bytes: not a real image (a decompression bomb?)"
        ));
    }
    Ok(())
}

/// Bits per pixel of a PNG's raw data, from its header (bit depth times
/// samples per pixel); 1, the smallest, when the header is unreadable.
fn png_bits_per_pixel(bytes: &[u8]) -> u64 {
    // Signature (8), IHDR length and type (8), width and height (8), then bit depth and colour type.
    let (Some(&depth), Some(&colour)) = (bytes.get(24), bytes.get(25)) else { return 1 };
    let samples = match colour {
        2 => 3, // RGB
        4 => 2, // gray + alpha
        6 => 4, // RGBA
        _ => 1, // gray, palette
    };
    (depth as u64 * samples).max(1)
}

/// Pillow's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Bilinear ("triangle") filter with support 1.
fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// Per output pixel: first input index, tap count and fixed-point weights.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for a full-range
/// box, for the output pixels `range` only (a pixel's weights depend on its
/// index and the two sizes alone, so a part is computed exactly as the whole).
fn coeffs(in_size: usize, out_size: usize, range: std::ops::Range<usize>) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the bilinear filter has support 1
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(range.len());
    let mut weights = vec![0i32; range.len() * ksize];
    let mut k = vec![0.0f64; ksize];
    for (i, xx) in range.enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = bilinear((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, &kx) in k.iter().enumerate().take(xmax) {
            let v = if ww != 0.0 { kx / ww } else { kx };
            let fixed = v * (1u32 << PRECISION_BITS) as f64;
            weights[i * ksize + x] = if v < 0.0 { (-0.5 + fixed) as i32 } else { (0.5 + fixed) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs { ksize, bounds, weights }
}

#[inline]
fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Pillow's `Image.resize((width, height), Image.BILINEAR)` for an RGB image.
pub fn resize_bilinear(img: &RgbImage, width: usize, height: usize) -> RgbImage {
    resize_region(img, width, height, 0..width, 0..height)
}

/// The pixels `xs` x `ys` of [`resize_bilinear`]`(img, width, height)`,
/// computed without the rest: identical to resizing and then cropping, in
/// time and memory proportional to the part (a 32768 x 1 strip resized to a
/// shorter side of 256 would be 2 GB whole).
pub fn resize_region(
    img: &RgbImage,
    width: usize,
    height: usize,
    xs: std::ops::Range<usize>,
    ys: std::ops::Range<usize>,
) -> RgbImage {
    let (iw, ih) = (img.width, img.height);
    let (ow, oh) = (xs.len(), ys.len());
    let need_h = width != iw;
    let need_v = height != ih;
    let round = 1i64 << (PRECISION_BITS - 1);
    // Source rows the vertical pass reads (all of `ys` when there is none).
    let vert = need_v.then(|| coeffs(ih, height, ys.clone()));
    let (y_first, y_last) = match &vert {
        Some(v) if oh > 0 => (v.bounds[0].0, v.bounds[oh - 1].0 + v.bounds[oh - 1].1),
        Some(_) => (0, 0),
        None => (ys.start, ys.end),
    };
    let rows = y_last - y_first;
    let mut tmp = vec![0u8; rows * ow * 3];
    if need_h {
        let horiz = coeffs(iw, width, xs.clone());
        for y in 0..rows {
            let src = &img.data[(y + y_first) * iw * 3..][..iw * 3];
            for (xx, &(xmin, xmax)) in horiz.bounds.iter().enumerate() {
                let k = &horiz.weights[xx * horiz.ksize..][..xmax];
                let mut ss = [round; 3];
                for (x, &kx) in k.iter().enumerate() {
                    let p = &src[(x + xmin) * 3..][..3];
                    for c in 0..3 {
                        ss[c] += p[c] as i64 * kx as i64;
                    }
                }
                for c in 0..3 {
                    tmp[(y * ow + xx) * 3 + c] = clip8(ss[c]);
                }
            }
        }
    } else {
        for y in 0..rows {
            tmp[y * ow * 3..][..ow * 3].copy_from_slice(&img.data[((y + y_first) * iw + xs.start) * 3..][..ow * 3]);
        }
    }
    let Some(vert) = vert else {
        // The horizontal pass covered exactly the wanted rows.
        return RgbImage { width: ow, height: oh, data: tmp };
    };
    let mut out = vec![0u8; oh * ow * 3];
    for (yy, &(ymin, ymax)) in vert.bounds.iter().enumerate() {
        let k = &vert.weights[yy * vert.ksize..][..ymax];
        let row0 = ymin - y_first;
        for x in 0..ow * 3 {
            let mut ss = round;
            for (y, &ky) in k.iter().enumerate() {
                ss += tmp[(row0 + y) * ow * 3 + x] as i64 * ky as i64;
            }
            out[yy * ow * 3 + x] = clip8(ss);
        }
    }
    RgbImage { width: ow, height: oh, data: out }
}

/// torchvision's `Resize(size)` with one number: the shorter side becomes
/// `size`, the longer `int(size * long / short)`.
pub fn resize_shorter(img: &RgbImage, size: usize) -> RgbImage {
    let (nw, nh) = shorter_side_size(img.width, img.height, size);
    if (nw, nh) == (img.width, img.height) {
        return img.clone();
    }
    resize_bilinear(img, nw, nh)
}

/// The size [`resize_shorter`] gives a `w` x `h` image.
fn shorter_side_size(w: usize, h: usize, size: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    if w <= h { (size, new_long) } else { (new_long, size) }
}

/// Along one axis of [`center_crop`] to `size` of a side `n`: the first
/// source pixel kept, how many, and where they land in the crop.
fn crop_span(n: usize, size: usize) -> (usize, usize, usize) {
    if n >= size { (((n - size) as f64 / 2.0).round_ties_even() as usize, size, 0) } else { (0, n, (size - n) / 2) }
}

/// `center_crop(&resize_shorter(img, resize), crop)`, resizing only the
/// pixels the crop keeps (identical, and bounded by the crop's size whatever
/// the image's aspect ratio).
pub fn resize_shorter_center_crop(img: &RgbImage, resize: usize, crop: usize) -> RgbImage {
    let (nw, nh) = shorter_side_size(img.width, img.height, resize);
    let (x0, cw, px) = crop_span(nw, crop);
    let (y0, ch, py) = crop_span(nh, crop);
    let part = resize_region(img, nw, nh, x0..x0 + cw, y0..y0 + ch);
    if (cw, ch) == (crop, crop) {
        return part;
    }
    let mut data = vec![0u8; crop * crop * 3];
    for y in 0..ch {
        data[((y + py) * crop + px) * 3..][..cw * 3].copy_from_slice(&part.data[y * cw * 3..][..cw * 3]);
    }
    RgbImage { width: crop, height: crop, data }
}

/// torchvision's `CenterCrop(size)`: zero-pads when the image is smaller,
/// offsets rounded half to even as Python's `round`.
pub fn center_crop(img: &RgbImage, size: usize) -> RgbImage {
    let (mut w, mut h) = (img.width, img.height);
    let mut src = std::borrow::Cow::Borrowed(img);
    if size > w || size > h {
        let (pl, pt) = (size.saturating_sub(w) / 2, size.saturating_sub(h) / 2);
        let (nw, nh) = (w.max(size), h.max(size));
        let mut data = vec![0u8; nw * nh * 3];
        for y in 0..h {
            data[((y + pt) * nw + pl) * 3..][..w * 3].copy_from_slice(&img.data[y * w * 3..][..w * 3]);
        }
        src = std::borrow::Cow::Owned(RgbImage { width: nw, height: nh, data });
        (w, h) = (nw, nh);
    }
    let top = ((h - size) as f64 / 2.0).round_ties_even() as usize;
    let left = ((w - size) as f64 / 2.0).round_ties_even() as usize;
    let mut data = Vec::with_capacity(size * size * 3);
    for y in top..top + size {
        data.extend_from_slice(&src.data[(y * w + left) * 3..][..size * 3]);
    }
    RgbImage { width: size, height: size, data }
}

/// Largest resize, crop or padded side a [`Transform`] may ask for.
pub const MAX_TRANSFORM_SIDE: usize = 2048;

/// ImageNet channel means (torchvision).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (torchvision).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// An evaluation transform: resize the shorter side, centre-crop, normalise.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Transform {
    /// Shorter side after resizing.
    pub resize: usize,
    /// Side of the square crop.
    pub crop: usize,
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by.
    pub std: Vec<f32>,
    /// Convert to one gray channel (ITU-R 601-2 luma, as PIL's `convert("L")`).
    #[serde(default)]
    pub grayscale: bool,
    /// After cropping, zero-pad to this square size (models trained on
    /// padded small images, e.g. 28 -> 32).
    #[serde(default)]
    pub pad_to: Option<usize>,
}

impl Transform {
    /// A named preset: `v1` (resize 256, crop 224; torchvision's IMAGENET1K_V1
    /// weights) or `v2` (resize 232, crop 224; the IMAGENET1K_V2 weights).
    pub fn preset(name: &str) -> Result<Self> {
        let (resize, crop) = match name {
            "v1" => (256, 224),
            "v2" => (232, 224),
            other => return Err(Error::Invalid(format!("unknown preset `{other}` (use v1 or v2)"))),
        };
        Ok(Self {
            resize,
            crop,
            mean: IMAGENET_MEAN.to_vec(),
            std: IMAGENET_STD.to_vec(),
            grayscale: false,
            pad_to: None,
        })
    }

    /// Checks that the transform can run: sizes from 1 to [`MAX_TRANSFORM_SIDE`],
    /// a finite mean and a finite, non-zero standard deviation per channel.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("invalid preprocessing: {m}")));
        for (name, v) in [("resize", self.resize), ("crop", self.crop), ("pad_to", self.pad_to.unwrap_or(1))] {
            if v == 0 || v > MAX_TRANSFORM_SIDE {
                return bad(format!("{name} {v} is not between 1 and {MAX_TRANSFORM_SIDE}"));
            }
        }
        if self.mean.len() != 3 && !(self.grayscale && self.mean.len() == 1) || self.std.len() != self.mean.len() {
            return bad(format!("{} means and {} standard deviations for 3 channels", self.mean.len(), self.std.len()));
        }
        if self.mean.iter().any(|m| !m.is_finite()) || self.std.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return bad("means must be finite and standard deviations finite and non-zero".into());
        }
        Ok(())
    }

    /// Resize, crop (and pad): the 8-bit image the network will see.
    pub fn geometry(&self, img: &RgbImage) -> RgbImage {
        let g = resize_shorter_center_crop(img, self.resize, self.crop);
        match self.pad_to {
            // Centre-cropping to a larger size zero-pads, as torchvision does.
            Some(p) if p > g.width => center_crop(&g, p),
            _ => g,
        }
    }

    /// Side of the network input.
    pub fn size(&self) -> usize {
        self.pad_to.map_or(self.crop, |p| p.max(self.crop))
    }

    /// The full transform to a CHW f32 tensor (`ToTensor` + `Normalize`).
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        let g = self.geometry(img);
        to_tensor(&g, &self.mean, &self.std, self.grayscale)
    }

    /// The full transform in the network's own layout: HWC, channels
    /// innermost (the values of [`Transform::apply`], transposed).
    pub fn apply_hwc(&self, img: &RgbImage) -> Vec<f32> {
        let g = self.geometry(img);
        if self.grayscale {
            return to_tensor(&g, &self.mean, &self.std, true);
        }
        let (scale, mean, std) = (255.0f32, &self.mean, &self.std);
        g.data.chunks_exact(3).flat_map(|px| (0..3).map(move |c| (px[c] as f32 / scale - mean[c]) / std[c])).collect()
    }

    /// Channels of the output.
    pub fn channels(&self) -> usize {
        if self.grayscale { 1 } else { 3 }
    }
}

/// `ToTensor` + `Normalize` in f32, as torchvision computes them:
/// `(v / 255 - mean) / std`, CHW.
pub fn to_tensor(img: &RgbImage, mean: &[f32], std: &[f32], grayscale: bool) -> Vec<f32> {
    let hw = img.width * img.height;
    if grayscale {
        // PIL's L = R * 299/1000 + G * 587/1000 + B * 114/1000, rounded.
        return img
            .data
            .chunks_exact(3)
            .map(|p| {
                let l = (p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16;
                (l as f32 / 255.0 - mean[0]) / std[0]
            })
            .collect();
    }
    let mut out = vec![0.0f32; 3 * hw];
    for (p, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * hw + p] = (px[c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    out
}
