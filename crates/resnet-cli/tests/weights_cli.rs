//! Pretrained weights by name, downloaded from a loopback server (via
//! `RESNET_WEIGHTS_URL`, with the entries of `RESNET_WEIGHTS_INDEX`): a good
//! file, a corrupt one, one cut off mid-way and resumed, a 404, a server too
//! slow for the timeout, and a file already in PyTorch's cache.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("resnet-weights-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// What the server saw: request paths and their Range headers.
type Log = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// Serves `files` on 127.0.0.1: `good` and `corrupt` whole (with ranges),
/// `cut` half the first time, `slow` never.
fn serve(files: Vec<(String, Vec<u8>)>) -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log: Log = Arc::default();
    let log2 = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (files, log) = (files.clone(), log2.clone());
            std::thread::spawn(move || answer(stream, &files, &log));
        }
    });
    (base, log)
}

fn answer(mut stream: TcpStream, files: &[(String, Vec<u8>)], log: &Log) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let path = line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap() == 0 || h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range = Some(v.trim().trim_end_matches('-').to_string());
        }
    }
    let first_cut = path.starts_with("cut") && !log.lock().unwrap().iter().any(|(p, _)| *p == path);
    log.lock().unwrap().push((path.clone(), range.clone()));
    let Some((_, body)) = files.iter().find(|(n, _)| *n == path) else {
        let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    if path.starts_with("slow") {
        std::thread::sleep(Duration::from_secs(30));
        return;
    }
    let from: usize = range.and_then(|r| r.parse().ok()).unwrap_or(0);
    let status = if from > 0 { "206 Partial Content" } else { "200 OK" };
    let rest = &body[from..];
    let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", rest.len());
    stream.write_all(head.as_bytes()).unwrap();
    let send = if first_cut { &rest[..rest.len() / 2] } else { rest };
    let _ = stream.write_all(send);
}

/// Runs `resnet` with the test's server, index and caches.
fn resnet(args: &[&str], env: &[(&str, &Path)], url: &str) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_resnet"));
    c.args(args).env("RESNET_WEIGHTS_URL", url).env("RESNET_DOWNLOAD_TIMEOUT", "2");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn named_weights_download_verify_resume_and_fail_clearly() {
    let weights = std::fs::read(fixtures().join("resnet8.safetensors")).unwrap();
    let h = hex(&weights)[..8].to_string();
    let corrupt: Vec<u8> = weights.iter().map(|b| b ^ 1).collect();
    let name = |kind: &str| format!("{kind}-{h}.safetensors");
    let files = vec![(name("good"), weights.clone()), (name("corrupt"), corrupt), (name("cut"), weights.clone())];
    let files: Vec<(String, Vec<u8>)> = files.into_iter().chain([(name("slow"), weights.clone())]).collect();
    let (url, log) = serve(files);
    let dir = tmp("case");
    let index = dir.join("index.json");
    let entry = |kind: &str| {
        serde_json::json!({"name": format!("{kind}.v1"), "arch": "resnet8", "file": name(kind), "preset": "v1",
                           "acc1": 0.0, "acc5": 0.0, "size_mb": 0.3, "default": true})
    };
    let mut entries: Vec<_> = ["good", "corrupt", "cut", "slow", "missing"].iter().map(|k| entry(k)).collect();
    // The good file again, as weights evaluated with torchvision's V2 preprocessing.
    let mut v2 = entry("good");
    v2["name"] = "goodv2.v2".into();
    v2["preset"] = "v2".into();
    entries.push(v2);
    std::fs::write(&index, serde_json::to_vec(&entries).unwrap()).unwrap();
    let cache = dir.join("cache");
    let torch = dir.join("torch");
    let env =
        [("RESNET_WEIGHTS_INDEX", index.as_path()), ("RESNET_CACHE", cache.as_path()), ("TORCH_HOME", torch.as_path())];
    let run = |args: &[&str]| resnet(args, &env, &url);

    // A good file: fetched, checked, in the cache; then used by name without the server.
    let r = run(&["weights", "fetch", "torchvision:good.v1", "--quiet"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert_eq!(std::fs::read(cache.join(name("good"))).unwrap(), weights);
    assert!(text(&run(&["weights", "list"]).stdout).contains(&cache.join(name("good")).display().to_string()));
    let img = fixtures().join("images/chelsea.png");
    let r =
        resnet(&["classify", img.to_str().unwrap(), "--weights", "torchvision:good.v1"], &env, "http://127.0.0.1:9");
    assert!(r.status.success(), "{}", text(&r.stderr));

    // Fine-tuning from named weights takes their evaluation preprocessing (V2: resize 232 per 224).
    let folder = dir.join("folder");
    for split in ["train", "val"] {
        for (c, v) in [("a", 30u8), ("b", 220)] {
            std::fs::create_dir_all(folder.join(split).join(c)).unwrap();
            image::RgbImage::from_pixel(40, 36, image::Rgb([v, 9, 9]))
                .save(folder.join(split).join(c).join("0.png"))
                .unwrap();
        }
    }
    let out = dir.join("ft");
    let data = format!("folder:{}", folder.display());
    let r = resnet(
        &[
            "train",
            "--arch",
            "resnet8",
            "--data",
            &data,
            "--init",
            "torchvision:goodv2.v2",
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--batch",
            "2",
            "--out",
            out.to_str().unwrap(),
        ],
        &env,
        "http://127.0.0.1:9",
    );
    assert!(r.status.success(), "{}", text(&r.stderr));
    let side: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("last.json")).unwrap()).unwrap();
    assert_eq!(side["model"]["transform"]["resize"], 32 * 232 / 224);

    // A corrupt file: refused, and nothing of it stays in the cache.
    let r = run(&["weights", "fetch", "torchvision:corrupt.v1", "--quiet"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(text(&r.stderr).contains("corrupt and was deleted"), "{}", text(&r.stderr));
    assert!(!cache.join(name("corrupt")).exists() && !cache.join(format!("{}.part", name("corrupt"))).exists());

    // Cut off mid-way: the part stays; the next fetch asks for the rest and completes.
    let r = run(&["weights", "fetch", "torchvision:cut.v1", "--quiet"]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r.stderr));
    assert!(text(&r.stderr).contains("run the command again to resume"), "{}", text(&r.stderr));
    let part = cache.join(format!("{}.part", name("cut")));
    let half = std::fs::metadata(&part).unwrap().len();
    assert!(half > 0 && half < weights.len() as u64);
    assert!(!cache.join(name("cut")).exists());
    let r = run(&["weights", "fetch", "torchvision:cut.v1", "--quiet"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert_eq!(std::fs::read(cache.join(name("cut"))).unwrap(), weights);
    let ranges: Vec<_> =
        log.lock().unwrap().iter().filter(|(p, _)| *p == name("cut")).map(|(_, r)| r.clone()).collect();
    assert_eq!(ranges, vec![None, Some(half.to_string())]);

    // A 404: the URL and where to put the file by hand.
    let r = run(&["weights", "fetch", "torchvision:missing.v1"]);
    let err = text(&r.stderr);
    assert_eq!(r.status.code(), Some(1));
    assert!(err.contains("HTTP 404") && err.contains(&url) && err.contains("put it at"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    // A server that never answers: the timeout (2 s here) ends it.
    let t = Instant::now();
    let r = run(&["weights", "fetch", "torchvision:slow.v1", "--quiet"]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r.stderr));
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());

    // A file already in PyTorch's cache is used as it is, without a download.
    let hub = torch.join("hub/checkpoints");
    std::fs::create_dir_all(&hub).unwrap();
    std::fs::copy(fixtures().join("resnet8.safetensors"), hub.join(name("missing"))).unwrap();
    let r = run(&["weights", "path", "torchvision:missing.v1"]);
    assert_eq!(text(&r.stdout).trim(), hub.join(name("missing")).display().to_string());
    let r = resnet(&["inspect", "torchvision:missing.v1"], &env, "http://127.0.0.1:9");
    assert!(r.status.success(), "{}", text(&r.stderr));
    let mut s = String::new();
    let _ = std::io::Cursor::new(r.stdout).read_to_string(&mut s);
    assert!(s.contains("resnet8"), "{s}");
}
