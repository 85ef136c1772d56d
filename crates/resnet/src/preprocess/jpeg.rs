//! JPEG decoding with libjpeg-turbo's decoder, set up as Pillow sets it up.
//!
//! torchvision reads images with Pillow, and Pillow decodes JPEGs with
//! libjpeg-turbo: the `islow` integer IDCT, "fancy" (triangle-filter) chroma
//! upsampling and libjpeg's fixed-point colour conversion. Any other decoder
//! rounds differently somewhere, which moves logits by about 1e-3. The
//! decoder here is that same code (mozjpeg's copy of libjpeg-turbo, compiled
//! from source by `mozjpeg-sys`, no system library), and the choices Pillow
//! makes around it are repeated:
//!
//! * one component is gray, three are RGB (libjpeg converts YCbCr, or leaves
//!   Adobe RGB alone), four are CMYK (libjpeg converts YCCK), and Pillow
//!   assumes Adobe's inverted CMYK, then converts to RGB with its own
//!   `cmyk2rgb`; other component counts are refused, as Pillow refuses them;
//! * the input is a *suspending* source, like Pillow's: when the decoder
//!   wants bytes past the end of the file before the last row, the file is
//!   truncated (Pillow's "image file is truncated"); once every row is out,
//!   a missing end marker is not an error;
//! * warnings about corrupt data are silent and the decoder repairs what it
//!   can, as under Pillow (a scan cut short by a marker decodes as gray);
//! * EXIF orientation and ICC profiles are ignored, as `Image.open` ignores them.
//!
//! libjpeg reports fatal errors through a callback that must not return; it
//! unwinds here (the library is built with `-fexceptions` for that) and the
//! unwind is caught at the one entry point, so a bad file is an `Err`.

use std::os::raw::{c_int, c_long};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use mozjpeg_sys as ffi;

use super::RgbImage;

/// libjpeg's longest formatted message, terminator included.
const MESSAGE_MAX: usize = 200;

/// A fatal decoder error, carried by the unwind from the error callback.
struct Failure(String);

/// The decoder's state, destroyed (its memory pools freed) on every path out.
struct Decoder {
    cinfo: Box<ffi::jpeg_decompress_struct>,
    /// The error manager and the source, from `Box::into_raw`: libjpeg holds
    /// their addresses (in `cinfo`) and is the only user until the drop.
    err: *mut ffi::jpeg_error_mgr,
    src: *mut ffi::jpeg_source_mgr,
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: `cinfo` was initialised by `jpeg_create_decompress` and is
        // destroyed once; destroying is valid in any state, including after an
        // error unwound out of the library. Nothing refers to `err` and `src`
        // after that; each came from `Box::into_raw` and is freed once.
        unsafe {
            ffi::jpeg_destroy_decompress(&mut self.cinfo);
            drop(Box::from_raw(self.err));
            drop(Box::from_raw(self.src));
        }
    }
}

/// The text of the error libjpeg is reporting.
///
/// # Safety
/// `cinfo.err` must point to a live error manager set up by `jpeg_std_error`.
unsafe fn message(cinfo: &mut ffi::jpeg_common_struct) -> String {
    let mut buf = [0u8; MESSAGE_MAX];
    // The binding types the buffer as a shared 80-byte array, but libjpeg
    // writes into it, up to JMSG_LENGTH_MAX (200) bytes: call it through the
    // same C signature with a mutable pointer to 200 bytes.
    type Format = unsafe extern "C-unwind" fn(&mut ffi::jpeg_common_struct, *mut u8);
    // SAFETY (caller): the manager is live. The transmute only changes the
    // Rust view of the second argument, a pointer either way.
    unsafe {
        if let Some(format) = (*cinfo.err).format_message {
            let format: Format = std::mem::transmute(format);
            format(cinfo, buf.as_mut_ptr());
        }
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Fatal errors: unwind to `decode`, which turns the message into an `Err`.
unsafe extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    // SAFETY: libjpeg calls this with its live error manager.
    let text = unsafe { message(cinfo) };
    resume_unwind(Box::new(Failure(format!("not a valid JPEG: {text}"))))
}

/// Warnings and trace messages: silent, as under Pillow.
unsafe extern "C-unwind" fn emit_message(_: &mut ffi::jpeg_common_struct, _level: c_int) {}

unsafe extern "C-unwind" fn no_op(_: &mut ffi::jpeg_decompress_struct) {}

/// The whole file is in the buffer from the start: wanting more suspends.
unsafe extern "C-unwind" fn suspend(_: &mut ffi::jpeg_decompress_struct) -> ffi::boolean {
    0
}

/// Skips marker data; skipping past the end leaves the buffer empty, so the
/// next read suspends.
unsafe extern "C-unwind" fn skip(cinfo: &mut ffi::jpeg_decompress_struct, n: c_long) {
    // SAFETY: `src` is the live source installed by `decode`, whose pointer
    // and count describe the unread rest of the caller's slice.
    let src = unsafe { &mut *cinfo.src };
    let n = (n.max(0) as usize).min(src.bytes_in_buffer);
    // SAFETY: `n` is at most the bytes left, so the pointer stays within (or
    // one past the end of) the slice.
    src.next_input_byte = unsafe { src.next_input_byte.add(n) };
    src.bytes_in_buffer -= n;
}

/// Decodes a JPEG to RGB exactly as `PIL.Image.open(f).convert("RGB")` does.
/// `check` sees the size from the header and may refuse it before any pixel
/// memory is allocated.
pub fn decode(bytes: &[u8], check: impl Fn(u32, u32) -> Result<(), String>) -> Result<RgbImage, String> {
    match catch_unwind(AssertUnwindSafe(|| decode_unwinding(bytes, &check))) {
        Ok(result) => result,
        Err(payload) => match payload.downcast::<Failure>() {
            Ok(failure) => Err(failure.0),
            Err(other) => resume_unwind(other),
        },
    }
}

/// `decode`, with libjpeg's fatal errors unwinding out as `Failure`.
fn decode_unwinding(bytes: &[u8], check: &dyn Fn(u32, u32) -> Result<(), String>) -> Result<RgbImage, String> {
    const TRUNCATED: &str = "truncated JPEG: the file ends before the last row of the image";
    // SAFETY: these are plain C structs for which all-zero is the state libjpeg
    // expects before `jpeg_std_error` / `jpeg_create_decompress`, and a valid
    // (empty) source whose fields are all set below.
    let (err, src, cinfo) = unsafe {
        (Box::into_raw(Box::new(std::mem::zeroed())), Box::into_raw(Box::new(std::mem::zeroed())), std::mem::zeroed())
    };
    let mut dec = Decoder { cinfo: Box::new(cinfo), err, src };
    let cinfo = &mut *dec.cinfo;
    // SAFETY: `err` and `src` live until `dec` is dropped, after the last use
    // of `cinfo`; `bytes` outlives `dec` (dropped in this function) and is
    // only read; the callbacks match the managers' signatures.
    unsafe {
        ffi::jpeg_std_error(&mut *err);
        (*err).error_exit = Some(error_exit);
        (*err).emit_message = Some(emit_message);
        cinfo.common.err = err;
        ffi::jpeg_create_decompress(cinfo);
        *src = ffi::jpeg_source_mgr {
            next_input_byte: bytes.as_ptr(),
            bytes_in_buffer: bytes.len(),
            init_source: Some(no_op),
            fill_input_buffer: Some(suspend),
            skip_input_data: Some(skip),
            resync_to_restart: Some(ffi::jpeg_resync_to_restart),
            term_source: Some(no_op),
        };
        cinfo.src = src;
    }
    // SAFETY: the decoder is created and has its source.
    if unsafe { ffi::jpeg_read_header(cinfo, 1) } != 1 {
        return Err(TRUNCATED.into());
    }
    let (width, height) = (cinfo.image_width, cinfo.image_height);
    check(width, height)?;
    let components = cinfo.num_components as usize;
    cinfo.out_color_space = match components {
        1 => ffi::J_COLOR_SPACE::JCS_GRAYSCALE,
        3 => ffi::J_COLOR_SPACE::JCS_RGB,
        4 => ffi::J_COLOR_SPACE::JCS_CMYK,
        n => return Err(format!("cannot handle {n}-layer images")),
    };
    cinfo.dct_method = ffi::J_DCT_METHOD::JDCT_ISLOW;
    cinfo.do_fancy_upsampling = 1;
    // SAFETY: the header has been read and the output format set.
    if unsafe { ffi::jpeg_start_decompress(cinfo) } == 0 {
        return Err(TRUNCATED.into());
    }
    let (w, h) = (cinfo.output_width as usize, cinfo.output_height as usize);
    if cinfo.output_components as usize != components || (w, h) != (width as usize, height as usize) {
        return Err("not a valid JPEG: unexpected output format".into());
    }
    let row = w * components;
    let mut raw = vec![0u8; row * h];
    let mut rows: Vec<*mut u8> = raw.chunks_exact_mut(row).map(|r| r.as_mut_ptr()).collect();
    while (cinfo.output_scanline as usize) < h {
        let done = cinfo.output_scanline as usize;
        // SAFETY: `rows[done..]` are pointers to distinct rows of `raw`, each
        // `row` bytes long, the output width times the output components;
        // libjpeg writes at most `h - done` of them.
        if unsafe { ffi::jpeg_read_scanlines(cinfo, rows.as_mut_ptr().add(done), (h - done) as _) } == 0 {
            return Err(TRUNCATED.into());
        }
    }
    // Reads what follows the last scan, as Pillow does: errors count, running
    // out of data (suspending) does not.
    // SAFETY: every row has been read.
    unsafe { ffi::jpeg_finish_decompress(cinfo) };
    drop(dec);
    let data = match components {
        3 => raw,
        1 => raw.iter().flat_map(|&v| [v; 3]).collect(),
        _ => raw.chunks_exact(4).flat_map(cmyk_to_rgb).collect(),
    };
    Ok(RgbImage { width: w, height: h, data })
}

/// One pixel as libjpeg returns Adobe CMYK (inverted), to RGB by Pillow's
/// rules: `CMYK;I` unpacking inverts, then `cmyk2rgb` computes
/// `(255 - k) - c * (255 - k) / 255` with its rounded division by 255.
fn cmyk_to_rgb(p: &[u8]) -> [u8; 3] {
    let nk = p[3] as i32; // 255 - (255 - k)
    let channel = |v: u8| {
        let c = 255 - v as i32;
        let t = c * nk + 128;
        (nk - ((t + (t >> 8)) >> 8)).clamp(0, 255) as u8
    };
    [channel(p[0]), channel(p[1]), channel(p[2])]
}
