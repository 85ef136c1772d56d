//! Stochastic gradient descent with PyTorch's semantics, and learning-rate
//! schedules.

use serde::{Deserialize, Serialize};

use resnet::backend::{Backend, DType, SgdStep};
use resnet::error::{Error, Result};
use resnet::model::{Network, StateEntry};

/// SGD hyper-parameters (`torch.optim.SGD`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    /// Momentum factor.
    pub momentum: f32,
    /// Dampening of the momentum update.
    pub dampening: f32,
    /// L2 penalty (added to the gradient, PyTorch's coupled weight decay).
    pub weight_decay: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Exempt batch-norm parameters and biases from weight decay.
    pub no_decay_bn_bias: bool,
    /// Learning-rate multiplier for everything but the classifier (`fc`):
    /// the pretrained part when fine-tuning.
    #[serde(default = "one")]
    pub backbone_lr: f32,
}

fn one() -> f32 {
    1.0
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 1e-4,
            nesterov: false,
            no_decay_bn_bias: false,
            backbone_lr: 1.0,
        }
    }
}

/// SGD with one momentum buffer per parameter, in the network's visiting order.
pub struct Sgd<B: Backend> {
    /// Hyper-parameters.
    pub config: SgdConfig,
    /// Momentum buffers (empty until the first step).
    pub buffers: Vec<B::Buf>,
    /// Updates taken so far.
    pub steps: u64,
}

impl<B: Backend> Sgd<B> {
    /// A fresh optimiser.
    pub fn new(config: SgdConfig) -> Result<Self> {
        if config.nesterov && (config.momentum <= 0.0 || config.dampening != 0.0) {
            return Err(Error::Invalid("Nesterov momentum requires a momentum and zero dampening".into()));
        }
        if !(config.momentum >= 0.0 && config.weight_decay >= 0.0) {
            return Err(Error::Invalid("momentum and weight decay must be non-negative".into()));
        }
        Ok(Self { config, buffers: Vec::new(), steps: 0 })
    }

    /// Applies one update with learning rate `lr` to every parameter of `net`
    /// from its accumulated gradient.
    pub fn step(&mut self, net: &mut Network<B>, lr: f32) -> Result<()> {
        let b = net.backend().clone();
        b.scope(|| self.step_params(&b, net, lr))
    }

    /// [`Sgd::step`]'s updates, in the backend's scope.
    fn step_params(&mut self, b: &B, net: &mut Network<B>, lr: f32) -> Result<()> {
        let c = self.config.clone();
        let first = self.steps == 0 || self.buffers.is_empty();
        let mut i = 0;
        let buffers = &mut self.buffers;
        // Per parameter: frozen, and whether it is the classifier's (its own learning rate).
        let mut parts = Vec::new();
        net.visit(&mut |k, e| {
            if matches!(e, StateEntry::Param(_)) {
                parts.push((k.to_string(), k.starts_with("fc.")));
            }
        });
        let parts: Vec<(bool, bool)> = parts.into_iter().map(|(k, fc)| (net.is_frozen(&k), fc)).collect();
        net.try_visit(&mut |_, e| {
            let StateEntry::Param(p) = e else { return Ok(()) };
            if buffers.len() <= i {
                buffers.push(b.alloc(DType::F32, p.numel())?);
            }
            let (frozen, classifier) = parts[i];
            if frozen {
                // A frozen parameter keeps its value (and a zero momentum buffer).
                i += 1;
                return Ok(());
            }
            let decay = if c.no_decay_bn_bias && p.is_scale_or_bias { 0.0 } else { c.weight_decay };
            let lr = if classifier { lr } else { lr * c.backbone_lr };
            let step = SgdStep {
                lr,
                momentum: c.momentum,
                dampening: c.dampening,
                weight_decay: decay,
                nesterov: c.nesterov,
                first,
            };
            p.ensure_grad(b)?;
            b.sgd_update(&step, &mut p.value, &p.grad, &mut buffers[i])?;
            p.version += 1;
            i += 1;
            Ok(())
        })?;
        self.steps += 1;
        Ok(())
    }
}

/// The shape of a learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Divided by `gamma`'s inverse at each milestone (iterations).
    MultiStep {
        /// Iterations at which the rate is multiplied by `gamma`.
        milestones: Vec<u64>,
        /// Multiplier (0.1 in He et al.).
        gamma: f32,
    },
    /// Cosine annealing from the base rate to `min_lr` over the run.
    Cosine {
        /// Final rate.
        min_lr: f32,
    },
}

/// A schedule with its base rate, total length and optional linear warm-up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrPolicy {
    /// Base learning rate.
    pub lr: f32,
    /// Shape.
    pub schedule: Schedule,
    /// Total iterations of the run (for cosine).
    pub total_iters: u64,
    /// Linear warm-up from `lr * warmup_start` over this many iterations.
    pub warmup_iters: u64,
    /// Starting fraction of the warm-up.
    pub warmup_start: f32,
    /// He et al.'s warm-up for ResNet-110: a constant `lr` until the running
    /// training error falls below this fraction (then the schedule proper).
    pub warmup_until_error: Option<(f32, f32)>,
}

impl LrPolicy {
    /// The rate at iteration `it` (0-based), before any error-based warm-up.
    pub fn at(&self, it: u64) -> f32 {
        let base = match &self.schedule {
            Schedule::Constant => self.lr,
            Schedule::MultiStep { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| it >= m).count() as i32;
                self.lr * gamma.powi(passed)
            }
            Schedule::Cosine { min_lr } => {
                let t = (it as f64 / self.total_iters.max(1) as f64).min(1.0);
                (*min_lr as f64 + 0.5 * (self.lr - min_lr) as f64 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
            }
        };
        if it < self.warmup_iters {
            let f = self.warmup_start + (1.0 - self.warmup_start) * (it as f32 / self.warmup_iters as f32);
            base * f
        } else {
            base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let p = LrPolicy {
            lr: 0.1,
            schedule: Schedule::MultiStep { milestones: vec![32000, 48000], gamma: 0.1 },
            total_iters: 64000,
            warmup_iters: 0,
            warmup_start: 0.0,
            warmup_until_error: None,
        };
        assert_eq!(p.at(0), 0.1);
        assert!((p.at(32000) - 0.01).abs() < 1e-9);
        assert!((p.at(50000) - 0.001).abs() < 1e-9);
        let c = LrPolicy { schedule: Schedule::Cosine { min_lr: 0.0 }, total_iters: 100, ..p.clone() };
        assert!((c.at(50) - 0.05).abs() < 1e-6 && c.at(100) < 1e-7);
        let w = LrPolicy { schedule: Schedule::Constant, warmup_iters: 10, warmup_start: 0.1, ..p };
        assert!((w.at(0) - 0.01).abs() < 1e-7 && (w.at(5) - 0.055).abs() < 1e-6 && w.at(10) == 0.1);
    }
}
