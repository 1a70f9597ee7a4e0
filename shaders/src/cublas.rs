//! cuBLAS products for CUDA tensors (the `cuda` feature): the CUDA side of
//! [`VendorMatmulBackend`](crate::gemm::VendorMatmulBackend).
//!
//! * **Library.** cuBLAS is loaded at run time through `cudarc` (nothing is linked at build
//!   time); [`available`] says whether the loader finds `libcublas.so*`. Without it every product
//!   stays on Burn's matmul.
//! * **Memory.** A Burn tensor's device address comes from the CubeCL client
//!   (`get_resource`, which also keeps the allocation in place while it is held); the output is
//!   a fresh Burn buffer that cuBLAS writes. CubeCL and cuBLAS share the device's primary
//!   context, so the addresses are valid for both.
//! * **Ordering.** CubeCL does not expose its CUDA stream, so each product waits for CubeCL's
//!   queued work (`client.sync()`), runs on a stream of our own, and waits for that stream before
//!   returning: two host synchronisations a product, cheap next to the products of a prefill or
//!   a training step, which is what this path is for (decoding keeps the GEMV path).
//! * **Layout.** Burn's tensors are row-major; cuBLAS is column-major. `C = A·B` row-major is
//!   `Cᵀ = Bᵀ·Aᵀ` column-major, so cuBLAS computes with the operands swapped and no copy. An
//!   operand that is a transposed view (unit row stride) is passed with cuBLAS's transpose flag;
//!   any other layout is made contiguous first.
//! * **Precision.** f32 is computed in f32 (`CUBLAS_COMPUTE_32F`, no TF32), f16 and bf16 on the
//!   tensor cores with f32 accumulation, as PyTorch does by default for half precision.
//!
//! The layout rule and the call counter are here for every build (the rule is unit-tested
//! without a GPU); the CUDA side is compiled with the `cuda` feature.

use std::sync::atomic::{AtomicUsize, Ordering};

#[cfg(feature = "cuda")]
pub(crate) use device::{available, matmul};

/// Products cuBLAS computed in this process.
static CALLS: AtomicUsize = AtomicUsize::new(0);

/// How many products cuBLAS has computed in this process.
pub(crate) fn calls() -> usize {
    CALLS.load(Ordering::Relaxed)
}

/// Counts one product computed by cuBLAS.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn count_call() {
    CALLS.fetch_add(1, Ordering::Relaxed);
}

/// How cuBLAS reads one row-major operand: its column-major view is the operand's transpose
/// (`transposed = false`: a row-major matrix with row stride `ld`) or the operand itself
/// (`transposed = true`: a transposed view, unit row stride, column stride `ld`).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Operand {
    /// Pass cuBLAS's transpose flag.
    pub(crate) transposed: bool,
    /// The leading dimension.
    pub(crate) ld: usize,
}

/// The layout in which a column-major GEMM (cuBLAS) reads the 2-D `shape`/`strides` in place,
/// if any.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn operand_layout(shape: &[usize], strides: &[usize]) -> Option<Operand> {
    let (rows, cols) = (shape[0], shape[1]);
    if strides[1] == 1 && (rows == 1 || strides[0] >= cols) {
        let ld = if rows == 1 { cols } else { strides[0] };
        return Some(Operand {
            transposed: false,
            ld: ld.max(1),
        });
    }
    if strides[0] == 1 && (cols == 1 || strides[1] >= rows) {
        let ld = if cols == 1 { rows } else { strides[1] };
        return Some(Operand {
            transposed: true,
            ld: ld.max(1),
        });
    }
    None
}

/// The CUDA side: the library, the handles and the product.
#[cfg(feature = "cuda")]
mod device {
    use std::collections::HashMap;
    use std::ffi::{c_int, c_void};
    use std::sync::{Arc, Mutex, OnceLock};

    use burn::backend::tensor::FloatTensor;
    use burn::tensor::{DType, Shape};
    use burn_cubecl::kernel::into_contiguous;
    use burn_cubecl::ops::numeric::empty_device_dtype;
    use burn_cubecl::{CubeBackend, CubeDevice};
    use cubecl_runtime::runtime::Runtime;
    use cudarc::cublas::{result as blas, sys};
    use cudarc::driver::{CudaContext, CudaStream};

    use super::{Operand, operand_layout};

    /// The CubeCL server type of the CUDA runtime, whose storage hands out device addresses.
    type CudaServer = <cubecl::cuda::CudaRuntime as Runtime>::Server;

    /// Whether the cuBLAS library can be loaded (checked once).
    pub(crate) fn available() -> bool {
        static PRESENT: OnceLock<bool> = OnceLock::new();
        // SAFETY: `is_culib_present` only tries to open the library; it calls nothing in it.
        *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() })
    }

    /// One device's cuBLAS handle and the stream it runs on.
    struct Gemm {
        /// Keeps the primary context retained while the handle lives.
        context: Arc<CudaContext>,
        stream: Arc<CudaStream>,
        handle: sys::cublasHandle_t,
    }

    // SAFETY: the handle is only used while the `Mutex` around it is held, so by one thread at a
    // time, which is what cuBLAS requires of a handle.
    unsafe impl Send for Gemm {}

    /// Why a product could not go to cuBLAS after it had been accepted.
    #[derive(Debug, thiserror::Error)]
    enum GemmError {
        #[error("CUDA driver: {0}")]
        Driver(#[from] cudarc::driver::DriverError),
        #[error("cuBLAS: {0:?}")]
        Blas(#[from] blas::CublasError),
        #[error("CubeCL: {0}")]
        Cube(String),
    }

    /// The cuBLAS handles, one per device ordinal, created on first use.
    fn handles() -> &'static Mutex<HashMap<usize, Gemm>> {
        static HANDLES: OnceLock<Mutex<HashMap<usize, Gemm>>> = OnceLock::new();
        HANDLES.get_or_init(|| Mutex::new(HashMap::new()))
    }

    impl Gemm {
        fn new(ordinal: usize) -> Result<Gemm, GemmError> {
            let context = CudaContext::new(ordinal)?;
            let stream = context.new_stream()?;
            context.bind_to_thread()?;
            let handle = blas::create_handle()?;
            // SAFETY: `handle` was just created and `stream` is a live stream of the same context.
            unsafe { blas::set_stream(handle, stream.cu_stream() as sys::cudaStream_t)? };
            Ok(Gemm {
                context,
                stream,
                handle,
            })
        }
    }

    /// The operands of a product cuBLAS did not compute, handed back for Burn's matmul.
    pub(crate) type Declined = Box<(FloatTensor<CubeBackend>, FloatTensor<CubeBackend>)>;

    /// `lhs · rhs` by cuBLAS, or the operands back (`Err`) when this product is not for cuBLAS: not
    /// a CUDA device, no library, mixed or non-float dtypes, an empty product, sizes beyond `i32`.
    /// A failure after the product was accepted (driver or cuBLAS error) is logged and also hands
    /// the operands back, so the caller's Burn matmul computes it.
    pub(crate) fn matmul(
        lhs: FloatTensor<CubeBackend>,
        rhs: FloatTensor<CubeBackend>,
    ) -> Result<FloatTensor<CubeBackend>, Declined> {
        let ordinal = match &lhs.device {
            CubeDevice::Cuda(device) => device.index,
            _ => return Err(Box::new((lhs, rhs))),
        };
        let data_type = match lhs.dtype {
            DType::F32 => sys::cudaDataType::CUDA_R_32F,
            DType::F16 => sys::cudaDataType::CUDA_R_16F,
            DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
            _ => return Err(Box::new((lhs, rhs))),
        };
        let [m, k] = lhs.meta.shape().dims::<2>();
        let [k2, n] = rhs.meta.shape().dims::<2>();
        let fits = |x: usize| x <= i32::MAX as usize;
        if rhs.dtype != lhs.dtype
            || k != k2
            || m == 0
            || n == 0
            || k == 0
            || !fits(m)
            || !fits(n)
            || !fits(k)
            || !available()
        {
            return Err(Box::new((lhs, rhs)));
        }
        let lhs = readable(lhs);
        let rhs = readable(rhs);
        let (Some(a), Some(b)) = (layout_of(&lhs), layout_of(&rhs)) else {
            return Err(Box::new((lhs, rhs)));
        };
        let out = empty_device_dtype(
            lhs.client.clone(),
            lhs.device.clone(),
            Shape::new([m, n]),
            lhs.dtype,
        );
        let Some(c) = layout_of(&out).filter(|c| !c.transposed) else {
            log::warn!("cuBLAS: output buffer strides {:?}", out.meta.strides());
            return Err(Box::new((lhs, rhs)));
        };
        match run(
            ordinal,
            data_type,
            (m, n, k),
            (&lhs, a),
            (&rhs, b),
            (&out, c),
        ) {
            Ok(()) => {
                super::count_call();
                Ok(out)
            }
            Err(why) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    log::warn!(
                        "cuBLAS product [{m}, {k}]·[{k}, {n}] failed ({why}); it and any later \
                         failure fall back to Burn's matmul"
                    )
                });
                Err(Box::new((lhs, rhs)))
            }
        }
    }

    /// The operand's layout when cuBLAS can read it in place (never for a storage-tiled buffer).
    fn layout_of(t: &FloatTensor<CubeBackend>) -> Option<Operand> {
        if t.meta.is_tiled() {
            return None;
        }
        operand_layout(t.meta.shape().as_slice(), t.meta.strides())
    }

    /// `t` itself when cuBLAS reads it in place, else a contiguous copy.
    fn readable(t: FloatTensor<CubeBackend>) -> FloatTensor<CubeBackend> {
        if layout_of(&t).is_some() {
            t
        } else {
            into_contiguous(t)
        }
    }

    /// Runs `C[m, n] = A[m, k] · B[k, n]` (row-major views) on device `ordinal`.
    fn run(
        ordinal: usize,
        data_type: sys::cudaDataType,
        (m, n, k): (usize, usize, usize),
        (lhs, a): (&FloatTensor<CubeBackend>, Operand),
        (rhs, b): (&FloatTensor<CubeBackend>, Operand),
        (out, c): (&FloatTensor<CubeBackend>, Operand),
    ) -> Result<(), GemmError> {
        let client = &lhs.client;
        let resource = |t: &FloatTensor<CubeBackend>| {
            client
                .get_resource::<CudaServer>(t.handle.clone())
                .map_err(|e| GemmError::Cube(format!("{e:?}")))
        };
        // Held until the product is done: the allocations stay in place meanwhile.
        let (a_mem, b_mem, c_mem) = (resource(lhs)?, resource(rhs)?, resource(out)?);
        // Everything CubeCL queued (the operands' producers) finishes before cuBLAS reads.
        cubecl::future::block_on(client.sync()).map_err(|e| GemmError::Cube(format!("{e:?}")))?;

        let mut handles = handles().lock().unwrap_or_else(|p| p.into_inner());
        let gemm = match handles.entry(ordinal) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Gemm::new(ordinal)?),
        };
        gemm.context.bind_to_thread()?;
        let op = |o: Operand| {
            if o.transposed {
                sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        // Column-major: C' (n × m) = op(B') (n × k) · op(A') (k × m), with B' = rhs and A' = lhs.
        // SAFETY: the three addresses are live allocations of at least the extents the leading
        // dimensions and sizes describe (they are Burn tensors of those shapes and strides, held by
        // `*_mem`); alpha and beta are host f32 as CUBLAS_COMPUTE_32F expects; the handle is used
        // under its mutex on the thread where its context is current.
        unsafe {
            blas::gemm_ex(
                gemm.handle,
                op(b),
                op(a),
                n as c_int,
                m as c_int,
                k as c_int,
                (&alpha as *const f32).cast::<c_void>(),
                b_mem.resource().ptr as *const c_void,
                data_type,
                b.ld as c_int,
                a_mem.resource().ptr as *const c_void,
                data_type,
                a.ld as c_int,
                (&beta as *const f32).cast::<c_void>(),
                c_mem.resource().ptr as *mut c_void,
                data_type,
                c.ld as c_int,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )?;
        }
        gemm.stream.synchronize()?;
        drop((a_mem, b_mem, c_mem));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_cublas_reads_in_place() {
        // Row-major [3, 4], and with padded rows.
        let o = operand_layout(&[3, 4], &[4, 1]).unwrap();
        assert!(!o.transposed && o.ld == 4);
        let o = operand_layout(&[3, 4], &[8, 1]).unwrap();
        assert!(!o.transposed && o.ld == 8);
        // A transposed view of a row-major [4, 3].
        let o = operand_layout(&[3, 4], &[1, 3]).unwrap();
        assert!(o.transposed && o.ld == 3);
        // Single rows and columns.
        let o = operand_layout(&[1, 5], &[0, 1]).unwrap();
        assert!(!o.transposed && o.ld == 5);
        let o = operand_layout(&[5, 1], &[1, 0]).unwrap();
        assert!(o.transposed && o.ld == 5);
        // Overlapping or broadcast rows, and other strides, are not read in place.
        assert!(operand_layout(&[3, 4], &[2, 1]).is_none());
        assert!(operand_layout(&[3, 4], &[0, 1]).is_none());
        assert!(operand_layout(&[3, 4], &[8, 2]).is_none());
    }
}
