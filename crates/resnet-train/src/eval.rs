//! Evaluation: loss, top-1/top-5 accuracy, per-class accuracy and the
//! confusion matrix over a data split.

use std::sync::Arc;

use serde::Serialize;

use crate::data::augment::Geometry;
use crate::data::augment::SampleTransform;
use crate::data::loader::Loader;
use crate::data::{Dataset, Images, Split};
use resnet::backend::Backend;
use resnet::classify::ModelCard;
use resnet::error::Result;
use resnet::infer::Infer;
use resnet::rng::Rng;
use resnet::tensor::Tensor;

/// The outcome of an evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    /// Samples evaluated.
    pub n: usize,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Top-1 accuracy (fraction).
    pub top1: f64,
    /// Top-5 accuracy (fraction; 1.0 with five classes or fewer).
    pub top5: f64,
    /// Accuracy per class (fraction; NaN for a class without samples).
    pub per_class: Vec<f64>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// Streaming accumulation of evaluation statistics.
pub struct EvalAccumulator {
    classes: usize,
    n: usize,
    loss: f64,
    top1: usize,
    top5: usize,
    confusion: Vec<Vec<u64>>,
}

impl EvalAccumulator {
    /// Empty statistics for `classes` classes.
    pub fn new(classes: usize) -> Self {
        Self { classes, n: 0, loss: 0.0, top1: 0, top5: 0, confusion: vec![vec![0; classes]; classes] }
    }

    /// Adds a batch of logits (`[n, classes]`) with their labels; returns the
    /// predicted classes.
    pub fn add(&mut self, logits: &[f32], labels: &[u32]) -> Vec<usize> {
        let mut preds = Vec::with_capacity(labels.len());
        for (z, &y) in logits.chunks(self.classes).zip(labels) {
            let y = y as usize;
            let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max + z.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
            self.loss += lse - z[y] as f64;
            // Rank of the true class: how many logits beat it (ties: lower index first);
            // with a NaN logit, last (NaN compares false with everything).
            let rank = if z.iter().any(|v| v.is_nan()) {
                self.classes
            } else {
                z.iter().enumerate().filter(|&(j, &v)| v > z[y] || (v == z[y] && j < y)).count()
            };
            self.top1 += (rank == 0) as usize;
            self.top5 += (rank < 5) as usize;
            let pred = (0..self.classes).fold(0, |best, j| if z[j] > z[best] { j } else { best });
            self.confusion[y][pred] += 1;
            preds.push(pred);
            self.n += 1;
        }
        preds
    }

    /// The result so far.
    pub fn finish(&self) -> EvalResult {
        let n = self.n.max(1) as f64;
        let per_class = self
            .confusion
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let total: u64 = row.iter().sum();
                if total == 0 { f64::NAN } else { row[c] as f64 / total as f64 }
            })
            .collect();
        EvalResult {
            n: self.n,
            loss: self.loss / n,
            top1: self.top1 as f64 / n,
            top5: self.top5 as f64 / n,
            per_class,
            confusion: self.confusion.clone(),
        }
    }
}

/// The evaluation transform for a model on a data set: the model card's
/// (from a training sidecar) when there is one, else the data set's
/// normalisation (and torchvision's resize 256 / crop 224 for image folders).
pub fn eval_transform(in_channels: usize, ds: &Dataset, card: Option<&ModelCard>) -> SampleTransform {
    let t = card.and_then(|c| c.transform.clone());
    let (mean, std) = match &t {
        Some(t) => (t.mean.clone(), t.std.clone()),
        None if ds.channels == in_channels => (ds.mean.clone(), ds.std.clone()),
        None if in_channels == 3 => (vec![ds.mean[0]; 3], vec![ds.std[0]; 3]),
        None => (vec![ds.mean.iter().sum::<f32>() / 3.0], vec![ds.std.iter().sum::<f32>() / 3.0]),
    };
    let geometry = match (&ds.test.images, &t) {
        (Images::Memory { .. }, _) => Geometry::Identity,
        (Images::Files(_), Some(t)) => Geometry::ResizeCrop { resize: t.resize, crop: t.crop },
        (Images::Files(_), None) => Geometry::ResizeCrop { resize: 256, crop: 224 },
    };
    SampleTransform { geometry, flip: false, pad_to: t.and_then(|t| t.pad_to), channels: in_channels, mean, std }
}

/// Evaluates `net` on `split` (evaluation mode), calling `progress(done, total)`
/// after each batch. `on_batch` sees each batch's predictions.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: Backend, M: Infer<B>>(
    net: &mut M,
    split: Arc<Split>,
    tf: Arc<SampleTransform>,
    batch: usize,
    workers: usize,
    mut progress: impl FnMut(usize, usize),
    mut on_batch: impl FnMut(&[usize], &[u32], &[usize]),
) -> Result<EvalResult> {
    let classes = net.num_classes();
    let order = Arc::new((0..split.len()).collect::<Vec<_>>());
    let loader = Loader::spawn(split.clone(), order, batch, tf, Rng::new(0), 0, workers);
    let total = split.len();
    let b = net.backend().clone();
    let mut acc = EvalAccumulator::new(classes);
    let mut x = Tensor::empty();
    let mut done = 0;
    for bt in loader {
        let bt = bt?;
        x.write(&b, bt.shape, &bt.x)?;
        let logits = net.infer(&x)?.to_host(&b)?;
        let preds = acc.add(&logits, &bt.labels);
        on_batch(&bt.indices, &bt.labels, &preds);
        done += bt.labels.len();
        progress(done, total);
    }
    Ok(acc.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulates_top1_top5_and_confusion() {
        let mut a = EvalAccumulator::new(6);
        // Sample 0: class 2 predicted correctly. Sample 1: true 0, ranked 3rd.
        a.add(&[0.0, 0.1, 5.0, 0.2, 0.3, 0.4, 0.5, 0.4, 0.3, 0.2, 0.6, 0.0], &[2, 0]);
        let r = a.finish();
        assert_eq!(r.n, 2);
        assert_eq!(r.top1, 0.5);
        assert_eq!(r.top5, 1.0);
        assert_eq!(r.confusion[2][2], 1);
        assert_eq!(r.confusion[0][4], 1);
        assert_eq!(r.per_class[2], 1.0);
        assert!(r.per_class[1].is_nan());
    }
}
