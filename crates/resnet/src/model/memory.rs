//! The training memory plan: what a training pass keeps for its backward pass,
//! and the pool through which every other activation and gradient buffer is
//! recycled.
//!
//! A training forward pass keeps, per residual unit, only what the backward
//! pass reads and cannot recompute elementwise:
//!
//! * the output of every convolution (the input of the batch norm after it:
//!   its backward pass needs the normalised input, which a ReLU destroys);
//! * the unit's output (the next unit's input, and the ReLU mask after the
//!   residual sum); in pre-activation units the sum, not the last convolution's
//!   output, which nothing reads again.
//!
//! A batch norm's output without a residual (`relu(bn(conv(x)))`, the next
//! convolution's input) is released as soon as that convolution has run and
//! recomputed from the kept convolution output and the saved batch statistics
//! when the backward pass reaches it ([`BatchNorm2d::recompute`]: the same
//! operations on the same values, so the same bits). The option-A and projection
//! shortcuts' outputs are released after the sum. Gradients live only while a
//! unit's backward pass runs (its input gradient until the unit before it has
//! consumed it), and a unit's kept activations go back to the pool as soon as
//! its backward pass is done, so later units' gradients reuse them.
//!
//! With recomputation by segments ([`Network::set_checkpoint_segments`]), a
//! training forward pass keeps only the outputs of the last unit of each
//! segment; the backward pass runs each segment's forward pass again
//! ([`Mode::Recompute`]: batch statistics, running statistics untouched) with
//! everything above kept, then its backward pass. Every kernel is deterministic,
//! so gradients, statistics and updated weights are bit-identical.
//!
//! [`BatchNorm2d::recompute`]: super::layers::BatchNorm2d::recompute
//! [`Network::set_checkpoint_segments`]: super::Network::set_checkpoint_segments
//! [`Mode::Recompute`]: super::Mode::Recompute

use super::layers::Conv2d;
use super::{Mode, Network};
use crate::backend::counting::Counting;
use crate::backend::{Backend, FilterUse};
use crate::error::Result;
use crate::tensor::Tensor;

/// What a unit's training forward pass keeps for its backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Convolution outputs and the unit's output (see the module's description).
    Backward,
    /// The unit's output alone (evaluation, frozen units, and units whose
    /// segment is recomputed before its backward pass).
    Output,
}

/// Released activation and gradient buffers, lent out again by size.
///
/// A buffer is lent only for a tensor of its own length, so it needs neither
/// an allocation nor a fill, and every step of a batch shape makes the same
/// requests: after the first step the pool holds, for each length, the most
/// buffers of that length alive at once, and nothing is allocated again. A
/// new batch shape (a short last batch, an evaluation pass) replaces the pool
/// ([`Network::forward`]) rather than adding a second set of lengths. (Lending a larger buffer for
/// a smaller tensor would save memory across stages, but the lengths would
/// then drift from step to step and the pool grow with them.) With
/// recomputation, the pool therefore holds per stage the most that any one
/// segment needs of that stage, which the plan counts.
pub struct Pool<B: Backend> {
    free: Vec<Tensor<B>>,
}

impl<B: Backend> Default for Pool<B> {
    fn default() -> Self {
        Self { free: Vec::new() }
    }
}

impl<B: Backend> Pool<B> {
    /// Gives `t` a pooled buffer for a tensor of `shape` when it holds none
    /// and the pool has one of that length (the layer that writes `t` then
    /// reshapes it at no cost, or allocates).
    pub fn lend(&mut self, t: &mut Tensor<B>, shape: [usize; 4]) {
        if !t.is_empty() {
            return;
        }
        let len: usize = shape.iter().product();
        if let Some(i) = self.free.iter().rposition(|f| f.len() == len) {
            *t = self.free.swap_remove(i);
        }
    }

    /// Takes `t`'s buffer back, leaving it empty.
    pub fn give(&mut self, t: &mut Tensor<B>) {
        if !t.is_empty() {
            self.free.push(std::mem::take(t));
        }
    }
}

/// The memory a training step is planned to take (bytes; f32 throughout),
/// by part, before anything runs: what `resnet summary --train` prints and
/// what `train --memory-budget` chooses the number of segments from.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    /// Images per step.
    pub batch: usize,
    /// Input `(height, width)`.
    pub input: (usize, usize),
    /// Recomputed segments (0: none).
    pub segments: usize,
    /// Activations kept from the forward pass for the backward pass, per part
    /// (`stem`, `layer1`, ..., `head`): with recomputation, the segments' inputs.
    pub kept: Vec<(String, u64)>,
    /// Weights, gradients, momentum buffers and batch-norm statistics.
    pub params: u64,
    /// The largest filter prepared for a kernel (one is alive at a time).
    pub filters: u64,
    /// The rest of the counted peak: buffers alive around one unit (its
    /// gradients and recomputed norm outputs, by length: the pool keeps them
    /// per length), the input batch, and with recomputation the segments'
    /// activations while they are back-propagated.
    pub working: u64,
    /// The counted peak (the parts above add up to it).
    total: u64,
}

impl MemoryPlan {
    /// The planned peak.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The smallest number of segments whose plan fits `budget` bytes for
    /// `net` (0 when no recomputation is needed), or `None` when none does.
    pub fn segments_for<B: Backend>(
        net: &Network<B>,
        batch: usize,
        (h, w): (usize, usize),
        momentum: bool,
        budget: u64,
    ) -> Result<Option<usize>> {
        if Self::new(net, batch, (h, w), 0, momentum)?.total() <= budget {
            return Ok(Some(0));
        }
        // Every unit is recomputed once whatever the number of segments, so the
        // fewest that fit are as good as any (memory falls as segments grow
        // towards sqrt(units), then rises again).
        for k in 1..=net.blocks.len() {
            if Self::new(net, batch, (h, w), k, momentum)?.total() <= budget {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }

    /// The plan of a training step of `net` on `batch` images of `h x w`, with
    /// `segments` recomputed segments and, when `momentum`, SGD momentum buffers.
    ///
    /// The total is measured, not modelled: two training steps of a copy of
    /// the network (same architecture, freeze and segments) run on a
    /// [`Counting`] backend, which computes nothing and counts every buffer
    /// and prepared filter, so the pool's lends and gives are the real ones.
    /// The parts are then told apart from the shapes.
    pub fn new<B: Backend>(
        net: &Network<B>,
        batch: usize,
        (h, w): (usize, usize),
        segments: usize,
        momentum: bool,
    ) -> Result<Self> {
        net.graph().shapes(h, w)?;
        const F32: u64 = 4;
        let len = |s: [usize; 4]| s.iter().product::<usize>() as u64;
        let b = net.backend();
        // The peak of two steps (the pool reaches its size in the first).
        let counting = Counting::new(b.clone());
        let mut dry = Network::new(&net.spec, &counting)?;
        dry.set_freeze(net.freeze())?;
        dry.set_checkpoint_segments(segments);
        let x = Tensor::zeros(&counting, [batch, h, w, net.spec.in_channels])?;
        for _ in 0..2 {
            dry.zero_grad()?;
            let shape = dry.forward(&x, Mode::Train)?.shape;
            let dl = Tensor::zeros(&counting, shape)?;
            dry.backward(&x, &dl)?;
        }
        let trainable: u64 = net.graph().params().filter(|p| p.role.trainable()).map(|p| p.numel() as u64).sum();
        let all: u64 = net.graph().params().map(|p| p.numel() as u64).sum();
        let momentum_bytes = if momentum { F32 * trainable } else { 0 };
        let total = counting.meter().get().1 + momentum_bytes;

        // The parts: the largest prepared filter, kept activations per stage.
        let mut filters = 0u64;
        let mut add_filter = |conv: &Conv2d<B>, x: [usize; 4]| {
            let d = conv.desc(x);
            let uses = [FilterUse::Forward, FilterUse::BackwardData];
            filters = uses.into_iter().map(|u| b.prepared_filter_len(&d, u) as u64).fold(filters, u64::max);
        };
        let x = [batch, h, w, net.spec.in_channels];
        add_filter(&net.conv1, x);
        let s = net.conv1.out_shape(x);
        let (mut stem, mut shape) = (len(s), s);
        if let Some(m) = &net.maxpool {
            shape = m.out_shape(s);
            stem += len(shape);
        } else if net.bn1.is_some() {
            stem += len(s);
        }
        // Frozen units keep nothing but the input of the first trained one.
        let first = net.frozen_blocks().map(|k| k.min(net.blocks.len()));
        let stem = match first {
            None => stem,
            Some(0) => len(shape),
            Some(_) => 0,
        };
        let first = first.unwrap_or(0);
        let mut kept = vec![("stem".to_string(), F32 * stem)];
        let segs = net.segments_of(segments);
        for (i, blk) in net.blocks.iter().enumerate() {
            let u = blk.plan(shape);
            blk.visit_convs(&mut |conv, x| add_filter(conv, x), shape);
            shape = u.out;
            let stage = net.block_names[i].split('.').next().unwrap_or("units").to_string();
            let bytes = match segments {
                _ if i + 1 == first => len(u.out),
                _ if i < first => 0,
                0 => u.kept as u64 + len(u.out),
                _ if segs.iter().any(|r| r.end == i + 1) => len(u.out),
                _ => 0,
            };
            match kept.last_mut() {
                Some((name, b)) if *name == stage => *b += F32 * bytes,
                _ => kept.push((stage, F32 * bytes)),
            }
        }
        // The head: the final norm's output, the pooled features, the logits.
        let c = shape[3] as u64;
        let head =
            len(shape) * u64::from(net.bn_final.is_some()) + 2 * batch as u64 * (c + net.spec.num_classes as u64);
        kept.push(("head".to_string(), F32 * head));
        let params = F32 * (all + trainable) + momentum_bytes;
        let filters = F32 * filters;
        let known = kept.iter().map(|(_, b)| b).sum::<u64>() + params + filters;
        Ok(Self { batch, input: (h, w), segments, kept, params, filters, working: total.saturating_sub(known), total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Reference;
    use crate::model::ResNetSpec;

    /// One training step of `net` on a batch of `n` (nothing computed: the
    /// counting backend), returning the bytes held afterwards.
    fn step(net: &mut Network<Counting<Reference>>, n: usize) -> u64 {
        let b = net.backend().clone();
        let x = Tensor::zeros(&b, [n, 16, 16, 3]).unwrap();
        net.zero_grad().unwrap();
        let shape = net.forward(&x, Mode::Train).unwrap().shape;
        let dl = Tensor::zeros(&b, shape).unwrap();
        net.backward(&x, &dl).unwrap();
        b.meter().get().0
    }

    /// A short last batch (or an evaluation batch) must not leave a second set
    /// of buffers beside the first: the pool is replaced when the shape changes.
    #[test]
    fn a_new_batch_shape_replaces_the_pools_buffers() {
        let b = Counting::new(Reference::new());
        let mut net = Network::new(&ResNetSpec::named("resnet8").unwrap(), &b).unwrap();
        let held = step(&mut net, 8);
        assert_eq!(step(&mut net, 8), held, "a second step of the same shape allocates nothing");
        let short = step(&mut net, 5);
        assert!(short < held, "the short batch's buffers replace the full ones ({short} vs {held})");
        assert_eq!(step(&mut net, 8), held);
    }

    /// An evaluation pass keeps its prepared filters (for the next batch); the
    /// next training pass releases them, so they never sit beside its buffers.
    #[test]
    fn filters_kept_by_an_evaluation_pass_are_released_for_training() {
        let b = Counting::new(Reference::new());
        let mut net = Network::new(&ResNetSpec::named("resnet8").unwrap(), &b).unwrap();
        let held = step(&mut net, 8);
        net.forward(&Tensor::zeros(&b, [8, 16, 16, 3]).unwrap(), Mode::Eval).unwrap();
        assert!(b.meter().get().0 > held, "evaluation keeps its filters");
        assert_eq!(step(&mut net, 8), held);
    }

    /// The backward pass reads what its own training-mode forward pass kept.
    #[test]
    fn backward_needs_a_training_forward_pass_of_its_own() {
        let b = Counting::new(Reference::new());
        let mut net = Network::new(&ResNetSpec::named("resnet8").unwrap(), &b).unwrap();
        let x = Tensor::zeros(&b, [2, 16, 16, 3]).unwrap();
        let dl = Tensor::zeros(&b, [2, 1, 1, 10]).unwrap();
        assert!(net.backward(&x, &dl).is_err(), "no forward pass yet");
        net.forward(&x, Mode::Train).unwrap();
        net.backward(&x, &dl).unwrap();
        assert!(net.backward(&x, &dl).is_err(), "twice");
        net.forward(&x, Mode::Train).unwrap();
        net.forward(&x, Mode::Eval).unwrap();
        assert!(net.backward(&x, &dl).is_err(), "after an evaluation pass");
    }
}
