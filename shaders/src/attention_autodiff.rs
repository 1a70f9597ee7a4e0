//! Attention under autodiff: the [`FlashAttentionBackend`] implementation for `Autodiff`, whose
//! tracked forward saves the inputs, the output and each row's log-sum-exp, and whose backward
//! is the inner backend's `flash_attention_backward_saved` (the backward kernels on CubeCL
//! devices, reading the saved statistics; the composed backward on Flex). Called directly on
//! an autodiff backend, the log-sum-exp and backward ops are composed of differentiable tensor
//! ops, so that they can themselves be differentiated.

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{BoolTensor, FloatTensor};
use burn::backend::{Autodiff, Backend};

use crate::attention::FlashAttentionBackend;
use crate::attention_composed::{composed_attention_backward, composed_attention_lse};

impl<B: FlashAttentionBackend, C: CheckpointStrategy> FlashAttentionBackend for Autodiff<B, C> {
    fn flash_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self> {
        autodiff_attention::<B, C>(q, k, v, None, causal)
    }

    fn flash_attention_masked(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self> {
        autodiff_attention::<B, C>(q, k, v, Some(mask), causal)
    }

    /// Output and log-sum-exp composed of differentiable tensor ops (one pass over the scores
    /// for both; the tracked kernel forward above has no gradient for the log-sum-exp).
    fn flash_attention_lse(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_attention_lse::<Self>(q, k, v, None, causal)
    }

    fn flash_attention_lse_masked(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_attention_lse::<Self>(q, k, v, Some(mask), causal)
    }

    /// Composed of differentiable tensor ops, as the backward below.
    fn flash_attention_backward_saved(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        _out: FloatTensor<Self>,
        _lse: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed_attention_backward::<Self>(q, k, v, None, causal, grad_out)
    }

    fn flash_attention_backward_saved_masked(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        _out: FloatTensor<Self>,
        _lse: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed_attention_backward::<Self>(q, k, v, Some(mask), causal, grad_out)
    }

    /// Under autodiff the gradients are composed of differentiable tensor ops (so they can
    /// themselves be differentiated); the kernels run in the backward of the forward above.
    fn flash_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed_attention_backward::<Self>(q, k, v, None, causal, grad_out)
    }

    fn flash_attention_backward_masked(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        grad_out: FloatTensor<Self>,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed_attention_backward::<Self>(q, k, v, Some(mask), causal, grad_out)
    }
}

/// Runs the inner backend's forward and records a backward from what it saved: the inputs, the
/// output and the rows' log-sum-exp ([`FlashAttentionBackend::flash_attention_lse`]; no
/// `[Sq, Sk]` tensor is kept between the passes). The backward is the inner backend's
/// [`FlashAttentionBackend::flash_attention_backward_saved`] (the backward kernels on CubeCL
/// devices, reading the saved statistics instead of recomputing them;
/// [`composed_attention_backward`] on Flex). Untracked calls run the plain forward.
fn autodiff_attention<B: FlashAttentionBackend, C: CheckpointStrategy>(
    q: FloatTensor<Autodiff<B, C>>,
    k: FloatTensor<Autodiff<B, C>>,
    v: FloatTensor<Autodiff<B, C>>,
    mask: Option<BoolTensor<B>>,
    causal: bool,
) -> FloatTensor<Autodiff<B, C>> {
    #[derive(Debug)]
    struct AttentionBackward;

    impl<B: FlashAttentionBackend> Backward<B, 3> for AttentionBackward {
        type State = SavedAttention<B>;

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node_q, node_k, node_v] = ops.parents;
            let grad_out = grads.consume::<B>(&ops.node);
            let SavedAttention {
                q,
                k,
                v,
                mask,
                out,
                lse,
                causal,
            } = ops.state;
            let (dq, dk, dv) = match mask {
                None => B::flash_attention_backward_saved(q, k, v, out, lse, grad_out, causal),
                Some(mask) => B::flash_attention_backward_saved_masked(
                    q, k, v, mask, out, lse, grad_out, causal,
                ),
            };
            for (node, grad) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
                if let Some(node) = node {
                    grads.register::<B>(node.id, grad);
                }
            }
        }
    }

    match AttentionBackward
        .prepare::<C>([q.node(), k.node(), v.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
            let (out, lse) = match mask.clone() {
                None => B::flash_attention_lse(q.clone(), k.clone(), v.clone(), causal),
                Some(mask) => {
                    B::flash_attention_lse_masked(q.clone(), k.clone(), v.clone(), mask, causal)
                }
            };
            let saved = SavedAttention::<B> {
                q,
                k,
                v,
                mask,
                out: out.clone(),
                lse,
                causal,
            };
            prep.finish(saved, out)
        }
        OpsKind::UnTracked(prep) => {
            let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
            prep.finish(match mask {
                None => B::flash_attention(q, k, v, causal),
                Some(mask) => B::flash_attention_masked(q, k, v, mask, causal),
            })
        }
    }
}

/// What the backward pass needs: the forward's inputs, its output and the rows' log-sum-exp.
#[derive(Debug, Clone)]
struct SavedAttention<B: Backend> {
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    mask: Option<BoolTensor<B>>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
    causal: bool,
}
