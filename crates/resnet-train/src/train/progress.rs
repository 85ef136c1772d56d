//! What a run reports: logged points, step reports for observers (the CLI's
//! progress bars), the summary, and the training metrics the backend
//! writes and the loop reads back once per log interval.

use serde::{Deserialize, Serialize};

use resnet::backend::{Backend, DType};
use resnet::error::Result;

/// JSON has no NaN: serde writes it as `null`, which reads back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A test evaluation, as logged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestPoint {
    /// Epochs completed.
    pub epoch: usize,
    /// Iterations at the time.
    pub iteration: u64,
    /// Mean cross-entropy.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// Top-1 error (fraction).
    #[serde(deserialize_with = "nan_if_null")]
    pub error: f64,
    /// Top-5 error (fraction).
    #[serde(deserialize_with = "nan_if_null")]
    pub top5_error: f64,
    /// Mean training loss over the epoch.
    #[serde(default, deserialize_with = "nan_if_null")]
    pub train_loss: f64,
    /// Training error over the epoch (fraction), likewise.
    #[serde(default, deserialize_with = "nan_if_null")]
    pub train_error: f64,
    /// Training images per second over the epoch.
    #[serde(default, deserialize_with = "nan_if_null")]
    pub images_per_second: f64,
}

/// A logged training point (means over the iterations since the last one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainPoint {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Iteration at the end of the interval.
    pub iteration: u64,
    /// Learning rate.
    pub lr: f32,
    /// Mean loss.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// Mean error (fraction).
    #[serde(deserialize_with = "nan_if_null")]
    pub error: f64,
    /// Training images per second.
    #[serde(deserialize_with = "nan_if_null")]
    pub images_per_second: f64,
}

/// What one training step reports to an [`Observer`].
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Batch within the epoch (1-based: batches done).
    pub step: usize,
    /// Batches in the epoch.
    pub steps: usize,
    /// Iterations so far.
    pub iteration: u64,
    /// Iterations the run will take.
    pub total_iterations: u64,
    /// Mean loss over the epoch so far, as of the last read-back of the
    /// training metrics (once per log interval); `None` before the first.
    pub mean_loss: Option<f64>,
    /// Accuracy over the epoch so far, likewise.
    pub accuracy: Option<f64>,
    /// Learning rate used.
    pub lr: f32,
    /// Training throughput over the epoch so far.
    pub images_per_second: f64,
}

/// Receives progress (the CLI draws bars from it).
pub trait Observer {
    /// An epoch starts (`start_step` > 0 when resuming mid-epoch).
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _steps: usize, _start_step: usize) {}
    /// A training step finished.
    fn step(&mut self, _r: &StepReport) {}
    /// Evaluation progress.
    fn eval_progress(&mut self, _done: usize, _total: usize) {}
    /// An epoch finished with this result.
    fn epoch_end(&mut self, _epoch: usize, _result: &TestPoint) {}
    /// A line of information.
    fn message(&mut self, _msg: &str) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// The outcome of [`Trainer::run`](super::Trainer::run).
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    /// Epochs completed.
    pub epochs: usize,
    /// Iterations run.
    pub iterations: u64,
    /// Final test result.
    pub test: Option<TestPoint>,
    /// Best test error.
    pub best_test_error: Option<f64>,
    /// Training seconds (excluding evaluation).
    pub train_seconds: f64,
    /// Wall seconds of this invocation.
    pub wall_seconds: f64,
}

/// Sums of training metrics over some steps (kept in a checkpoint for the
/// epoch and the log interval in progress, so that a resumed run logs what an
/// uninterrupted one does).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Sum of batch mean losses times batch sizes.
    pub loss: f64,
    /// Sum of batch errors times batch sizes, summed in floating point as
    /// the logged points always were (not `n - correct`, which can differ in
    /// the last bit).
    pub error: f64,
    /// Images whose label had the largest logit.
    pub correct: usize,
    /// Images.
    pub n: usize,
}

impl Tally {
    pub(super) fn add(&mut self, loss: f32, correct: usize, n: usize) {
        self.loss += loss as f64 * n as f64;
        self.error += (1.0 - correct as f64 / n as f64) * n as f64;
        self.correct += correct;
        self.n += n;
    }

    pub(super) fn mean_loss(&self) -> Option<f64> {
        (self.n > 0).then(|| self.loss / self.n as f64)
    }

    pub(super) fn accuracy(&self) -> Option<f64> {
        (self.n > 0).then(|| self.correct as f64 / self.n as f64)
    }

    pub(super) fn mean_error(&self) -> Option<f64> {
        (self.n > 0).then(|| self.error / self.n as f64)
    }
}

/// The steps' losses and top-1 counts, written by the backend into one small
/// buffer and read back in one transfer.
pub(super) struct StepMetrics<B: Backend> {
    pub(super) buf: B::Buf,
    /// `(batch size, iteration)` of each step written since the last read.
    pub(super) pending: Vec<(usize, u64)>,
    pub(super) capacity: usize,
}

impl<B: Backend> StepMetrics<B> {
    /// Room for `steps` steps (at most 1024; a fuller buffer is read early).
    pub(super) fn new(b: &B, steps: u64) -> Result<Self> {
        let capacity = steps.clamp(1, 1024) as usize;
        Ok(Self { buf: b.alloc(DType::F32, 2 * capacity)?, pending: Vec::new(), capacity })
    }

    /// The slot of the next step (of `n` images, iteration `iteration`).
    pub(super) fn next_slot(&mut self, n: usize, iteration: u64) -> usize {
        self.pending.push((n, iteration));
        self.pending.len() - 1
    }

    pub(super) fn full(&self) -> bool {
        self.pending.len() == self.capacity
    }

    /// The loss of the step in `slot`, read now (a wait for the device).
    pub(super) fn peek_loss(&self, b: &B) -> Result<f32> {
        Ok(b.download(&self.buf)?[2 * (self.pending.len() - 1)])
    }

    /// Forgets the last step (a skipped one): its slot is written again.
    pub(super) fn forget_last(&mut self) {
        self.pending.pop();
    }

    /// `(loss, correct, n, iteration)` of each pending step, in order.
    pub(super) fn read(&mut self, b: &B) -> Result<Vec<(f32, usize, usize, u64)>> {
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let v = b.download(&self.buf)?;
        let out =
            self.pending.iter().enumerate().map(|(i, &(n, it))| (v[2 * i], v[2 * i + 1] as usize, n, it)).collect();
        self.pending.clear();
        Ok(out)
    }
}
