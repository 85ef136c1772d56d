//! `resnet serve` end to end, on an ephemeral loopback port: every route,
//! every error (400, 404, 413, 503 under a flood with a tiny queue), a client
//! that hangs up mid-request, the metrics' counts, and a graceful shutdown
//! with requests in flight (none lost, exit 0).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};

use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fresh weights for `arch`.
fn weights(dir: &Path, arch: &str) -> PathBuf {
    let w = dir.join(format!("{arch}.safetensors"));
    let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["init", "--arch", arch, "--out", w.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    w
}

/// A running server and its address.
struct Server {
    child: Child,
    addr: String,
    log: std::sync::Mutex<std::sync::mpsc::Receiver<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

impl Server {
    /// Starts `resnet serve ARGS --addr 127.0.0.1:0` and waits until it is ready.
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_resnet"))
            .arg("serve")
            .args(args)
            .args(["--addr", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, log) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = log.recv_timeout(Duration::from_secs(30)).expect("the server prints its address");
        let addr = first.strip_prefix("listening on http://").unwrap_or_else(|| panic!("{first}")).to_string();
        let s = Server { child, addr, log: std::sync::Mutex::new(log) };
        let start = Instant::now();
        while s.request("GET", "/v2/health/ready", &[], b"").0 != 200 {
            assert!(start.elapsed() < Duration::from_secs(60), "not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    /// One request (`Connection: close`): status, headers (lowercase names) and body.
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Vec<u8>) {
        let mut c = TcpStream::connect(&self.addr).unwrap();
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        c.write_all(head.as_bytes()).unwrap();
        let _ = c.write_all(body); // a server that refuses early may close first
        let mut raw = Vec::new();
        let _ = c.read_to_end(&mut raw);
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response");
        let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
        let status = head[9..12].parse().unwrap();
        (status, head, raw[split + 4..].to_vec())
    }

    fn json(&self, method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
        let (status, _, body) = self.request(method, path, &[("Content-Type", "application/json")], body);
        (status, serde_json::from_slice(&body).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&body))))
    }

    fn metric(&self, line_start: &str) -> f64 {
        let (_, _, body) = self.request("GET", "/metrics", &[], b"");
        let text = String::from_utf8(body).unwrap();
        text.lines().find(|l| l.starts_with(line_start)).map_or(0.0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
    }

    /// SIGTERM; the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: `kill` with a child's pid and SIGTERM has no memory effects.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

fn image(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("images").join(name)).unwrap()
}

fn multipart(files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "resnetboundary7";
    let mut body = Vec::new();
    for (name, bytes) in files {
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: image/jpeg\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[test]
fn every_route_and_error() {
    let dir = tmp("routes");
    let w = weights(&dir, "resnet20");
    let s = Server::start(&["--weights", w.to_str().unwrap(), "--resize", "32", "--crop", "32", "--max-body-mb", "1"]);
    let jpeg = image("jpeg_420.jpg");
    assert_eq!(s.json("GET", "/v2/health/live", b""), (200, serde_json::json!({ "live": true })));

    // classify: raw body, topk; multipart with two files.
    let (st, v) = s.json("POST", "/v1/classify?topk=3", &jpeg);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v[0]["top"].as_array().unwrap().len(), 3);
    let logit = v[0]["top"][0]["logit"].as_f64().unwrap();
    let (ct, form) = multipart(&[("a.jpg", &jpeg), ("b.jpg", &image("rocket.jpg"))]);
    let (st, _, body) = s.request("POST", "/v1/classify", &[("Content-Type", &ct)], &form);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((st, v[1]["image"].as_str()), (200, Some("b.jpg")), "{v}");
    assert_eq!(v[0]["top"][0]["logit"].as_f64().unwrap(), logit);
    let (st, v) = s.json("POST", "/v1/embed", &jpeg);
    assert_eq!((st, v[0]["features"].as_array().unwrap().len()), (200, 64));

    // KServe v2: metadata, BYTES (the same logits as /v1/classify), FP32.
    let (st, v) = s.json("GET", "/v2/models/resnet20", b"");
    assert_eq!((st, &v["inputs"][0]["shape"]), (200, &serde_json::json!([-1, 3, 32, 32])));
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&jpeg);
    let req = serde_json::json!({ "inputs": [{ "name": "input", "datatype": "BYTES", "shape": [1], "data": [b64] }] });
    let (st, v) = s.json("POST", "/v2/models/resnet20/infer", req.to_string().as_bytes());
    assert_eq!(st, 200, "{v}");
    let logits: Vec<f64> = v["outputs"][0]["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(logits.iter().copied().fold(f64::MIN, f64::max), logit);
    let data: Vec<f32> = (0..2 * 3 * 8 * 8).map(|i| (i % 17) as f32 / 17.0).collect();
    let req = serde_json::json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [2, 3, 8, 8], "data": data }],
                                  "outputs": [{ "name": "logits" }, { "name": "features" }] });
    let (st, v) = s.json("POST", "/v2/models/resnet20/infer", req.to_string().as_bytes());
    assert_eq!(
        (st, &v["outputs"][0]["shape"], &v["outputs"][1]["shape"]),
        (200, &serde_json::json!([2, 10]), &serde_json::json!([2, 64]))
    );

    // Errors: JSON bodies with their statuses.
    let bad_shape = serde_json::json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 4, 2, 2], "data": [0.0] }] });
    let short = serde_json::json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [2, 3, 4, 4], "data": [0.0, 1.0] }] });
    let huge = serde_json::json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1u64 << 62, 3, 2, 2], "data": [0.0] }] });
    for (method, path, body, status, says) in [
        ("POST", "/v1/classify", b"not an image".to_vec(), 400, "not an image"),
        ("POST", "/v1/classify", Vec::new(), 400, "empty"),
        ("POST", "/v1/classify?topk=0", jpeg.clone(), 400, "topk"),
        ("POST", "/v2/models/resnet20/infer", bad_shape.to_string().into_bytes(), 400, "shape"),
        ("POST", "/v2/models/resnet20/infer", b"{".to_vec(), 400, "not JSON"),
        ("POST", "/v2/models/resnet20/infer", huge.to_string().into_bytes(), 400, "at most 16 images"),
        ("POST", "/v2/models/resnet20/infer", short.to_string().into_bytes(), 400, "does not match"),
        ("GET", "/v2/models/other", Vec::new(), 404, "no model `other`"),
        ("POST", "/v1/classify", vec![0xFF; 2 << 20], 413, ""),
    ] {
        let (st, _, b) = s.request(method, path, &[], &body);
        let text = String::from_utf8_lossy(&b);
        assert_eq!(st, status, "{path}: {text}");
        assert!(text.contains(says), "{path}: {text}");
    }
    // More images in one request than --max-batch (16): refused before decoding.
    let many: Vec<(&str, &[u8])> = (0..17).map(|_| ("a.jpg", jpeg.as_slice())).collect();
    let (ct, form) = multipart(&many);
    let (st, _, body) = s.request("POST", "/v1/classify", &[("Content-Type", &ct)], &form);
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("at most 16 images per request"));
    // A client that hangs up halfway through its body: the server goes on.
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.write_all(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial").unwrap();
    drop(c);
    assert_eq!(s.json("POST", "/v1/classify", &jpeg).0, 200);

    // Metrics count what happened.
    assert_eq!(s.metric("resnet_requests_total{route=\"/v1/classify\",status=\"200\"}"), 3.0);
    // Four bad requests, and the client that hung up (its body was cut short).
    assert_eq!(s.metric("resnet_requests_total{route=\"/v1/classify\",status=\"400\"}"), 5.0);
    // Nothing left counted in flight but the metrics request itself.
    assert_eq!(s.metric("resnet_requests_in_flight"), 1.0);
    assert_eq!(s.metric("resnet_requests_total{route=\"/v1/classify\",status=\"413\"}"), 1.0);
    assert!(s.metric("resnet_images_total") >= 7.0);
    assert!(s.metric("resnet_batch_size_count") >= 5.0);
    assert!(s.metric("resnet_request_duration_seconds_count{route=\"/v1/embed\"}") == 1.0);
    assert!(s.stop().success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A flood against a queue of one: the excess is shed with 503 and
/// Retry-After, nothing else fails, and the server answers afterwards.
#[test]
fn a_flood_is_shed_with_503() {
    let dir = tmp("flood");
    let w = weights(&dir, "resnet18");
    let s =
        Server::start(&["--weights", w.to_str().unwrap(), "--queue", "1", "--max-batch", "1", "--max-delay-ms", "0"]);
    let jpeg = image("rocket.jpg");
    let results: Vec<(u16, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..24)
            .map(|_| {
                scope.spawn(|| {
                    let (st, head, _) = s.request("POST", "/v1/classify", &[], &jpeg);
                    (st, head)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|(st, _)| *st == 200).count();
    let shed: Vec<_> = results.iter().filter(|(st, _)| *st == 503).collect();
    assert_eq!(ok + shed.len(), 24, "{results:?}");
    assert!(ok >= 1 && !shed.is_empty(), "{ok} answered, {} shed", shed.len());
    assert!(shed.iter().all(|(_, head)| head.contains("retry-after: 1")));
    assert_eq!(s.request("POST", "/v1/classify", &[], &jpeg).0, 200);
    assert_eq!(s.metric("resnet_queue_depth"), 0.0);
    assert!(s.stop().success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// SIGTERM with requests in flight: every one is answered, then exit 0.
#[test]
fn shutdown_finishes_requests_in_flight() {
    let dir = tmp("shutdown");
    let w = weights(&dir, "resnet18");
    let s = Server::start(&["--weights", w.to_str().unwrap(), "--max-batch", "2"]);
    let jpeg = image("rocket.jpg");
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8).map(|_| scope.spawn(|| s.request("POST", "/v1/classify", &[], &jpeg).0)).collect();
        // Let the 8 requests arrive (the metrics request counts itself), then
        // stop while they are being computed.
        let start = Instant::now();
        while s.metric("resnet_requests_in_flight") < 9.0 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: as in `Server::stop`.
        unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses, [200; 8]);
    let mut s = s;
    assert!(s.child.wait().unwrap().success());
    let log: Vec<String> = s.log.lock().unwrap().try_iter().collect();
    assert!(log.iter().any(|l| l.contains("stopping")) && log.iter().any(|l| l == "stopped"), "{log:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A request slower than --timeout-ms is answered 504, as JSON.
#[test]
fn slow_requests_time_out() {
    let dir = tmp("serve-timeout");
    let w = weights(&dir, "resnet18");
    let s = Server::start(&["--weights", w.to_str().unwrap(), "--timeout-ms", "1"]);
    let (st, _, body) = s.request("POST", "/v1/classify", &[], &image("rocket.jpg"));
    assert_eq!(st, 504, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("--timeout-ms"));
    assert!(s.stop().success());
    std::fs::remove_dir_all(&dir).unwrap();
}
