//! The network: stem, residual stages, head.
//!
//! Parameter names are torchvision's (`conv1.weight`, `layer2.0.downsample.0.weight`,
//! `fc.bias`), so torchvision checkpoints load with no remapping and ours load
//! in PyTorch. Pre-activation nets add `bn_final` (the BN-ReLU before pooling).

use super::blocks::{Block, UnitShape};
use super::graph::{Graph, block_name, key};
use super::layers::{BatchNorm2d, Conv2d, GlobalAvgPool, Linear, MaxPool2d, Visit};
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
        let b = self.backend.clone();
        b.scope(|| self.forward_ops(x, mode))
    }

    /// [`Network::forward`]'s layers, in the backend's scope.
    fn forward_ops(&mut self, x: &Tensor<B>, mode: Mode) -> Result<&Tensor<B>> {
        let b = &self.backend;
        // Frozen parts run as in evaluation: running statistics, nothing kept for backward.
        let frozen = self.frozen_blocks();
        let mode_of = |part_frozen: bool| if part_frozen { Mode::Eval } else { mode };
        let stem_mode = mode_of(frozen.is_some());
        let (mut h, st) = self.conv1.forward_for_norm(b, x, stem_mode)?;
        if let Some(bn) = &mut self.bn1 {
            h = bn.forward_with_stats(b, h, st, None, stem_mode)?;
        }
        if let Some(m) = &mut self.maxpool {
            h = m.forward(b, h)?;
        }
        for (i, blk) in self.blocks.iter_mut().enumerate() {
            h = blk.forward(b, h, mode_of(frozen.is_some_and(|k| i < k)))?;
        }
        if let Some(bn) = &mut self.bn_final {
            h = bn.forward(b, h, None, mode_of(self.freeze == Freeze::Backbone))?;
        }
        let h = self.avgpool.forward(b, h)?;
        self.fc.forward(b, h)
    }

    /// Back-propagates `dlogits` (the loss gradient at the logits) after a
    /// training-mode [`forward`](Self::forward) of the same `x`, accumulating
    /// every parameter gradient.
    pub fn backward(&mut self, x: &Tensor<B>, dlogits: &Tensor<B>) -> Result<()> {
        let b = self.backend.clone();
        b.scope(|| self.backward_ops(x, dlogits))
    }

    /// [`Network::backward`]'s layers, in the backend's scope.
    fn backward_ops(&mut self, x: &Tensor<B>, dlogits: &Tensor<B>) -> Result<()> {
        let b = &self.backend;
        let nblocks = self.blocks.len();
        let features = match nblocks {
            0 => stem_output(&self.conv1, &self.bn1, &self.maxpool),
            n => self.blocks[n - 1].output(),
        };
        let pooled_in = self.bn_final.as_ref().map_or(features, |bn| &bn.y);
        self.fc.backward(b, &self.avgpool.y, dlogits)?;
        // Nothing below a frozen part needs a gradient: the backward pass stops there.
        let frozen = self.frozen_blocks();
        if self.freeze == Freeze::Backbone {
            return Ok(());
        }
        self.avgpool.backward(b, pooled_in, &self.fc.dx)?;
        if let Some(bn) = &mut self.bn_final {
            bn.backward(b, features, &self.avgpool.dx)?;
        }
        let head_grad = self.bn_final.as_ref().map_or(&self.avgpool.dx, |bn| &bn.dx);
        let stem_out = stem_output(&self.conv1, &self.bn1, &self.maxpool);
        for i in (frozen.unwrap_or(0)..nblocks).rev() {
            let (before, rest) = self.blocks.split_at_mut(i);
            let (cur, after) = rest.split_first_mut().expect("i < nblocks");
            let input = before.last().map_or(stem_out, |p| p.output());
            let dy = after.first().map_or(head_grad, |n| n.input_grad());
            cur.backward(b, input, dy)?;
        }
        if frozen.is_some() {
            return Ok(());
        }
        let mut g = self.blocks.first().map_or(head_grad, |blk| blk.input_grad());
        if let Some(m) = &mut self.maxpool {
            let pre = self.bn1.as_ref().map_or(&self.conv1.y, |bn| &bn.y);
            m.backward(b, pre, g)?;
            g = &m.dx;
        }
        if let Some(bn) = &mut self.bn1 {
            bn.backward(b, &self.conv1.y, g)?;
            g = &bn.dx;
        }
        self.conv1.backward(b, x, g, false)
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
    fn frozen_blocks(&self) -> Option<usize> {
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
