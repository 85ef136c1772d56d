//! Batches assembled by worker threads ahead of the training loop.
//!
//! Batch `b` of an epoch is built by worker `b % workers` into its own
//! bounded channel; the consumer takes them in order. Each sample's random
//! augmentation comes from a generator forked from the epoch's generator by
//! the sample's position in the epoch, so batches are identical whatever the
//! number of workers, and an epoch can be resumed mid-way.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use super::augment::{Pixels, SampleTransform};
use super::{Images, Split};
use resnet::error::Result;
use resnet::preprocess::load_rgb;
use resnet::rng::Rng;

/// One batch, ready for the network.
pub struct Batch {
    /// `[n, h, w, c]`.
    pub shape: [usize; 4],
    /// NHWC values.
    pub x: Vec<f32>,
    /// Class of each sample.
    pub labels: Vec<u32>,
    /// Index of each sample in its split.
    pub indices: Vec<usize>,
}

/// Builds batch `b` (samples `order[b * batch ..]`).
pub fn build_batch(
    split: &Split,
    order: &[usize],
    batch: usize,
    b: usize,
    tf: &SampleTransform,
    rng: &Rng,
) -> Result<Batch> {
    let start = b * batch;
    let idx = &order[start..(start + batch).min(order.len())];
    let mut x = Vec::new();
    let mut shape = [idx.len(), 0, 0, tf.channels];
    for (k, &i) in idx.iter().enumerate() {
        let mut srng = rng.fork((start + k) as u64);
        let pixels = match &split.images {
            Images::Memory { h, w, c, data } => {
                let sz = h * w * c;
                Pixels { h: *h, w: *w, c: *c, data: data[i * sz..(i + 1) * sz].into() }
            }
            Images::Files(paths) => {
                let img = load_rgb(&paths[i])?;
                Pixels { h: img.height, w: img.width, c: 3, data: img.data.into() }
            }
        };
        let (oh, ow) = tf.out_size(pixels.h, pixels.w);
        if k == 0 {
            shape[1] = oh;
            shape[2] = ow;
            x.resize(idx.len() * oh * ow * tf.channels, 0.0);
        }
        if (oh, ow) != (shape[1], shape[2]) {
            return Err(resnet::Error::Invalid(format!(
                "sample {i} gives a {oh}x{ow} input but the batch is {}x{}: images of one size are needed \
                 (or a resizing transform)",
                shape[1], shape[2]
            )));
        }
        let len = oh * ow * tf.channels;
        tf.apply(pixels, &mut srng, &mut x[k * len..(k + 1) * len]);
    }
    Ok(Batch { shape, x, labels: idx.iter().map(|&i| split.labels[i]).collect(), indices: idx.to_vec() })
}

/// An in-order stream of an epoch's batches.
pub struct Loader {
    queues: Vec<Receiver<Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    next: usize,
    end: usize,
}

impl Loader {
    /// Starts `workers` threads producing batches `start..` of the epoch that
    /// visits `order`.
    pub fn spawn(
        split: Arc<Split>,
        order: Arc<Vec<usize>>,
        batch: usize,
        tf: Arc<SampleTransform>,
        rng: Rng,
        start: usize,
        workers: usize,
    ) -> Self {
        let end = order.len().div_ceil(batch);
        let workers = workers.max(1).min(end.saturating_sub(start).max(1));
        let mut queues = Vec::new();
        let mut handles = Vec::new();
        for w in 0..workers {
            let (tx, rx) = sync_channel(2);
            let (split, order, tf, rng) = (split.clone(), order.clone(), tf.clone(), rng.clone());
            let first = start + (w + workers - start % workers) % workers;
            handles.push(std::thread::spawn(move || {
                for b in (first..end).step_by(workers) {
                    let r = build_batch(&split, &order, batch, b, &tf, &rng);
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                }
            }));
            queues.push(rx);
        }
        Self { queues, handles, next: start, end }
    }

    /// Batches in the epoch (including skipped ones).
    pub fn len(&self) -> usize {
        self.end
    }

    /// True for an empty epoch.
    pub fn is_empty(&self) -> bool {
        self.end == 0
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.end {
            return None;
        }
        let q = &self.queues[self.next % self.queues.len()];
        self.next += 1;
        match q.recv() {
            Ok(b) => Some(b),
            Err(_) => Some(Err(resnet::Error::Invalid("a data loader thread stopped unexpectedly".into()))),
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the queues makes the workers' next send fail, so they stop.
        self.queues.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
