//! Hostile and malformed files, each a reproduction of a way an input could
//! crash the program, hang it or make it allocate without bound: every one
//! must end in one clear error line and a non-zero exit, without a panic,
//! within seconds and under 100 MB of peak memory (measured with `wait4`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PEAK_LIMIT_KB: i64 = 100 * 1024;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("resnet-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the binary; returns the exit code, stderr and the peak resident memory in KB.
#[allow(clippy::zombie_processes)] // reaped by wait4, which std does not know of
fn run_measured(args: &[&str]) -> (Option<i32>, String, i64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    // SAFETY: `rusage` is plain integers and timevals, for which all zero bytes are a valid value.
    let (mut status, mut usage) = (0i32, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: waits for our own child, whose pid we hold and which std has not reaped.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (code, err, usage.ru_maxrss)
}

/// The run fails cleanly, naming `want`, in bounded memory.
fn refused(args: &[&str], want: &str) {
    let t = Instant::now();
    let (code, err, peak_kb) = run_measured(args);
    assert_eq!(code, Some(1), "{args:?}: exit {code:?}, stderr {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: stderr is not one line:\n{err}");
    assert!(err.starts_with("error: ") && err.contains(want), "{args:?}: {err:?} lacks {want:?}");
    assert!(peak_kb < PEAK_LIMIT_KB, "{args:?}: peak {peak_kb} KB");
    assert!(t.elapsed() < Duration::from_secs(20), "{args:?}: took {:?}", t.elapsed());
    let file = args.iter().find(|a| a.contains('/')).map_or("", |p| p.rsplit('/').next().unwrap_or(p));
    eprintln!(
        "refused {file}: {:.1} MB peak, {:.2} s: {}",
        peak_kb as f64 / 1024.0,
        t.elapsed().as_secs_f64(),
        err.trim_end()
    );
}

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn inspect_refuses(name: &str, bytes: &[u8], want: &str) {
    let p = write(name, bytes);
    refused(&["inspect", p.to_str().unwrap()], want);
}

// ---- pickles and .pth archives ------------------------------------------------

/// A zip as torch.save writes it: `archive/data.pkl` and the storages, stored.
fn pth(pickle: &[u8], records: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(pickle).unwrap();
    for (key, bytes) in records {
        z.start_file(format!("archive/data/{key}"), opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap().into_inner()
}

fn short_str(s: &str) -> Vec<u8> {
    let mut v = vec![0x8c, s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

fn global(module: &str, name: &str) -> Vec<u8> {
    format!("c{module}\n{name}\n").into_bytes()
}

/// An 8-byte LONG1 integer.
fn long(v: u64) -> Vec<u8> {
    let mut out = vec![0x8a, 8];
    out.extend_from_slice(&v.to_le_bytes());
    out
}

/// `_rebuild_tensor_v2(storage('0', FloatStorage, numel), offset, size, stride)`.
fn tensor(storage_class: &str, numel: u64, size: &[u64], stride: &[u64]) -> Vec<u8> {
    let mut p = global("torch._utils", "_rebuild_tensor_v2");
    p.push(b'(');
    p.push(b'(');
    p.extend(short_str("storage"));
    p.extend(global("torch", storage_class));
    p.extend(short_str("0"));
    p.extend(short_str("cpu"));
    p.extend(long(numel));
    p.extend(b"tQ");
    p.extend(b"K\x00(");
    size.iter().for_each(|&s| p.extend(long(s)));
    p.extend(b"t(");
    stride.iter().for_each(|&s| p.extend(long(s)));
    p.extend(b"t\x89");
    p.extend(global("collections", "OrderedDict"));
    p.extend(b")RtR");
    p
}

/// `{key: value, ...}` as a pickle fragment.
fn dict_fragment(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut p = b"}(".to_vec();
    for (k, v) in entries {
        p.extend(short_str(k));
        p.extend(v);
    }
    p.push(b'u');
    p
}

/// A protocol-2 pickle of `{key: value, ...}`.
fn dict(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut p = b"\x80\x02".to_vec();
    p.extend(dict_fragment(entries));
    p.push(b'.');
    p
}

fn floats(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

#[test]
fn hostile_pickles_are_refused_in_bounded_memory() {
    // Nested 200,000 deep (lists appended into lists), and 30,000 deep inside a state dict.
    let mut deep = b"\x80\x02".to_vec();
    deep.extend(std::iter::repeat_n(b']', 200_000));
    deep.extend(std::iter::repeat_n(b'a', 199_999));
    deep.push(b'.');
    inspect_refuses("deep.pth", &pth(&deep, &[]), "nested deeper");
    let mut inner = b"(".repeat(30_000);
    inner.push(b')');
    inner.extend(b"t".repeat(30_000));
    inspect_refuses("deep_sd.pth", &pth(&dict(&[("state_dict", inner)]), &[]), "nested deeper");

    // "Billion laughs": DUP + TUPLE2 forty times (84 bytes).
    let mut laughs = b"\x80\x02N".to_vec();
    laughs.extend(b"2\x86".repeat(40));
    laughs.push(b'.');
    assert!(laughs.len() <= 84);
    inspect_refuses("laughs.pth", &pth(&laughs, &[]), "shared references");

    // 2^24 MEMOIZEs in a 16 MB file.
    let mut memo = b"\x80\x04N".to_vec();
    memo.extend(std::iter::repeat_n(0x94u8, 1 << 24));
    memo.push(b'.');
    inspect_refuses("memo.pth", &pth(&memo, &[]), "memo entries");

    // A stride whose 9 * stride wraps past 2^64, and stride-0 views of a 1-float storage.
    let wrap = dict(&[("w", tensor("FloatStorage", 10, &[10], &[1 << 61]))]);
    inspect_refuses("stride.pth", &pth(&wrap, &[("0", floats(10))]), "reaches past");
    for side in [1u64 << 15, 1 << 21] {
        let zero = dict(&[("w", tensor("FloatStorage", 1, &[side, side], &[0, 0]))]);
        inspect_refuses("stride0.pth", &pth(&zero, &[("0", floats(1))]), "does not fit its storage");
    }

    // The zip directory claims a huge uncompressed size for the pickle.
    let good = dict(&[("w", tensor("FloatStorage", 4, &[4], &[1]))]);
    let mut lying = pth(&good, &[("0", floats(4))]);
    let cd = lying.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    lying[cd + 24..cd + 28].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let (code, err, peak) = {
        let p = write("lying.pth", &lying);
        run_measured(&["inspect", p.to_str().unwrap()])
    };
    assert_eq!(code, Some(1), "{err}");
    assert!(peak < PEAK_LIMIT_KB && !err.contains("panicked"), "{err} {peak}");
}

#[test]
fn the_unpickler_refuses_every_global_a_state_dict_does_not_need() {
    let call = |module: &str, name: &str| {
        let mut p = global(module, name);
        p.extend(short_str("echo hacked"));
        p.extend(b"\x85R");
        p
    };
    let tensor_w = tensor("FloatStorage", 4, &[4], &[1]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("os_system", dict(&[("x", call("os", "system"))]), "`os.system`"),
        ("posix_system", dict(&[("x", call("posix", "system"))]), "`posix.system`"),
        ("subprocess", dict(&[("x", call("subprocess", "Popen"))]), "`subprocess.Popen`"),
        ("eval", dict(&[("x", call("builtins", "eval"))]), "`builtins.eval`"),
        ("reduce_class", dict(&[("x", call("__main__", "Evil"))]), "`__main__.Evil`"),
        // STACK_GLOBAL spelling of builtins.exec.
        (
            "stack_global",
            {
                let mut p = b"\x80\x04".to_vec();
                p.extend(short_str("builtins"));
                p.extend(short_str("exec"));
                p.push(0x93);
                p.extend(short_str("print(1)"));
                p.extend(b"\x85R.");
                p
            },
            "`builtins.exec`",
        ),
        // Inert beside a valid state dict: still refused.
        (
            "inert",
            dict(&[("state_dict", dict_fragment(&[("w", tensor_w.clone())])), ("x", global("os", "system"))]),
            "`os.system`",
        ),
        ("unknown_storage", dict(&[("w", tensor("EvilStorage", 4, &[4], &[1]))]), "`torch.EvilStorage`"),
        ("not_a_storage", dict(&[("w", tensor("float32", 4, &[4], &[1]))]), "not a tensor storage"),
        (
            "rebuild_of_a_call",
            {
                // A tensor rebuilt from something that is not a storage.
                let mut p = global("torch._utils", "_rebuild_tensor_v2");
                p.extend(b"(");
                p.extend(global("collections", "OrderedDict"));
                p.extend(b")RK\x00)\x29\x89NtR");
                dict(&[("w", p)])
            },
            "malformed tensor",
        ),
    ];
    for (name, pickle, want) in cases {
        inspect_refuses(&format!("{name}.pth"), &pth(&pickle, &[("0", floats(4))]), want);
    }
}

// ---- safetensors ------------------------------------------------------------

fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend(header.as_bytes());
    v.extend(data);
    v
}

#[test]
fn malformed_safetensors_are_refused() {
    let cases = [
        (r#"{"w":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,16]}}"#, 16, "safetensors"),
        (r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,1600000000]}}"#, 16, "safetensors"),
        (r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}}"#, 16, "safetensors"),
    ];
    for (i, (header, n, want)) in cases.into_iter().enumerate() {
        inspect_refuses(&format!("bad{i}.safetensors"), &safetensors(header, &vec![0u8; n]), want);
    }
    // A header length far beyond the file.
    let mut huge = (u64::MAX - 7).to_le_bytes().to_vec();
    huge.extend(b"{}");
    inspect_refuses("huge_header.safetensors", &huge, "");
}

#[test]
fn non_finite_weights_are_refused() {
    let st = std::fs::read(fixtures().join("resnet8.safetensors")).unwrap();
    let sd = resnet::io::safetensors::read(Path::new("x"), &st).unwrap();
    for (key, value) in [("conv1.weight", f32::NAN), ("bn1.running_var", -1.0), ("fc.bias", f32::INFINITY)] {
        let mut bad = sd.clone();
        if let resnet::io::TensorData::F32(v) = &mut bad.get_mut(key).unwrap().data {
            v[0] = value;
        }
        let p = dir().join(format!("bad_{key}.safetensors"));
        resnet::io::safetensors::write(&p, &bad, None).unwrap();
        let img = fixtures().join("images/chelsea.png");
        refused(&["classify", img.to_str().unwrap(), "--weights", p.to_str().unwrap()], key);
    }
}

// ---- images -------------------------------------------------------------------

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// A PNG of `w` x `h` pixels of `depth` bits and colour type `colour` with the given zlib stream.
fn png(w: u32, h: u32, depth: u8, colour: u8, idat: &[u8]) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        let mut body = kind.to_vec();
        body.extend(data);
        c.extend(&body);
        c.extend(crc32(&body).to_be_bytes());
        c
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([depth, colour, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", idat));
    png.extend(chunk(b"IEND", &[]));
    png
}

/// A PNG whose header claims `w` x `h` RGB pixels, with an (invalid) tiny image stream.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    png(w, h, 8, 2, &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01])
}

#[test]
fn hostile_images_are_refused_or_handled_in_bounded_memory() {
    let w = fixtures().join("resnet8.safetensors");
    let w = w.to_str().unwrap();
    for (name, bytes, want) in [
        ("bomb.png", png_claiming(100_000, 100_000), "pixels"),
        ("bomb2.png", png_claiming(20_000, 20_000), "pixels"),
        ("zero.png", png_claiming(0, 10), "image"),
    ] {
        let p = write(name, &bytes);
        refused(&["classify", p.to_str().unwrap(), "--weights", w], want);
    }
    let jpeg = std::fs::read(fixtures().join("images/rocket.jpg")).unwrap();
    for frac in [50, 90, 99] {
        let p = write(&format!("cut{frac}.jpg"), &jpeg[..jpeg.len() * frac / 100]);
        refused(&["classify", p.to_str().unwrap(), "--weights", w], "truncated");
    }
    // Real files compressed as far as deflate goes are not bombs: a flat 1-bit
    // 4000 x 4000 PNG (a few KB) is classified.
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    for _ in 0..4000 {
        z.write_all(&[0u8; 501]).unwrap(); // filter byte + 4000 bits
    }
    let flat = write("flat1bit.png", &png(4000, 4000, 1, 0, &z.finish().unwrap()));
    let (code, err, _) = run_measured(&["classify", flat.to_str().unwrap(), "--weights", w]);
    assert_eq!(code, Some(0), "{err}");
    // A 32768 x 1 image is legal: classified in bounded memory (only the crop is resized).
    let mut strip = image::RgbImage::new(32768, 1);
    strip.pixels_mut().enumerate().for_each(|(i, p)| *p = image::Rgb([i as u8, 7, 200]));
    let p = dir().join("strip.png");
    strip.save(&p).unwrap();
    let (code, err, peak) = run_measured(&["classify", p.to_str().unwrap(), "--weights", w]);
    assert_eq!(code, Some(0), "{err}");
    assert!(peak < PEAK_LIMIT_KB, "peak {peak} KB");
    eprintln!("classified strip.png (32768x1): {:.1} MB peak", peak as f64 / 1024.0);
}

// ---- data sets ------------------------------------------------------------------

fn idx(dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    dims.iter().for_each(|d| v.extend(d.to_be_bytes()));
    v.extend(payload);
    v
}

fn mnist_dir(name: &str, train_images: &[u8], gz: bool) -> PathBuf {
    let d = dir().join(name);
    std::fs::create_dir_all(&d).unwrap();
    let suffix = if gz { ".gz" } else { "" };
    std::fs::write(d.join(format!("train-images-idx3-ubyte{suffix}")), train_images).unwrap();
    std::fs::write(d.join("train-labels-idx1-ubyte"), idx(&[2], &[0, 1])).unwrap();
    std::fs::write(d.join("t10k-images-idx3-ubyte"), idx(&[2, 28, 28], &[0; 2 * 784])).unwrap();
    std::fs::write(d.join("t10k-labels-idx1-ubyte"), idx(&[2], &[0, 1])).unwrap();
    d
}

#[test]
fn hostile_data_sets_are_refused_in_bounded_memory() {
    let out = dir().join("run");
    let train = |d: &Path| {
        vec![
            "train".to_string(),
            "--arch".into(),
            "resnet8".into(),
            "--data".into(),
            format!("fashion-mnist:{}", d.display()),
            "--epochs".into(),
            "1".into(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    // Dimensions whose product wraps past 2^64.
    let d = mnist_dir("overflow", &idx(&[16, 1 << 30, 1 << 30], &[0; 64]), false);
    let args = train(&d);
    refused(&args.iter().map(String::as_str).collect::<Vec<_>>(), "dimensions");
    // A gzip that inflates far beyond what its header declares.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&idx(&[2, 28, 28], &[0; 2 * 784])).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..300 {
        enc.write_all(&zeros).unwrap();
    }
    let d = mnist_dir("bomb", &enc.finish().unwrap(), true);
    let args = train(&d);
    refused(&args.iter().map(String::as_str).collect::<Vec<_>>(), "more data than");
}
