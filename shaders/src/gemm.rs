//! Matrix products of the model's linear layers, `lhs [M, K] · rhs [K, N]`, with a choice of
//! implementation: Burn's matmul, or the vendor GEMM (cuBLAS on CUDA devices).
//!
//! Burn's matmul reaches about a fifth of cuBLAS in half precision on an H100/H200
//! (docs/kernels.md: `wmma` instructions, no Hopper `wgmma`/TMA on its compile route), which caps
//! every prefill and training step. [`VendorMatmulBackend`] hands the product to cuBLAS on CUDA
//! devices (f32 without TF32, f16 and bf16 with f32 accumulation) and falls back to Burn's matmul
//! on every other device, dtype or layout it does not take; under autodiff its backward is two
//! more products through the same extension, so training steps use cuBLAS too.
//!
//! The path is chosen by [`MatmulPath`], from the `BLIP3_MATMUL` environment variable (`burn`,
//! the default until cuBLAS is measured on a GPU; `cublas`; or `extension`, the extension on every
//! device, which tests the model's wiring and the backward on the CPU).

use burn::backend::autodiff::NodeId;
use std::cell::Cell;

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, backend_extension};
use burn::prelude::*;
use burn::tensor::Shape;

use crate::attention::extension_available;

/// The environment variable choosing [`MatmulPath::configured`].
pub const MATMUL_ENV: &str = "BLIP3_MATMUL";

/// Which implementation [`matmul`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulPath {
    /// Burn's matmul everywhere (the default until the vendor GEMM is measured on a GPU).
    #[default]
    Burn,
    /// The [`VendorMatmulBackend`] extension on CUDA devices (cuBLAS); Burn's matmul elsewhere.
    Cublas,
    /// The extension on every device that implements it: cuBLAS on CUDA, Burn's matmul inside
    /// the extension (with the extension's own backward) on Flex and wgpu. For testing the
    /// model's wiring and the backward on machines without CUDA.
    Extension,
}

impl MatmulPath {
    /// Parses `burn`, `cublas` (also `vendor`) or `extension`.
    pub fn parse(text: &str) -> Option<MatmulPath> {
        match text.trim().to_ascii_lowercase().as_str() {
            "burn" => Some(MatmulPath::Burn),
            "cublas" | "vendor" => Some(MatmulPath::Cublas),
            "extension" => Some(MatmulPath::Extension),
            _ => None,
        }
    }

    /// The process's default: [`MATMUL_ENV`] = `burn|cublas|extension` (read once; unset or an
    /// unknown value, which is logged, means `burn`).
    pub fn configured() -> MatmulPath {
        static PATH: std::sync::OnceLock<MatmulPath> = std::sync::OnceLock::new();
        *PATH.get_or_init(|| {
            crate::env_choice(MATMUL_ENV, MatmulPath::parse, "burn, cublas, extension")
        })
    }

    /// Whether products on `device` go through the extension on this path.
    pub fn routes(self, device: &Device) -> bool {
        match self {
            MatmulPath::Burn => false,
            MatmulPath::Cublas => is_cuda_device(device),
            MatmulPath::Extension => extension_available(device),
        }
    }
}

/// How many products cuBLAS has computed in this process (forward and backward). Tests read it
/// to check that cuBLAS, not the fallback, ran.
pub fn vendor_calls() -> usize {
    crate::cublas::calls()
}

/// Whether the vendor GEMM can run in this process: a build with the `cuda` feature and a cuBLAS
/// library the loader finds (`libcublas.so*` on the library path). Devices still decide per
/// call: only CUDA tensors go to cuBLAS.
pub fn vendor_available() -> bool {
    #[cfg(feature = "cuda")]
    {
        crate::cublas::available()
    }
    #[cfg(not(feature = "cuda"))]
    false
}

/// The product as a backend extension: `lhs [M, K] · rhs [K, N]` → `[M, N]`, both operands of
/// one float dtype, any strides (a transposed view is read in place where the vendor library
/// can).
#[backend_extension(
    Cube: cfg(feature = "cube"),
    Fusion: cfg(feature = "cube"),
    Flex: cfg(feature = "flex"),
    Autodiff
)]
pub trait VendorMatmulBackend: Backend {
    /// The product, by the vendor library where the device and dtype allow, else Burn's matmul.
    #[fusion(dtype = lhs, shape = product_shape(lhs, rhs))]
    fn vendor_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The output shape of [`VendorMatmulBackend::vendor_matmul`].
fn product_shape(lhs: &Shape, rhs: &Shape) -> Shape {
    Shape::new([lhs[0], rhs[1]])
}

/// `lhs · rhs` for `lhs: [M, K]`, `rhs: [K, N]`: through [`VendorMatmulBackend`] where
/// [`vendor_routed`] says so (`cublas` on a CUDA device), Burn's matmul otherwise. `rhs` is cast
/// to `lhs`'s dtype first.
pub fn matmul(lhs: Tensor<2>, rhs: Tensor<2>) -> Tensor<2> {
    if vendor_routed(&lhs.device()) {
        return vendor_matmul(lhs, rhs);
    }
    let dtype = lhs.dtype();
    lhs.matmul(rhs.cast(dtype))
}

thread_local! {
    /// This thread's path while [`with_path`] runs.
    static PATH_OVERRIDE: Cell<Option<MatmulPath>> = const { Cell::new(None) };
    /// Products this thread sent through the extension ([`extension_calls`]).
    static EXTENSION_CALLS: Cell<usize> = const { Cell::new(0) };
}

/// The path products on this thread take: the one [`with_path`] set, else
/// [`MatmulPath::configured`].
pub fn current_path() -> MatmulPath {
    PATH_OVERRIDE
        .with(Cell::get)
        .unwrap_or_else(MatmulPath::configured)
}

/// Runs `f` with `path` as this thread's matmul path (the routing decision is made on the thread
/// that builds the model's graph), then restores the previous one. Lets tests and benchmarks
/// compare paths in one process without touching the environment.
pub fn with_path<T>(path: MatmulPath, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<MatmulPath>);
    impl Drop for Restore {
        fn drop(&mut self) {
            PATH_OVERRIDE.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(PATH_OVERRIDE.with(|p| p.replace(Some(path))));
    f()
}

/// How many products this thread has sent through the extension ([`vendor_matmul`] on a device
/// that implements it), whatever computed them.
pub fn extension_calls() -> usize {
    EXTENSION_CALLS.with(Cell::get)
}

/// Whether [`matmul`] sends products on `device` through the extension: this thread's
/// [`current_path`] routes it ([`MatmulPath::routes`]).
pub fn vendor_routed(device: &Device) -> bool {
    current_path().routes(device)
}

/// `lhs · rhs` through [`VendorMatmulBackend`] on any device that implements it (cuBLAS on CUDA,
/// Burn's matmul inside the extension elsewhere: Flex and wgpu exercise the extension's plumbing
/// and its autodiff); Burn's matmul on devices without it. `rhs` is cast to `lhs`'s dtype first.
pub fn vendor_matmul(lhs: Tensor<2>, rhs: Tensor<2>) -> Tensor<2> {
    let dtype = lhs.dtype();
    let rhs = rhs.cast(dtype);
    if !extension_available(&lhs.device()) {
        return lhs.matmul(rhs);
    }
    EXTENSION_CALLS.with(|n| n.set(n.get() + 1));
    Tensor::from_dispatch(<Dispatch as VendorMatmulBackend>::vendor_matmul(
        lhs.into_dispatch(),
        rhs.into_dispatch(),
    ))
}

/// `x [.., K] · w [K, N]` over the last dimension of a rank-`D` tensor (a linear layer without
/// bias), through [`matmul`]: the leading dimensions are flattened into rows.
pub fn linear_product<const D: usize>(x: Tensor<D>, w: Tensor<2>) -> Tensor<D> {
    let dims = x.dims();
    let k = dims[D - 1];
    let n = w.dims()[1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let y = matmul(x.reshape([rows, k]), w);
    let mut out = dims;
    out[D - 1] = n;
    y.reshape(out)
}

/// Whether `device` (ignoring autodiff) is a CUDA device.
pub fn is_cuda_device(device: &Device) -> bool {
    #[cfg(feature = "cuda")]
    {
        use burn::backend::DispatchDevice;
        matches!(
            device.clone().without_autodiff().as_dispatch(),
            DispatchDevice::Cube(burn_cubecl::CubeDevice::Cuda(_))
        )
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        false
    }
}

#[cfg(feature = "flex")]
mod flex {
    use super::*;
    use burn::backend::Flex;
    use burn::backend::ops::FloatTensorOps;

    /// Flex has no vendor library: the extension is Burn's matmul there, so that its plumbing
    /// and backward can be tested on the CPU.
    impl VendorMatmulBackend for Flex {
        fn vendor_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
            Flex::float_matmul(lhs, rhs)
        }
    }
}

#[cfg(feature = "cube")]
mod cube {
    use super::*;
    use burn::backend::ops::FloatTensorOps;
    use burn_cubecl::CubeBackend;

    /// cuBLAS for CUDA tensors it takes; Burn's matmul for everything else (other runtimes,
    /// integer or quantized dtypes, empty products, no cuBLAS library).
    impl VendorMatmulBackend for CubeBackend {
        fn vendor_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
            #[cfg(feature = "cuda")]
            let (lhs, rhs) = match crate::cublas::matmul(lhs, rhs) {
                Ok(out) => return out,
                Err(operands) => *operands,
            };
            CubeBackend::float_matmul(lhs, rhs)
        }
    }
}

/// Under autodiff the product is one node whose backward is two more products through the
/// extension: `d lhs = d out · rhsᵀ`, `d rhs = lhsᵀ · d out` (transposes are views). Like Burn's
/// matmul, each operand is kept (through the checkpointer, so op-level checkpointing can
/// recompute it instead) only when the other one needs its gradient.
impl<B: VendorMatmulBackend, C: CheckpointStrategy> VendorMatmulBackend for Autodiff<B, C> {
    fn vendor_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct ProductBackward;

        impl<B: VendorMatmulBackend> Backward<B, 2> for ProductBackward {
            type State = (Option<NodeId>, Option<NodeId>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_lhs, node_rhs] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (lhs, rhs) = ops.state;
                let lhs = lhs.map(|id| checkpointer.retrieve_node_output::<FloatTensor<B>>(id));
                let rhs = rhs.map(|id| checkpointer.retrieve_node_output::<FloatTensor<B>>(id));
                if let (Some(node), Some(rhs)) = (node_lhs, rhs) {
                    let rhs_t = B::float_swap_dims(rhs, 0, 1);
                    grads.register::<B>(node.id, B::vendor_matmul(grad.clone(), rhs_t));
                }
                if let (Some(node), Some(lhs)) = (node_rhs, lhs) {
                    let lhs_t = B::float_swap_dims(lhs, 0, 1);
                    grads.register::<B>(node.id, B::vendor_matmul(lhs_t, grad));
                }
            }
        }

        let lhs_tracked = lhs.is_tracked();
        let rhs_tracked = rhs.is_tracked();
        match ProductBackward
            .prepare::<C>([lhs.node(), rhs.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let lhs_state = rhs_tracked.then(|| prep.checkpoint(&lhs));
                let rhs_state = lhs_tracked.then(|| prep.checkpoint(&rhs));
                let out = B::vendor_matmul(lhs.into_primitive(), rhs.into_primitive());
                prep.finish((lhs_state, rhs_state), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::vendor_matmul(lhs.into_primitive(), rhs.into_primitive()))
            }
        }
    }
}
