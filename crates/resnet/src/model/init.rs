//! Parameter initialisation.

use super::Network;
use super::state::StateEntry;
use crate::backend::Backend;
use crate::error::Result;
use crate::rng::Rng;
use crate::tensor::ParamLayout;

impl<B: Backend> Network<B> {
    /// torchvision's initialisation: convolutions `kaiming_normal_(mode="fan_out",
    /// nonlinearity="relu")`, batch norms gamma = 1 and beta = 0, and the
    /// classifier PyTorch's `Linear` default, `U(-1/sqrt(in), 1/sqrt(in))` for
    /// weight and bias.
    ///
    /// With `zero_init_residual`, the last batch norm of each residual branch
    /// starts at gamma = 0 (Goyal et al. 2017), as torchvision's option does.
    pub fn init_kaiming(&mut self, rng: &mut Rng, zero_init_residual: bool) -> Result<()> {
        let zero_gamma = if zero_init_residual { self.residual_branch_ends() } else { Vec::new() };
        let fc_bound = 1.0 / (self.fc.c_in as f64).sqrt();
        let backend = self.backend().clone();
        self.try_visit(&mut |key, entry| match entry {
            StateEntry::Param(p) => {
                let n = p.numel();
                let values: Vec<f32> = if p.layout == ParamLayout::ConvOhwi {
                    let fan_out = p.shape[0] * p.shape[2] * p.shape[3];
                    let std = (2.0 / fan_out as f64).sqrt();
                    (0..n).map(|_| (rng.normal() * std) as f32).collect()
                } else if key == "fc.weight" || key == "fc.bias" {
                    (0..n).map(|_| ((rng.uniform() * 2.0 - 1.0) * fc_bound) as f32).collect()
                } else if let Some(module) = key.strip_suffix(".weight") {
                    vec![if zero_gamma.iter().any(|k| k == module) { 0.0 } else { 1.0 }; n]
                } else {
                    vec![0.0; n]
                };
                p.version += 1;
                backend.upload(&values).map(|v| p.value = v)
            }
            StateEntry::Buffer(buf, len) => {
                let v: f32 = if key.ends_with("running_var") { 1.0 } else { 0.0 };
                backend.upload(&vec![v; len]).map(|v| *buf = v)
            }
            StateEntry::Counter(c) => {
                *c = 0;
                Ok(())
            }
        })
    }

    /// Fills every tensor with [`formula_value`], which `tools/` computes
    /// identically in Python, so golden tests of large networks need no
    /// stored weights.
    pub fn init_formula(&mut self) -> Result<()> {
        let backend = self.backend().clone();
        self.try_visit(&mut |key, entry| match entry {
            StateEntry::Param(p) => {
                let torch: Vec<f32> = (0..p.numel()).map(|i| formula_value(key, &p.shape, i)).collect();
                p.set_from_torch(&backend, &torch)
            }
            StateEntry::Buffer(buf, len) => {
                let v: Vec<f32> = (0..len).map(|i| formula_value(key, &[len], i)).collect();
                backend.upload(&v).map(|v| *buf = v)
            }
            StateEntry::Counter(c) => {
                *c = 0;
                Ok(())
            }
        })
    }
}

/// Uniform in `[-0.5, 0.5)` from element `i` of the tensor named `key`: the
/// SplitMix64 finaliser of `i + h * 0x9E3779B97F4A7C15`, `h` the sum of the
/// bytes of `key`, top 53 bits scaled to `[0, 1)`.
pub fn formula_u(key: &str, i: usize) -> f64 {
    let h: u64 = key.bytes().map(u64::from).sum();
    let mut z = (i as u64).wrapping_add(h.wrapping_mul(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^= z >> 31;
    (z >> 11) as f64 / 9007199254740992.0 - 0.5
}

/// The deterministic test-weight formula (mirrored in `tools/make_fixtures.py`).
///
/// With `u = formula_u(key, i)` for element `i` (PyTorch order), by kind:
/// * 4-D (conv) weight: `u * sqrt(24 / fan_in)` (variance 2 / fan_in),
/// * 2-D (linear) weight: `u * sqrt(12 / fan_in)` (variance 1 / fan_in),
/// * batch-norm `weight`: `0.5 + 0.5 * u`; `running_var`: `1 + 0.5 * u`;
///   any other 1-D tensor (`bias`, `running_mean`): `0.2 * u`.
///
/// All arithmetic is exact or correctly rounded in f64 up to the final
/// rounding to f32, so both sides produce the same bits.
pub fn formula_value(key: &str, shape: &[usize], i: usize) -> f32 {
    let u = formula_u(key, i);
    let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
    let v = match shape.len() {
        4 => u * (24.0 / fan_in as f64).sqrt(),
        2 => u * (12.0 / fan_in as f64).sqrt(),
        _ if key.ends_with("running_var") => 1.0 + 0.5 * u,
        _ if key.ends_with("weight") => 0.5 + 0.5 * u,
        _ => 0.2 * u,
    };
    v as f32
}
