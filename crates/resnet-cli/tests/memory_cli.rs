//! Training memory from the command line: the plan's estimate against the
//! backend's measured peak, `summary --train`, and `train` refusing up front.

mod common;

use common::{resnet, s, text, tmp};

fn json(args: &[&str]) -> serde_json::Value {
    let out = resnet(args);
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out.stdout)))
}

/// The plan is within 10% of what the backend holds at its peak (every
/// buffer, prepared filter and kernel scratch array), with and without
/// recomputation, for each kind of unit.
#[test]
fn the_plan_is_within_ten_percent_of_the_measured_peak() {
    let cases: &[&[&str]] = &[
        &["--arch", "resnet20", "--batch", "32"],
        &["--arch", "resnet20", "--batch", "32", "--checkpoint-segments", "3"],
        &["--arch", "preact_resnet20", "--batch", "16"],
        &["--arch", "resnet18", "--batch", "4", "--input", "64"],
        &["--arch", "resnet50", "--batch", "2", "--input", "64", "--checkpoint-segments", "4"],
    ];
    for case in cases {
        let mut args = vec!["bench", "--mode", "train", "--iters", "2", "--warmup", "1", "--threads", "2", "--json"];
        args.extend_from_slice(case);
        let v = json(&args);
        let planned = v["planned_peak_mb"].as_f64().unwrap();
        let measured = v["measured_peak_mb"].as_f64().unwrap();
        let ratio = planned / measured;
        eprintln!("{case:?}: planned {planned:.1} MB, measured {measured:.1} MB ({ratio:.3})");
        assert!((0.9..=1.1).contains(&ratio), "{case:?}: planned {planned:.1} MB, measured {measured:.1} MB");
        let segments = case.iter().position(|a| *a == "--checkpoint-segments").map(|i| case[i + 1]);
        assert_eq!(v["checkpoint_segments"].as_u64().unwrap().to_string(), segments.unwrap_or("0"));
    }
}

#[test]
fn summary_train_prints_the_plan_and_picks_segments_for_a_budget() {
    let full = json(&["summary", "resnet1202", "--train", "--batch", "128", "--json"]);
    let total = full["total_mb"].as_f64().unwrap();
    // 2 x 200 basic units per stage of 32x32x16, 16x16x32, 8x8x64 at batch 128: gigabytes.
    assert!(total > 4096.0, "{full}");
    let layers: f64 = ["layer1", "layer2", "layer3"].iter().map(|l| full["kept_mb"][l].as_f64().unwrap()).sum();
    assert!(layers > 0.8 * total, "{full}");
    let fit = json(&["summary", "resnet1202", "--train", "--batch", "128", "--memory-budget", "4G", "--json"]);
    assert!(fit["checkpoint_segments"].as_u64().unwrap() > 0, "{fit}");
    assert!(fit["total_mb"].as_f64().unwrap() <= 4096.0, "{fit}");
    let table = resnet(&["summary", "resnet110", "--train", "--batch", "64"]);
    let t = text(&table.stdout);
    assert!(
        table.status.success() && t.contains("layer3 activations kept") && t.contains("total (planned peak)"),
        "{t}"
    );
    // A budget nothing fits, and a size that is not one: one line each.
    let out = resnet(&["summary", "resnet1202", "--train", "--batch", "128", "--memory-budget", "10M"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot train in 10 MiB"), "{}", text(&out.stderr));
    let out = resnet(&["summary", "resnet20", "--train", "--memory-budget", "4Q"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown unit"), "{}", text(&out.stderr));
}

/// `train` refuses, before it touches the run's folder, a plan that cannot fit
/// the machine's memory or the budget, with the estimate.
#[test]
fn train_refuses_a_plan_that_cannot_fit_up_front() {
    let dir = tmp("memory-refuse");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (prefix, n) in [("train", 20), ("t10k", 10)] {
        let px: Vec<u8> = (0..n * 28 * 28).map(|i| (i * 7 % 251) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        resnet_train::data::idx::write(&data.join(format!("{prefix}-images-idx3-ubyte")), &[n, 28, 28], &px, false)
            .unwrap();
        resnet_train::data::idx::write(&data.join(format!("{prefix}-labels-idx1-ubyte")), &[n], &labels, false)
            .unwrap();
    }
    let spec = format!("fashion-mnist:{}", s(&data));
    let out_dir = dir.join("run");
    let base = ["train", "--data", &spec, "--epochs", "1", "--out", s(&out_dir), "--pad-to", "32"];
    // resnet1202 at batch 65536 needs terabytes.
    let mut args = base.to_vec();
    args.extend(["--arch", "resnet1202", "--batch", "65536"]);
    let out = resnet(&args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("is planned to need") && err.contains("available"), "{err}");
    assert!(!out_dir.exists(), "the refused run left {}", out_dir.display());
    let mut args = base.to_vec();
    args.extend(["--arch", "resnet20", "--batch", "8", "--memory-budget", "1M"]);
    let out = resnet(&args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot fit in 1 MiB") && err.contains("the least it needs is"), "{err}");
    assert!(!out_dir.exists());
    // A budget that fits trains, and says so.
    let mut args = base.to_vec();
    args.extend(["--arch", "resnet20", "--batch", "8", "--iterations", "2", "--memory-budget", "1G", "--quiet"]);
    args.retain(|a| *a != "--epochs" && *a != "1");
    let out = resnet(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("memory: planned peak"), "{}", text(&out.stdout));
}
