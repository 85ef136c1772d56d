//! The network: stem, residual stages, head.
//!
//! Parameter names are torchvision's (`conv1.weight`, `layer2.0.downsample.0.weight`,
//! `fc.bias`), so torchvision checkpoints load with no remapping and ours load
//! in PyTorch. Pre-activation nets add `bn_final` (the BN-ReLU before pooling).

use super::blocks::{Block, UnitShape};
use super::graph::{Graph, block_name, key};
use super::layers::{BatchNorm2d, Conv2d, GlobalAvgPool, Linear, MaxPool2d, Visit};
use super::memory::{Keep, Pool};
use super::spec::{BlockKind, ResNetSpec, Stem};
use super::state::StateEntry;
use super::summary::Summary;
use super::{Freeze, Mode};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A ResNet on backend `B`.
pub struct Network<B: Backend> {
    /// What it is.
    pub spec: ResNetSpec,
    graph: Graph,
    backend: B,
    /// Stem convolution.
    pub conv1: Conv2d<B>,
    /// Stem norm (absent in pre-activation nets).
    pub bn1: Option<BatchNorm2d<B>>,
    /// Stem max-pool (ImageNet nets).
    pub maxpool: Option<MaxPool2d<B>>,
    /// Residual units, stage after stage.
    pub blocks: Vec<Block<B>>,
    /// `(stage, index)` of each unit, for names (`layer{stage+1}.{index}`).
    pub block_names: Vec<String>,
    /// Final BN-ReLU of pre-activation nets.
    pub bn_final: Option<BatchNorm2d<B>>,
    /// Global average pool.
    pub avgpool: GlobalAvgPool<B>,
    /// Classifier.
    pub fc: Linear<B>,
    checked_input: Option<[usize; 4]>,
    freeze: Freeze,
    /// Released activation and gradient buffers (see `memory`).
    pool: Pool<B>,
    /// The input shape the pool's buffers were made for.
    pool_shape: Option<[usize; 4]>,
    /// A training-mode forward pass whose backward pass has not run yet.
    backward_pending: bool,
    /// The mode of the last forward pass.
    last_mode: Option<Mode>,
    /// Segments recomputed in the backward pass (0: none).
    checkpoint_segments: usize,
}

impl<B: Backend> Network<B> {
    /// Builds the network for `spec` with zero weights (call an `init_*`
    /// method or load a state dict).
    pub fn new(spec: &ResNetSpec, backend: &B) -> Result<Self> {
        let graph = Graph::new(spec)?;
        let b = backend;
        let (conv1, bn1, maxpool) = match spec.stem {
            Stem::Imagenet => (
                Conv2d::new(b, spec.in_channels, spec.stem_width, 7, 2, 3, 1)?,
                Some(BatchNorm2d::new(b, spec.stem_width, true)?),
                Some(MaxPool2d::new(3, 2, 1)),
            ),
            Stem::Cifar => (
                Conv2d::new(b, spec.in_channels, spec.stem_width, 3, 1, 1, 1)?,
                Some(BatchNorm2d::new(b, spec.stem_width, true)?),
                None,
            ),
            Stem::CifarPreact => (Conv2d::new(b, spec.in_channels, spec.stem_width, 3, 1, 1, 1)?, None, None),
        };
        let mut blocks = Vec::new();
        let mut block_names = Vec::new();
        let mut c = spec.stem_width;
        for (s, (&depth, &planes)) in spec.depths.iter().zip(&spec.widths).enumerate() {
            for i in 0..depth {
                let stride = if i == 0 && s > 0 { 2 } else { 1 };
                let inner = spec.bottleneck_width(planes);
                let u = UnitShape { c_in: c, planes, inner, groups: spec.groups, stride };
                blocks.push(Block::new(b, spec.block, spec.shortcut, u)?);
                block_names.push(block_name(s, i));
                c = planes * spec.block.expansion();
            }
        }
        let bn_final = spec.block.is_preact().then(|| BatchNorm2d::new(b, c, true)).transpose()?;
        Ok(Self {
            spec: spec.clone(),
            graph,
            backend: backend.clone(),
            conv1,
            bn1,
            maxpool,
            blocks,
            block_names,
            bn_final,
            avgpool: GlobalAvgPool::new(),
            fc: Linear::new(b, c, spec.num_classes)?,
            checked_input: None,
            freeze: Freeze::None,
            pool: Pool::default(),
            pool_shape: None,
            backward_pending: false,
            last_mode: None,
            checkpoint_segments: 0,
        })
    }
}

/// The stem's output, from its parts (a free function so callers can borrow
/// other fields of the network at the same time).
fn stem_output<'a, B: Backend>(
    conv1: &'a Conv2d<B>,
    bn1: &'a Option<BatchNorm2d<B>>,
    maxpool: &'a Option<MaxPool2d<B>>,
) -> &'a Tensor<B> {
    match (maxpool, bn1) {
        (Some(m), _) => &m.y,
        (None, Some(bn)) => &bn.y,
        (None, None) => &conv1.y,
    }
}

impl<B: Backend> Network<B> {
    /// The backend the network runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// [`Network::visit`] with a fallible `f`: after its first error `f` is
    /// not called again, and that error is returned.
    pub fn try_visit(&mut self, f: &mut dyn FnMut(&str, StateEntry<'_, B>) -> Result<()>) -> Result<()> {
        let mut result = Ok(());
        self.visit(&mut |key, entry| {
            if result.is_ok() {
                result = f(key, entry);
            }
        });
        result
    }

    /// Calls `f` for every entry of the state dict, in torchvision's order.
    pub fn visit(&mut self, f: &mut dyn FnMut(&str, StateEntry<'_, B>)) {
        self.conv1.visit("conv1", f);
        if let Some(bn) = &mut self.bn1 {
            bn.visit("bn1", f);
        }
        for (blk, name) in self.blocks.iter_mut().zip(&self.block_names) {
            blk.visit(name, f);
        }
        if let Some(bn) = &mut self.bn_final {
            bn.visit("bn_final", f);
        }
        self.fc.visit("fc", f);
    }

    /// Number of trainable parameters.
    pub fn num_params(&mut self) -> usize {
        let mut n = 0;
        self.visit(&mut |_, e| {
            if let StateEntry::Param(p) = e {
                n += p.numel();
            }
        });
        n
    }

    /// The module names of the last batch norm in each residual branch.
    pub fn residual_branch_ends(&self) -> Vec<String> {
        let last = match self.spec.block {
            BlockKind::Basic => "bn2",
            BlockKind::Bottleneck => "bn3",
            // Pre-activation branches end in a convolution.
            _ => return Vec::new(),
        };
        self.block_names.iter().map(|n| key(n, last)).collect()
    }

    /// The network's structure, from which its names and shapes come.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Per-layer summary for one `[in_channels, height, width]` image (see [`Graph::summary`]).
    pub fn summary(&self, height: usize, width: usize) -> Result<Summary> {
        self.graph.summary(height, width)
    }

    /// Checks that `shape` (NHWC) is an input this network accepts.
    pub fn check_input(&mut self, shape: [usize; 4]) -> Result<()> {
        if self.checked_input == Some(shape) {
            return Ok(());
        }
        if shape[3] != self.spec.in_channels {
            return Err(Error::Invalid(format!(
                "{} expects {}-channel input, got {} channels",
                self.spec.name, self.spec.in_channels, shape[3]
            )));
        }
        if shape[0] == 0 {
            return Err(Error::Invalid("empty batch".into()));
        }
        self.graph.shapes(shape[1], shape[2])?;
        self.checked_input = Some(shape);
        Ok(())
    }

    /// Runs the network on an NHWC batch and returns the logits `[n, 1, 1, classes]`.
    pub fn forward(&mut self, x: &Tensor<B>, mode: Mode) -> Result<&Tensor<B>> {
        self.check_input(x.shape)?;
        // Another batch shape (a short last batch, evaluation) needs buffers of
        // other lengths: the pool's are dropped rather than kept beside them.
        if self.pool_shape != Some(x.shape) {
            self.pool = Pool::default();
            self.pool_shape = Some(x.shape);
        }
        // Filters an evaluation pass kept would sit beside the training buffers
        // (frozen layers prepare theirs again once, then keep them).
        if mode != Mode::Eval && self.last_mode == Some(Mode::Eval) {
            self.conv1.release_filters();
            self.blocks.iter_mut().flat_map(Block::convs_mut).for_each(Conv2d::release_filters);
        }
        self.last_mode = Some(mode);
        self.backward_pending = mode == Mode::Train;
        let b = self.backend.clone();
        b.scope(|| self.forward_ops(x, mode))
    }

    /// [`Network::forward`]'s layers, in the backend's scope. Buffers come
    /// from the pool; what the backward pass needs stays (see `memory`).
    fn forward_ops(&mut self, x: &Tensor<B>, mode: Mode) -> Result<&Tensor<B>> {
        // Frozen parts run as in evaluation: running statistics, nothing kept for backward.
        let frozen = self.frozen_blocks();
        let kept = self.kept_outputs(mode);
        let b = &self.backend;
        let pool = &mut self.pool;
        let mode_of = |part_frozen: bool| if part_frozen { Mode::Eval } else { mode };
        let stem_mode = mode_of(frozen.is_some());
        let shape = self.conv1.out_shape(x.shape);
        pool.lend(&mut self.conv1.y, shape);
        let (mut h, st) = self.conv1.forward_for_norm(b, x, stem_mode)?;
        if let Some(bn) = &mut self.bn1 {
            pool.lend(&mut bn.y, shape);
            h = bn.forward_with_stats(b, h, st, None, stem_mode)?;
        }
        if let Some(m) = &mut self.maxpool {
            let out = m.out_shape(shape);
            pool.lend(&mut m.y, out);
            m.forward(b, h)?;
            // The max pool's input is recomputed for its backward pass.
            if let Some(bn) = &mut self.bn1 {
                pool.give(&mut bn.y);
            }
        }
        if stem_mode == Mode::Eval && (self.maxpool.is_some() || self.bn1.is_some()) {
            pool.give(&mut self.conv1.y);
        }
        let keep = if self.checkpoint_segments > 0 { Keep::Output } else { Keep::Backward };
        for i in 0..self.blocks.len() {
            let (before, rest) = self.blocks.split_at_mut(i);
            let input = before.last().map_or(stem_output(&self.conv1, &self.bn1, &self.maxpool), |p| p.output());
            rest[0].forward(b, input, mode_of(frozen.is_some_and(|k| i < k)), pool, keep)?;
            if i > 0 && !kept[i - 1] {
                before[i - 1].give_output(pool);
            }
        }
        let mut h = match self.blocks.last() {
            Some(blk) => blk.output(),
            None => stem_output(&self.conv1, &self.bn1, &self.maxpool),
        };
        if let Some(bn) = &mut self.bn_final {
            pool.lend(&mut bn.y, h.shape);
            h = bn.forward(b, h, None, mode_of(self.freeze == Freeze::Backbone))?;
        }
        let h = self.avgpool.forward(b, h)?;
        self.fc.forward(b, h)
    }

    /// Which units' outputs a forward pass in `mode` keeps after the next unit
    /// has read them: the inputs of units that run backward, unless their
    /// segment is recomputed, then only the segments' inputs.
    fn kept_outputs(&self, mode: Mode) -> Vec<bool> {
        let n = self.blocks.len();
        if mode == Mode::Eval {
            return vec![false; n];
        }
        let first = self.frozen_blocks().unwrap_or(0).min(n);
        // Unit i's output is read by unit i + 1's backward pass and by its own.
        let mut kept: Vec<bool> = (0..n).map(|i| i + 1 >= first && self.checkpoint_segments == 0).collect();
        if first > 0 {
            kept[first - 1] = true;
        }
        for seg in self.segments() {
            kept[seg.end - 1] = true;
        }
        kept
    }

    /// The trainable units cut into the recomputed segments (one segment
    /// holding them all when there is no recomputation).
    fn segments(&self) -> Vec<std::ops::Range<usize>> {
        self.segments_of(self.checkpoint_segments)
    }

    /// The trainable units cut into `k` segments of nearly equal length.
    pub(crate) fn segments_of(&self, k: usize) -> Vec<std::ops::Range<usize>> {
        let n = self.blocks.len();
        let first = self.frozen_blocks().unwrap_or(0).min(n);
        let units = n - first;
        let k = k.clamp(1, units.max(1));
        (0..k).map(|s| first + s * units / k..first + (s + 1) * units / k).filter(|r| !r.is_empty()).collect()
    }

    /// Recomputes `k` segments of units in the backward pass instead of keeping
    /// their activations: about `k` unit outputs and one segment's activations
    /// are then kept, for one more forward pass of the units (0 turns it off).
    /// Gradients, statistics and weights are the same bit for bit.
    pub fn set_checkpoint_segments(&mut self, k: usize) {
        self.checkpoint_segments = k;
    }

    /// The number of recomputed segments (0: none).
    pub fn checkpoint_segments(&self) -> usize {
        self.checkpoint_segments
    }

    /// Back-propagates `dlogits` (the loss gradient at the logits) after a
    /// training-mode [`forward`](Self::forward) of the same `x`, accumulating
    /// every parameter gradient.
    pub fn backward(&mut self, x: &Tensor<B>, dlogits: &Tensor<B>) -> Result<()> {
        // What the backward pass reads was kept by that forward pass and is
        // released as it goes: it runs once per training-mode forward pass.
        if !std::mem::take(&mut self.backward_pending) {
            return Err(Error::Invalid("backward needs a training-mode forward pass of its own first".into()));
        }
        if Some(x.shape) != self.pool_shape {
            return Err(Error::Invalid(format!("backward of a {:?} batch after a forward pass of another", x.shape)));
        }
        let b = self.backend.clone();
        b.scope(|| self.backward_ops(x, dlogits))
    }

    /// [`Network::backward`]'s layers, in the backend's scope. Each unit's
    /// buffers go back to the pool once its backward pass is done.
    fn backward_ops(&mut self, x: &Tensor<B>, dlogits: &Tensor<B>) -> Result<()> {
        let frozen = self.frozen_blocks();
        let segments = self.segments();
        let b = &self.backend;
        let pool = &mut self.pool;
        let nblocks = self.blocks.len();
        let features = match nblocks {
            0 => stem_output(&self.conv1, &self.bn1, &self.maxpool),
            n => self.blocks[n - 1].output(),
        };
        let pooled_in = self.bn_final.as_ref().map_or(features, |bn| &bn.y);
        self.fc.backward(b, &self.avgpool.y, dlogits)?;
        // Nothing below a frozen part needs a gradient: the backward pass stops there.
        if self.freeze == Freeze::Backbone {
            return Ok(());
        }
        pool.lend(&mut self.avgpool.dx, pooled_in.shape);
        self.avgpool.backward(b, pooled_in, &self.fc.dx)?;
        if let Some(bn) = &mut self.bn_final {
            pool.lend(&mut bn.dx, features.shape);
            bn.backward(b, features, &self.avgpool.dx)?;
            pool.give(&mut self.avgpool.dx);
            pool.give(&mut bn.y);
        }
        let recompute = self.checkpoint_segments > 0;
        for seg in segments.into_iter().rev() {
            if recompute {
                for i in seg.clone() {
                    let (before, rest) = self.blocks.split_at_mut(i);
                    let input =
                        before.last().map_or(stem_output(&self.conv1, &self.bn1, &self.maxpool), |p| p.output());
                    rest[0].forward(b, input, Mode::Recompute, pool, Keep::Backward)?;
                }
            }
            for i in seg.rev() {
                let (before, rest) = self.blocks.split_at_mut(i);
                let (cur, after) = rest.split_first_mut().expect("i < nblocks");
                let input = before.last().map_or(stem_output(&self.conv1, &self.bn1, &self.maxpool), |p| p.output());
                let head_grad = self.bn_final.as_mut().map_or(&mut self.avgpool.dx, |bn| &mut bn.dx);
                let dy = after.first().map_or(&*head_grad, |n| n.input_grad());
                cur.backward(b, input, dy, pool)?;
                match after.first_mut() {
                    Some(next) => next.give_input_grad(pool),
                    None => pool.give(head_grad),
                }
                cur.give_output(pool);
            }
        }
        if let Some(k) = frozen {
            // The last frozen unit's output was the first trained unit's input.
            if let Some(blk) = k.checked_sub(1).map(|j| &mut self.blocks[j]) {
                blk.give_output(pool);
            }
            if let Some(blk) = self.blocks.get_mut(k) {
                blk.give_input_grad(pool);
            }
            return Ok(());
        }
        self.stem_backward(x)
    }

    /// The stem's backward pass; then every buffer of the pass is back in the pool.
    fn stem_backward(&mut self, x: &Tensor<B>) -> Result<()> {
        let b = &self.backend;
        let pool = &mut self.pool;
        let head = self.bn_final.as_mut().map_or(&mut self.avgpool.dx, |bn| &mut bn.dx);
        let mut g = self.blocks.first().map_or(&*head, |blk| blk.input_grad());
        if let Some(m) = &mut self.maxpool {
            let bn = self.bn1.as_mut().expect("a stem with a max pool has a norm");
            pool.lend(&mut bn.y, self.conv1.y.shape);
            let pre = bn.recompute(b, &self.conv1.y)?;
            pool.lend(&mut m.dx, pre.shape);
            m.backward(b, pre, g)?;
            g = &m.dx;
        }
        if let Some(bn) = &mut self.bn1 {
            pool.lend(&mut bn.dx, self.conv1.y.shape);
            bn.backward(b, &self.conv1.y, g)?;
            g = &bn.dx;
        }
        self.conv1.backward(b, x, g, false)?;
        match self.blocks.first_mut() {
            Some(blk) => blk.give_input_grad(pool),
            None => pool.give(head),
        }
        if let Some(m) = &mut self.maxpool {
            pool.give(&mut m.y);
            pool.give(&mut m.dx);
        }
        if let Some(bn) = &mut self.bn1 {
            pool.give(&mut bn.y);
            pool.give(&mut bn.dx);
        }
        pool.give(&mut self.conv1.y);
        Ok(())
    }

    /// Freezes the parts `f` names for fine-tuning (see [`Freeze`]).
    pub fn set_freeze(&mut self, f: Freeze) -> Result<()> {
        let stages = self.spec.depths.len();
        let wanted = match f {
            Freeze::Layer1 => 1,
            Freeze::Layer2 => 2,
            Freeze::Layer3 => 3,
            _ => 0,
        };
        if wanted > stages {
            return Err(Error::Invalid(format!(
                "{} has {stages} stages: it has no layer{wanted} to freeze",
                self.spec.name
            )));
        }
        self.freeze = f;
        Ok(())
    }

    /// What is frozen.
    pub fn freeze(&self) -> Freeze {
        self.freeze
    }

    /// Residual units frozen (from the first), with the stem; `None` when
    /// nothing is.
    pub(crate) fn frozen_blocks(&self) -> Option<usize> {
        let stages = |n: usize| self.spec.depths[..n.min(self.spec.depths.len())].iter().sum();
        match self.freeze {
            Freeze::None => None,
            Freeze::Stem => Some(0),
            Freeze::Layer1 => Some(stages(1)),
            Freeze::Layer2 => Some(stages(2)),
            Freeze::Layer3 => Some(stages(3)),
            Freeze::Backbone => Some(self.blocks.len()),
        }
    }

    /// Whether the parameter or buffer `key` (torchvision's name) is frozen.
    pub fn is_frozen(&self, key: &str) -> bool {
        let Some(k) = self.frozen_blocks() else { return false };
        if self.freeze == Freeze::Backbone {
            return !key.starts_with("fc.");
        }
        key.starts_with("conv1.")
            || key.starts_with("bn1.")
            || self.block_names[..k].iter().any(|n| key.strip_prefix(n.as_str()).is_some_and(|r| r.starts_with('.')))
    }

    /// Zeroes (and allocates, the first time) every parameter gradient.
    pub fn zero_grad(&mut self) -> Result<()> {
        let b = self.backend.clone();
        self.try_visit(&mut |_, e| match e {
            StateEntry::Param(p) => p.zero_grad(&b),
            _ => Ok(()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ARCHS, ShortcutKind};

    /// The explicit layers carry exactly the graph's state: the same keys, in
    /// the same order, with the same shapes, for every architecture and every
    /// shortcut option.
    #[test]
    fn state_names_and_shapes_are_the_graphs() {
        let b = crate::backend::Reference::new();
        let mut specs: Vec<ResNetSpec> = ARCHS.iter().map(|a| ResNetSpec::named(a).unwrap()).collect();
        for arch in ["resnet20", "resnet18", "resnet50", "preact_resnet110", "preact_resnet164"] {
            for sc in [ShortcutKind::None, ShortcutKind::A, ShortcutKind::B, ShortcutKind::C] {
                let mut s = ResNetSpec::named(arch).unwrap();
                (s.shortcut, s.num_classes, s.in_channels) = (sc, 7, 1);
                specs.push(s);
            }
        }
        for spec in specs {
            let mut net = Network::new(&spec, &b).unwrap();
            let mut got = Vec::new();
            net.visit(&mut |k, e| {
                let shape = match e {
                    StateEntry::Param(p) => p.shape.clone(),
                    StateEntry::Buffer(_, len) => vec![len],
                    StateEntry::Counter(_) => vec![],
                };
                got.push((k.to_string(), shape));
            });
            let want: Vec<_> = net.graph().params().map(|p| (p.key, p.shape)).collect();
            assert_eq!(got, want, "{} with shortcut {:?}", spec.name, spec.shortcut);
        }
    }
}
