#!/usr/bin/env python3
"""`blip3 serve` used by the official `openai` Python package, unmodified.

Starts `blip3 serve` on a free loopback port with an API key, then, through `openai.OpenAI`:
lists the models; asks about an image (a PNG data URL) greedily; asks the same question streamed
and checks the streamed text equals the plain reply; asks for log-probabilities (one entry per
generated token, each with its alternatives); sends a raw completion with an `<image>` marker
(`images` through `extra_body`, blip3's extension); and checks that a remote image URL, a missing
API key and `n=2` come back as the OpenAI client's error types. Prints what it saw; exits
non-zero on the first mismatch.

Needs Python 3.9+ and `pip install openai` (docs/serving.md records a run). Usage:

    cargo build --release --bin blip3
    cargo run --release --bin blip3 -- demo --steps-scale 0.05     # any model directory will do
    python3 tests/openai_client.py --model runs/demo/safety/final

`--blip3` names the binary (default: `$CARGO_TARGET_DIR/release/blip3`, else
`target/release/blip3`); `--base-url` uses a server that is already running instead.
"""

import argparse
import base64
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib

import openai
from openai import OpenAI

KEY = "test-key"


def png(width, height):
    """A small RGB gradient PNG, written with the standard library only."""
    raw = b""
    for y in range(height):
        raw += b"\x00" + bytes(
            v for x in range(width) for v in ((x * 9) % 256, (y * 7) % 256, 128)
        )

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(binary, model):
    port = free_port()
    cmd = [binary, "serve", "--model", model, "--port", str(port), "--api-key", KEY]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"blip3 serve exited: {proc.stderr.read().decode(errors='replace')}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, base + "/v1"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("blip3 serve did not come up within 120 s")


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")
    print(f"ok: {what}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    ap.add_argument("--blip3", default=os.path.join(target, "release", "blip3"))
    ap.add_argument("--model", help="model directory to serve")
    ap.add_argument("--base-url", help="use this running server (its /v1 URL) instead")
    args = ap.parse_args()

    proc = None
    if args.base_url:
        base = args.base_url
    else:
        if not args.model:
            ap.error("--model is needed unless --base-url is given")
        proc, base = start_server(args.blip3, args.model)
    print(f"openai {openai.__version__} against {base}")
    try:
        client = OpenAI(base_url=base, api_key=KEY)
        models = client.models.list()
        check(len(models.data) == 1, f"one model listed: {models.data[0].id}")

        url = "data:image/png;base64," + base64.b64encode(png(64, 48)).decode()
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": "What is in this picture?"},
                ],
            }
        ]
        plain = client.chat.completions.create(
            model="blip3", messages=messages, temperature=0, max_tokens=24
        )
        reply = plain.choices[0].message.content
        print(f"reply: {reply!r}")
        print(f"usage: {plain.usage}")
        check(plain.usage.completion_tokens >= 1, "usage counts the generated tokens")
        check(plain.choices[0].finish_reason in ("stop", "length"), "finish_reason")

        stream = client.chat.completions.create(
            model="blip3",
            messages=messages,
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces, usage = [], None
        for event in stream:
            if event.usage is not None:
                usage = event.usage
            for choice in event.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)
        streamed = "".join(pieces)
        print(f"streamed in {len(pieces)} pieces: {streamed!r}")
        check(streamed == reply, "the streamed reply equals the plain one")
        check(
            usage is not None and usage.completion_tokens == plain.usage.completion_tokens,
            "the streamed usage chunk matches",
        )

        with_lp = client.chat.completions.create(
            model="blip3",
            messages=messages,
            temperature=0,
            max_tokens=8,
            logprobs=True,
            top_logprobs=3,
        )
        entries = with_lp.choices[0].logprobs.content
        for e in entries[:4]:
            alts = ", ".join(f"{a.token!r}:{a.logprob:.3f}" for a in e.top_logprobs)
            print(f"  token {e.token!r} logprob {e.logprob:.4f} top [{alts}]")
        check(
            len(entries) == with_lp.usage.completion_tokens,
            f"{len(entries)} logprob entries, one per generated token",
        )
        check(
            all(len(e.top_logprobs) == 3 and e.logprob <= 0 for e in entries),
            "three alternatives each, log-probabilities <= 0",
        )
        check(
            all(abs(e.top_logprobs[0].logprob - e.logprob) < 1e-4 for e in entries),
            "greedy picks the most likely token",
        )

        raw = client.completions.create(
            model="blip3",
            prompt="<image>\nA picture of",
            max_tokens=8,
            temperature=0,
            extra_body={"images": [url]},
        )
        print(f"completion: {raw.choices[0].text!r} ({raw.usage})")
        check(raw.usage.prompt_tokens > 8, "the image's vision tokens count as prompt tokens")

        try:
            client.chat.completions.create(
                model="blip3",
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                            {"type": "text", "text": "hi"},
                        ],
                    }
                ],
            )
            check(False, "a remote image URL is refused")
        except openai.BadRequestError as e:
            check(True, f"a remote image URL is refused: {e.message}")

        try:
            OpenAI(base_url=base, api_key="wrong").models.list()
            check(False, "a wrong API key is refused")
        except openai.AuthenticationError as e:
            check(True, f"a wrong API key is refused ({e.status_code})")

        try:
            client.chat.completions.create(model="blip3", messages=messages, n=2)
            check(False, "n=2 is refused")
        except openai.BadRequestError as e:
            check(True, f"n=2 is refused: {e.message}")
        print("all checks passed")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
