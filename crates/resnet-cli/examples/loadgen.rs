//! A closed-loop HTTP load generator for `resnet serve` (used by
//! bench/serve_load.sh): CONCURRENCY clients on 127.0.0.1, each sending the
//! same request again as soon as the last one is answered, until REQUESTS
//! have been sent or SECONDS have passed. Prints one JSON line: throughput,
//! latency percentiles and the count of each status.
//!
//!     loadgen ADDR PATH FILE CONCURRENCY REQUESTS SECONDS

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One request on a fresh connection: its status (0 for a connection error).
fn request(addr: &str, path: &str, body: &[u8]) -> u16 {
    let Ok(mut c) = TcpStream::connect(addr) else { return 0 };
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len());
    // A server that refuses early may answer (and close) before the body is
    // all sent: read its answer either way.
    let _ = c.write_all(head.as_bytes()).and_then(|_| c.write_all(body));
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    std::str::from_utf8(raw.get(9..12).unwrap_or_default()).ok().and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 7 {
        eprintln!("usage: loadgen ADDR PATH FILE CONCURRENCY REQUESTS SECONDS");
        std::process::exit(2);
    }
    let (addr, path) = (&args[1], &args[2]);
    let body = std::fs::read(&args[3]).expect("the request body file");
    let (clients, total, secs): (usize, usize, f64) =
        (args[4].parse().unwrap(), args[5].parse().unwrap(), args[6].parse().unwrap());
    let sent = AtomicUsize::new(0);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let results: Vec<(f64, u16)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    while Instant::now() < deadline && sent.fetch_add(1, Ordering::Relaxed) < total {
                        let t = Instant::now();
                        let status = request(addr, path, &body);
                        mine.push((t.elapsed().as_secs_f64(), status));
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let mut ok: Vec<f64> = results.iter().filter(|r| r.1 == 200).map(|r| r.0).collect();
    ok.sort_by(f64::total_cmp);
    let pct = |p: f64| if ok.is_empty() { f64::NAN } else { ok[((p * (ok.len() - 1) as f64).round()) as usize] * 1e3 };
    let mut statuses = BTreeMap::new();
    results.iter().for_each(|r| *statuses.entry(r.1.to_string()).or_insert(0) += 1);
    println!(
        "{{\"concurrency\": {clients}, \"requests\": {}, \"ok_per_second\": {:.2}, \"p50_ms\": {:.1}, \"p99_ms\": {:.1}, \"statuses\": {:?}, \"seconds\": {wall:.1}}}",
        results.len(),
        ok.len() as f64 / wall,
        pct(0.5),
        pct(0.99),
        statuses
    );
}
