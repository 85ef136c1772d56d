//! Named model state: what a checkpoint holds.

use crate::backend::Backend;
use crate::tensor::Param;

/// One entry of a model's state, as PyTorch's `state_dict` lists it.
pub enum StateEntry<'a, B: Backend> {
    /// A trainable tensor (`weight`, `bias`).
    Param(&'a mut Param<B>),
    /// A running statistic (`running_mean`, `running_var`), shape `[len]`.
    Buffer(&'a mut B::Buf, usize),
    /// `num_batches_tracked` (an int64 scalar in PyTorch).
    Counter(&'a mut i64),
}
