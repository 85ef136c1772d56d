//! Training survives being killed at any moment: a small run is killed
//! (`SIGKILL`, and now and then `SIGTERM`, which saves and exits) at random
//! points, including during checkpoint writes, and resumed each time; at the
//! end its weights and momentum are bit-identical to an uninterrupted run's,
//! and no temporary file is left behind.
//!
//! `RESNET_KILLS` sets the number of kills (default 12; the reliability
//! figure in docs/RELIABILITY.md comes from `RESNET_KILLS=50`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use resnet::io::read_state_dict;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("resnet-kill-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small Fashion-MNIST-shaped IDX set: 48 training images, 3 steps of 16 an epoch.
fn toy_data(dir: &Path) {
    for (prefix, n) in [("train", 48), ("t10k", 20)] {
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let px: Vec<u8> = (0..n * 784)
            .map(|i| if (i % 784) / 56 == labels[i / 784] as usize { 255 } else { (i * 37 % 61) as u8 })
            .collect();
        resnet_train::data::idx::write(&dir.join(format!("{prefix}-images-idx3-ubyte")), &[n, 28, 28], &px, false)
            .unwrap();
        resnet_train::data::idx::write(&dir.join(format!("{prefix}-labels-idx1-ubyte")), &[n], &labels, false).unwrap();
    }
}

fn train(data: &Path, out: &Path, resume: bool, epochs: usize) -> Child {
    let epochs = epochs.to_string();
    let data = format!("fashion-mnist:{}", data.display());
    let mut args = vec!["train", "--threads", "1", "--quiet"];
    let out_s = out.to_str().unwrap();
    if resume {
        args.extend(["--resume", out_s]);
    } else {
        args.extend([
            "--arch", "resnet8", "--data", &data, "--epochs", &epochs, "--batch", "16", "--out", out_s, "--force",
        ]);
        args.extend(["--lr", "0.05", "--log-every", "2"]);
    }
    Command::new(env!("CARGO_BIN_EXE_resnet")).args(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

/// A tiny deterministic random stream (the kill points).
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn killed_and_resumed_training_ends_bit_identical() {
    let kills: usize = std::env::var("RESNET_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    let data = tmp("data");
    toy_data(&data);
    let reference = tmp("reference");
    let t = Instant::now();
    // Three epochs a kill: the run outlasts the kills however the machine is loaded.
    let epochs = 3 * kills.max(4);
    let out = train(&data, &reference, false, epochs).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let full_ms = t.elapsed().as_millis() as u64;

    let run = tmp("run");
    let mut rng = Lcg(kills as u64);
    let (mut done, mut killed, mut terms) = (false, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(600);
    while !done {
        assert!(Instant::now() < deadline, "no progress after {killed} kills");
        let mut child = train(&data, &run, run.join("last.json").exists(), epochs);
        if killed < kills {
            // Within about three epochs' time.
            std::thread::sleep(Duration::from_millis(rng.below(3 * full_ms / epochs as u64 + 1)));
            if rng.below(5) == 0 {
                // SIGTERM: the run saves a checkpoint mid-epoch and exits with 130.
                // SAFETY: signals our own child, which has not been reaped.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                terms += 1;
            } else {
                child.kill().unwrap();
            }
            killed += 1;
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked") && !err.contains("inconsistent"), "{err}");
        match out.status.code() {
            Some(0) => done = true,
            Some(130) | None => {}
            // Killed before the first checkpoint: it starts afresh next time.
            Some(1) if !run.join("last.json").exists() => {}
            other => panic!("status {other:?} after {killed} kills: {err}"),
        }
    }
    eprintln!("{killed} kills ({terms} SIGTERM) and resumes; an uninterrupted run takes {full_ms} ms");
    assert_eq!(killed, kills, "the run ended before every kill was made");
    for f in ["last.safetensors", "last.optim.safetensors"] {
        assert_eq!(read_state_dict(&reference.join(f)).unwrap(), read_state_dict(&run.join(f)).unwrap(), "{f}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.contains(".tmp") || n.ends_with(".commit"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
