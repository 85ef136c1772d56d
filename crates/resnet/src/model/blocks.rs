//! Residual units. Each reads like its paper:
//!
//! * basic (He 2015): `out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`
//! * bottleneck (He 2015; torchvision "v1.5", stride on the 3x3):
//!   `out = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))`
//! * pre-activation (He 2016): `p = relu(bn1(x))`,
//!   `out = conv2(relu(bn2(conv1(p)))) + shortcut(x or p)`
//!
//! The residual add and the final ReLU are fused into the last batch norm
//! (`BatchNorm2d`'s tail); backward sends the gradient at the sum down both the
//! residual branch and the shortcut and adds the two input gradients.

use super::Mode;
use super::graph::key;
use super::layers::{BatchNorm2d, Conv2d, PadShortcut, Visit, take};
use super::memory::{Keep, Pool};
use super::spec::{BlockKind, ShortcutKind};
use super::state::StateEntry;
use crate::backend::Backend;
use crate::error::Result;
use crate::tensor::Tensor;

/// The shortcut of a post-activation block.
// A network holds a few hundred blocks at most: variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Shortcut<B: Backend> {
    /// Plain network: no shortcut.
    None,
    /// Identity.
    Identity,
    /// Option A: subsample and zero-pad.
    Pad(PadShortcut<B>),
    /// Projection: 1x1 conv + BN (torchvision's `downsample.0`, `downsample.1`).
    Projection(Conv2d<B>, BatchNorm2d<B>),
}

/// The shortcut of a pre-activation unit.
pub enum PreShortcut<B: Backend> {
    /// Plain network: no shortcut.
    None,
    /// Identity on the unit's input.
    Identity,
    /// Option A on the unit's input.
    Pad(PadShortcut<B>),
    /// 1x1 conv on the pre-activated input (He 2016's code), `downsample.0`.
    Projection(Conv2d<B>),
}

/// What the builder needs to know about one unit.
#[derive(Clone, Copy, Debug)]
pub struct UnitShape {
    /// Input channels.
    pub c_in: usize,
    /// `planes` of the stage.
    pub planes: usize,
    /// Bottleneck inner width.
    pub inner: usize,
    /// Groups of the 3x3 conv.
    pub groups: usize,
    /// Stride of the unit.
    pub stride: usize,
}

/// What a training forward pass keeps of one unit (elements, f32).
#[derive(Clone, Copy, Debug)]
pub struct UnitMemory {
    /// The output's shape (kept when the unit runs backward, or ends a segment).
    pub out: [usize; 4],
    /// Activations kept for the backward pass besides the output.
    pub kept: usize,
}

/// One residual unit of any kind.
#[allow(clippy::large_enum_variant)]
pub enum Block<B: Backend> {
    /// Post-activation basic block.
    Basic(BasicBlock<B>),
    /// Post-activation bottleneck.
    Bottleneck(Bottleneck<B>),
    /// Pre-activation unit (basic or bottleneck).
    PreAct(PreActBlock<B>),
}

fn make_shortcut<B: Backend>(
    b: &B,
    kind: ShortcutKind,
    c_in: usize,
    c_out: usize,
    stride: usize,
) -> Result<Shortcut<B>> {
    let reshape = stride != 1 || c_in != c_out;
    Ok(match kind {
        ShortcutKind::None => Shortcut::None,
        ShortcutKind::A if reshape => Shortcut::Pad(PadShortcut::new(c_in, c_out, stride)),
        ShortcutKind::B if reshape => projection(b, c_in, c_out, stride)?,
        ShortcutKind::C => projection(b, c_in, c_out, stride)?,
        _ => Shortcut::Identity,
    })
}

fn projection<B: Backend>(b: &B, c_in: usize, c_out: usize, stride: usize) -> Result<Shortcut<B>> {
    Ok(Shortcut::Projection(Conv2d::new(b, c_in, c_out, 1, stride, 0, 1)?, BatchNorm2d::new(b, c_out, false)?))
}

impl<B: Backend> Block<B> {
    /// Builds a unit of `kind`.
    pub fn new(b: &B, kind: BlockKind, sc: ShortcutKind, u: UnitShape) -> Result<Self> {
        let c_out = u.planes * kind.expansion();
        // Plain networks have no sum, so their last norm carries the ReLU alone.
        Ok(match kind {
            BlockKind::Basic => Block::Basic(BasicBlock {
                conv1: Conv2d::new(b, u.c_in, u.planes, 3, u.stride, 1, 1)?,
                bn1: BatchNorm2d::new(b, u.planes, true)?,
                conv2: Conv2d::new(b, u.planes, u.planes, 3, 1, 1, 1)?,
                bn2: BatchNorm2d::new(b, u.planes, true)?,
                shortcut: make_shortcut(b, sc, u.c_in, c_out, u.stride)?,
            }),
            BlockKind::Bottleneck => Block::Bottleneck(Bottleneck {
                conv1: Conv2d::new(b, u.c_in, u.inner, 1, 1, 0, 1)?,
                bn1: BatchNorm2d::new(b, u.inner, true)?,
                conv2: Conv2d::new(b, u.inner, u.inner, 3, u.stride, 1, u.groups)?,
                bn2: BatchNorm2d::new(b, u.inner, true)?,
                conv3: Conv2d::new(b, u.inner, c_out, 1, 1, 0, 1)?,
                bn3: BatchNorm2d::new(b, c_out, true)?,
                shortcut: make_shortcut(b, sc, u.c_in, c_out, u.stride)?,
            }),
            BlockKind::PreactBasic | BlockKind::PreactBottleneck => {
                let reshape = u.stride != 1 || u.c_in != c_out;
                let shortcut = match sc {
                    ShortcutKind::None => PreShortcut::None,
                    ShortcutKind::A if reshape => PreShortcut::Pad(PadShortcut::new(u.c_in, c_out, u.stride)),
                    ShortcutKind::B if !reshape => PreShortcut::Identity,
                    ShortcutKind::A => PreShortcut::Identity,
                    _ => PreShortcut::Projection(Conv2d::new(b, u.c_in, c_out, 1, u.stride, 0, 1)?),
                };
                // (input channels, output channels, kernel, stride, groups) of each BN-ReLU-conv.
                let convs: &[(usize, usize, usize, usize, usize)] = if kind == BlockKind::PreactBasic {
                    &[(u.c_in, u.planes, 3, u.stride, 1), (u.planes, u.planes, 3, 1, 1)]
                } else {
                    &[(u.c_in, u.inner, 1, 1, 1), (u.inner, u.inner, 3, u.stride, u.groups), (u.inner, c_out, 1, 1, 1)]
                };
                let units = convs
                    .iter()
                    .map(|&(ci, co, k, s, g)| {
                        Ok((BatchNorm2d::new(b, ci, true)?, Conv2d::new(b, ci, co, k, s, k / 2, g)?))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Block::PreAct(PreActBlock { units, shortcut, y: Tensor::empty() })
            }
        })
    }

    /// Forward pass; returns the unit's output. Buffers come from `pool`;
    /// in training what `keep` says stays for the backward pass and the rest
    /// goes back (see `memory`); in evaluation only the output stays.
    pub fn forward(&mut self, b: &B, x: &Tensor<B>, mode: Mode, pool: &mut Pool<B>, keep: Keep) -> Result<&Tensor<B>> {
        let keep = if mode == Mode::Eval { Keep::Output } else { keep };
        match self {
            Block::Basic(k) => k.forward(b, x, mode, pool, keep),
            Block::Bottleneck(k) => k.forward(b, x, mode, pool, keep),
            Block::PreAct(k) => k.forward(b, x, mode, pool, keep),
        }
    }

    /// Backward pass (after a training-mode forward with the same `x` that
    /// kept [`Keep::Backward`]). Leaves the input gradient and the output,
    /// and gives every other buffer of the unit back to `pool`.
    pub fn backward(&mut self, b: &B, x: &Tensor<B>, dy: &Tensor<B>, pool: &mut Pool<B>) -> Result<()> {
        match self {
            Block::Basic(k) => k.backward(b, x, dy, pool),
            Block::Bottleneck(k) => k.backward(b, x, dy, pool),
            Block::PreAct(k) => k.backward(b, x, dy, pool),
        }
    }

    /// Gives the unit's output back to `pool`.
    pub fn give_output(&mut self, pool: &mut Pool<B>) {
        match self {
            Block::Basic(k) => pool.give(&mut k.bn2.y),
            Block::Bottleneck(k) => pool.give(&mut k.bn3.y),
            Block::PreAct(k) => match k.shortcut {
                PreShortcut::None => pool.give(&mut k.units.last_mut().expect("a unit has convolutions").1.y),
                _ => pool.give(&mut k.y),
            },
        }
    }

    /// Gives the unit's input gradient back to `pool`.
    pub fn give_input_grad(&mut self, pool: &mut Pool<B>) {
        match self {
            Block::Basic(k) => pool.give(&mut k.conv1.dx),
            Block::Bottleneck(k) => pool.give(&mut k.conv1.dx),
            Block::PreAct(k) => pool.give(&mut k.units[0].0.dx),
        }
    }

    /// What a training forward pass keeps of this unit on an input of shape
    /// `x` (elements; mirrors `forward` above, see `memory`).
    pub fn plan(&self, x: [usize; 4]) -> UnitMemory {
        let len = |s: [usize; 4]| s.iter().product::<usize>();
        let shortcut_len = |s: &Shortcut<B>, out: [usize; 4]| match s {
            Shortcut::Projection(..) => len(out),
            _ => 0,
        };
        match self {
            Block::Basic(k) => {
                let s1 = k.conv1.out_shape(x);
                let s2 = k.conv2.out_shape(s1);
                UnitMemory { out: s2, kept: len(s1) + len(s2) + shortcut_len(&k.shortcut, s2) }
            }
            Block::Bottleneck(k) => {
                let s1 = k.conv1.out_shape(x);
                let s2 = k.conv2.out_shape(s1);
                let s3 = k.conv3.out_shape(s2);
                UnitMemory { out: s3, kept: len(s1) + len(s2) + len(s3) + shortcut_len(&k.shortcut, s3) }
            }
            Block::PreAct(k) => {
                let mut s = x;
                let mut kept = 0;
                for (i, (_, conv)) in k.units.iter().enumerate() {
                    s = conv.out_shape(s);
                    if i + 1 < k.units.len() {
                        kept += len(s);
                    }
                }
                UnitMemory { out: s, kept }
            }
        }
    }

    /// The unit's convolutions.
    pub fn convs_mut(&mut self) -> Vec<&mut Conv2d<B>> {
        let (mut convs, projection): (Vec<&mut Conv2d<B>>, _) = match self {
            Block::Basic(k) => (vec![&mut k.conv1, &mut k.conv2], shortcut_conv(&mut k.shortcut)),
            Block::Bottleneck(k) => (vec![&mut k.conv1, &mut k.conv2, &mut k.conv3], shortcut_conv(&mut k.shortcut)),
            Block::PreAct(k) => {
                let p = match &mut k.shortcut {
                    PreShortcut::Projection(c) => Some(c),
                    _ => None,
                };
                (k.units.iter_mut().map(|u| &mut u.1).collect(), p)
            }
        };
        convs.extend(projection);
        convs
    }

    /// Calls `f` with each convolution of the unit and its input shape, for
    /// an input of shape `x`.
    pub fn visit_convs(&self, f: &mut dyn FnMut(&Conv2d<B>, [usize; 4]), x: [usize; 4]) {
        let mut chain = |convs: &[&Conv2d<B>]| {
            let mut s = x;
            for c in convs {
                f(c, s);
                s = c.out_shape(s);
            }
        };
        match self {
            Block::Basic(k) => chain(&[&k.conv1, &k.conv2]),
            Block::Bottleneck(k) => chain(&[&k.conv1, &k.conv2, &k.conv3]),
            Block::PreAct(k) => chain(&k.units.iter().map(|u| &u.1).collect::<Vec<_>>()),
        }
        let projection = match self {
            Block::Basic(BasicBlock { shortcut: Shortcut::Projection(c, _), .. })
            | Block::Bottleneck(Bottleneck { shortcut: Shortcut::Projection(c, _), .. }) => Some(c),
            Block::PreAct(PreActBlock { shortcut: PreShortcut::Projection(c), .. }) => Some(c),
            _ => None,
        };
        if let Some(c) = projection {
            f(c, x);
        }
    }

    /// The output of the last forward pass.
    pub fn output(&self) -> &Tensor<B> {
        match self {
            Block::Basic(k) => &k.bn2.y,
            Block::Bottleneck(k) => &k.bn3.y,
            Block::PreAct(k) => k.output(),
        }
    }

    /// The input gradient of the last backward pass.
    pub fn input_grad(&self) -> &Tensor<B> {
        match self {
            Block::Basic(k) => &k.conv1.dx,
            Block::Bottleneck(k) => &k.conv1.dx,
            Block::PreAct(k) => &k.units[0].0.dx,
        }
    }
}

/// A post-activation shortcut's convolution, if it has one.
fn shortcut_conv<B: Backend>(s: &mut Shortcut<B>) -> Option<&mut Conv2d<B>> {
    match s {
        Shortcut::Projection(c, _) => Some(c),
        _ => None,
    }
}

/// Forward of a post-activation shortcut; `None` for plain networks.
fn shortcut_forward<'a, B: Backend>(
    s: &'a mut Shortcut<B>,
    b: &B,
    x: &'a Tensor<B>,
    mode: Mode,
    pool: &mut Pool<B>,
) -> Result<Option<&'a Tensor<B>>> {
    Ok(match s {
        Shortcut::None => None,
        Shortcut::Identity => Some(x),
        Shortcut::Pad(p) => {
            let shape = p.out_shape(x.shape);
            pool.lend(&mut p.y, shape);
            Some(p.forward(b, x)?)
        }
        Shortcut::Projection(conv, bn) => {
            let shape = conv.out_shape(x.shape);
            pool.lend(&mut conv.y, shape);
            pool.lend(&mut bn.y, shape);
            let (h, st) = conv.forward_for_norm(b, x, mode)?;
            Some(bn.forward_with_stats(b, h, st, None, mode)?)
        }
    })
}

/// After the sum: the shortcut's output goes back to `pool`, and its
/// convolution's output too unless it is kept for backward.
fn shortcut_release<B: Backend>(s: &mut Shortcut<B>, pool: &mut Pool<B>, keep: Keep) {
    match s {
        Shortcut::Pad(p) => pool.give(&mut p.y),
        Shortcut::Projection(conv, bn) => {
            pool.give(&mut bn.y);
            if keep == Keep::Output {
                pool.give(&mut conv.y);
            }
        }
        Shortcut::None | Shortcut::Identity => {}
    }
}

/// Sends `dsum` (the gradient at the residual sum) through the shortcut and
/// adds the result to `dx`, which already holds the residual branch's part.
fn shortcut_backward<B: Backend>(
    s: &mut Shortcut<B>,
    b: &B,
    x: &Tensor<B>,
    dsum: &Tensor<B>,
    dx: &mut Tensor<B>,
    pool: &mut Pool<B>,
) -> Result<()> {
    match s {
        Shortcut::None => Ok(()),
        Shortcut::Identity => b.add_assign(&mut dx.buf, &dsum.buf),
        Shortcut::Pad(p) => p.backward_accumulate(b, x.shape, dsum, dx),
        Shortcut::Projection(conv, bn) => {
            pool.lend(&mut bn.dx, dsum.shape);
            bn.backward(b, &conv.y, dsum)?;
            pool.give(&mut conv.y);
            conv.backward_accumulate(b, x, &bn.dx, dx)?;
            pool.give(&mut bn.dx);
            Ok(())
        }
    }
}

/// Backward of a post-activation block's first convolution (input `x`,
/// output gradient `dy`) joined with its shortcut's, into `conv.dx`. With an
/// identity shortcut the convolution's input gradient is accumulated straight
/// onto `dsum` and the buffers are swapped: one sweep over the activations
/// fewer than adding the two afterwards.
fn first_conv_backward<B: Backend>(
    conv: &mut Conv2d<B>,
    shortcut: &mut Shortcut<B>,
    b: &B,
    x: &Tensor<B>,
    dy: &Tensor<B>,
    dsum: &mut Tensor<B>,
    pool: &mut Pool<B>,
) -> Result<()> {
    if let Shortcut::Identity = shortcut {
        conv.backward_accumulate(b, x, dy, dsum)?;
        std::mem::swap(&mut conv.dx, dsum);
        pool.give(dsum);
        return Ok(());
    }
    pool.lend(&mut conv.dx, x.shape);
    conv.backward(b, x, dy, true)?;
    shortcut_backward(shortcut, b, x, dsum, &mut conv.dx, pool)?;
    pool.give(dsum);
    Ok(())
}

fn visit_shortcut<B: Backend>(s: &mut Shortcut<B>, prefix: &str, f: &mut dyn FnMut(&str, StateEntry<'_, B>)) {
    if let Shortcut::Projection(conv, bn) = s {
        conv.visit(&key(prefix, "downsample.0"), f);
        bn.visit(&key(prefix, "downsample.1"), f);
    }
}

/// The basic block: two 3x3 convolutions.
pub struct BasicBlock<B: Backend> {
    /// 3x3, carries the unit's stride.
    pub conv1: Conv2d<B>,
    /// With ReLU.
    pub bn1: BatchNorm2d<B>,
    /// 3x3.
    pub conv2: Conv2d<B>,
    /// With the residual add and ReLU.
    pub bn2: BatchNorm2d<B>,
    /// The shortcut.
    pub shortcut: Shortcut<B>,
}

impl<B: Backend> BasicBlock<B> {
    fn forward(&mut self, b: &B, x: &Tensor<B>, mode: Mode, pool: &mut Pool<B>, keep: Keep) -> Result<&Tensor<B>> {
        let s1 = self.conv1.out_shape(x.shape);
        pool.lend(&mut self.conv1.y, s1);
        pool.lend(&mut self.bn1.y, s1);
        let (h, st) = self.conv1.forward_for_norm(b, x, mode)?;
        let h = self.bn1.forward_with_stats(b, h, st, None, mode)?;
        let s2 = self.conv2.out_shape(s1);
        pool.lend(&mut self.conv2.y, s2);
        let (h, st) = self.conv2.forward_for_norm(b, h, mode)?;
        pool.give(&mut self.bn1.y);
        let s = shortcut_forward(&mut self.shortcut, b, x, mode, pool)?;
        pool.lend(&mut self.bn2.y, s2);
        self.bn2.forward_with_stats(b, h, st, s, mode)?;
        shortcut_release(&mut self.shortcut, pool, keep);
        if keep == Keep::Output {
            pool.give(&mut self.conv1.y);
            pool.give(&mut self.conv2.y);
        }
        Ok(&self.bn2.y)
    }

    fn backward(&mut self, b: &B, x: &Tensor<B>, dy: &Tensor<B>, pool: &mut Pool<B>) -> Result<()> {
        let (s1, s2) = (self.conv1.y.shape, self.conv2.y.shape);
        pool.lend(&mut self.bn2.dx, s2);
        pool.lend(&mut self.bn2.dsum, s2);
        self.bn2.backward(b, &self.conv2.y, dy)?;
        pool.give(&mut self.conv2.y);
        pool.lend(&mut self.bn1.y, s1);
        self.bn1.recompute(b, &self.conv1.y)?;
        pool.lend(&mut self.conv2.dx, s1);
        self.conv2.backward(b, &self.bn1.y, &self.bn2.dx, true)?;
        pool.give(&mut self.bn2.dx);
        pool.lend(&mut self.bn1.dx, s1);
        self.bn1.backward(b, &self.conv1.y, &self.conv2.dx)?;
        pool.give(&mut self.conv2.dx);
        pool.give(&mut self.bn1.y);
        pool.give(&mut self.conv1.y);
        first_conv_backward(&mut self.conv1, &mut self.shortcut, b, x, &self.bn1.dx, &mut self.bn2.dsum, pool)?;
        pool.give(&mut self.bn1.dx);
        Ok(())
    }
}

/// The bottleneck block: 1x1, 3x3 (grouped), 1x1.
pub struct Bottleneck<B: Backend> {
    /// 1x1 reduce.
    pub conv1: Conv2d<B>,
    /// With ReLU.
    pub bn1: BatchNorm2d<B>,
    /// 3x3, grouped, carries the stride.
    pub conv2: Conv2d<B>,
    /// With ReLU.
    pub bn2: BatchNorm2d<B>,
    /// 1x1 expand.
    pub conv3: Conv2d<B>,
    /// With the residual add and ReLU.
    pub bn3: BatchNorm2d<B>,
    /// The shortcut.
    pub shortcut: Shortcut<B>,
}

impl<B: Backend> Bottleneck<B> {
    fn forward(&mut self, b: &B, x: &Tensor<B>, mode: Mode, pool: &mut Pool<B>, keep: Keep) -> Result<&Tensor<B>> {
        let s1 = self.conv1.out_shape(x.shape);
        pool.lend(&mut self.conv1.y, s1);
        pool.lend(&mut self.bn1.y, s1);
        let (h, st) = self.conv1.forward_for_norm(b, x, mode)?;
        let h = self.bn1.forward_with_stats(b, h, st, None, mode)?;
        let s2 = self.conv2.out_shape(s1);
        pool.lend(&mut self.conv2.y, s2);
        let (h, st) = self.conv2.forward_for_norm(b, h, mode)?;
        pool.give(&mut self.bn1.y);
        pool.lend(&mut self.bn2.y, s2);
        let h = self.bn2.forward_with_stats(b, h, st, None, mode)?;
        let s3 = self.conv3.out_shape(s2);
        pool.lend(&mut self.conv3.y, s3);
        let (h, st) = self.conv3.forward_for_norm(b, h, mode)?;
        pool.give(&mut self.bn2.y);
        let s = shortcut_forward(&mut self.shortcut, b, x, mode, pool)?;
        pool.lend(&mut self.bn3.y, s3);
        self.bn3.forward_with_stats(b, h, st, s, mode)?;
        shortcut_release(&mut self.shortcut, pool, keep);
        if keep == Keep::Output {
            pool.give(&mut self.conv1.y);
            pool.give(&mut self.conv2.y);
            pool.give(&mut self.conv3.y);
        }
        Ok(&self.bn3.y)
    }

    fn backward(&mut self, b: &B, x: &Tensor<B>, dy: &Tensor<B>, pool: &mut Pool<B>) -> Result<()> {
        let (s1, s2, s3) = (self.conv1.y.shape, self.conv2.y.shape, self.conv3.y.shape);
        pool.lend(&mut self.bn3.dx, s3);
        pool.lend(&mut self.bn3.dsum, s3);
        self.bn3.backward(b, &self.conv3.y, dy)?;
        pool.give(&mut self.conv3.y);
        pool.lend(&mut self.bn2.y, s2);
        self.bn2.recompute(b, &self.conv2.y)?;
        pool.lend(&mut self.conv3.dx, s2);
        self.conv3.backward(b, &self.bn2.y, &self.bn3.dx, true)?;
        pool.give(&mut self.bn3.dx);
        pool.lend(&mut self.bn2.dx, s2);
        self.bn2.backward(b, &self.conv2.y, &self.conv3.dx)?;
        pool.give(&mut self.conv3.dx);
        pool.give(&mut self.bn2.y);
        pool.give(&mut self.conv2.y);
        pool.lend(&mut self.bn1.y, s1);
        self.bn1.recompute(b, &self.conv1.y)?;
        pool.lend(&mut self.conv2.dx, s1);
        self.conv2.backward(b, &self.bn1.y, &self.bn2.dx, true)?;
        pool.give(&mut self.bn2.dx);
        pool.lend(&mut self.bn1.dx, s1);
        self.bn1.backward(b, &self.conv1.y, &self.conv2.dx)?;
        pool.give(&mut self.conv2.dx);
        pool.give(&mut self.bn1.y);
        pool.give(&mut self.conv1.y);
        first_conv_backward(&mut self.conv1, &mut self.shortcut, b, x, &self.bn1.dx, &mut self.bn3.dsum, pool)?;
        pool.give(&mut self.bn1.dx);
        Ok(())
    }
}

/// A pre-activation unit: `(BN-ReLU-conv)` x 2 or 3, plus the shortcut.
pub struct PreActBlock<B: Backend> {
    /// `(bn_i, conv_i)` in order; `bn1` sees the unit's input.
    pub units: Vec<(BatchNorm2d<B>, Conv2d<B>)>,
    /// The shortcut.
    pub shortcut: PreShortcut<B>,
    /// Output (the sum), unless the network is plain.
    pub y: Tensor<B>,
}

impl<B: Backend> PreActBlock<B> {
    fn output(&self) -> &Tensor<B> {
        match self.shortcut {
            PreShortcut::None => &self.units.last().expect("a unit has convolutions").1.y,
            _ => &self.y,
        }
    }

    fn forward(&mut self, b: &B, x: &Tensor<B>, mode: Mode, pool: &mut Pool<B>, keep: Keep) -> Result<&Tensor<B>> {
        let n = self.units.len();
        for i in 0..n {
            let (done, rest) = self.units.split_at_mut(i);
            let (bn, conv) = &mut rest[0];
            let h = done.last().map_or(x, |u| &u.1.y);
            pool.lend(&mut bn.y, h.shape);
            let p = bn.forward(b, h, None, mode)?;
            if i == 0 {
                match &mut self.shortcut {
                    PreShortcut::Projection(c) => {
                        let shape = c.out_shape(x.shape);
                        pool.lend(&mut c.y, shape);
                        c.forward(b, p)?;
                    }
                    PreShortcut::Pad(s) => {
                        let shape = s.out_shape(x.shape);
                        pool.lend(&mut s.y, shape);
                        s.forward(b, x)?;
                    }
                    PreShortcut::None | PreShortcut::Identity => {}
                }
            }
            let shape = conv.out_shape(h.shape);
            pool.lend(&mut conv.y, shape);
            conv.forward(b, p)?;
            pool.give(&mut bn.y);
            // A convolution's output is the next norm's input: kept for its backward pass.
            if i > 0 && keep == Keep::Output {
                pool.give(&mut done[i - 1].1.y);
            }
        }
        let last = &mut self.units.last_mut().expect("a unit has convolutions").1;
        let s = match &mut self.shortcut {
            PreShortcut::None => return Ok(&last.y),
            PreShortcut::Identity => x,
            PreShortcut::Pad(p) => &p.y,
            PreShortcut::Projection(c) => &c.y,
        };
        pool.lend(&mut self.y, last.y.shape);
        self.y.reshape(b, last.y.shape)?;
        b.add(&last.y.buf, &s.buf, false, &mut self.y.buf)?;
        // Nothing reads the last convolution's output or the shortcut's again.
        pool.give(&mut last.y);
        match &mut self.shortcut {
            PreShortcut::Pad(p) => pool.give(&mut p.y),
            PreShortcut::Projection(c) => pool.give(&mut c.y),
            PreShortcut::None | PreShortcut::Identity => {}
        }
        Ok(&self.y)
    }

    fn backward(&mut self, b: &B, x: &Tensor<B>, dy: &Tensor<B>, pool: &mut Pool<B>) -> Result<()> {
        let n = self.units.len();
        // Residual branch, last unit first: conv_i sees relu(bn_i(...)).
        for i in (0..n).rev() {
            let (head, tail) = self.units.split_at_mut(i + 1);
            let (prev, cur) = head.split_at_mut(i);
            let (bn, conv) = &mut cur[0];
            let g = if i + 1 == n { dy } else { &tail[0].0.dx };
            let input = if i == 0 { x } else { &prev[i - 1].1.y };
            pool.lend(&mut bn.y, input.shape);
            bn.recompute(b, input)?;
            pool.lend(&mut conv.dx, input.shape);
            conv.backward(b, &bn.y, g, true)?;
            if i == 0 {
                // The projection reads p = relu(bn1(x)); its gradient joins conv1's.
                if let PreShortcut::Projection(c) = &mut self.shortcut {
                    c.backward_accumulate(b, &bn.y, dy, &mut conv.dx)?;
                }
            }
            if let Some(next) = tail.first_mut() {
                pool.give(&mut next.0.dx);
            }
            pool.lend(&mut bn.dx, input.shape);
            bn.backward(b, input, &conv.dx)?;
            pool.give(&mut conv.dx);
            pool.give(&mut bn.y);
            if i > 0 {
                pool.give(&mut prev[i - 1].1.y);
            }
        }
        let bn1 = &mut self.units[0].0;
        match &self.shortcut {
            PreShortcut::Identity => b.add_assign(&mut bn1.dx.buf, &dy.buf),
            PreShortcut::Pad(p) => {
                let mut dx = take(&mut bn1.dx);
                let r = p.backward_accumulate(b, x.shape, dy, &mut dx);
                bn1.dx = dx;
                r
            }
            PreShortcut::None | PreShortcut::Projection(_) => Ok(()),
        }
    }
}

impl<B: Backend> Visit<B> for Block<B> {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, StateEntry<'_, B>)) {
        match self {
            Block::Basic(k) => {
                k.conv1.visit(&key(prefix, "conv1"), f);
                k.bn1.visit(&key(prefix, "bn1"), f);
                k.conv2.visit(&key(prefix, "conv2"), f);
                k.bn2.visit(&key(prefix, "bn2"), f);
                visit_shortcut(&mut k.shortcut, prefix, f);
            }
            Block::Bottleneck(k) => {
                k.conv1.visit(&key(prefix, "conv1"), f);
                k.bn1.visit(&key(prefix, "bn1"), f);
                k.conv2.visit(&key(prefix, "conv2"), f);
                k.bn2.visit(&key(prefix, "bn2"), f);
                k.conv3.visit(&key(prefix, "conv3"), f);
                k.bn3.visit(&key(prefix, "bn3"), f);
                visit_shortcut(&mut k.shortcut, prefix, f);
            }
            Block::PreAct(k) => {
                for (i, (bn, conv)) in k.units.iter_mut().enumerate() {
                    bn.visit(&key(prefix, &format!("bn{}", i + 1)), f);
                    conv.visit(&key(prefix, &format!("conv{}", i + 1)), f);
                }
                if let PreShortcut::Projection(c) = &mut k.shortcut {
                    c.visit(&key(prefix, "downsample.0"), f);
                }
            }
        }
    }
}
