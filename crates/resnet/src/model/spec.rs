//! Architecture as data: a [`ResNetSpec`] says everything about a network's
//! shape, and the named constructors give the family exactly as He et al. and
//! torchvision define it.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The first layers, before the residual stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stem {
    /// 7x7/2 conv + BN + ReLU + 3x3/2 max-pool (ImageNet nets).
    Imagenet,
    /// 3x3/1 conv + BN + ReLU (CIFAR nets, He 2015 sec. 4.2).
    Cifar,
    /// 3x3/1 conv alone: pre-activation nets normalise inside their first unit.
    CifarPreact,
}

/// The residual unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Two 3x3 convolutions (post-activation).
    Basic,
    /// 1x1 reduce, 3x3 (grouped, strided), 1x1 expand x4 (post-activation).
    Bottleneck,
    /// BN-ReLU-conv3x3, BN-ReLU-conv3x3 (He 2016).
    PreactBasic,
    /// BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1 x4 (He 2016).
    PreactBottleneck,
}

impl BlockKind {
    /// Output channels per unit of `planes`.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic | BlockKind::PreactBasic => 1,
            BlockKind::Bottleneck | BlockKind::PreactBottleneck => 4,
        }
    }
    /// True for the He 2016 pre-activation units.
    pub fn is_preact(self) -> bool {
        matches!(self, BlockKind::PreactBasic | BlockKind::PreactBottleneck)
    }
}

/// How a block's input reaches its output (He 2015, Table 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShortcutKind {
    /// No shortcut: a plain network.
    None,
    /// Option A: identity; zero-padded channels and subsampling where shapes change.
    A,
    /// Option B: identity; a projection (1x1 conv + BN) where shapes change.
    B,
    /// Option C: a projection in every block.
    C,
}

/// A complete description of a ResNet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetSpec {
    /// Name, e.g. `resnet50`.
    pub name: String,
    /// Stem type.
    pub stem: Stem,
    /// Stem output channels (64 for ImageNet nets, 16 for CIFAR nets).
    pub stem_width: usize,
    /// Residual unit.
    pub block: BlockKind,
    /// Units per stage.
    pub depths: Vec<usize>,
    /// `planes` per stage (unit output = planes x expansion).
    pub widths: Vec<usize>,
    /// Groups of the 3x3 convolution in bottlenecks (ResNeXt cardinality).
    pub groups: usize,
    /// Bottleneck width per group at 64 planes (torchvision's `width_per_group`).
    pub width_per_group: usize,
    /// Shortcut option.
    pub shortcut: ShortcutKind,
    /// Classifier outputs.
    pub num_classes: usize,
    /// Image channels (3 for RGB, 1 for grayscale).
    pub in_channels: usize,
}

/// The named architectures, in the order `resnet archs` lists them.
pub const ARCHS: &[&str] = &[
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet1202",
    "plain20",
    "plain32",
    "plain44",
    "plain56",
    "plain18",
    "plain34",
    "preact_resnet110",
    "preact_resnet164",
    "preact_resnet1001",
];

/// Largest class count accepted (a sanity bound against typos).
pub const MAX_CLASSES: usize = 1 << 20;

/// Most channels a stage (or the stem, or a group) may have.
pub const MAX_WIDTH: usize = 1 << 14;

/// Most residual blocks a network may have (ResNet-1202 has 600).
pub const MAX_BLOCKS: usize = 1 << 14;

impl ResNetSpec {
    fn imagenet(name: &str, block: BlockKind, depths: &[usize], groups: usize, wpg: usize, sc: ShortcutKind) -> Self {
        Self {
            name: name.into(),
            stem: Stem::Imagenet,
            stem_width: 64,
            block,
            depths: depths.to_vec(),
            widths: vec![64, 128, 256, 512],
            groups,
            width_per_group: wpg,
            shortcut: sc,
            num_classes: 1000,
            in_channels: 3,
        }
    }

    fn cifar(name: &str, block: BlockKind, n: usize, sc: ShortcutKind) -> Self {
        Self {
            name: name.into(),
            stem: if block.is_preact() { Stem::CifarPreact } else { Stem::Cifar },
            stem_width: 16,
            block,
            depths: vec![n; 3],
            widths: vec![16, 32, 64],
            groups: 1,
            width_per_group: 64,
            shortcut: sc,
            num_classes: 10,
            in_channels: 3,
        }
    }

    /// The architecture called `name`.
    ///
    /// Besides [`ARCHS`], any CIFAR depth is accepted: `resnetD` and `plainD`
    /// for `D = 6n + 2` (except the ImageNet names), `preact_resnetD` with
    /// basic units for `D = 6n + 2 < 164` and bottlenecks for `D = 9n + 2 >= 164`.
    pub fn named(name: &str) -> Result<Self> {
        use BlockKind::*;
        use ShortcutKind as S;
        let spec = match name {
            "resnet18" => Self::imagenet(name, Basic, &[2, 2, 2, 2], 1, 64, S::B),
            "resnet34" => Self::imagenet(name, Basic, &[3, 4, 6, 3], 1, 64, S::B),
            "resnet50" => Self::imagenet(name, Bottleneck, &[3, 4, 6, 3], 1, 64, S::B),
            "resnet101" => Self::imagenet(name, Bottleneck, &[3, 4, 23, 3], 1, 64, S::B),
            "resnet152" => Self::imagenet(name, Bottleneck, &[3, 8, 36, 3], 1, 64, S::B),
            "wide_resnet50_2" => Self::imagenet(name, Bottleneck, &[3, 4, 6, 3], 1, 128, S::B),
            "wide_resnet101_2" => Self::imagenet(name, Bottleneck, &[3, 4, 23, 3], 1, 128, S::B),
            "resnext50_32x4d" => Self::imagenet(name, Bottleneck, &[3, 4, 6, 3], 32, 4, S::B),
            "resnext101_32x8d" => Self::imagenet(name, Bottleneck, &[3, 4, 23, 3], 32, 8, S::B),
            "resnext101_64x4d" => Self::imagenet(name, Bottleneck, &[3, 4, 23, 3], 64, 4, S::B),
            "plain18" => Self::imagenet(name, Basic, &[2, 2, 2, 2], 1, 64, S::None),
            "plain34" => Self::imagenet(name, Basic, &[3, 4, 6, 3], 1, 64, S::None),
            _ => return Self::cifar_named(name),
        };
        Ok(spec)
    }

    fn cifar_named(name: &str) -> Result<Self> {
        let unknown = || Error::UnknownArch(name.to_string());
        let depth = |prefix: &str| name.strip_prefix(prefix).and_then(|d| d.parse::<usize>().ok());
        if let Some(d) = depth("preact_resnet") {
            if d >= 164 && (d - 2) % 9 == 0 {
                return Ok(Self::cifar(name, BlockKind::PreactBottleneck, (d - 2) / 9, ShortcutKind::B));
            }
            if (8..164).contains(&d) && (d - 2) % 6 == 0 {
                return Ok(Self::cifar(name, BlockKind::PreactBasic, (d - 2) / 6, ShortcutKind::B));
            }
            return Err(unknown());
        }
        for (prefix, sc) in [("resnet", ShortcutKind::A), ("plain", ShortcutKind::None)] {
            if let Some(d) = depth(prefix)
                && d >= 8
                && (d - 2) % 6 == 0
                && d <= 6 * 1000 + 2
            {
                return Ok(Self::cifar(name, BlockKind::Basic, (d - 2) / 6, sc));
            }
        }
        Err(unknown())
    }

    /// Layers with weights along the deepest path (the "depth" in the name).
    pub fn depth(&self) -> usize {
        let per_unit = match self.block {
            BlockKind::Basic | BlockKind::PreactBasic => 2,
            _ => 3,
        };
        per_unit * self.depths.iter().sum::<usize>() + 2
    }

    /// Output channels of stage `i`.
    pub fn stage_out(&self, i: usize) -> usize {
        self.widths[i] * self.block.expansion()
    }

    /// Inner width of a bottleneck of `planes` (torchvision's formula).
    pub fn bottleneck_width(&self, planes: usize) -> usize {
        planes * self.width_per_group / 64 * self.groups
    }

    /// Features entering the classifier.
    pub fn feature_dim(&self) -> usize {
        self.stage_out(self.widths.len() - 1)
    }

    /// Checks that the network can be built.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidSpec(format!("{}: {m}", self.name)));
        if self.depths.is_empty() || self.depths.len() != self.widths.len() {
            return bad(format!("{} stage depths but {} widths", self.depths.len(), self.widths.len()));
        }
        if self.depths.contains(&0) || self.widths.contains(&0) || self.stem_width == 0 {
            return bad("stage depths and widths must be positive".into());
        }
        if self.in_channels == 0 || self.in_channels > 64 {
            return bad(format!("in_channels must be between 1 and 64, got {}", self.in_channels));
        }
        if self.num_classes == 0 || self.num_classes > MAX_CLASSES {
            return bad(format!("num_classes must be between 1 and {MAX_CLASSES}, got {}", self.num_classes));
        }
        // Bounds far beyond any published ResNet, so that a hostile model card
        // cannot ask for a network whose sizes overflow or exhaust memory.
        if self.depths.len() > 16 || self.depths.iter().sum::<usize>() > MAX_BLOCKS {
            return bad(format!("at most 16 stages and {MAX_BLOCKS} blocks"));
        }
        if self.widths.iter().chain([&self.stem_width, &self.width_per_group]).any(|&w| w > MAX_WIDTH)
            || self.groups > MAX_WIDTH
        {
            return bad(format!("widths, groups and width_per_group must be at most {MAX_WIDTH}"));
        }
        if self.groups == 0 || self.width_per_group == 0 {
            return bad("groups and width_per_group must be positive".into());
        }
        let bottleneck = self.block.expansion() == 4;
        if !bottleneck && (self.groups != 1 || self.width_per_group != 64) {
            return bad("basic blocks only support groups=1 and width_per_group=64".into());
        }
        if bottleneck {
            for &w in &self.widths {
                let inner = self.bottleneck_width(w);
                if inner == 0 || !inner.is_multiple_of(self.groups) {
                    return bad(format!(
                        "bottleneck width {inner} is not a positive multiple of {} groups",
                        self.groups
                    ));
                }
            }
        }
        if self.shortcut == ShortcutKind::A {
            let mut c = self.stem_width;
            for i in 0..self.widths.len() {
                if self.stage_out(i) < c {
                    return bad(format!("option-A shortcuts cannot reduce channels ({c} -> {})", self.stage_out(i)));
                }
                c = self.stage_out(i);
            }
        }
        Ok(())
    }

    /// A short human description, e.g. `Bottleneck [3, 4, 6, 3], 32x4d, shortcut B`.
    pub fn describe(&self) -> String {
        let mut s = format!("{:?} {:?}", self.block, self.depths);
        if self.groups > 1 || self.width_per_group != 64 {
            s += &format!(", {}x{}d", self.groups, self.width_per_group);
        }
        s += &match self.shortcut {
            ShortcutKind::None => ", no shortcuts".to_string(),
            other => format!(", shortcut {other:?}"),
        };
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_validate() {
        for name in ARCHS {
            let s = ResNetSpec::named(name).unwrap();
            s.validate().unwrap();
            assert_eq!(&s.name, name);
        }
        assert_eq!(ResNetSpec::named("resnet110").unwrap().depths, vec![18; 3]);
        assert_eq!(ResNetSpec::named("resnet8").unwrap().depths, vec![1; 3]);
        assert_eq!(ResNetSpec::named("preact_resnet1001").unwrap().depths, vec![111; 3]);
        assert_eq!(ResNetSpec::named("preact_resnet1001").unwrap().depth(), 1001);
        assert_eq!(ResNetSpec::named("resnet152").unwrap().depth(), 152);
        assert!(ResNetSpec::named("resnet19").is_err());
        assert!(ResNetSpec::named("resnet").is_err());
        assert!(ResNetSpec::named("preact_resnet165").is_err());
        let mut s = ResNetSpec::named("resnet18").unwrap();
        s.num_classes = 0;
        assert!(s.validate().is_err());
    }
}
