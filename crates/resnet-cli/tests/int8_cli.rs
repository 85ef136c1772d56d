//! `resnet quantize` and `--precision int8`: a network trained briefly on the
//! Fashion-MNIST sample shipped in the repository, quantized with calibration
//! images from its training split, evaluated against its f32 self.

mod common;

use common::{fixtures, resnet, s, text, tmp};

/// The repository's Fashion-MNIST sample.
fn demo_data() -> String {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/fashion-mnist-demo");
    format!("fashion-mnist:{}", p.display())
}

fn ok(args: &[&str]) -> String {
    let out = resnet(args);
    assert!(out.status.success(), "resnet {args:?} failed: {}", text(&out.stderr));
    text(&out.stdout)
}

fn eval(weights: &str, precision: &str, dir: &std::path::Path) -> (f64, Vec<String>) {
    let preds = dir.join(format!("{precision}.txt"));
    let out = ok(&[
        "eval",
        "--weights",
        weights,
        "--data",
        &demo_data(),
        "--precision",
        precision,
        "--json",
        "--out",
        s(dir),
        "--predictions",
        s(&preds),
    ]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["precision"], precision);
    let p = std::fs::read_to_string(&preds).unwrap().lines().map(str::to_string).collect();
    (json["top1"].as_f64().unwrap(), p)
}

#[test]
fn a_quantized_network_agrees_with_its_f32_self() {
    let dir = tmp("int8");
    let run = dir.join("run");
    ok(&[
        "train",
        "--arch",
        "resnet20",
        "--data",
        &demo_data(),
        "--out",
        s(&run),
        "--iterations",
        "60",
        "--batch",
        "64",
        "--quiet",
    ]);
    let w = run.join("last.safetensors");
    let w8 = dir.join("w8.safetensors");
    let out =
        resnet(&["quantize", "--weights", s(&w), "--calibrate", &demo_data(), "--images", "128", "--out", s(&w8)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("128 calibration images"), "{}", text(&out.stderr));
    // int8 weights: about a quarter of the f32 file.
    let (f32_len, int8_len) = (std::fs::metadata(&w).unwrap().len(), std::fs::metadata(&w8).unwrap().len());
    assert!(int8_len * 3 < f32_len, "{int8_len} bytes of int8 against {f32_len} of f32");
    let card: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("w8.json")).unwrap()).unwrap();
    assert_eq!(card["quantization"]["method"], "percentile:99.99");
    assert_eq!(card["model"]["spec"]["name"], "resnet20");

    let (top1, f32_preds) = eval(s(&w), "f32", &dir);
    let (top1_8, int8_preds) = eval(s(&w8), "int8", &dir);
    let agree = f32_preds.iter().zip(&int8_preds).filter(|(a, b)| a == b).count() as f64 / f32_preds.len() as f64;
    assert!(top1 > 0.5, "the network learnt something: {top1}");
    assert!((top1 - top1_8).abs() <= 0.02, "f32 {top1} against int8 {top1_8}");
    assert!(agree >= 0.96, "int8 agrees with f32 on {agree} of the test images");

    // The other commands that infer take the int8 model too.
    let img = fixtures().join("images/chelsea.png");
    let out = ok(&["classify", "--weights", s(&w8), "--precision", "int8", "--topk", "3", s(&img)]);
    assert!(out.lines().filter(|l| !l.trim().is_empty()).count() >= 3, "{out}");
    let out =
        ok(&["bench", "--arch", "resnet20", "--weights", s(&w8), "--precision", "int8", "--iters", "2", "--json"]);
    assert!(out.contains("\"precision\": \"int8\"") || out.contains("\"precision\":\"int8\""), "{out}");

    // Mismatched weights and precision: one clear line each.
    for (weights, precision, want) in
        [(s(&w), "int8", "resnet quantize"), (s(&w8), "f32", "--precision int8"), (s(&w8), "bf16", "--precision int8")]
    {
        let out = resnet(&["eval", "--weights", weights, "--data", &demo_data(), "--precision", precision]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(want), "{precision}: {}", text(&out.stderr));
    }
    let out = resnet(&[
        "quantize",
        "--weights",
        s(&w8),
        "--calibrate",
        &demo_data(),
        "--out",
        s(&dir.join("again.safetensors")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("already quantized"), "{}", text(&out.stderr));
    let out = resnet(&[
        "quantize",
        "--weights",
        s(&w),
        "--calibrate",
        &demo_data(),
        "--method",
        "entropy",
        "--out",
        s(&dir.join("x.safetensors")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("minmax or percentile"), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}
