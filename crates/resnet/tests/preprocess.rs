//! Decoding and the resize/crop pipeline against torchvision's PIL path
//! (fixtures from tools/make_fixtures.py) on real photos (scikit-image's
//! chelsea.png, coffee.png, rocket.jpg), PNG variants (gray, gray+alpha,
//! RGBA, palette, 16-bit RGB, 16-bit gray) and JPEG variants cut from the
//! photos (baseline 4:4:4/4:2:2/4:2:0, progressive, gray, CMYK, YCCK, Adobe
//! RGB, restart markers with EXIF orientation, a 17x13 image): every decoded
//! pixel equals Pillow's, and ResNet-18's logits on JPEGs equal torchvision's.

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
    let (mut checked, mut jpegs) = (0, 0);
    for key in sd.keys() {
        let (file, what) = key.split_once(':').unwrap();
        let img = load_rgb(&fixtures().join("images").join(file)).unwrap();
        let (want, shape) = get(&sd, key);
        let got = if what == "decoded" {
            img.data.clone()
        } else {
            let (resize, crop) = presets[what];
            let out = center_crop(&resize_shorter(&img, resize), crop);
            assert_eq!([out.height, out.width, 3], shape[..], "{key}");
            out.data
        };
        let (worst, count) = diff(&got, &want);
        eprintln!("{key:32} max diff {worst}/255 ({count} values differ)");
        assert_eq!(worst, 0, "{key}: differs by {worst}/255 in {count} values");
        checked += 1;
        jpegs += file.ends_with(".jpg") as usize;
    }
    assert!(checked >= 43 && jpegs >= 26, "only {checked} cases, {jpegs} of them JPEG");
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
    // The network's own layout holds the same values, channels innermost.
    let hwc = t.apply_hwc(&img);
    let hw = 224 * 224;
    assert!((0..3 * hw).all(|i| hwc[i] == x[(i % 3) * hw + i / 3]));
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
    // JPEGs Pillow refuses: cut short (before the last row), nothing but
    // markers, not a JPEG after its start marker. (Damaged files Pillow
    // decodes are fixtures, checked pixel for pixel above.)
    let jpeg = std::fs::read(fixtures().join("images/jpeg_progressive.jpg")).unwrap();
    let baseline = std::fs::read(fixtures().join("images/jpeg_422.jpg")).unwrap();
    for (what, bytes, says) in [
        ("cut progressive", &jpeg[..jpeg.len() - 40], "truncated"),
        ("cut baseline", &baseline[..baseline.len() / 2], "truncated"),
        ("header only", &baseline[..300], "truncated"),
        ("markers only", &[0xFF, 0xD8, 0xFF, 0xD9][..], "not a valid JPEG"),
        ("garbage", &[0xFF, 0xD8, 0xFF, 0x17, 0x17, 0x17, 0x17, 0x17][..], "not a valid JPEG"),
    ] {
        let path = dir.join("case.jpg");
        std::fs::write(&path, bytes).unwrap();
        let e = load_rgb(&path).unwrap_err().to_string();
        eprintln!("{what}: {e}");
        assert!(e.contains(says), "{what}: {e}");
    }
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

/// ResNet-18 (formula weights) classifies real JPEGs with torchvision's
/// logits: PIL decoding, Resize(256), CenterCrop(224), ToTensor, Normalize
/// and the network in float64 on one side, `Classifier` on the other.
#[test]
fn classify_logits_on_jpegs_match_torchvision() {
    use resnet::backend::cpu::Cpu;
    use resnet::classify::Classifier;
    use resnet::model::{Network, ResNetSpec};
    let (sd, meta) = load("jpeg_logits.safetensors");
    let names: Vec<String> = serde_json::from_str(&meta["images"]).unwrap();
    let (want, shape) = get(&sd, "logits");
    assert_eq!(shape, [names.len(), 1000]);
    let cpu = Cpu::new(None).unwrap();
    let mut net = Network::new(&ResNetSpec::named("resnet18").unwrap(), &cpu).unwrap();
    net.init_formula().unwrap();
    let dir = temp_dir("jpeg-logits");
    let weights = dir.join("resnet18.safetensors");
    resnet::io::safetensors::write(&weights, &resnet::io::state_dict(&mut net).unwrap(), None).unwrap();
    let mut classifier = Classifier::load(&cpu, Some("resnet18"), &weights, None).unwrap();
    let images: Vec<_> = names.iter().map(|n| load_rgb(&fixtures().join("images").join(n)).unwrap()).collect();
    let got = classifier.logits(&images).unwrap();
    for (i, name) in names.iter().enumerate() {
        let want = &want[i * 1000..(i + 1) * 1000];
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = max_abs_diff(&got[i], want) / scale;
        eprintln!("{name:24} max |logit difference| / max |logit| = {err:.2e}");
        assert!(err < 1e-4, "{name}: relative difference {err:.2e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
