//! `resnet serve`: an HTTP inference server.
//!
//! Requests are parsed and their images decoded on tokio's threads and its
//! blocking pool (a few at once), never on the compute threads. Each request
//! takes a place in a bounded queue before its body is read (a full queue
//! answers 503 at once, with `Retry-After`) and becomes a job; one batcher
//! thread owns the compiled model's workspace and gathers jobs into a batch
//! until it holds `--max-batch` images or the first job has waited
//! `--max-delay-ms` (a request alone in the server runs at once), runs it,
//! and hands each job its rows. Memory stays bounded under any load: at most
//! `--queue` jobs, each at most `--max-body-mb` of input. A job whose client
//! has gone is dropped before it is computed. SIGTERM or Ctrl-C stops
//! accepting, lets the requests in flight finish, and exits 0. See
//! docs/SERVING.md.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Multipart, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use resnet::backend::{Backend, Cpu};
use resnet::classify::{Loaded, top_k};
use resnet::infer::CompiledModel;
use resnet::preprocess::{MAX_TRANSFORM_SIDE, Transform, decode_rgb};
use serde_json::{Value, json};

use crate::util::{Compute, PrecisionFlag, TransformFlags, precision};

mod batcher;
mod metrics;

use batcher::{Job, Rows, batch_loop};
use metrics::Metrics;

/// Arguments of `resnet serve`.
#[derive(clap::Args)]
#[command(after_long_help = ROUTES)]
pub struct Args {
    /// Weights: .safetensors, a PyTorch .pth, or a name (torchvision:ARCH[.v1|.v2]).
    #[arg(long)]
    weights: PathBuf,
    /// Architecture (see `resnet archs`); optional for our checkpoints and recognised weights.
    #[arg(long)]
    arch: Option<String>,
    /// Address to listen on (port 0: any free port; the port is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Most images in one batch of the network.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Longest a request waits for others to share its batch.
    #[arg(long, default_value_t = 5)]
    max_delay_ms: u64,
    /// Requests that may wait for the network; beyond them, 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    queue: usize,
    /// Largest request body, in MB (413 beyond).
    #[arg(long, default_value_t = 20)]
    max_body_mb: usize,
    /// Longest a request may take, in ms (504 beyond).
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// The model's name in the KServe v2 routes (default: the architecture's).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    transform: TransformFlags,
    #[command(flatten)]
    compute: Compute,
    #[command(flatten)]
    precision: PrecisionFlag,
}

const ROUTES: &str = "\
Routes:
  POST /v1/classify[?topk=5]   an image as the body, or multipart/form-data with image files;
                               answers what `resnet classify --json` prints
  POST /v1/embed               the same input; answers the pooled features of each image
  GET  /v2/health/live         200 while the process runs
  GET  /v2/health/ready        200 once the model is loaded, 503 before
  GET  /v2/models/NAME         KServe v2 model metadata (inputs, outputs)
  POST /v2/models/NAME/infer   KServe v2 inference: an FP32 input of shape [N, 3, H, W] (data flat,
                               row-major), or a BYTES input of shape [N] holding base64 images;
                               outputs `logits` [N, classes] (ask for `features` to get [N, D] too)
  GET  /metrics                Prometheus: requests by route and status, latency and batch-size
                               histograms, queue depth, images computed
Errors are JSON {\"error\": ...}: 400 bad input, 413 body too large, 503 queue full (with Retry-After)
or model loading, 504 too slow. One JSON line per request goes to stderr.";

/// What the handlers know about the model once it is loaded.
struct ModelInfo {
    arch: String,
    transform: Transform,
    labels: Vec<String>,
    in_channels: usize,
    classes: usize,
    feature_dim: usize,
}

/// State shared by the handlers.
struct Shared {
    name: String,
    ready: AtomicBool,
    info: OnceLock<ModelInfo>,
    /// The batcher's queue; taken (closed) at shutdown.
    queue: Mutex<Option<SyncSender<Job>>>,
    metrics: Metrics,
    /// Decodes running at once on the blocking pool.
    decoding: Arc<tokio::sync::Semaphore>,
    /// Most images in one request (`--max-batch`).
    max_batch: usize,
    /// Places in the queue: taken before a request's body is read or
    /// decoded, so a full server refuses at once, at no cost.
    slots: Arc<tokio::sync::Semaphore>,
    timeout: Duration,
}

/// An error answer: a status and a JSON `{"error": ...}` body.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

fn bad(msg: impl Into<String>) -> Failure {
    Failure(StatusCode::BAD_REQUEST, msg.into())
}

pub fn run(a: Args) -> Result<()> {
    if a.max_batch == 0 || a.queue == 0 || a.max_body_mb == 0 || a.timeout_ms == 0 {
        bail!("--max-batch, --queue, --max-body-mb and --timeout-ms must be at least 1");
    }
    let cpu = a.compute.backend()?;
    let precision = precision(a.precision.precision, &cpu);
    let (weights, entry) = crate::weights::resolve(&a.weights)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shared = Arc::new(Shared {
        name: String::new(),
        ready: AtomicBool::new(false),
        info: OnceLock::new(),
        queue: Mutex::new(None),
        metrics: Metrics::default(),
        // Decoding shares the cores with the network, whose threads split each
        // operation evenly: every decoder running preempts one of them and
        // holds the rest back, so few run at once.
        decoding: Arc::new(tokio::sync::Semaphore::new((cores / 2).max(1))),
        max_batch: a.max_batch,
        slots: Arc::new(tokio::sync::Semaphore::new(a.queue)),
        timeout: Duration::from_millis(a.timeout_ms),
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2.min(cores)).enable_all().build()?;
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(&a.addr).await.with_context(|| format!("cannot listen on {}", a.addr))?;
        // Read the weights before listening answers anything but health, so a
        // bad file fails the start; compile in the background (readiness).
        let loaded = Loaded::read(a.arch.as_deref(), &weights, None)
            .with_context(|| format!("cannot load {}", weights.display()))?;
        let mut shared_mut = Arc::try_unwrap(shared).unwrap_or_else(|_| unreachable!("not shared yet"));
        shared_mut.name = a.name.clone().unwrap_or_else(|| loaded.spec.name.clone());
        let shared = Arc::new(shared_mut);
        eprintln!("listening on http://{}", listener.local_addr()?);
        let (tx, rx) = sync_channel::<Job>(a.queue);
        *shared.queue.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        let batcher = {
            let (shared, transform, named) = (shared.clone(), a.transform.clone(), entry.map(|e| e.preset));
            let (max_batch, delay) = (a.max_batch, Duration::from_millis(a.max_delay_ms));
            std::thread::Builder::new().name("resnet-batcher".into()).spawn(move || {
                let model = match prepare(&cpu, loaded, precision, &transform, named.as_deref(), &shared) {
                    Ok(m) => m,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        std::process::exit(1);
                    }
                };
                shared.ready.store(true, Ordering::Release);
                eprintln!("ready: {} ({}), max batch {max_batch}", shared.name, cpu.describe());
                batch_loop(&cpu, &model, rx, max_batch, delay, &shared);
            })?
        };
        let app = router(shared.clone(), a.max_body_mb << 20);
        axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
        // Every request has been answered: closing the queue ends the batcher.
        shared.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        batcher.join().map_err(|_| anyhow::anyhow!("the batcher panicked"))?;
        eprintln!("stopped");
        Ok(())
    })
}

/// Compiles the model and records what the handlers need.
fn prepare(
    cpu: &Cpu,
    loaded: Loaded,
    precision: resnet::backend::Precision,
    flags: &TransformFlags,
    named: Option<&str>,
    shared: &Shared,
) -> Result<CompiledModel<Cpu>> {
    let mut transform = loaded.transform.clone();
    flags.apply(&mut transform, named)?;
    let model = CompiledModel::new(cpu, &loaded.graph, &loaded.sd, precision)?;
    let spec = &loaded.spec;
    let info = ModelInfo {
        arch: spec.name.clone(),
        transform,
        labels: loaded.labels,
        in_channels: spec.in_channels,
        classes: spec.num_classes,
        feature_dim: spec.feature_dim(),
    };
    let _ = shared.info.set(info);
    Ok(model)
}

fn router(shared: Arc<Shared>, max_body: usize) -> Router {
    Router::new()
        .route("/v1/classify", post(classify))
        .route("/v1/embed", post(embed))
        .route("/v2/health/live", get(|| async { Json(json!({ "live": true })) }))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(shared.clone(), log_and_count))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(shared)
}

/// A request being answered: counted in flight until dropped; a request
/// whose client hangs up is dropped unanswered and recorded with status 499
/// ("client closed request").
struct InFlight {
    shared: Arc<Shared>,
    route: String,
    method: String,
    path: String,
    start: Instant,
    status: Option<u16>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let m = &self.shared.metrics;
        m.in_flight.fetch_sub(1, Ordering::Relaxed);
        let secs = self.start.elapsed().as_secs_f64();
        let status = self.status.unwrap_or(499);
        m.observe_request(&self.route, status, secs);
        let ms = (secs * 1e3 * 100.0).round() / 100.0;
        eprintln!("{}", json!({ "method": self.method, "path": self.path, "status": status, "ms": ms }));
    }
}

/// One JSON line per request on stderr, and the request metrics.
async fn log_and_count(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched".to_string(), |p| p.as_str().to_string());
    s.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    let mut guard = InFlight {
        shared: s.clone(),
        route,
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        start: Instant::now(),
        status: None,
    };
    let response = next.run(req).await;
    guard.status = Some(response.status().as_u16());
    response
}

async fn ready(State(s): State<Arc<Shared>>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        Json(json!({ "ready": true })).into_response()
    } else {
        Failure(StatusCode::SERVICE_UNAVAILABLE, "the model is loading".into()).into_response()
    }
}

/// The model's description, once loaded.
fn info(s: &Shared) -> Result<&ModelInfo, Failure> {
    match s.info.get() {
        Some(i) if s.ready.load(Ordering::Acquire) => Ok(i),
        _ => Err(Failure(StatusCode::SERVICE_UNAVAILABLE, "the model is loading".into())),
    }
}

async fn model_metadata(State(s): State<Arc<Shared>>, Path(name): Path<String>) -> Result<Json<Value>, Failure> {
    check_name(&s, &name)?;
    let i = info(&s)?;
    let side = i.transform.size();
    Ok(Json(json!({
        "name": s.name,
        "versions": ["1"],
        "platform": "resnet",
        "inputs": [{ "name": "input", "datatype": "FP32", "shape": [-1, i.in_channels, side, side] }],
        "outputs": [
            { "name": "logits", "datatype": "FP32", "shape": [-1, i.classes] },
            { "name": "features", "datatype": "FP32", "shape": [-1, i.feature_dim] },
        ],
        "parameters": { "arch": i.arch, "preprocess": i.transform, "class_names": i.labels },
    })))
}

fn check_name(s: &Shared, name: &str) -> Result<(), Failure> {
    if name != s.name {
        return Err(Failure(StatusCode::NOT_FOUND, format!("no model `{name}` here (this server has `{}`)", s.name)));
    }
    Ok(())
}

/// The images of a request: the body, or each file of a multipart form.
async fn images_of(s: &Arc<Shared>, req: Request) -> Result<Vec<(String, Bytes)>, Failure> {
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if multipart {
        let mut form = Multipart::from_request(req, s).await.map_err(|e| Failure(e.status(), e.body_text()))?;
        let mut images = Vec::new();
        while let Some(field) = form.next_field().await.map_err(|e| Failure(e.status(), e.body_text()))? {
            if images.len() == s.max_batch {
                return Err(too_many(s.max_batch));
            }
            let name = field.file_name().or(field.name()).unwrap_or("image").to_string();
            images.push((name, field.bytes().await.map_err(|e| Failure(e.status(), e.body_text()))?));
        }
        if images.is_empty() {
            return Err(bad("the form has no files"));
        }
        return Ok(images);
    }
    let body = Bytes::from_request(req, s).await.map_err(|e| Failure(e.status(), e.body_text()))?;
    if body.is_empty() {
        return Err(bad("the body is empty: send an image, or multipart/form-data with image files"));
    }
    Ok(vec![("body".to_string(), body)])
}

fn too_many(max: usize) -> Failure {
    bad(format!("at most {max} images per request (--max-batch)"))
}

/// Runs `f` on the blocking pool holding a decoding permit, which stays held
/// until `f` returns even if the request is abandoned meanwhile: the work in
/// progress stays bounded.
async fn blocking<T: Send + 'static>(
    s: &Arc<Shared>,
    f: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    let permit = s.decoding.clone().acquire_owned().await;
    let permit = permit.map_err(|_| Failure(StatusCode::SERVICE_UNAVAILABLE, "stopping".into()))?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f()
    })
    .await
    .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// Decodes and preprocesses images off the async threads (a bounded number at once).
async fn preprocess(s: &Arc<Shared>, images: Vec<Bytes>) -> Result<Vec<f32>, Failure> {
    let transform = info(s)?.transform.clone();
    blocking(s, move || decode_all(&transform, &images)).await
}

fn decode_all(transform: &Transform, images: &[Bytes]) -> Result<Vec<f32>, Failure> {
    let mut x = Vec::new();
    for (i, bytes) in images.iter().enumerate() {
        let img = decode_rgb(bytes).map_err(|e| bad(format!("image {i}: {e}")))?;
        x.extend(transform.apply_hwc(&img));
    }
    Ok(x)
}

/// A place in the queue, or 503 at once.
fn slot(s: &Shared) -> Result<tokio::sync::OwnedSemaphorePermit, Failure> {
    s.slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| Failure(StatusCode::SERVICE_UNAVAILABLE, "the queue is full: retry later".into()))
}

/// Queues `n` images (NHWC) for the network in place `slot` and waits for their rows.
async fn compute(
    s: &Arc<Shared>,
    slot: tokio::sync::OwnedSemaphorePermit,
    x: Vec<f32>,
    n: usize,
    hw: (usize, usize),
) -> Result<Rows, Failure> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let queue = s.queue.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let queue = queue.ok_or_else(|| Failure(StatusCode::SERVICE_UNAVAILABLE, "stopping".into()))?;
    s.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
    // The channel holds as many jobs as there are slots: it is never full here.
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
        queue.try_send(Job { x, n, hw, enqueued: Instant::now(), reply, _slot: slot })
    {
        s.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        return Err(Failure(StatusCode::SERVICE_UNAVAILABLE, "the queue is full: retry later".into()));
    }
    let rows = answer.await.map_err(|_| Failure(StatusCode::SERVICE_UNAVAILABLE, "stopping".into()))?;
    s.metrics.images.fetch_add(n as u64, Ordering::Relaxed);
    rows.map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e))
}

/// Runs `f` under the request timeout.
async fn timed<T>(s: &Shared, f: impl std::future::Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
    tokio::time::timeout(s.timeout, f).await.unwrap_or_else(|_| {
        Err(Failure(StatusCode::GATEWAY_TIMEOUT, "the request took longer than --timeout-ms".into()))
    })
}

/// Images in, rows out: the common part of /v1/classify and /v1/embed.
async fn image_rows(s: &Arc<Shared>, req: Request) -> Result<(Vec<String>, Rows), Failure> {
    info(s)?;
    let slot = slot(s)?;
    let images = images_of(s, req).await?;
    let names: Vec<String> = images.iter().map(|(n, _)| n.clone()).collect();
    let n = images.len();
    let x = preprocess(s, images.into_iter().map(|(_, b)| b).collect()).await?;
    let side = info(s)?.transform.size();
    Ok((names, compute(s, slot, x, n, (side, side)).await?))
}

async fn classify(
    State(s): State<Arc<Shared>>,
    Query(q): Query<BTreeMap<String, String>>,
    req: Request,
) -> Result<Json<Value>, Failure> {
    let k = match q.get("topk") {
        None => 5,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|&k| k >= 1)
            .ok_or_else(|| bad(format!("topk must be a number of at least 1, got `{v}`")))?,
    };
    timed(&s, async {
        let (names, rows) = image_rows(&s, req).await?;
        let i = info(&s)?;
        let out: Vec<Value> = names
            .iter()
            .zip(rows.logits.chunks(i.classes))
            .map(|(name, z)| json!({ "image": name, "top": top_k(z, k, &i.labels) }))
            .collect();
        Ok(Json(Value::Array(out)))
    })
    .await
}

async fn embed(State(s): State<Arc<Shared>>, req: Request) -> Result<Json<Value>, Failure> {
    timed(&s, async {
        let (names, rows) = image_rows(&s, req).await?;
        let d = info(&s)?.feature_dim;
        let out: Vec<Value> = names
            .iter()
            .zip(rows.features.chunks(d))
            .map(|(name, f)| json!({ "image": name, "features": f }))
            .collect();
        Ok(Json(Value::Array(out)))
    })
    .await
}

/// A KServe v2 request, parsed: its input for the network and what it asks for.
struct InferRequest {
    /// NHWC.
    x: Vec<f32>,
    n: usize,
    hw: (usize, usize),
    outputs: Vec<String>,
    id: Value,
}

/// KServe v2 inference. The body is read once the request has a queue place,
/// and parsed (JSON, base64, images) on the blocking pool, a few at once.
async fn infer(State(s): State<Arc<Shared>>, Path(name): Path<String>, req: Request) -> Result<Json<Value>, Failure> {
    check_name(&s, &name)?;
    timed(&s, async {
        info(&s)?;
        let slot = slot(&s)?;
        let body = Bytes::from_request(req, &s).await.map_err(|e| Failure(e.status(), e.body_text()))?;
        let shared = s.clone();
        let r = blocking(&s, move || parse_infer(&shared, &body)).await?;
        let rows = compute(&s, slot, r.x, r.n, r.hw).await?;
        let i = info(&s)?;
        let mut outputs = Vec::new();
        for name in &r.outputs {
            let (data, d) = match name.as_str() {
                "logits" => (&rows.logits, i.classes),
                "features" => (&rows.features, i.feature_dim),
                _ => unreachable!("checked by parse_infer"),
            };
            outputs.push(json!({ "name": name, "datatype": "FP32", "shape": [r.n, d], "data": data }));
        }
        Ok(Json(json!({ "model_name": s.name, "model_version": "1", "id": r.id, "outputs": outputs })))
    })
    .await
}

/// Parses a KServe v2 request: one FP32 input `[N, C, H, W]` (data flat or
/// nested, row-major) or one BYTES input `[N]` of base64 images.
fn parse_infer(s: &Shared, body: &[u8]) -> Result<InferRequest, Failure> {
    let i = info(s)?;
    let req: Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let input = req["inputs"].as_array().and_then(|v| v.first()).ok_or_else(|| bad("`inputs` must hold one input"))?;
    let shape: Vec<usize> = input["shape"]
        .as_array()
        .map(|v| v.iter().map(|d| d.as_u64().map(|d| d as usize)).collect::<Option<Vec<_>>>())
        .and_then(|v| v)
        .ok_or_else(|| bad("`shape` must be a list of sizes"))?;
    let outputs: Vec<String> = match req["outputs"].as_array() {
        Some(v) => v.iter().map(|o| o["name"].as_str().unwrap_or_default().to_string()).collect(),
        None => vec!["logits".into()],
    };
    if let Some(other) = outputs.iter().find(|o| !matches!(o.as_str(), "logits" | "features")) {
        return Err(bad(format!("no output `{other}`: logits or features")));
    }
    let (x, n, hw) = match input["datatype"].as_str() {
        Some("FP32") => {
            let c = i.in_channels;
            let [n, ch, h, w] = shape[..] else {
                return Err(bad(format!("an FP32 input has shape [N, {c}, H, W], got {shape:?}")));
            };
            if ch != c || n == 0 || h == 0 || w == 0 || h > MAX_TRANSFORM_SIDE || w > MAX_TRANSFORM_SIDE {
                return Err(bad(format!(
                    "an FP32 input has shape [N, {c}, H, W] (sides 1 to {MAX_TRANSFORM_SIDE}), got {shape:?}"
                )));
            }
            if n > s.max_batch {
                return Err(too_many(s.max_batch));
            }
            // The data is bounded by the body limit; the declared shape is
            // checked against it before anything of its size is allocated.
            let mut nchw = Vec::new();
            flatten(&input["data"], &mut nchw).map_err(bad)?;
            let want = [c, h, w].iter().try_fold(n, |a, &b| a.checked_mul(b));
            if want != Some(nchw.len()) {
                return Err(bad(format!("shape {shape:?} does not match the {} values in `data`", nchw.len())));
            }
            let mut nhwc = vec![0.0; nchw.len()];
            for (k, v) in nchw.iter().enumerate() {
                let (img, ch, p) = (k / (c * h * w), k / (h * w) % c, k % (h * w));
                nhwc[(img * h * w + p) * c + ch] = *v;
            }
            (nhwc, n, (h, w))
        }
        Some("BYTES") => {
            let items = input["data"].as_array().ok_or_else(|| bad("BYTES `data` must be a list of base64 images"))?;
            if shape != [items.len()] || items.is_empty() {
                return Err(bad(format!("a BYTES input has shape [N] with N images in `data`, got {shape:?}")));
            }
            if items.len() > s.max_batch {
                return Err(too_many(s.max_batch));
            }
            let engine = base64::engine::general_purpose::STANDARD;
            let images = items
                .iter()
                .map(|v| {
                    let text = v
                        .as_str()
                        .or_else(|| v["b64"].as_str())
                        .ok_or_else(|| bad("BYTES items are base64 strings"))?;
                    engine.decode(text).map(Bytes::from).map_err(|e| bad(format!("not base64: {e}")))
                })
                .collect::<Result<Vec<_>, Failure>>()?;
            let side = i.transform.size();
            (decode_all(&i.transform, &images)?, items.len(), (side, side))
        }
        other => return Err(bad(format!("datatype must be FP32 or BYTES, got {other:?}"))),
    };
    Ok(InferRequest { x, n, hw, outputs, id: req["id"].clone() })
}

/// Appends the numbers of a flat or nested JSON list.
fn flatten(v: &Value, out: &mut Vec<f32>) -> Result<(), String> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|x| flatten(x, out)),
        Value::Number(x) => {
            out.push(x.as_f64().unwrap_or(f64::NAN) as f32);
            Ok(())
        }
        _ => Err("`data` must hold numbers".into()),
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    eprintln!("stopping: finishing the requests in flight");
}
