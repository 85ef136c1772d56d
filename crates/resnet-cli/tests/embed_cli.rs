//! `resnet embed` end to end: torchvision's pooled features on real JPEGs
//! (fixture from tools/make_fixtures.py), an image folder with labels and
//! paths, spatial layers as .npy, and bad input refused with nothing written.

mod common;

use std::path::{Path, PathBuf};

use common::*;

use resnet::backend::Cpu;
use resnet::model::{Network, ResNetSpec};

/// ResNet-18 with the fixtures' formula weights, as a weights file.
fn formula_resnet18(dir: &Path) -> PathBuf {
    let cpu = Cpu::new(None).unwrap();
    let mut net = Network::new(&ResNetSpec::named("resnet18").unwrap(), &cpu).unwrap();
    net.init_formula().unwrap();
    let path = dir.join("resnet18.safetensors");
    resnet::io::safetensors::write(&path, &resnet::io::state_dict(&mut net).unwrap(), None).unwrap();
    path
}

/// A safetensors file's f32 tensor (values and shape) and its metadata.
fn read(path: &Path, name: &str) -> (Vec<f32>, Vec<usize>, std::collections::HashMap<String, String>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let values = t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    (values, t.shape().to_vec(), header.metadata().clone().unwrap_or_default())
}

/// Pooled features of real JPEGs (baseline, progressive, gray, CMYK, YCCK)
/// equal torchvision's `create_feature_extractor(model, {"flatten": ...})`
/// through PIL decoding and the ImageNet transforms, within 1e-4, on two
/// decoding threads and in batches that split the list unevenly.
#[test]
fn embeddings_of_real_jpegs_match_torchvision() {
    let dir = tmp("jpeg");
    let weights = formula_resnet18(&dir);
    let fixture = fixtures().join("jpeg_logits.safetensors");
    let meta = resnet::io::safetensors::read_metadata(&fixture).unwrap();
    let names: Vec<String> = serde_json::from_str(&meta["images"]).unwrap();
    let (want, shape, _) = read(&fixture, "avgpool");
    assert_eq!(shape, [names.len(), 512]);
    let images: Vec<PathBuf> = names.iter().map(|n| fixtures().join("images").join(n)).collect();
    let out = dir.join("emb.safetensors");
    let mut args = vec!["embed", "--weights", s(&weights), "--out", s(&out), "--batch", "4", "--workers", "2"];
    args.extend(images.iter().map(|p| s(p)));
    let r = resnet(&args);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(text(&r.stderr).contains(&format!("embedded {} images with resnet18", names.len())), "{}", text(&r.stderr));
    let (got, shape, meta) = read(&out, "features");
    assert_eq!(shape, [names.len(), 512]);
    let paths: Vec<String> = serde_json::from_str(&meta["paths"]).unwrap();
    assert_eq!(paths, images.iter().map(|p| p.display().to_string()).collect::<Vec<_>>());
    assert_eq!(meta["layer"], "avgpool");
    for (i, name) in names.iter().enumerate() {
        let (g, w) = (&got[i * 512..(i + 1) * 512], &want[i * 512..(i + 1) * 512]);
        let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / scale;
        eprintln!("{name:24} max |difference| / max |feature| = {err:.2e}");
        assert!(err < 1e-4, "{name}: {err:.2e}");
    }
    // No labels for a plain list of images.
    let bytes = std::fs::read(&out).unwrap();
    assert!(safetensors::SafeTensors::deserialize(&bytes).unwrap().tensor("labels").is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An image folder with train/ and val/: every image, its label and path,
/// the class names; a spatial layer as .npy with a JSON sidecar; the same
/// features for an image however it is batched.
#[test]
fn a_labelled_folder_embeds_with_labels_and_paths() {
    let dir = tmp("folder");
    let weights = formula_resnet18(&dir);
    let data = dir.join("data");
    let photos = ["jpeg_420.jpg", "jpeg_gray.jpg", "jpeg_progressive.jpg", "jpeg_444.jpg", "rocket.jpg"];
    for (split, class, files) in
        [("train", "a", &photos[..2]), ("train", "b", &photos[2..3]), ("val", "b", &photos[3..])]
    {
        let d = data.join(split).join(class);
        std::fs::create_dir_all(&d).unwrap();
        for f in files {
            std::fs::copy(fixtures().join("images").join(f), d.join(f)).unwrap();
        }
    }
    let spec = format!("folder:{}", s(&data));
    let out = dir.join("folder.safetensors");
    let r = resnet(&["embed", "--data", &spec, "--weights", s(&weights), "--out", s(&out), "--batch", "2", "--quiet"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let (features, shape, meta) = read(&out, "features");
    assert_eq!(shape, [5, 512]);
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let labels: Vec<i64> = st
        .tensor("labels")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(labels, [0, 0, 1, 1, 1]);
    let paths: Vec<String> = serde_json::from_str(&meta["paths"]).unwrap();
    assert!(paths[0].ends_with("train/a/jpeg_420.jpg") && paths[4].ends_with("val/b/rocket.jpg"), "{paths:?}");
    assert_eq!(meta["classes"], r#"["a","b"]"#);

    // One image alone gives the features it had in a batch.
    let lone = dir.join("lone.safetensors");
    let r = resnet(&["embed", &paths[4], "--weights", s(&weights), "--out", s(&lone)]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let (alone, _, _) = read(&lone, "features");
    assert_eq!(alone, features[4 * 512..]);

    // layer3 (N x 256 x 14 x 14) as .npy, with the paths and labels beside it.
    let npy = dir.join("layer3.npy");
    let r = resnet(&["embed", "--data", &spec, "--weights", s(&weights), "--layer", "layer3", "--out", s(&npy)]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let bytes = std::fs::read(&npy).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'shape': (5, 256, 14, 14)"), "{header}");
    assert_eq!(bytes.len(), 10 + header_len + 5 * 256 * 14 * 14 * 4);
    let side: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("layer3.json")).unwrap()).unwrap();
    assert_eq!(side["labels"], serde_json::json!([0, 0, 1, 1, 1]));
    assert_eq!(side["paths"].as_array().unwrap().len(), 5);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Bad input: one line on stderr, a non-zero exit, no output file and no
/// temporary left behind.
#[test]
fn bad_input_writes_nothing() {
    let dir = tmp("bad");
    let weights = formula_resnet18(&dir);
    let out = dir.join("out.safetensors");
    let not_image = dir.join("notes.jpg");
    std::fs::write(&not_image, b"not a picture").unwrap();
    let good = fixtures().join("images/jpeg_420.jpg");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![s(&good), s(&not_image)], "notes.jpg: not an image"),
        (vec![s(&good), "--layer", "layer9"], "no layer `layer9`"),
        (vec![s(&good), "--data", "folder:/nowhere"], "images or --data, not both"),
        (vec![], "nothing to embed"),
        (vec![s(&good), "--workers", "0"], "--workers must be at least 1"),
    ];
    for (extra, want) in cases {
        let mut args = vec!["embed", "--weights", s(&weights), "--out", s(&out)];
        args.extend(extra);
        let r = resnet(&args);
        let err = text(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(want) && err.trim_end().lines().count() == 1,
            "{args:?}: {err}"
        );
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "{args:?} left {left:?}");
    }
    let r = resnet(&["embed", s(&good), "--weights", s(&weights), "--out", s(&dir.join("x.bin"))]);
    assert!(text(&r.stderr).contains("must end in .safetensors or .npy"));
    std::fs::remove_dir_all(&dir).unwrap();
}
