"""PyTorch counterpart of `blip3 bench train`: the same config (HF SiglipVisionModel frozen +
the resampler of docs/model.md + HF Phi3ForCausalLM with the decoupled vocabulary), the same batch shape
(B samples of T text tokens with one 2x2 any-res image each), one AdamW step: forward, masked
next-token loss, backward, clip, update. Prints one JSON line with ms/step and peak RSS (and, on
CUDA, the GPU memory in use from nvidia-smi, read as the Rust side reads it).
On CUDA, f32 runs with TF32 matmuls allowed (Burn's autotuner may pick TF32 tensor cores for f32
too); bf16 is autocast (bf16 compute, f32 weights and optimizer state), like our mixed mode.

Usage: torch_train_step.py CONFIG_JSON BATCH TEXT_TOKENS STEPS [DEVICE [f32|bf16]]
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "model", "benches"))
from torch_reference import build  # noqa: E402


def main():
    cfg = json.loads(sys.argv[1])
    b, t, steps = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    device = sys.argv[5] if len(sys.argv) > 5 else "cpu"
    precision = sys.argv[6] if len(sys.argv) > 6 else "f32"
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.device(device):  # only around construction: as a global it slows every op
        vis, res, lm, s, init = build(cfg)
    vis.requires_grad_(False)
    params = [p for p in list(res.parameters()) + list(lm.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    emb = lm.get_input_embeddings()
    views = [torch.rand(5, 3, s, s, device=device) * 2 - 1 for _ in range(b)]
    ids = torch.tensor([[10 + (i * 7 + r) % 500 for i in range(t)] for r in range(b)], device=device)

    def forward():
        rows, labels = [], []
        for r in range(b):
            with torch.no_grad():
                feats = vis(pixel_values=views[r]).last_hidden_state
            n, d = feats.shape[1], feats.shape[2]
            g = int(n ** 0.5)
            crops = feats[1:].view(2, 2, g, g, d).permute(4, 0, 2, 1, 3).reshape(d, 2, 2, n).flatten(1, 2).permute(1, 2, 0)
            groups = torch.cat([feats[:1], crops], 0)
            tok = res(groups, torch.ones(groups.shape[0], n, dtype=torch.bool, device=device)).reshape(-1, lm.config.hidden_size)
            e = emb(ids[r:r + 1])[0]
            rows.append(torch.cat([e[:1], tok, e[2:]], 0))
            lab = torch.cat([ids[r, :1], torch.full((tok.shape[0],), -100, device=device), ids[r, 2:]])
            labels.append(lab)
        x = torch.stack(rows)
        y = torch.stack(labels)
        logits = lm(inputs_embeds=x).logits.float()
        return logits, y

    def step():
        with autocast:
            logits, y = forward()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    step()
    times = []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out = {"ms_per_step": statistics.median(times), "peak_rss_mb": rss, "threads": torch.get_num_threads()}
    if device == "cuda":
        out["gpu_mem_mb"] = gpu_mem_mb()
    print(json.dumps(out))


def gpu_mem_mb():
    """GPU memory in use (MiB) from nvidia-smi, read the same way as the Rust side: the whole
    card's, since each measurement runs alone (None if unreadable)."""
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, check=True).stdout
        return float(q.splitlines()[0])
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return None


if __name__ == "__main__":
    main()
