//! Scaled dot-product attention: the public entry point, the choice between Burn's attention op
//! and the blip3 kernel, and the [`FlashAttentionBackend`] extension with its Flex and Fusion
//! implementations (the CubeCL one lives in `attention_kernel`, its tensor-core variant in
//! `attention_mma_kernel`; the Autodiff one in `attention_autodiff`; the tensor-op backward and
//! log-sum-exp in `attention_composed`).
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

use burn::backend::tensor::{BoolTensor, FloatTensor};
use burn::backend::{Backend, Dispatch, DispatchDevice, backend_extension};
use burn::prelude::*;
use burn::tensor::module::attention as burn_attention_op;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Shape};

pub use crate::attention_composed::NO_KEY_LSE;
pub(crate) use crate::attention_composed::{
    composed_attention, composed_attention_backward, composed_attention_lse,
};

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
    /// ([`kernel_supports`]) and is faster ([`MIN_KERNEL_ROWS`] query rows or more); on Flex,
    /// decoding ([`host_rows_apply`]) composed of tensor ops ([`composed_forward`]); Burn's op
    /// everywhere else (Flex prefill and training, GPU decoding, the resampler).
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
        AttentionPath::Auto if host_rows_apply(&q) => {
            return composed_forward(q, k, v, mask, causal);
        }
        AttentionPath::Auto => kernel_applies(&q, &k, &v),
    };
    if use_extension {
        flash_attention(q, k, v, mask, causal)
    } else {
        burn_attention(q, k, v, mask, causal)
    }
}

/// Attention composed of tensor ops: the products and a softmax, with the module's contract.
/// [`AttentionPath::Auto`] takes it for decoding on Flex ([`host_rows_apply`]), where it reads
/// the KV cache's buffer views in place; Burn's op first copies strided keys and values into
/// contiguous tensors (about 9× the composed path's time in f32 for a mid or full-size layer's
/// cache view: the kernel benchmark's cache-view section, docs/model.md).
pub fn composed_forward(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    causal: bool,
) -> Tensor<4> {
    let mask = mask.map(|m| expand_mask(m, &q, &k));
    Tensor::from_dispatch(composed_attention::<Dispatch>(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        mask.map(Tensor::into_dispatch),
        causal,
    ))
}

/// Most query rows (`Sq`) for which [`AttentionPath::Auto`] composes attention on Flex.
pub const MAX_HOST_ROWS: usize = 8;

/// The [`AttentionPath::Auto`] rule for [`composed_forward`]: a Flex device without autodiff
/// (inference) and at most [`MAX_HOST_ROWS`] query rows (decoding).
pub fn host_rows_apply(q: &Tensor<4>) -> bool {
    q.dims()[2] <= MAX_HOST_ROWS && is_plain_flex(&q.device())
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

/// Attention along the extension (as [`flash_attention`]) with each query row's log-sum-exp of
/// its visible scaled scores, `lse_i = ln Σ_j e^(q_i·k_j · Dh^-0.5)` (`[B, H, Sq]`, f32;
/// [`NO_KEY_LSE`] for a row that sees no key): the forward kernels compute it on CubeCL devices,
/// tensor ops elsewhere. It is what the autodiff backward reads; partial attentions over key
/// blocks can also be merged with it.
pub fn flash_attention_with_lse(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    causal: bool,
) -> (Tensor<4>, Tensor<3>) {
    let mask = mask.map(|m| expand_mask(m, &q, &k));
    if !extension_available(&q.device()) {
        let (out, lse) = composed_attention_lse::<Dispatch>(
            q.into_dispatch(),
            k.into_dispatch(),
            v.into_dispatch(),
            mask.map(Tensor::into_dispatch),
            causal,
        );
        return (Tensor::from_dispatch(out), Tensor::from_dispatch(lse));
    }
    let (q, k, v) = (q.into_dispatch(), k.into_dispatch(), v.into_dispatch());
    let (out, lse) = match mask {
        None => <Dispatch as FlashAttentionBackend>::flash_attention_lse(q, k, v, causal),
        Some(mask) => <Dispatch as FlashAttentionBackend>::flash_attention_lse_masked(
            q,
            k,
            v,
            mask.into_dispatch(),
            causal,
        ),
    };
    (Tensor::from_dispatch(out), Tensor::from_dispatch(lse))
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

/// How many of the [`backward_kernel_launches`] read the forward's saved output and
/// log-sum-exp instead of recomputing them (the autodiff backward does; [`attention_backward`],
/// which has no forward state, does not).
pub fn saved_statistics_backward_launches() -> usize {
    SAVED_STATISTICS_LAUNCHES.load(Ordering::Relaxed)
}

/// The counter behind [`saved_statistics_backward_launches`].
pub(crate) static SAVED_STATISTICS_LAUNCHES: AtomicUsize = AtomicUsize::new(0);

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

/// Whether `device` is Flex without autodiff (where tensors are eager host memory).
pub(crate) fn is_plain_flex(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        !device.is_autodiff()
            && matches!(
                device.clone().as_dispatch(),
                burn::backend::DispatchDevice::Flex(_)
            )
    }
    #[cfg(not(feature = "flex"))]
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

/// Output metadata of the `flash_attention_lse` ops under Fusion: the attention output and the
/// `[B, H, Sq]` f32 log-sum-exp.
#[cfg(feature = "cube")]
fn lse_meta(
    q: &burn::backend::fusion::custom::TensorSpec,
    v: &burn::backend::fusion::custom::TensorSpec,
) -> (
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
) {
    use burn::backend::fusion::custom::TensorSpec;
    let out = TensorSpec::new(attention_out_shape(&q.shape, &v.shape), q.dtype);
    let lse = TensorSpec::new(Shape::new([q.shape[0], q.shape[1], q.shape[2]]), DType::F32);
    (out, lse)
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

    /// [`flash_attention`](Self::flash_attention) that also returns each query row's
    /// log-sum-exp of its visible scaled scores, `lse_i = ln Σ_j e^(s_ij)` (`[B, H, Sq]`, f32;
    /// [`NO_KEY_LSE`] for a row that sees no key): what
    /// [`flash_attention_backward_saved`](Self::flash_attention_backward_saved) reads instead
    /// of recomputing the softmax statistics.
    #[fusion(meta = |q, _k, v, _causal| lse_meta(q, v))]
    fn flash_attention_lse(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// [`flash_attention_masked`](Self::flash_attention_masked) with the rows' log-sum-exp, as
    /// [`flash_attention_lse`](Self::flash_attention_lse).
    #[fusion(meta = |q, _k, v, _mask, _causal| lse_meta(q, v))]
    fn flash_attention_lse_masked(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients `(dq, dk, dv)` given the forward's output `out` and row log-sum-exp `lse`
    /// (from [`flash_attention_lse`](Self::flash_attention_lse)) and the gradient of the
    /// output: one walk over the keys fewer than
    /// [`flash_attention_backward`](Self::flash_attention_backward), which recomputes them.
    #[fusion(meta = |q, k, v, _out, _lse, _grad_out, _causal| (q.clone(), k.clone(), v.clone()))]
    fn flash_attention_backward_saved(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// [`flash_attention_backward_saved`](Self::flash_attention_backward_saved) for
    /// [`flash_attention_lse_masked`](Self::flash_attention_lse_masked).
    #[fusion(
        meta = |q, k, v, _mask, _out, _lse, _grad_out, _causal| (q.clone(), k.clone(), v.clone())
    )]
    #[allow(clippy::too_many_arguments)]
    fn flash_attention_backward_saved_masked(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: BoolTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

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

        /// The composed backward, which recomputes the probabilities whole (the saved output
        /// and statistics would not spare it a product).
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
