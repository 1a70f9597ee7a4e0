"""PyTorch counterpart of `model/benches/model.rs`: the same xGen-MM config (HF SiglipVisionModel +
the resampler of docs/model.md + HF Phi3ForCausalLM with the decoupled vocabulary, from the fixture generator),
the same input shapes, timed on the CPU with the same number of threads as torch defaults to here,
or on the GPU (DEVICE cuda, DTYPE f32, f16 or bf16). Each decode step reads its greedy token back, and
each forward copies its logits to the host, as the Rust side does.

Usage: torch_reference.py CONFIG_JSON TEXT_TOKENS NEW_TOKENS REPS [DEVICE [DTYPE]]
  -> prints one JSON line.
"""
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "model"))
from make_model_fixtures import DecoupledEmbedding, DecoupledLinear, PerceiverResampler  # noqa: E402
from transformers import Phi3Config, Phi3ForCausalLM, SiglipVisionConfig, SiglipVisionModel  # noqa: E402


def build(cfg):
    v = cfg["vision_encoder_config"]["vision_config"]
    vis = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
        num_hidden_layers=v["num_hidden_layers"], num_attention_heads=v["num_attention_heads"],
        image_size=v["image_size"], patch_size=v["patch_size"], layer_norm_eps=v["layer_norm_eps"],
        hidden_act="gelu_pytorch_tanh")).eval()
    r = cfg["vision_tokenizer_config"]
    res = PerceiverResampler(dim=r["vis_feature_dim"], dim_inner=r["lang_embedding_dim"], depth=r["depth"],
                             heads=r["heads"], dim_head=r["dim_head"], num_latents=r["num_vis_tokens"]).eval()
    t = cfg["text_config"]
    lm = Phi3ForCausalLM(Phi3Config(
        vocab_size=t["vocab_size"], hidden_size=t["hidden_size"], intermediate_size=t["intermediate_size"],
        num_hidden_layers=t["num_hidden_layers"], num_attention_heads=t["num_attention_heads"],
        num_key_value_heads=t["num_key_value_heads"], max_position_embeddings=t["max_position_embeddings"],
        sliding_window=t["sliding_window"], pad_token_id=None, bos_token_id=None, eos_token_id=None)).eval()
    init = t["initial_tokenizer_len"]
    lm.set_input_embeddings(DecoupledEmbedding(lm.model.embed_tokens.weight, init, 3))
    lm.lm_head = DecoupledLinear(lm.lm_head.weight, init, 3)
    return vis, res, lm, v["image_size"], init


def main():
    cfg = json.loads(sys.argv[1])
    text_tokens, new_tokens, reps = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    device = sys.argv[5] if len(sys.argv) > 5 else "cpu"
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[sys.argv[6] if len(sys.argv) > 6 else "f32"]
    torch.manual_seed(0)
    # Build directly on the device in the target dtype (the full size would take minutes on CPU).
    # The device context only around construction: as a global default it would intercept every
    # op in Python and slow small models down several times.
    torch.set_default_dtype(dtype)
    with torch.device(device):
        vis, res, lm, s, init = build(cfg)
    views = torch.rand(5, 3, s, s, device=device) * 2 - 1
    ids = torch.tensor([[10 + i % 200 for i in range(text_tokens)]], device=device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
    emb = lm.get_input_embeddings()

    def forward():
        feats = vis(pixel_values=views).last_hidden_state            # [5, n, d]
        n = feats.shape[1]
        g = int(n ** 0.5)
        d = feats.shape[2]
        crops = feats[1:].view(2, 2, g, g, d).permute(4, 0, 2, 1, 3).reshape(d, 2, 2, n).flatten(1, 2).permute(1, 2, 0)
        groups = torch.cat([feats[:1], crops], 0)
        tokens = res(groups, torch.ones(groups.shape[0], n, dtype=torch.bool, device=device)).reshape(-1, lm.config.hidden_size)
        e = emb(ids)[0]
        x = torch.cat([e[:4], tokens, e[5:]], 0).unsqueeze(0)
        return lm(inputs_embeds=x, use_cache=True), x

    with torch.inference_mode():
        for _ in range(2):
            forward()[0].logits.cpu()
        fwd = []
        for _ in range(reps):
            sync()
            t0 = time.perf_counter()
            forward()[0].logits.cpu()
            fwd.append((time.perf_counter() - t0) * 1e3)
        tok = []
        for _ in range(min(reps, 3)):
            out, x = forward()
            past = out.past_key_values
            length = x.shape[1]
            sync()
            t0 = time.perf_counter()
            for i in range(new_tokens):
                nxt = torch.tensor([[10 + i % 100]], device=device)
                o = lm(input_ids=nxt, past_key_values=past, use_cache=True,
                       position_ids=torch.tensor([[length + i]], device=device))
                past = o.past_key_values
                o.logits[0, -1].argmax().item()
            tok.append((time.perf_counter() - t0) * 1e3 / new_tokens)
    print(json.dumps({"forward_ms": statistics.median(fwd), "token_ms": statistics.median(tok),
                      "threads": torch.get_num_threads(), "device": device,
                      "dtype": str(dtype).removeprefix("torch.")}))


if __name__ == "__main__":
    main()
