//! The lab's plumbing on a tiny budget: results files, plots, resumption.

use std::path::{Path, PathBuf};
use std::process::Command;

fn resnet(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_resnet")).args(args).output().expect("runs")
}

/// Runs an experiment on the tiny budget; it must succeed.
fn lab(args: &[&str]) -> std::process::Output {
    let args: Vec<&str> = args.iter().chain(&TINY).copied().collect();
    let r = resnet(&args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    r
}

/// The experiment's `results.json`.
fn results(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap()
}

fn demo_data() -> String {
    format!(
        "fashion-mnist:{}",
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/fashion-mnist-demo").display()
    )
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("resnet-lab-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn nonempty(p: &Path, min: u64) {
    let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    assert!(len >= min, "{} has {len} bytes", p.display());
}

const TINY: [&str; 10] =
    ["--train-per-class", "6", "--test-per-class", "3", "--batch", "20", "--epochs", "1", "--threads", "2"];

#[test]
fn degradation_writes_results_and_resumes() {
    let out = tmp("deg");
    let data = demo_data();
    let args = vec![
        "experiment",
        "degradation",
        "--data",
        &data,
        "--depths",
        "8,14",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    lab(&args);
    for f in ["report.md", "results.json"] {
        nonempty(&out.join(f), 200);
    }
    nonempty(&out.join("degradation.png"), 5000);
    nonempty(&out.join("degradation.svg"), 2000);
    let v = results(&out);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    let names: Vec<&str> = runs.iter().map(|r| r["variant"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["plain8", "plain14", "resnet8", "resnet14"]);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Findings") && report.contains("plain-14"), "{report}");
    // Resume: one run lost, the others are read back unchanged.
    std::fs::remove_dir_all(out.join("runs/resnet14")).unwrap();
    let r = lab(&args);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(stdout.contains("run 4/4: resnet14\n"), "{stdout}");
    let w = results(&out);
    for i in 0..4 {
        assert_eq!(v["runs"][i]["test_error"], w["runs"][i]["test_error"], "run {i} changed");
    }
    // Another configuration in the same folder is refused.
    let mut other: Vec<&str> = args.iter().chain(&TINY).copied().collect();
    let at = other.iter().position(|a| *a == "--epochs").unwrap() + 1;
    other[at] = "2";
    let r = resnet(&other);
    assert_eq!(r.status.code(), Some(1));
}

#[test]
fn gradients_and_variants_write_their_reports() {
    let data = demo_data();
    let out = tmp("grad");
    let args = vec![
        "experiment",
        "gradients",
        "--archs",
        "plain8,resnet8",
        "--steps",
        "3",
        "--data",
        &data,
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    lab(&args);
    nonempty(&out.join("gradients.png"), 5000);
    nonempty(&out.join("activations.png"), 5000);
    let v = results(&out);
    let p = &v["profiles"][0][0];
    assert_eq!(p["arch"], "plain8");
    assert_eq!(p["grad_norm"].as_array().unwrap().len(), 8, "7 convolutions and the classifier");
    assert!(p["orders_of_magnitude"].as_f64().unwrap().is_finite());
    assert!(std::fs::read_to_string(out.join("report.md")).unwrap().contains("orders of magnitude"));

    let out = tmp("sc");
    let args = vec![
        "experiment",
        "shortcuts",
        "--arch",
        "resnet8",
        "--data",
        &data,
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    lab(&args);
    nonempty(&out.join("curves.png"), 5000);
    let v = results(&out);
    let params: Vec<u64> = v["runs"].as_array().unwrap().iter().map(|r| r["params"].as_u64().unwrap()).collect();
    assert!(params[0] < params[1] && params[1] < params[2], "A < B < C in parameters: {params:?}");
}

/// `experiment gradients` takes its budget from `--steps` alone, as its help says.
#[test]
fn gradients_needs_only_steps() {
    let out = tmp("grad-steps");
    let data = demo_data();
    let r = resnet(&[
        "experiment",
        "gradients",
        "--archs",
        "plain8,resnet8",
        "--data",
        &data,
        "--steps",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--train-per-class",
        "4",
        "--test-per-class",
        "2",
        "--batch",
        "8",
        "--quiet",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

/// A run whose loss stops being finite is a finding, not a failure: the
/// experiment records it, reports it, goes on, and does not run it again.
#[test]
fn a_diverged_run_is_recorded_and_the_experiment_goes_on() {
    let out = tmp("diverged");
    let data = demo_data();
    let args = vec![
        "experiment",
        "degradation",
        "--data",
        &data,
        "--depths",
        "8",
        "--lr",
        "1e30",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    let r = lab(&args);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(stdout.contains("diverged"), "{stdout}");
    let v = results(&out);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r["diverged"].as_str().is_some_and(|w| w.contains("loss became"))), "{v}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("diverged** after"), "{report}");
    assert!(out.join("runs/plain8/diverged.txt").exists());
    // Again: the diverged runs are not trained again.
    let again = lab(&args);
    assert!(String::from_utf8_lossy(&again.stdout).contains("diverged"));
}
