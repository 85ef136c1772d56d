//! Training end to end on tiny synthetic data: determinism for a seed,
//! bit-identical resumption (from an epoch boundary and from mid-epoch), the
//! data formats (IDX raw and gzipped, CIFAR-10/100 batches, image folders)
//! and their errors.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use resnet::backend::Backend;
use resnet::backend::testing::Scale;
use resnet::io::{read_state_dict, state_dict};
use resnet::model::ResNetSpec;
use resnet::rng::Rng;
use resnet_train::data::{DataKind, DataSpec, Dataset};
use resnet_train::optim::{LrPolicy, Schedule, SgdConfig};
use resnet_train::train::{Observer, StepReport, TrainConfig, Trainer, load_data};

/// A fresh, empty folder of this process's own (one per call: the backends' tests run side by side).
fn tmp(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = NEXT.fetch_add(1, Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("resnet-training-{}-{name}-{k}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A learnable toy set: a bright square whose position encodes the class.
fn toy_images(n: usize, classes: usize, side: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut r = Rng::new(seed);
    let mut px = Vec::with_capacity(n * side * side);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        labels.push(c as u8);
        let (cy, cx) = (2 + (c / 3) * 3, 2 + (c % 3) * 3);
        for y in 0..side {
            for x in 0..side {
                let on = y >= cy && y < cy + 3 && x >= cx && x < cx + 3;
                px.push(if on { 200 + r.below(50) as u8 } else { r.below(60) as u8 });
            }
        }
    }
    (px, labels)
}

fn write_idx_set(dir: &Path, gz: bool) {
    let (side, classes) = (12, 6);
    let ext = if gz { ".gz" } else { "" };
    for (prefix, n, seed) in [("train", 96, 1), ("t10k", 30, 2)] {
        let (px, labels) = toy_images(n, classes, side, seed);
        resnet_train::data::idx::write(
            &dir.join(format!("{prefix}-images-idx3-ubyte{ext}")),
            &[n, side, side],
            &px,
            gz,
        )
        .unwrap();
        resnet_train::data::idx::write(&dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), &[n], &labels, gz)
            .unwrap();
    }
}

fn config(data: &Path, epochs: usize) -> TrainConfig {
    let mut spec = ResNetSpec::named("resnet8").unwrap();
    spec.in_channels = 1;
    spec.num_classes = 10;
    TrainConfig {
        spec,
        data: DataSpec { kind: DataKind::Mnist, path: data.to_path_buf() },
        epochs,
        iterations: None,
        batch: 16,
        policy: LrPolicy {
            lr: 0.05,
            schedule: Schedule::Cosine { min_lr: 0.0 },
            total_iters: 0,
            warmup_iters: 3,
            warmup_start: 0.2,
            warmup_until_error: None,
        },
        sgd: SgdConfig { nesterov: true, weight_decay: 5e-4, ..SgdConfig::default() },
        label_smoothing: 0.1,
        seed: 7,
        threads: 2,
        // The square's position is the class: crops would blur it (augmentation
        // is exercised by the folder run below).
        augment: false,
        shuffle: true,
        pad_to: Some(14),
        image_size: 14,
        train_per_class: None,
        test_per_class: None,
        workers: 2,
        init: None,
        log_every: 2,
        zero_init_residual: false,
        on_nan: Default::default(),
        data_fingerprint: None,
        freeze: Default::default(),
        resize_per_224: 256,
    }
}

/// Sets the interrupt flag after a given iteration.
struct StopAt(u64, std::sync::Arc<std::sync::atomic::AtomicBool>);
impl Observer for StopAt {
    fn step(&mut self, r: &StepReport) {
        if r.iteration == self.0 {
            self.1.store(true, Ordering::SeqCst);
        }
    }
}

fn train<B: Backend>(b: &B, cfg: &TrainConfig, out: &Path, stop: Option<u64>) -> resnet::Result<Trainer<B>> {
    let data = load_data(&cfg.data, None, None)?;
    let mut t = Trainer::new(cfg.clone(), b, data, out)?;
    let mut obs = StopAt(stop.unwrap_or(u64::MAX), t.interrupt_flag());
    t.run(&mut obs)?;
    Ok(t)
}

fn resume<B: Backend>(b: &B, out: &Path) -> Trainer<B> {
    let mut t = Trainer::resume(out, b, None).unwrap();
    t.run(&mut resnet_train::train::Quiet).unwrap();
    t
}

fn runs_are_deterministic_and_resume_bit_identically<B: Backend>(be: &B, _: Scale) {
    let data = tmp("data");
    write_idx_set(&data, true);
    let cfg = config(&data, 3);
    let a = tmp("a");
    let mut ta = train(be, &cfg, &a, None).unwrap();
    let wa = state_dict(&mut ta.net).unwrap();
    assert_eq!(ta.state.iteration, 18);
    // Same seed, same threads: the same weights.
    let b = tmp("b");
    let mut tb = train(be, &cfg, &b, None).unwrap();
    assert_eq!(state_dict(&mut tb.net).unwrap(), wa, "two runs with one seed differ");
    // Interrupted mid-epoch (iteration 8 of 6 per epoch) and at an epoch boundary (12).
    for stop in [8, 12] {
        let c = tmp(&format!("c{stop}"));
        let e = train(be, &cfg, &c, Some(stop)).err().expect("interrupted");
        assert!(matches!(e, resnet::Error::Interrupted), "{e}");
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(c.join("last.json")).unwrap()).unwrap();
        assert_eq!(saved["state"]["iteration"], stop);
        let mut tc = resume(be, &c);
        assert_eq!(state_dict(&mut tc.net).unwrap(), wa, "resumed at {stop}: weights differ");
        assert_eq!(read_state_dict(&c.join("last.safetensors")).unwrap(), wa);
        let m = std::fs::read_to_string(c.join("metrics.csv")).unwrap();
        assert_eq!(m.lines().count(), 4, "one CSV row per epoch:\n{m}");
    }
    // The files a run leaves.
    for f in [
        "last.safetensors",
        "last.json",
        "last.optim.safetensors",
        "best.safetensors",
        "best.json",
        "metrics.jsonl",
        "metrics.csv",
        "curves.png",
        "curves.svg",
    ] {
        assert!(a.join(f).is_file(), "missing {f}");
    }
    let side: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("best.json")).unwrap()).unwrap();
    assert_eq!(side["model"]["spec"]["name"], "resnet8");
    assert_eq!(side["model"]["transform"]["pad_to"], 14);
    assert_eq!(side["model"]["labels"].as_array().unwrap().len(), 10);
    // It learned something: the toy task is easy.
    let acc = 1.0 - ta.state.last_test.clone().unwrap().error;
    assert!(acc > 0.5, "accuracy {acc}");
}

#[test]
fn data_formats_load_and_bad_files_are_errors() {
    // IDX, raw and gzipped, give the same data.
    let raw = tmp("idx-raw");
    let gz = tmp("idx-gz");
    write_idx_set(&raw, false);
    write_idx_set(&gz, true);
    let a = Dataset::load(&DataSpec { kind: DataKind::FashionMnist, path: raw.clone() }).unwrap();
    let b = Dataset::load(&DataSpec { kind: DataKind::FashionMnist, path: gz.clone() }).unwrap();
    assert_eq!((a.train.len(), a.test.len(), a.channels, a.classes.len()), (96, 30, 1, 10));
    assert_eq!(a.train.labels, b.train.labels);
    // Truncated images: the error names the file and says so.
    let p = raw.join("train-images-idx3-ubyte");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
    let e = Dataset::load(&DataSpec { kind: DataKind::Mnist, path: raw.clone() }).err().unwrap().to_string();
    assert!(e.contains("truncated") && e.contains("train-images"), "{e}");
    std::fs::write(&p, &bytes).unwrap();
    // A label out of range.
    let lp = raw.join("t10k-labels-idx1-ubyte");
    let mut labels = std::fs::read(&lp).unwrap();
    let last = labels.len() - 1;
    labels[last] = 12;
    std::fs::write(&lp, &labels).unwrap();
    let e = Dataset::load(&DataSpec { kind: DataKind::Mnist, path: raw.clone() }).err().unwrap().to_string();
    assert!(e.contains("label 12") && e.contains("out of range"), "{e}");
    // Missing files.
    let empty = tmp("empty");
    assert!(Dataset::load(&DataSpec { kind: DataKind::Mnist, path: empty.clone() }).is_err());
    assert!(Dataset::load(&DataSpec { kind: DataKind::Mnist, path: empty.join("nope") }).is_err());

    // CIFAR-10 and CIFAR-100 binary batches.
    let c10 = tmp("cifar10");
    let record =
        |label: &[u8], v: u8| -> Vec<u8> { label.iter().copied().chain(std::iter::repeat_n(v, 3072)).collect() };
    for i in 1..=5 {
        std::fs::write(c10.join(format!("data_batch_{i}.bin")), [record(&[i as u8], 10), record(&[9], 20)].concat())
            .unwrap();
    }
    std::fs::write(c10.join("test_batch.bin"), record(&[3], 30)).unwrap();
    let d = Dataset::load(&DataSpec { kind: DataKind::Cifar10, path: c10.clone() }).unwrap();
    assert_eq!((d.train.len(), d.test.len(), d.channels), (10, 1, 3));
    assert_eq!(d.train.labels[..2], [1, 9]);
    assert_eq!(d.classes[3], "cat");
    std::fs::write(c10.join("test_batch.bin"), &record(&[3], 30)[..3000]).unwrap();
    let e = Dataset::load(&DataSpec { kind: DataKind::Cifar10, path: c10.clone() }).err().unwrap().to_string();
    assert!(e.contains("test_batch.bin") && e.contains("truncated"), "{e}");
    let c100 = tmp("cifar100");
    std::fs::write(c100.join("train.bin"), [record(&[1, 55], 1), record(&[2, 99], 2)].concat()).unwrap();
    std::fs::write(c100.join("test.bin"), record(&[0, 7], 3)).unwrap();
    let d = Dataset::load(&DataSpec { kind: DataKind::Cifar100, path: c100.clone() }).unwrap();
    assert_eq!((d.classes.len(), d.train.labels.clone()), (100, vec![55, 99]));

    // An image folder.
    let f = tmp("folder");
    write_folder(&f);
    let d = Dataset::load(&DataSpec { kind: DataKind::Folder, path: f.clone() }).unwrap();
    assert_eq!((d.classes.clone(), d.train.len(), d.test.len()), (vec!["cat".to_string(), "dog".to_string()], 6, 2));
    // Errors: no class folders, an unknown class in val/, empty train/.
    std::fs::create_dir_all(f.join("val/bird")).unwrap();
    let e = Dataset::load(&DataSpec { kind: DataKind::Folder, path: f.clone() }).err().unwrap().to_string();
    assert!(e.contains("bird"), "{e}");
    let g = tmp("folder-empty");
    std::fs::create_dir_all(g.join("train/a")).unwrap();
    std::fs::create_dir_all(g.join("val/a")).unwrap();
    let e = Dataset::load(&DataSpec { kind: DataKind::Folder, path: g.clone() }).err().unwrap().to_string();
    assert!(e.contains("no JPEG or PNG"), "{e}");
    assert!(Dataset::load(&DataSpec { kind: DataKind::Folder, path: tmp("nothing") }).is_err());
}

/// Two classes of PNG images of two sizes in `train/` and `val/`.
fn write_folder(f: &Path) {
    for (split, n) in [("train", 3), ("val", 1)] {
        for class in ["cat", "dog"] {
            let dir = f.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                image::RgbImage::from_pixel(20 + i, 16, image::Rgb([i as u8 * 40, 100, 200]))
                    .save(dir.join(format!("{i}.png")))
                    .unwrap();
            }
        }
    }
}

/// A folder run trains (random resized crops to 16x16) and evaluates; a
/// corrupt image stops training with its name.
fn a_folder_run_trains_and_a_corrupt_image_stops_it<B: Backend>(be: &B, _: Scale) {
    let f = tmp("folder-train");
    write_folder(&f);
    let mut cfg = config(&f, 1);
    cfg.augment = true;
    cfg.data = DataSpec { kind: DataKind::Folder, path: f.clone() };
    cfg.spec.in_channels = 3;
    cfg.spec.num_classes = 2;
    cfg.image_size = 16;
    cfg.pad_to = None;
    cfg.batch = 4;
    train(be, &cfg, &tmp("folder-run"), None).unwrap();
    std::fs::write(f.join("train/dog/1.png"), b"not a png").unwrap();
    let e = train(be, &cfg, &tmp("folder-run2"), None).err().unwrap().to_string();
    assert!(e.contains("1.png"), "{e}");
}

resnet::for_each_backend!(
    runs_are_deterministic_and_resume_bit_identically,
    a_folder_run_trains_and_a_corrupt_image_stops_it
);
