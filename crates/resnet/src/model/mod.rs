//! The ResNet family: specification, layers, blocks and the network.

pub mod blocks;
pub mod graph;
pub mod init;
pub mod layers;
pub mod memory;
pub mod network;
pub mod spec;
pub mod state;
pub mod summary;

pub use graph::Graph;
pub use memory::MemoryPlan;
pub use network::Network;
pub use spec::{ARCHS, BlockKind, ResNetSpec, ShortcutKind, Stem};
pub use state::StateEntry;
pub use summary::{LayerInfo, Summary};

/// How much of a network is frozen for fine-tuning, from the input side:
/// frozen parameters get no gradient and no update, their batch norms stay
/// in evaluation mode, and the backward pass stops where they begin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Freeze {
    /// Everything trains.
    #[default]
    None,
    /// The stem (first convolution, its batch norm).
    Stem,
    /// The stem and stage 1 (`layer1`).
    Layer1,
    /// The stem and stages 1-2.
    Layer2,
    /// The stem and stages 1-3.
    Layer3,
    /// Everything but the classifier (`fc`).
    Backbone,
}

/// Whether a forward pass trains or infers; decides batch-norm behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Batch statistics; running statistics are updated; caches for backward.
    Train,
    /// Running statistics.
    Eval,
    /// A training pass computed again for its backward pass (recomputation by
    /// segments): batch statistics and caches for backward as in `Train`, but
    /// the running statistics and batch counters are left alone, as the first
    /// pass already updated them.
    Recompute,
}
