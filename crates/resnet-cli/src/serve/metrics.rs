//! The server's Prometheus metrics, rendered by hand in the text format.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Latency buckets (seconds) and batch-size buckets.
const LATENCY: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const BATCH: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A Prometheus histogram: cumulative bucket counts, sum, count.
#[derive(Default)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        self.buckets.resize(bounds.len(), 0);
        for (b, &le) in self.buckets.iter_mut().zip(bounds) {
            *b += (v <= le) as u64;
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, le) in bounds.iter().enumerate() {
            let c = self.buckets.get(i).copied().unwrap_or(0);
            out.push_str(&format!("{name}_bucket{{{labels}{sep}le=\"{le}\"}} {c}\n"));
        }
        out.push_str(&format!("{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}\n", self.count));
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        out.push_str(&format!("{name}_sum{braces} {}\n{name}_count{braces} {}\n", self.sum, self.count));
    }
}

/// The server's metrics.
#[derive(Default)]
pub(super) struct Metrics {
    /// By (route, status): count; by route: latency.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    batches: Mutex<Histogram>,
    pub(super) queue_depth: AtomicI64,
    pub(super) in_flight: AtomicI64,
    pub(super) images: AtomicU64,
}

impl Metrics {
    pub(super) fn observe_request(&self, route: &str, status: u16, secs: f64) {
        *self.requests.lock().unwrap_or_else(|e| e.into_inner()).entry((route.to_string(), status)).or_default() += 1;
        self.latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(route.to_string())
            .or_default()
            .observe(&LATENCY, secs);
    }

    pub(super) fn observe_batch(&self, n: usize) {
        self.batches.lock().unwrap_or_else(|e| e.into_inner()).observe(&BATCH, n as f64);
    }

    pub(super) fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP resnet_requests_total Requests answered, by route and status.\n");
        out.push_str("# TYPE resnet_requests_total counter\n");
        for ((route, status), n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            out.push_str(&format!("resnet_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}\n"));
        }
        out.push_str("# HELP resnet_request_duration_seconds Time to answer, by route.\n");
        out.push_str("# TYPE resnet_request_duration_seconds histogram\n");
        for (route, h) in self.latency.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            h.render(&mut out, "resnet_request_duration_seconds", &format!("route=\"{route}\""), &LATENCY);
        }
        out.push_str("# HELP resnet_batch_size Images per batch of the network.\n");
        out.push_str("# TYPE resnet_batch_size histogram\n");
        self.batches.lock().unwrap_or_else(|e| e.into_inner()).render(&mut out, "resnet_batch_size", "", &BATCH);
        out.push_str("# HELP resnet_queue_depth Requests waiting for the network.\n");
        out.push_str("# TYPE resnet_queue_depth gauge\n");
        out.push_str(&format!("resnet_queue_depth {}\n", self.queue_depth.load(Ordering::Relaxed).max(0)));
        out.push_str("# HELP resnet_requests_in_flight Requests being answered (this one included).\n");
        out.push_str("# TYPE resnet_requests_in_flight gauge\n");
        out.push_str(&format!("resnet_requests_in_flight {}\n", self.in_flight.load(Ordering::Relaxed)));
        out.push_str("# HELP resnet_images_total Images computed (rate() of it: images/s).\n");
        out.push_str("# TYPE resnet_images_total counter\n");
        out.push_str(&format!("resnet_images_total {}\n", self.images.load(Ordering::Relaxed)));
        out
    }
}
