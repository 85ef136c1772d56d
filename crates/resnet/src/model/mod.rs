//! The ResNet family: specification, layers, blocks and the network.

pub mod blocks;
pub mod graph;
pub mod init;
pub mod layers;
pub mod network;
pub mod spec;
pub mod state;
pub mod summary;

pub use graph::Graph;
pub use network::Network;
pub use spec::{ARCHS, BlockKind, ResNetSpec, ShortcutKind, Stem};
pub use state::StateEntry;
pub use summary::{LayerInfo, Summary};

/// Whether a forward pass trains or infers; decides batch-norm behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Batch statistics; running statistics are updated; caches for backward.
    Train,
    /// Running statistics.
    Eval,
}
