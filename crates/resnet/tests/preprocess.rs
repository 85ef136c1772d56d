//! Decoding and the resize/crop pipeline against torchvision's PIL path
//! (fixture from tools/make_fixtures.py) on real photos (scikit-image's
//! chelsea.png, coffee.png, rocket.jpg) and synthetic PNG variants (gray,
//! gray+alpha, RGBA, palette, 16-bit RGB, 16-bit gray).

mod common;

use common::*;
use resnet::preprocess::{Transform, center_crop, load_rgb, resize_shorter, to_tensor};

/// Largest per-pixel difference in 8-bit units, and the count of differing values.
fn diff(a: &[u8], b: &[f32]) -> (u32, usize) {
    assert_eq!(a.len(), b.len());
    let mut worst = 0;
    let mut count = 0;
    for (&x, &y) in a.iter().zip(b) {
        let d = (x as f32 - y).abs() as u32;
        worst = worst.max(d);
        count += (d > 0) as usize;
    }
    (worst, count)
}

#[test]
fn resize_and_crop_match_torchvision_pil() {
    let (sd, meta) = load("preprocess.safetensors");
    let presets: std::collections::HashMap<String, (usize, usize)> = serde_json::from_str(&meta["presets"]).unwrap();
    let mut checked = 0;
    for key in sd.keys() {
        let (file, what) = key.split_once(':').unwrap();
        let img = load_rgb(&fixtures().join("images").join(file)).unwrap();
        let (want, shape) = get(&sd, key);
        let (got, tolerance) = if what == "decoded" {
            (img.data.clone(), 0)
        } else {
            let (resize, crop) = presets[what];
            let out = center_crop(&resize_shorter(&img, resize), crop);
            assert_eq!([out.height, out.width, 3], shape[..], "{key}");
            // PNG decoding is exact. JPEG: our decoder (zune-jpeg) and Pillow's
            // libjpeg-turbo round chroma upsampling differently: at most 2 levels,
            // in under 1% of the values.
            (out.data, if file.ends_with(".jpg") { 2 } else { 0 })
        };
        let (worst, count) = diff(&got, &want);
        eprintln!("{key:24} max diff {worst}/255 ({count} values differ)");
        assert!(worst <= tolerance, "{key}: differs by {worst}/255 in {count} values");
        assert!(count * 100 <= got.len(), "{key}: {count} of {} values differ", got.len());
        checked += 1;
    }
    assert!(checked >= 19, "only {checked} cases");
}

#[test]
fn presets_and_normalisation() {
    let t = Transform::preset("v1").unwrap();
    assert_eq!((t.resize, t.crop), (256, 224));
    assert_eq!(Transform::preset("v2").unwrap().resize, 232);
    assert!(Transform::preset("v3").is_err());
    let img = load_rgb(&fixtures().join("images/chelsea.png")).unwrap();
    let x = t.apply(&img);
    assert_eq!(x.len(), 3 * 224 * 224);
    // Channel 0, pixel 0 is (v / 255 - 0.485) / 0.229 in f32.
    let g = t.geometry(&img);
    assert_eq!(x[0], (g.data[0] as f32 / 255.0 - 0.485) / 0.229);
    assert_eq!(x[224 * 224], (g.data[1] as f32 / 255.0 - 0.456) / 0.224);
    let gray = to_tensor(&g, &[0.0], &[1.0], true);
    assert_eq!(gray.len(), 224 * 224);
}

#[test]
fn non_images_are_errors() {
    let dir = std::env::temp_dir().join(format!("resnet-img-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let txt = dir.join("notes.png");
    std::fs::write(&txt, b"hello, this is text").unwrap();
    assert!(load_rgb(&txt).unwrap_err().to_string().contains("not an image"));
    let png = std::fs::read(fixtures().join("images/gray.png")).unwrap();
    let cut = dir.join("cut.png");
    std::fs::write(&cut, &png[..png.len() / 2]).unwrap();
    assert!(load_rgb(&cut).is_err());
    assert!(load_rgb(&dir.join("missing.jpg")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Resizing only the crop's pixels gives exactly the crop of the full resize,
/// for every aspect ratio (down and up, padding included), and a 32768 x 1
/// strip is cropped without resizing it whole.
#[test]
fn fused_resize_and_crop_equal_the_two_steps() {
    use resnet::preprocess::{RgbImage, center_crop, resize_shorter, resize_shorter_center_crop};
    let image = |w: usize, h: usize| RgbImage {
        width: w,
        height: h,
        data: (0..w * h * 3).map(|i| (i * 7919 % 251) as u8).collect(),
    };
    for (w, h, resize, crop) in [
        (500, 375, 256, 224),
        (375, 500, 232, 224),
        (40, 30, 256, 224),
        (100, 3, 64, 56),
        (33, 97, 32, 36),
        (7, 7, 7, 7),
    ] {
        let img = image(w, h);
        let two_steps = center_crop(&resize_shorter(&img, resize), crop);
        assert_eq!(resize_shorter_center_crop(&img, resize, crop), two_steps, "{w}x{h} -> {resize}, {crop}");
    }
    let strip = resize_shorter_center_crop(&image(32768, 1), 256, 224);
    assert_eq!((strip.width, strip.height), (224, 224));
}
