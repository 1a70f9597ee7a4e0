//! Scaled dot-product attention: the public entry point, the choice between Burn's attention op
//! and the blip3 kernel, and the [`FlashAttentionBackend`] extension with its Flex, Fusion and
//! Autodiff implementations (the CubeCL one lives in `attention_kernel`, its tensor-core variant in
//! `attention_mma_kernel`).
//!
//! Contract, shared by both paths: `q` is `[B, H, Sq, Dh]`, `k` is `[B, H, Sk, Dh]`, `v` is
//! `[B, H, Sk, Dv]`; scores are `q·kᵀ · Dh^-0.5`; `mask` is `[B, H|1, Sq, Sk]` with true = masked
//! out; `causal` additionally masks key `j` for query `i` when `j > i + Sk - Sq` (bottom-right
//! aligned, so a single decode query sees the whole cache); a query row with every key masked
//! yields zeros.
//!
//! The path is chosen per call by [`AttentionPath`]; the default ([`AttentionPath::configured`])
//! comes from the `BLIP3_ATTENTION` environment variable (`burn`, `blip3` or `auto`, read once).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{BoolTensor, FloatTensor};
use burn::backend::{
    Autodiff, Backend, Dispatch, DispatchDevice, TensorMetadata, backend_extension,
    get_or_init_device_settings,
};
use burn::prelude::*;
use burn::tensor::module::attention as burn_attention_op;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, FloatDType, Shape, Slice};

/// Name of the environment variable that forces an attention path (`burn`, `blip3` or `auto`).
pub const ATTENTION_ENV: &str = "BLIP3_ATTENTION";

/// Largest head dimension (of queries/keys, and of values) the kernel accepts; larger heads go
/// to Burn's op. The kernel keeps one query row and one output row per thread in registers.
pub const MAX_KERNEL_HEAD_DIM: usize = 256;

/// Name of the environment variable that turns the tensor-core kernels (forward and backward)
/// off (`0` or `off`; `1`/`on`, the default, leaves them on): half precision then takes the
/// scalar kernels, as on devices without MMA instructions.
pub const TENSOR_CORES_ENV: &str = "BLIP3_ATTENTION_TENSOR_CORES";

/// Largest head dimension (of queries/keys, and of values) the backward kernels accept; larger
/// heads take the composed backward. Their per-element loops are unrolled so that the rows
/// they keep stay in registers: at 256 that took lavapipe two minutes to compile, and the loop
/// form gave wrong query gradients there (not understood; docs/kernels.md). Phi-3 (96), SigLIP
/// (72) and the resampler (96) are well inside.
pub const MAX_BACKWARD_KERNEL_HEAD_DIM: usize = 128;

/// Fewest query rows (`B·H·Sq`) for which [`AttentionPath::Auto`] picks the kernel. The kernel
/// gives each query row one thread that walks all keys, so its parallelism is the row count: on
/// an H100 through Vulkan (docs/kernels.md) it beat Burn's op 2.3-3.3x on SigLIP (58k rows) and
/// Phi-3 prefill (65k rows) and lost 4-10x on the resampler (10k rows) and decoding (128 rows).
pub const MIN_KERNEL_ROWS: usize = 32_768;

/// Which implementation [`attention_with`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionPath {
    /// The default: the blip3 kernel on CubeCL devices where it applies
    /// ([`kernel_supports`]) and is faster ([`MIN_KERNEL_ROWS`] query rows or more), Burn's op
    /// everywhere else (Flex, decoding, the resampler).
    #[default]
    Auto,
    /// Always Burn's `attention` op.
    Burn,
    /// The [`FlashAttentionBackend`] extension wherever it is implemented (the kernel on CubeCL
    /// devices, Burn's op inside the extension on Flex); Burn's op on other backends. The kernel
    /// itself still hands shapes it cannot run to Burn's op.
    Blip3,
}

impl AttentionPath {
    /// Parses `burn`, `blip3` or `auto` (case-insensitive, surrounding spaces ignored).
    pub fn parse(text: &str) -> Option<AttentionPath> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Some(AttentionPath::Auto),
            "burn" => Some(AttentionPath::Burn),
            "blip3" => Some(AttentionPath::Blip3),
            _ => None,
        }
    }

    /// The path named by `BLIP3_ATTENTION`, read once per process. Unset means
    /// [`AttentionPath::Auto`] (the default, see its docs); an unrecognised value is reported
    /// once (log warning) and also means the default.
    pub fn configured() -> AttentionPath {
        static CONFIGURED: OnceLock<AttentionPath> = OnceLock::new();
        *CONFIGURED.get_or_init(|| {
            crate::env_choice(ATTENTION_ENV, AttentionPath::parse, "burn, blip3, auto")
        })
    }
}

/// Scaled dot-product attention (see the module documentation for the contract) along the path
/// given by [`AttentionPath::configured`].
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    causal: bool,
) -> Tensor<4> {
    attention_with(AttentionPath::configured(), q, k, v, mask, causal)
}

/// Scaled dot-product attention along an explicit path (for comparisons and benchmarks).
pub fn attention_with(
    path: AttentionPath,
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    causal: bool,
) -> Tensor<4> {
    let use_extension = match path {
        AttentionPath::Burn => false,
        AttentionPath::Blip3 => extension_available(&q.device()),
        AttentionPath::Auto => kernel_applies(&q, &k, &v),
    };
    if use_extension {
        flash_attention(q, k, v, mask, causal)
    } else {
        burn_attention(q, k, v, mask, causal)
    }
}

/// Burn's attention op with this module's contract (the mask may broadcast over heads).
pub fn burn_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    causal: bool,
) -> Tensor<4> {
    let mask = mask.map(|m| expand_mask(m, &q, &k));
    let options = AttentionModuleOptions {
        is_causal: causal,
        ..Default::default()
    };
    burn_attention_op(q, k, v, mask, None, options)
}

/// The [`FlashAttentionBackend`] extension: the blip3 kernel on CubeCL devices, Burn's op inside
/// the extension on Flex, with the extension's own backward under autodiff. Falls back to
/// [`burn_attention`] on a backend the extension does not cover.
pub fn flash_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    causal: bool,
) -> Tensor<4> {
    if !extension_available(&q.device()) {
        return burn_attention(q, k, v, mask, causal);
    }
    let out = match mask {
        None => <Dispatch as FlashAttentionBackend>::flash_attention(
            q.into_dispatch(),
            k.into_dispatch(),
            v.into_dispatch(),
            causal,
        ),
        Some(mask) => {
            let mask = expand_mask(mask, &q, &k);
            <Dispatch as FlashAttentionBackend>::flash_attention_masked(
                q.into_dispatch(),
                k.into_dispatch(),
                v.into_dispatch(),
                mask.into_dispatch(),
                causal,
            )
        }
    };
    Tensor::from_dispatch(out)
}

/// Gradients `[dq, dk, dv]` of attention (the module's contract) given the gradient of its
/// output, `grad_out` (`[B, H, Sq, Dv]`), in O(Sq + Sk) memory on CubeCL devices (the backward
/// kernels; docs/kernels.md), by tensor ops elsewhere. This is what the extension's autodiff
/// backward runs; it is public for tests and benchmarks.
pub fn attention_backward(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    grad_out: Tensor<4>,
    causal: bool,
) -> [Tensor<4>; 3] {
    let mask = mask.map(|m| expand_mask(m, &q, &k));
    if !extension_available(&q.device()) {
        let (dq, dk, dv) = composed_attention_backward::<Dispatch>(
            q.into_dispatch(),
            k.into_dispatch(),
            v.into_dispatch(),
            mask.map(Tensor::into_dispatch),
            causal,
            grad_out.into_dispatch(),
        );
        return [dq, dk, dv].map(Tensor::from_dispatch);
    }
    let (q, k, v, grad_out) = (
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        grad_out.into_dispatch(),
    );
    let (dq, dk, dv) = match mask {
        None => {
            <Dispatch as FlashAttentionBackend>::flash_attention_backward(q, k, v, grad_out, causal)
        }
        Some(mask) => <Dispatch as FlashAttentionBackend>::flash_attention_backward_masked(
            q,
            k,
            v,
            mask.into_dispatch(),
            grad_out,
            causal,
        ),
    };
    [dq, dk, dv].map(Tensor::from_dispatch)
}

/// How many times this process has run the backward kernels (always 0 without CubeCL). Tests
/// read it to tell the kernels from the composed fallback, which gives the same numbers.
pub fn backward_kernel_launches() -> usize {
    BACKWARD_KERNEL_LAUNCHES.load(Ordering::Relaxed)
}

/// The counter behind [`backward_kernel_launches`], raised by the kernels' launcher.
pub(crate) static BACKWARD_KERNEL_LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// How many times this process has run the tensor-core forward kernel (half precision on a
/// device with MMA instructions; always 0 elsewhere). Tests read it to tell it from the scalar
/// kernels, which give the same numbers.
pub fn tensor_core_launches() -> usize {
    TENSOR_CORE_LAUNCHES.load(Ordering::Relaxed)
}

/// The counter behind [`tensor_core_launches`], raised by the tensor-core kernel's launcher.
pub(crate) static TENSOR_CORE_LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// How many times this process has run the tensor-core kernels of the backward (the query
/// kernel and the key kernel count one each; half precision on a device with MMA instructions,
/// always 0 elsewhere).
pub fn tensor_core_backward_launches() -> usize {
    TENSOR_CORE_BACKWARD_LAUNCHES.load(Ordering::Relaxed)
}

/// The counter behind [`tensor_core_backward_launches`].
pub(crate) static TENSOR_CORE_BACKWARD_LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// Turns the tensor-core kernels (forward and backward) on (`Some(true)`) or off (`Some(false)`)
/// for the whole process, or back to the [`TENSOR_CORES_ENV`] setting (`None`). Off, half precision takes the
/// scalar kernels, as on devices without MMA instructions (benchmarks compare the two this way).
/// The choice is read when a kernel launches, which under fusion is when the result is needed.
pub fn set_tensor_cores(on: Option<bool>) {
    let code = match on {
        None => 0,
        Some(true) => 1,
        Some(false) => 2,
    };
    TENSOR_CORES.store(code, Ordering::Relaxed);
}

/// The [`set_tensor_cores`] override: 0 = the environment's setting, 1 = on, 2 = off.
static TENSOR_CORES: AtomicU8 = AtomicU8::new(0);

/// Whether the tensor-core kernels may run: the [`set_tensor_cores`] override, else
/// [`TENSOR_CORES_ENV`] (read once; on unless `0` or `off`).
pub(crate) fn tensor_cores_enabled() -> bool {
    /// The environment's setting.
    #[derive(Default, PartialEq)]
    enum Switch {
        #[default]
        On,
        Off,
    }
    static FROM_ENV: OnceLock<bool> = OnceLock::new();
    match TENSOR_CORES.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => *FROM_ENV.get_or_init(|| {
            let switch = crate::env_choice(
                TENSOR_CORES_ENV,
                |text| match text.trim() {
                    "1" | "on" => Some(Switch::On),
                    "0" | "off" => Some(Switch::Off),
                    _ => None,
                },
                "1, on, 0, off",
            );
            switch == Switch::On
        }),
    }
}

/// Broadcasts a `[B, H|1, Sq, Sk]` mask to `[B, H, Sq, Sk]` (a view, not a copy, on backends
/// with strided tensors).
fn expand_mask(mask: Tensor<4, Bool>, q: &Tensor<4>, k: &Tensor<4>) -> Tensor<4, Bool> {
    let [b, h, sq, _] = q.dims();
    let [_, _, sk, _] = k.dims();
    if mask.dims() == [b, h, sq, sk] {
        mask
    } else {
        mask.expand([b, h, sq, sk])
    }
}

/// Whether `device` (ignoring autodiff) runs on the CubeCL backend.
pub fn is_cube_device(device: &Device) -> bool {
    #[cfg(feature = "cube")]
    {
        matches!(
            device.clone().without_autodiff().as_dispatch(),
            DispatchDevice::Cube(_)
        )
    }
    #[cfg(not(feature = "cube"))]
    {
        let _ = device;
        false
    }
}

/// Whether blip3's backend extensions (implemented for CubeCL and Flex) exist for `device`'s
/// backend; shared by the attention and GEMM extensions.
pub(crate) fn extension_available(device: &Device) -> bool {
    if is_cube_device(device) {
        return true;
    }
    #[cfg(feature = "flex")]
    {
        matches!(
            device.clone().without_autodiff().as_dispatch(),
            DispatchDevice::Flex(_)
        )
    }
    #[cfg(not(feature = "flex"))]
    false
}

/// The [`AttentionPath::Auto`] rule: the kernel can run ([`kernel_supports`]) and the problem
/// has at least [`MIN_KERNEL_ROWS`] query rows.
pub fn kernel_applies(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>) -> bool {
    let [b, h, sq, _] = q.dims();
    kernel_supports(q, k, v) && b * h * sq >= MIN_KERNEL_ROWS
}

/// Whether the kernel can run these tensors: a CubeCL device, one float dtype for all three,
/// head dimensions at most [`MAX_KERNEL_HEAD_DIM`], non-empty sequences.
pub fn kernel_supports(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>) -> bool {
    let [b, h, sq, dh] = q.dims();
    let [_, _, sk, dv] = v.dims();
    let float = matches!(q.dtype(), DType::F32 | DType::F16 | DType::BF16);
    let same_dtype = k.dtype() == q.dtype() && v.dtype() == q.dtype();
    is_cube_device(&q.device())
        && float
        && same_dtype
        && (1..=MAX_KERNEL_HEAD_DIM).contains(&dh)
        && (1..=MAX_KERNEL_HEAD_DIM).contains(&dv)
        && b * h * sq * sk > 0
}

/// Output shape of attention: `[B, H, Sq, Dv]`.
fn attention_out_shape(q: &Shape, v: &Shape) -> Shape {
    Shape::new([q[0], q[1], q[2], v[3]])
}

/// Attention as a backend extension. `mask` is already broadcast to `[B, H, Sq, Sk]` (it may be a
/// stride-0 view); see the module documentation for the rest of the contract.
#[backend_extension(
    Cube: cfg(feature = "cube"),
    Fusion: cfg(feature = "cube"),
    Flex: cfg(feature = "flex"),
    Autodiff
)]
pub trait FlashAttentionBackend: Backend {
    /// Attention without a mask (optionally causal).
    #[fusion(dtype = q, shape = attention_out_shape(q, v))]
    fn flash_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self>;

    /// Attention with a boolean mask, true = masked out (optionally also causal).
    #[fusion(dtype = q, shape = attention_out_shape(q, v))]
    fn flash_attention_masked(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self>;

    /// Gradients `(dq, dk, dv)` of [`flash_attention`](Self::flash_attention) given the
    /// gradient of its output (`[B, H, Sq, Dv]`), in the inputs' dtype.
    #[fusion(meta = |q, k, v, _grad_out, _causal| (q.clone(), k.clone(), v.clone()))]
    fn flash_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients `(dq, dk, dv)` of
    /// [`flash_attention_masked`](Self::flash_attention_masked) given the gradient of its
    /// output, in the inputs' dtype.
    #[fusion(meta = |q, k, v, _mask, _grad_out, _causal| (q.clone(), k.clone(), v.clone()))]
    fn flash_attention_backward_masked(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        grad_out: FloatTensor<Self>,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

#[cfg(feature = "flex")]
mod flex {
    use super::*;
    use burn::backend::Flex;
    use burn::backend::ops::ModuleOps;

    /// Flex runs Burn's own attention: the extension exists there so that forcing the blip3
    /// path, and the extension's backward, can be exercised on the CPU.
    impl FlashAttentionBackend for Flex {
        fn flash_attention(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            causal: bool,
        ) -> FloatTensor<Self> {
            Flex::attention(q, k, v, None, None, options(causal))
        }

        fn flash_attention_masked(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            mask: BoolTensor<Self>,
            causal: bool,
        ) -> FloatTensor<Self> {
            Flex::attention(q, k, v, Some(mask), None, options(causal))
        }

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

    fn options(causal: bool) -> AttentionModuleOptions {
        AttentionModuleOptions {
            is_causal: causal,
            ..Default::default()
        }
    }
}

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

/// Runs the inner backend's forward and records a backward that recomputes the attention
/// probabilities from the saved inputs (no `[Sq, Sk]` tensor is kept between the passes): the
/// inner backend's [`FlashAttentionBackend::flash_attention_backward`] (the backward kernels on
/// CubeCL devices, [`composed_attention_backward`] on Flex).
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
                causal,
            } = ops.state;
            let (dq, dk, dv) = match mask {
                None => B::flash_attention_backward(q, k, v, grad_out, causal),
                Some(mask) => B::flash_attention_backward_masked(q, k, v, mask, grad_out, causal),
            };
            for (node, grad) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
                if let Some(node) = node {
                    grads.register::<B>(node.id, grad);
                }
            }
        }
    }

    let forward = |q, k, v, mask: Option<BoolTensor<B>>| match mask {
        None => B::flash_attention(q, k, v, causal),
        Some(mask) => B::flash_attention_masked(q, k, v, mask, causal),
    };
    match AttentionBackward
        .prepare::<C>([q.node(), k.node(), v.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let saved = SavedAttention::<B> {
                q: q.primitive().clone(),
                k: k.primitive().clone(),
                v: v.primitive().clone(),
                mask: mask.clone(),
                causal,
            };
            let out = forward(
                q.into_primitive(),
                k.into_primitive(),
                v.into_primitive(),
                mask,
            );
            prep.finish(saved, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(
            q.into_primitive(),
            k.into_primitive(),
            v.into_primitive(),
            mask,
        )),
    }
}

/// What the backward pass needs: the forward inputs.
#[derive(Debug, Clone)]
struct SavedAttention<B: Backend> {
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    mask: Option<BoolTensor<B>>,
    causal: bool,
}

/// Most score elements (`B·H·Sq·Sk` of one chunk) the backward materialises at once; larger
/// problems are processed in chunks of heads.
const BACKWARD_CHUNK_SCORES: usize = 1 << 26;

/// Gradients of attention with respect to `q`, `k` and `v` composed of tensor ops, recomputing
/// the probabilities (the Flex implementation of the backward, and the CubeCL fallback where the
/// kernels cannot run):
/// `P = softmax(S)`, `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ∘ (dP − rowsum(P ∘ dP))`,
/// `dQ = dS·K·scale`, `dK = dSᵀ·Q·scale`. Half-precision inputs are computed in f32 and the
/// gradients cast back. Large problems are split over batch and heads so that at most
/// [`BACKWARD_CHUNK_SCORES`] score elements live at once.
pub(crate) fn composed_attention_backward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    mask: Option<BoolTensor<B>>,
    causal: bool,
    grad_out: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let dtype = q.dtype();
    let work_dtype = match dtype {
        DType::F16 | DType::BF16 => Some(FloatDType::F32),
        _ => None,
    };
    let up = |t: FloatTensor<B>| match work_dtype {
        Some(d) => B::float_cast(t, d),
        None => t,
    };
    let (q, k, v, grad_out) = (up(q), up(k), up(v), up(grad_out));

    let [b, h, sq, _] = q.shape().dims::<4>();
    let [_, _, sk, _] = k.shape().dims::<4>();
    let per_head = (sq * sk).max(1);
    let heads_per_chunk = (BACKWARD_CHUNK_SCORES / per_head).clamp(1, h.max(1));
    let grads = if b * h * per_head <= BACKWARD_CHUNK_SCORES || b * h == 0 {
        attention_backward_chunk::<B>(q, k, v, mask, causal, grad_out)
    } else {
        let mut per_batch: Vec<[FloatTensor<B>; 3]> = Vec::with_capacity(b);
        for bi in 0..b {
            let mut parts: [Vec<FloatTensor<B>>; 3] = [Vec::new(), Vec::new(), Vec::new()];
            let mut h0 = 0;
            while h0 < h {
                let h1 = (h0 + heads_per_chunk).min(h);
                let slices = [
                    Slice::from(bi..bi + 1),
                    Slice::from(h0..h1),
                    Slice::from(..),
                    Slice::from(..),
                ];
                let part = attention_backward_chunk::<B>(
                    B::float_slice(q.clone(), &slices),
                    B::float_slice(k.clone(), &slices),
                    B::float_slice(v.clone(), &slices),
                    mask.clone().map(|m| B::bool_slice(m, &slices)),
                    causal,
                    B::float_slice(grad_out.clone(), &slices),
                );
                for (acc, g) in parts.iter_mut().zip(part) {
                    acc.push(g);
                }
                h0 = h1;
            }
            per_batch.push(parts.map(|p| B::float_cat(p, 1)));
        }
        let mut columns: [Vec<FloatTensor<B>>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for parts in per_batch {
            for (col, g) in columns.iter_mut().zip(parts) {
                col.push(g);
            }
        }
        columns.map(|c| B::float_cat(c, 0))
    };
    let [dq, dk, dv] = match work_dtype {
        Some(_) => grads.map(|g| B::float_cast(g, dtype.into())),
        None => grads,
    };
    (dq, dk, dv)
}

/// One chunk of [`attention_backward`], all tensors materialised.
fn attention_backward_chunk<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    mask: Option<BoolTensor<B>>,
    causal: bool,
    grad_out: FloatTensor<B>,
) -> [FloatTensor<B>; 3] {
    let [b, h, sq, dh] = q.shape().dims::<4>();
    let [_, _, sk, _] = k.shape().dims::<4>();
    let scale = 1.0 / (dh as f64).sqrt();

    let scores = B::float_mul_scalar(
        B::float_matmul(q.clone(), B::float_transpose(k.clone())),
        scale.into(),
    );
    let scores = match mask {
        Some(mask) => B::float_mask_fill(scores, mask, f32::NEG_INFINITY.into()),
        None => scores,
    };
    let scores = if causal {
        let device = q.device();
        let causal_mask = B::bool_expand(
            causal_mask::<B>(&device, sq, sk),
            Shape::new([b, h, sq, sk]),
        );
        B::float_mask_fill(scores, causal_mask, f32::NEG_INFINITY.into())
    } else {
        scores
    };
    // Softmax that gives 0 (not NaN) on fully masked rows, as the forward does.
    let row_max = B::float_clamp_min(B::float_max_dim(scores.clone(), 3), f32::MIN.into());
    let exp = B::float_exp(B::float_sub(scores, row_max));
    let row_sum = B::float_clamp_min(B::float_sum_dim(exp.clone(), 3), f32::MIN_POSITIVE.into());
    let probs = B::float_div(exp, row_sum);

    let grad_v = B::float_matmul(B::float_transpose(probs.clone()), grad_out.clone());
    let grad_probs = B::float_matmul(grad_out, B::float_transpose(v));
    let row_dot = B::float_sum_dim(B::float_mul(probs.clone(), grad_probs.clone()), 3);
    let grad_scores = B::float_mul(probs, B::float_sub(grad_probs, row_dot));
    let grad_q = B::float_mul_scalar(B::float_matmul(grad_scores.clone(), k), scale.into());
    let grad_k = B::float_mul_scalar(
        B::float_matmul(B::float_transpose(grad_scores), q),
        scale.into(),
    );
    [grad_q, grad_k, grad_v]
}

/// `[1, 1, Sq, Sk]`, true where key `j` lies after query `i` bottom-right aligned
/// (`j > i + Sk - Sq`).
fn causal_mask<B: Backend>(device: &B::Device, sq: usize, sk: usize) -> BoolTensor<B> {
    let settings = get_or_init_device_settings::<B>(device);
    let rows = B::int_reshape(
        B::int_arange(0..sq as i64, device, settings.int_dtype),
        Shape::new([sq, 1]),
    );
    let cols = B::int_reshape(
        B::int_arange(0..sk as i64, device, settings.int_dtype),
        Shape::new([1, sk]),
    );
    let shifted = B::int_add_scalar(rows, (sk as i64 - sq as i64).into());
    let mask = B::int_lower(shifted, cols, settings.bool_dtype);
    B::bool_reshape(mask, Shape::new([1, 1, sq, sk]))
}
