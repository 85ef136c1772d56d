//! The batcher: one thread owns the compiled model's workspace, gathers
//! queued jobs into batches and hands each job its rows.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::Result;
use resnet::backend::Cpu;
use resnet::infer::CompiledModel;
use resnet::tensor::Tensor;

use super::Shared;

/// One request's images for the network.
pub(super) struct Job {
    /// NHWC, `n` images of `h x w`.
    pub(super) x: Vec<f32>,
    pub(super) n: usize,
    pub(super) hw: (usize, usize),
    pub(super) enqueued: Instant,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<Rows, String>>,
    /// Its place in the queue, given back when the batcher takes it.
    pub(super) _slot: tokio::sync::OwnedSemaphorePermit,
}

/// A job's rows of the batch's outputs.
pub(super) struct Rows {
    pub(super) logits: Vec<f32>,
    pub(super) features: Vec<f32>,
}

/// The batcher: gathers jobs into batches and runs them, until the queue closes.
pub(super) fn batch_loop(
    cpu: &Cpu,
    model: &CompiledModel<Cpu>,
    rx: Receiver<Job>,
    max_batch: usize,
    delay: Duration,
    shared: &Shared,
) {
    let mut ws = model.workspace();
    let mut waiting: Option<Job> = None;
    loop {
        let first = match waiting.take().map(Ok).unwrap_or_else(|| rx.recv()) {
            Ok(j) => j,
            Err(_) => return,
        };
        shared.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
        if first.reply.is_closed() {
            continue; // its client has gone
        }
        let deadline = first.enqueued + delay;
        let (hw, mut n) = (first.hw, first.n);
        let mut jobs = vec![first];
        while n < max_batch {
            // Wait for company only when other requests are on their way
            // (being read or decoded): a lone request runs at once.
            if shared.metrics.in_flight.load(Ordering::Relaxed) <= jobs.len() as i64 {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(j) => {
                    shared.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                    if j.reply.is_closed() {
                        continue;
                    }
                    if j.hw != hw || n + j.n > max_batch {
                        // Runs first in the next batch (it still counts as waiting).
                        shared.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
                        waiting = Some(j);
                        break;
                    }
                    n += j.n;
                    jobs.push(j);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let result = run_batch(cpu, model, &mut ws, &jobs, n, hw);
        shared.metrics.observe_batch(n);
        match result {
            Ok((logits, features)) => {
                let (c, d) = (logits.len() / n, features.len() / n);
                let mut at = 0;
                for j in jobs {
                    let rows = Rows {
                        logits: logits[at * c..(at + j.n) * c].to_vec(),
                        features: features[at * d..(at + j.n) * d].to_vec(),
                    };
                    at += j.n;
                    let _ = j.reply.send(Ok(rows));
                }
            }
            Err(e) => {
                for j in jobs {
                    let _ = j.reply.send(Err(format!("{e:#}")));
                }
            }
        }
    }
}

/// Runs one batch: its logits and pooled features.
fn run_batch(
    cpu: &Cpu,
    model: &CompiledModel<Cpu>,
    ws: &mut resnet::infer::Workspace<Cpu>,
    jobs: &[Job],
    n: usize,
    (h, w): (usize, usize),
) -> Result<(Vec<f32>, Vec<f32>)> {
    let c = model.spec().in_channels;
    let mut x = Vec::with_capacity(n * h * w * c);
    jobs.iter().for_each(|j| x.extend_from_slice(&j.x));
    let x = Tensor::from_host(cpu, [n, h, w, c], &x)?;
    let logits = model.run(ws, &x)?.to_host(cpu)?;
    let features = model.features(ws).to_host(cpu)?;
    Ok((logits, features))
}
