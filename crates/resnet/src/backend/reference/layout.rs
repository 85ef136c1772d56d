//! Layout conversions and a plain NCHW convolution: PyTorch's tensors into
//! ours, and the kernel tests' reference.

/// Direct convolution, `x[n, c_in, h, w]`, `w[c_out, c_in/groups, kh, kw]`,
/// returns `[n, c_out, oh, ow]`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_nchw(
    x: &[f32],
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    weight: &[f32],
    c_out: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
) -> Vec<f32> {
    let oh = crate::backend::out_size(h, kernel[0], stride[0], pad[0], dilation[0]);
    let ow = crate::backend::out_size(w, kernel[1], stride[1], pad[1], dilation[1]);
    let (cig, cog) = (c_in / groups, c_out / groups);
    let mut y = vec![0.0f32; n * c_out * oh * ow];
    for b in 0..n {
        for co in 0..c_out {
            let g = co / cog;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = 0.0f64;
                    for ci in 0..cig {
                        for ky in 0..kernel[0] {
                            for kx in 0..kernel[1] {
                                let iy = (oy * stride[0] + ky * dilation[0]) as isize - pad[0] as isize;
                                let ix = (ox * stride[1] + kx * dilation[1]) as isize - pad[1] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xv = x[((b * c_in + g * cig + ci) * h + iy as usize) * w + ix as usize];
                                let wv = weight[((co * cig + ci) * kernel[0] + ky) * kernel[1] + kx];
                                s += xv as f64 * wv as f64;
                            }
                        }
                    }
                    y[((b * c_out + co) * oh + oy) * ow + ox] = s as f32;
                }
            }
        }
    }
    y
}

/// `[n, c, h, w] -> [n, h, w, c]`.
pub fn nchw_to_nhwc(x: &[f32], n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    for b in 0..n {
        for ch in 0..c {
            for p in 0..h * w {
                y[(b * h * w + p) * c + ch] = x[(b * c + ch) * h * w + p];
            }
        }
    }
    y
}

/// `[n, h, w, c] -> [n, c, h, w]`.
pub fn nhwc_to_nchw(x: &[f32], n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    for b in 0..n {
        for ch in 0..c {
            for p in 0..h * w {
                y[(b * c + ch) * h * w + p] = x[(b * h * w + p) * c + ch];
            }
        }
    }
    y
}

/// Filter layout `[o, i, kh, kw] -> [o, kh, kw, i]`.
pub fn oihw_to_ohwi(w: &[f32], o: usize, i: usize, kh: usize, kw: usize) -> Vec<f32> {
    nchw_to_nhwc(w, o, i, kh, kw)
}

/// Filter layout `[o, kh, kw, i] -> [o, i, kh, kw]`.
pub fn ohwi_to_oihw(w: &[f32], o: usize, i: usize, kh: usize, kw: usize) -> Vec<f32> {
    nhwc_to_nchw(w, o, i, kh, kw)
}
