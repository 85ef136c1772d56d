//! `resnet train`, `eval`, `classify` on a trained checkpoint, Ctrl-C and
//! resume, and bad training input, end to end through the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn resnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnet")).args(args).output().expect("runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("resnet-train-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small Fashion-MNIST-shaped IDX set (random pixels with a class-coded stripe).
fn toy_data(dir: &Path, train: usize) {
    let mut state = 1u32;
    let mut rnd = || {
        state = state.wrapping_mul(1664525).wrapping_add(1013904223);
        (state >> 24) as u8
    };
    for (prefix, n) in [("train", train), ("t10k", 40)] {
        let mut px = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let c = i % 10;
            labels.push(c as u8);
            for y in 0..28 {
                for _ in 0..28 {
                    px.push(if y / 2 == c { 255 } else { rnd() / 4 });
                }
            }
        }
        resnet_train::data::idx::write(&dir.join(format!("{prefix}-images-idx3-ubyte.gz")), &[n, 28, 28], &px, true)
            .unwrap();
        resnet_train::data::idx::write(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz")), &[n], &labels, true)
            .unwrap();
    }
}

fn fails_with(args: &[&str], want: &str) {
    let out = resnet(args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: not one line:\n{err}");
    assert!(err.contains(want), "{args:?}: {err:?} lacks {want:?}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn train_then_eval_and_classify_from_the_checkpoint() {
    let data = tmp("data");
    toy_data(&data, 80);
    let spec = format!("fashion-mnist:{}", s(&data));
    let out = tmp("run");
    let r = resnet(&[
        "train",
        "--arch",
        "resnet8",
        "--data",
        &spec,
        "--epochs",
        "2",
        "--batch",
        "16",
        "--out",
        s(&out),
        "--threads",
        "2",
        "--seed",
        "3",
    ]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let stdout = text(&r.stdout);
    assert!(stdout.contains("epoch   2/2") && stdout.contains("test accuracy:"), "{stdout}");
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(std::fs::metadata(out.join("curves.png")).unwrap().len() > 5000);

    // eval: JSON with the contract's fields, and a heat map.
    let r = resnet(&["eval", "--weights", s(&out.join("best.safetensors")), "--data", &spec, "--json"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    for k in ["top1", "top5", "per_class", "confusion"] {
        assert!(v.get(k).is_some(), "eval JSON lacks {k}");
    }
    let top1 = v["top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1));
    let confusion: u64 = v["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()))
        .sum();
    assert_eq!(confusion, 40);
    assert!(out.join("confusion.png").is_file());
    // The same evaluation in bf16: within one image of f32 on these 40.
    let r = resnet(&[
        "eval",
        "--weights",
        s(&out.join("best.safetensors")),
        "--data",
        &spec,
        "--json",
        "--precision",
        "bf16",
    ]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert!(v["precision"] == "bf16" || !resnet::backend::Cpu::native_bf16(), "{}", v["precision"]);
    assert!((v["top1"].as_f64().unwrap() - top1).abs() <= 1.0 / 40.0 + 1e-9, "bf16 top-1 {} vs f32 {top1}", v["top1"]);

    // classify picks up arch, classes and preprocessing from the sidecar.
    let img = out.join("shirt.png");
    image::GrayImage::from_fn(28, 28, |_, y| image::Luma([if y / 2 == 6 { 255 } else { 10 }])).save(&img).unwrap();
    let r = resnet(&["classify", s(&img), "--weights", s(&out.join("best.safetensors")), "--json", "--topk", "2"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let label = v[0]["top"][0]["label"].as_str().unwrap().to_string();
    assert!(resnet::labels::FASHION_MNIST.contains(&label.as_str()), "{label}");

    // Starting over where a run is saved needs --force.
    fails_with(&["train", "--arch", "resnet8", "--data", &spec, "--epochs", "1", "--out", s(&out)], "--resume");
    // --init with weights of another architecture.
    let w8 = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/resnet8.pth");
    fails_with(
        &["train", "--arch", "resnet20", "--data", &spec, "--epochs", "1", "--out", s(&tmp("x")), "--init", s(&w8)],
        "--init",
    );
    // --init from our checkpoint works (fine-tuning).
    let r = resnet(&[
        "train",
        "--arch",
        "resnet8",
        "--data",
        &spec,
        "--epochs",
        "1",
        "--out",
        s(&tmp("ft")),
        "--init",
        s(&out.join("best.safetensors")),
    ]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    // --resume where the weights are another architecture's.
    let bad = tmp("bad-resume");
    for f in ["last.json", "last.optim.safetensors", "metrics.jsonl"] {
        std::fs::copy(out.join(f), bad.join(f)).unwrap();
    }
    std::fs::copy(&w8, bad.join("last.safetensors")).unwrap();
    fails_with(&["train", "--resume", s(&bad)], "last.safetensors");
    fails_with(&["train", "--resume", s(&tmp("empty"))], "last.json");
}

#[test]
fn bad_training_input_is_one_clear_line_and_loses_nothing() {
    let data = tmp("data2");
    toy_data(&data, 40);
    let spec = format!("fashion-mnist:{}", s(&data));
    // An output folder that cannot be created (its parent is a file).
    let file = tmp("f").join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    fails_with(
        &["train", "--arch", "resnet8", "--data", &spec, "--epochs", "1", "--out", s(&file.join("run"))],
        "output folder",
    );
    // Bad data specifications.
    fails_with(&["train", "--arch", "resnet8", "--data", "fashion-mnist", "--epochs", "1"], "KIND:PATH");
    fails_with(&["train", "--arch", "resnet8", "--data", "svhn:/tmp", "--epochs", "1"], "unknown data kind");
    fails_with(&["train", "--arch", "resnet8", "--data", "cifar10:/does/not/exist", "--epochs", "1"], "does not exist");
    fails_with(&["train", "--arch", "resnet8", "--data", &spec, "--epochs", "1", "--batch", "0"], "--batch");
    fails_with(&["train", "--arch", "resnet8", "--data", &spec, "--epochs", "1", "--threads", "0"], "--threads");
    fails_with(&["train", "--arch", "resnet8", "--data", &spec, "--epochs", "1", "--lr", "0"], "--lr");
    fails_with(&["train", "--arch", "resnet8", "--data", &spec], "--epochs");
    // A diverging run: the learning rate jumps 1e12-fold after epoch 1. It
    // stops with a clear message and epoch 1's checkpoint stays as it was.
    let out = tmp("nan");
    let args = [
        "train",
        "--arch",
        "resnet8",
        "--data",
        &spec,
        "--epochs",
        "3",
        "--batch",
        "8",
        "--out",
        s(&out),
        "--schedule",
        "step",
        "--milestones",
        "1",
        "--gamma",
        "1e12",
    ];
    let r = resnet(&args);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r.stdout));
    let err = text(&r.stderr);
    assert!(err.contains("became") && err.contains("intact"), "{err}");
    // "... (epoch E) ...": the checkpoint is that of the last good epoch, E - 1.
    let epoch: u64 =
        err.split("(epoch ").nth(1).and_then(|t| t.split(')').next()).and_then(|t| t.parse().ok()).unwrap();
    assert!(epoch >= 2, "{err}");
    let side: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("last.json")).unwrap()).unwrap();
    assert_eq!(side["state"]["epoch"].as_u64(), Some(epoch - 1), "the checkpoint is the last completed epoch's");
    assert_eq!(side["state"]["iteration"].as_u64(), Some(5 * (epoch - 1)));
    let sd = resnet::io::read_state_dict(&out.join("last.safetensors")).unwrap();
    let finite = sd.values().all(|t| match &t.data {
        resnet::io::TensorData::F32(v) => v.iter().all(|x| x.is_finite()),
        _ => true,
    });
    assert!(finite, "the saved weights are the good ones");
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_resume_finishes() {
    let data = tmp("data3");
    toy_data(&data, 400);
    let spec = format!("fashion-mnist:{}", s(&data));
    let out = tmp("sigint");
    let child = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args([
            "train",
            "--arch",
            "resnet8",
            "--data",
            &spec,
            "--epochs",
            "50",
            "--batch",
            "8",
            "--out",
            s(&out),
            "--log-every",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it is training, then interrupt it.
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(out.join("metrics.jsonl")).map(|s| s.lines().count()).unwrap_or(0) < 3 {
        assert!(t0.elapsed().as_secs() < 120, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let r = child.wait_with_output().unwrap();
    let err = text(&r.stderr);
    assert_eq!(r.status.code(), Some(130), "{err}");
    assert!(err.contains("checkpoint saved") && err.contains("--resume"), "{err}");
    let side: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("last.json")).unwrap()).unwrap();
    let it = side["state"]["iteration"].as_u64().unwrap();
    assert!(it >= 3, "saved at iteration {it}");
    // Resume, shortened to 2 epochs, runs to the end.
    let r = resnet(&["train", "--resume", s(&out), "--epochs", "2"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(text(&r.stdout).contains("test accuracy"));
}

/// Every flag value that cannot work is refused up front, naming the flag;
/// usage errors keep clap's useful parts on one line.
#[test]
fn flag_values_that_cannot_work_are_refused() {
    let data = tmp("data-flags");
    toy_data(&data, 20);
    let spec = format!("fashion-mnist:{}", s(&data));
    let out = tmp("flags");
    let base = ["train", "--arch", "resnet8", "--data", &spec, "--out", s(&out)];
    for (extra, want) in [
        (&["--epochs", "0"][..], "--epochs must be at least 1"),
        (&["--iterations", "0"], "--iterations must be at least 1"),
        (&["--epochs", "1", "--label-smoothing", "2"], "--label-smoothing"),
        (&["--epochs", "1", "--label-smoothing=-1"], "--label-smoothing"),
        (&["--epochs", "1", "--warmup-epochs=-1"], "--warmup-epochs"),
        (&["--epochs", "1", "--warmup-epochs", "NaN"], "--warmup-epochs"),
        (&["--epochs", "1", "--milestones=-2"], "--milestones"),
        (&["--epochs", "1", "--milestones", "NaN"], "--milestones"),
        (&["--epochs", "1", "--gamma=-5"], "--gamma"),
        (&["--epochs", "1", "--momentum", "2"], "--momentum"),
        (&["--epochs", "1", "--wd=-1"], "--wd"),
        (&["--epochs", "1", "--image-size", "0"], "--image-size"),
        (&["--epochs", "1", "--image-size", "1000000000"], "--image-size"),
        (&["--epochs", "1", "--pad-to", "1000000000"], "--pad-to"),
        (&["--epochs", "1", "--log-every", "0"], "--log-every"),
        (&["--epochs", "1", "--train-per-class", "0"], "--train-per-class"),
        (&["--epochs", "1", "--lr=-0.1"], "--lr"),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        fails_with(&args, want);
    }
    // clap's messages keep the missing argument and the "did you mean" hint.
    let r = resnet(&["train", "--data", &spec]);
    let err = text(&r.stderr);
    assert_eq!(r.status.code(), Some(2));
    assert!(err.contains("--arch") && err.trim_end().lines().count() == 1, "{err}");
    let r = resnet(&["train", "--arch", "resnet8", "--data", &spec, "--epoch", "1"]);
    let err = text(&r.stderr);
    assert!(err.contains("'--epochs'") && err.trim_end().lines().count() == 1, "{err}");
    // More threads than cores: a warning, and it still runs.
    let cores = std::thread::available_parallelism().unwrap().get();
    let many = (cores + 1).to_string();
    let r = resnet(&["summary", "resnet8"]);
    assert!(r.status.success());
    let w8 = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/resnet8.safetensors");
    let img = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/images/chelsea.png");
    let r = resnet(&["classify", s(&img), "--weights", s(&w8), "--threads", &many]);
    assert!(r.status.success() && text(&r.stderr).contains("warning: --threads"), "{}", text(&r.stderr));
}

/// `--resume` refuses settings that would change the run, and a data set
/// that is not the one the run started on; it resumes from another folder.
#[test]
fn resume_refuses_conflicting_settings_and_swapped_data() {
    let data = tmp("data-resume");
    toy_data(&data, 20);
    let spec = format!("fashion-mnist:{}", s(&data));
    let out = tmp("resume-conflicts");
    let r =
        resnet(&["train", "--arch", "resnet8", "--data", &spec, "--epochs", "1", "--batch", "10", "--out", s(&out)]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    for flag in [&["--lr", "0.5"][..], &["--arch", "resnet20"], &["--batch", "4"], &["--seed", "9"]] {
        let args: Vec<&str> = ["train", "--resume", s(&out), "--epochs", "2"].iter().chain(flag).copied().collect();
        fails_with(&args, flag[0]);
    }
    // The data set changes under the run: refused.
    toy_data(&data, 30);
    fails_with(&["train", "--resume", s(&out), "--epochs", "2"], "not the one the run started on");
    toy_data(&data, 20);
    // Resuming from another working folder: the data path was stored resolved.
    let r = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["train", "--resume", s(&out), "--epochs", "2", "--out", s(&out)])
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", text(&r.stderr));
}

/// `--on-nan skip` skips non-finite steps and stops after too many in a row;
/// the default stops at once. Either way the last checkpoint stays.
#[test]
fn non_finite_losses_stop_or_are_skipped() {
    let data = tmp("data-nan");
    toy_data(&data, 40);
    let spec = format!("fashion-mnist:{}", s(&data));
    for (mode, want) in [("stop", "the loss became"), ("skip", "steps in a row")] {
        let out = tmp(&format!("nan-{mode}"));
        let args = [
            "train",
            "--arch",
            "resnet8",
            "--data",
            &spec,
            "--epochs",
            "30",
            "--batch",
            "8",
            "--out",
            s(&out),
            "--lr",
            "1e10",
            "--on-nan",
            mode,
            "--log-every",
            "1",
        ];
        let r = resnet(&args);
        let err = text(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{mode}: {err}");
        assert!(err.contains(want) && err.contains("iteration"), "{mode}: {err}");
        if mode == "skip" {
            assert!(text(&r.stdout).contains("step skipped"), "{}", text(&r.stdout));
        }
    }
}

/// An image folder of two classes, `cat` and `dog`, with `n` 40x36 PNGs each in every split of `splits`.
fn image_folder(root: &Path, splits: &[&str], n: u8) {
    for split in splits {
        for (c, v) in [("cat", 40u8), ("dog", 200)] {
            let d = root.join(split).join(c);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(40, 36, |x, y| image::Rgb([v, (x * 5) as u8, (y * 7) as u8 ^ i]));
                img.save(d.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

/// `eval` on an image folder with only `val/`, and on a bare class-folder
/// tree; an empty class folder is an error; results print before files are written.
#[test]
fn eval_needs_only_an_evaluation_split() {
    let root = tmp("folder-eval");
    let val = root.join("val");
    image_folder(&root, &["val"], 3);
    let w = tmp("folder-eval-w").join("w.safetensors");
    let r = resnet(&["init", "--arch", "resnet18", "--num-classes", "2", "--out", s(&w)]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    for data in [format!("folder:{}", s(&root)), format!("folder:{}", s(&val))] {
        let r = resnet(&["eval", "--weights", s(&w), "--data", &data, "--json", "--batch", "6"]);
        assert!(r.status.success(), "{data}: {}", text(&r.stderr));
        let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        assert_eq!(v["n"], 6);
    }
    // An output folder that cannot be written: the results are printed all the same, then the error.
    let blocked = tmp("folder-eval-blocked").join("a-file");
    std::fs::write(&blocked, b"x").unwrap();
    let data = format!("folder:{}", s(&root));
    let r = resnet(&["eval", "--weights", s(&w), "--data", &data, "--out", s(&blocked.join("out"))]);
    assert_eq!(r.status.code(), Some(1));
    assert!(text(&r.stdout).contains("top-1 accuracy"), "{}", text(&r.stdout));
    std::fs::create_dir_all(val.join("emu")).unwrap();
    fails_with(&["eval", "--weights", s(&w), "--data", &format!("folder:{}", s(&root))], "emu");
}

/// Fine-tuning from weights with part of the network frozen: frozen
/// parameters and batch-norm statistics come out bit-identical, the rest
/// trains; the checkpoint records what was frozen.
#[test]
fn fine_tuning_keeps_frozen_parts_bit_identical() {
    let root = tmp("ft-folder");
    image_folder(&root, &["train", "val"], 6);
    let w = tmp("ft-init").join("init.safetensors");
    let r = resnet(&["init", "--arch", "resnet8", "--num-classes", "10", "--seed", "4", "--out", s(&w)]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let init = resnet::io::read_state_dict(&w).unwrap();
    let data = format!("folder:{}", s(&root));
    for (freeze, frozen) in [("layer2", &["conv1.", "bn1.", "layer1.", "layer2."][..]), ("backbone", &[""][..])] {
        let out = tmp(&format!("ft-{freeze}"));
        let r = resnet(&[
            "train",
            "--arch",
            "resnet8",
            "--data",
            &data,
            "--init",
            s(&w),
            "--freeze",
            freeze,
            "--lr-backbone",
            "0.5",
            "--epochs",
            "2",
            "--batch",
            "4",
            "--image-size",
            "32",
            "--out",
            s(&out),
            "--threads",
            "1",
        ]);
        assert!(r.status.success(), "{freeze}: {}", text(&r.stderr));
        let after = resnet::io::read_state_dict(&out.join("last.safetensors")).unwrap();
        let is_frozen = |k: &str| !k.starts_with("fc.") && frozen.iter().any(|p| k.starts_with(p));
        for (k, t) in &after {
            if is_frozen(k) {
                assert_eq!(Some(t), init.get(k), "{freeze}: frozen `{k}` changed");
            } else if k.ends_with("weight") {
                assert_ne!(init.get(k).map(|i| &i.data), Some(&t.data), "{freeze}: `{k}` did not train");
            }
        }
        let side: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("last.json")).unwrap()).unwrap();
        assert_eq!(side["config"]["freeze"], freeze);
    }
}
