//! The `resnet` binary end to end: normal output, and bad input giving one
//! clear line on stderr and a non-zero exit, never a panic.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn resnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnet")).args(args).output().expect("runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Fails with status `code` and exactly one line on stderr containing `want`.
fn fails_with(args: &[&str], code: i32, want: &str) {
    let out = resnet(args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: status {:?}, stderr {err}", out.status);
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: stderr is not one line:\n{err}");
    assert!(err.starts_with("error: ") && err.contains(want), "{args:?}: stderr {err:?} lacks {want:?}");
    assert!(!err.contains("panicked") && !err.contains("internal error"), "{args:?}: {err}");
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("resnet-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// `inspect` recognises bare weights from their keys and shapes, in both formats.
#[test]
fn inspect_recognises_bare_weights() {
    for file in ["resnet8.safetensors", "resnet8.pth", "resnet8_checkpoint_f16.pth"] {
        let path = fixtures().join(file);
        let out = resnet(&["inspect", path.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{file}: {}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!((v["arch"].as_str(), v["source"].as_str()), (Some("resnet8"), Some("recognised")), "{file}");
        assert_eq!(v["params"], 75_290, "{file}");
    }
    let legacy = fixtures().join("legacy.pth");
    fails_with(&["inspect", legacy.to_str().unwrap()], 1, "legacy");
}

#[test]
fn summary_totals_equal_torchvision() {
    for (arch, params, macs) in [
        ("resnet18", 11_689_512u64, 1_814_073_344u64),
        ("resnet50", 25_557_032, 4_089_184_256),
        ("resnext50_32x4d", 25_028_904, 4_230_000_000),
        ("wide_resnet101_2", 126_886_696, 22_753_000_000),
    ] {
        let out = resnet(&["summary", arch, "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["arch"], arch);
        assert_eq!(v["params"].as_u64(), Some(params), "{arch}");
        // torchvision publishes GFLOPS (= GMACs) to three decimals.
        let m = v["macs"].as_u64().unwrap();
        assert_eq!((m as f64 / 1e6).round() / 1e3, (macs as f64 / 1e6).round() / 1e3, "{arch}: {m}");
        assert!(v["layers"].as_array().unwrap().len() > 20);
    }
    // The CIFAR nets (He 2015, Table 6): 0.27 M and 1.7 M parameters.
    let v: serde_json::Value = serde_json::from_slice(&resnet(&["summary", "resnet20", "--json"]).stdout).unwrap();
    assert_eq!(v["params"], 269_722);
    let v: serde_json::Value = serde_json::from_slice(&resnet(&["summary", "resnet110", "--json"]).stdout).unwrap();
    assert_eq!(v["params"], 1_727_962);
    let out = resnet(&["summary", "resnet50"]);
    assert!(text(&out.stdout).contains("25,557,032"));
}

#[test]
fn archs_lists_the_whole_family() {
    let out = resnet(&["archs", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v.as_array().unwrap().iter().map(|a| a["arch"].as_str().unwrap()).collect();
    for want in ["resnet18", "resnext101_64x4d", "resnet1202", "plain34", "preact_resnet1001"] {
        assert!(names.contains(&want), "{want} missing");
    }
}

#[test]
fn classify_prints_top_k_in_json_and_text() {
    let img = fixtures().join("images/chelsea.png");
    let w = fixtures().join("resnet8.pth");
    let out = resnet(&[
        "classify",
        img.to_str().unwrap(),
        img.to_str().unwrap(),
        "--weights",
        w.to_str().unwrap(),
        "--topk",
        "3",
        "--json",
        "--batch",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let top = list[0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    let p: Vec<f64> = top.iter().map(|t| t["probability"].as_f64().unwrap()).collect();
    assert!(p[0] >= p[1] && p[1] >= p[2] && p[0] <= 1.0);
    for key in ["index", "label", "probability", "logit"] {
        assert!(top[0].get(key).is_some(), "missing {key}");
    }
    assert_eq!(list[0]["top"], list[1]["top"], "same image, same answer, whatever the batch");
    let labels = tmp("labels.txt");
    std::fs::write(&labels, (0..10).map(|i| format!("thing {i}\n")).collect::<String>()).unwrap();
    let out = resnet(&[
        "classify",
        img.to_str().unwrap(),
        "--arch",
        "resnet8",
        "--weights",
        w.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("thing "), "{}", text(&out.stdout));
}

#[test]
fn bad_input_is_one_clear_line() {
    let img = fixtures().join("images/chelsea.png");
    let img = img.to_str().unwrap();
    let w = fixtures().join("resnet8.pth");
    let w = w.to_str().unwrap();
    // Missing image, and a file that is not an image.
    fails_with(&["classify", "no-such.jpg", "--weights", w], 1, "no-such.jpg");
    let notimg = tmp("notes.jpg");
    std::fs::write(&notimg, "not an image").unwrap();
    fails_with(&["classify", notimg.to_str().unwrap(), "--weights", w], 1, "not an image");
    // Truncated, corrupt and missing weights.
    let bytes = std::fs::read(fixtures().join("resnet8.pth")).unwrap();
    let cut = tmp("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(&["classify", img, "--arch", "resnet8", "--weights", cut.to_str().unwrap()], 1, "cut.pth");
    let st = std::fs::read(fixtures().join("resnet8.safetensors")).unwrap();
    let cut = tmp("cut.safetensors");
    std::fs::write(&cut, &st[..st.len() - 100]).unwrap();
    fails_with(&["classify", img, "--arch", "resnet8", "--weights", cut.to_str().unwrap()], 1, "safetensors");
    let junk = tmp("junk.safetensors");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    fails_with(&["classify", img, "--arch", "resnet8", "--weights", junk.to_str().unwrap()], 1, "junk.safetensors");
    fails_with(&["classify", img, "--arch", "resnet8", "--weights", "missing.pth"], 1, "missing.pth");
    let legacy = fixtures().join("legacy.pth");
    fails_with(&["classify", img, "--arch", "resnet8", "--weights", legacy.to_str().unwrap()], 1, "re-save");
    // Weights for another architecture.
    fails_with(&["classify", img, "--arch", "resnet18", "--weights", w], 1, "conv1.weight");
    fails_with(&["classify", img, "--arch", "resnet20", "--weights", w], 1, "missing key");
    // Unknown architecture.
    fails_with(&["classify", img, "--arch", "resnet9", "--weights", w], 1, "unknown architecture");
    fails_with(&["summary", "resnet9"], 1, "unknown architecture");
    // Zero or absurd threads and batch; bad numbers.
    fails_with(&["classify", img, "--weights", w, "--threads", "0"], 1, "--threads");
    fails_with(&["classify", img, "--weights", w, "--threads", "100000"], 1, "--threads");
    fails_with(&["classify", img, "--weights", w, "--batch", "0"], 1, "--batch");
    fails_with(&["classify", img, "--weights", w, "--batch", "99999999"], 1, "--batch");
    fails_with(&["classify", img, "--weights", w, "--batch", "-3"], 2, "-3");
    fails_with(&["classify", img, "--weights", w, "--batch", "many"], 2, "--batch");
    fails_with(&["classify", img, "--weights", w, "--topk", "0"], 1, "--topk");
    fails_with(&["classify", img, "--weights", w, "--labels", "imagenet"], 1, "1000 labels");
    fails_with(&["summary", "resnet18", "--input", "0"], 1, "--input");
    fails_with(&["summary", "resnet18", "--num-classes", "0"], 1, "num_classes");
    fails_with(&["frobnicate"], 2, "frobnicate");
}

/// `--precision bf16` for classify and bench: same answers as f32 within
/// bf16's rounding, the precision that ran reported, bad values refused.
#[test]
fn bf16_precision_classifies_and_benches() {
    let img = fixtures().join("images/chelsea.png");
    let w = fixtures().join("resnet8.pth");
    let logits = |precision: &str| -> (u64, Vec<f64>) {
        let args = ["classify", img.to_str().unwrap(), "--weights", w.to_str().unwrap(), "--json", "--topk", "10"];
        let out = resnet(&[&args[..], &["--precision", precision]].concat());
        assert!(out.status.success(), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let top = v[0]["top"].as_array().unwrap();
        let mut by_index: Vec<(u64, f64)> =
            top.iter().map(|t| (t["index"].as_u64().unwrap(), t["logit"].as_f64().unwrap())).collect();
        let best = by_index[0].0;
        by_index.sort_by_key(|t| t.0);
        (best, by_index.into_iter().map(|t| t.1).collect())
    };
    let (best32, z32) = logits("f32");
    let (best16, z16) = logits("bf16");
    assert_eq!(best32, best16);
    let diff: f64 = z32.iter().zip(&z16).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = z32.iter().map(|a| a * a).sum::<f64>().sqrt();
    assert!(diff <= 1e-2 * norm, "bf16 logits differ by {diff} (norm {norm})");

    let out = resnet(&[
        "bench",
        "--arch",
        "resnet20",
        "--batch",
        "2",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--precision",
        "bf16",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ran = if resnet::backend::Cpu::native_bf16() { "bf16" } else { "f32" };
    assert_eq!(v["precision"], ran);
    assert!(v["images_per_second"].as_f64().unwrap() > 0.0);

    fails_with(&["bench", "--arch", "resnet20", "--precision", "fp8"], 2, "[possible values: f32, bf16, int8]");
    fails_with(&["bench", "--arch", "resnet20", "--mode", "train", "--precision", "bf16"], 1, "training runs in f32");
    let w = w.to_str().unwrap();
    fails_with(&["classify", img.to_str().unwrap(), "--weights", w, "--precision", "half"], 2, "possible values");
}

/// `--device` exists on the commands that compute; `cpu` is this build's only
/// device, `cuda` a clear error, anything else a usage error.
#[test]
fn devices_are_cpu_or_a_clear_error() {
    let w = fixtures().join("resnet8.safetensors");
    let (w, img) = (w.to_str().unwrap(), fixtures().join("images/chelsea.png"));
    let img = img.to_str().unwrap();
    let out = resnet(&["classify", img, "--weights", w, "--device", "cpu", "--topk", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for args in [
        vec!["classify", img, "--weights", w],
        vec!["eval", "--weights", w, "--data", "cifar10:/nowhere"],
        vec!["bench", "--arch", "resnet20"],
        vec!["train", "--arch", "resnet20", "--data", "cifar10:/nowhere", "--epochs", "1"],
    ] {
        fails_with(&[&args[..], &["--device", "cuda:1"]].concat(), 1, "no CUDA backend");
        fails_with(&[&args[..], &["--device", "tpu"]].concat(), 2, "not a device");
    }
}
