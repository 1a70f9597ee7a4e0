"""PyTorch's time for the model's weight products, for the kernels benchmark's GEMV (one row)
and GEMM (prefill/training rows) sections.

Usage: torch_gemv.py DEVICE REPS SPEC...   with SPEC = K,N,DTYPE,LAYOUT[,M] (DTYPE f32|f16|bf16,
LAYOUT rows|transposed, M rows, default 1). Prints one line per SPEC: `SPEC MS` (median of REPS
calls after 3 warm-up calls, each call ending in a device sync), or exits non-zero without torch.
"""

import sys
import time

import torch

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main():
    device, reps = sys.argv[1], int(sys.argv[2])
    # Full f32 products, as blip3 computes them (no TF32).
    torch.backends.cuda.matmul.allow_tf32 = False
    for spec in sys.argv[3:]:
        k, n, dtype, layout, *rows = spec.split(",")
        k, n, dt = int(k), int(n), DTYPES[dtype]
        m = int(rows[0]) if rows else 1
        x = torch.randn(m, k, device=device, dtype=dt)
        if layout == "transposed":
            w = (torch.randn(n, k, device=device) * 0.02).to(dt).t()
        else:
            w = (torch.randn(k, n, device=device) * 0.02).to(dt)
        with torch.inference_mode():
            for _ in range(3):
                x @ w
            sync(device)
            times = []
            for _ in range(reps):
                sync(device)
                t0 = time.perf_counter()
                x @ w
                sync(device)
                times.append((time.perf_counter() - t0) * 1e3)
        times.sort()
        print(spec, times[len(times) // 2], flush=True)


if __name__ == "__main__":
    main()
