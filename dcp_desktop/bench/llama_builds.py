"""`dcp-bench builds`: prefill and decode speed of different llama.cpp builds on the same model.

    dcp-bench builds [--lib NAME=PATH ...] [--shapes 7b|tiny] [--threads 2] [--prompt 576] [--decode 16]

Each build runs in a fresh process whose llama-cpp-python loads the libllama in PATH
(LLAMA_CPP_LIB_PATH; `ours` = dcp_desktop/llama_lib, always included; NAME=PATH:VARIANT forces one
CPU variant of a runtime-dispatch build). The process loads the model, decodes `--prompt` tokens
in one batch (the prefill of an image's 576 rows), then `--decode` tokens one at a time, and
reports tokens/s for both. Ratios are against the first build listed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def worker(model: str, n_prompt: int, n_decode: int, n_threads: int) -> dict:
    """Runs inside the measured process: llama_build has pointed llama-cpp-python at the build."""
    from dcp_desktop.llama_build import CPU_VARIANT, LIB_DIR
    from dcp_desktop.llama_build import llama_cpp as lc

    t0 = time.perf_counter()
    mdl = lc.llama_model_load_from_file(model.encode(), lc.llama_model_default_params())
    params = lc.llama_context_default_params()
    params.n_ctx = n_prompt + n_decode + 16
    params.n_batch = params.n_ubatch = n_prompt  # one graph for the whole prefill
    params.n_threads = params.n_threads_batch = n_threads
    ctx = lc.llama_init_from_model(mdl, params)
    load_s = time.perf_counter() - t0

    def decode(tokens: list[int], start: int) -> float:
        batch = lc.llama_batch_init(len(tokens), 0, 1)
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
            batch.seq_id[i][0], batch.logits[i] = 0, i == len(tokens) - 1
        batch.n_tokens = len(tokens)
        t = time.perf_counter()
        rc = lc.llama_decode(ctx, batch)
        elapsed = time.perf_counter() - t
        lc.llama_batch_free(batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        return elapsed

    prompt = [3 + i % 1000 for i in range(n_prompt)]
    prefill_s = decode(prompt, 0)
    decode_s = sum(decode([5 + i], n_prompt + i) for i in range(n_decode))
    lc.llama_free(ctx)
    lc.llama_model_free(mdl)
    return {"lib": str(LIB_DIR), "cpu_variant": CPU_VARIANT, "load_s": load_s,
            "prefill_s": prefill_s, "prefill_tok_s": n_prompt / prefill_s, "decode_tok_s": n_decode / decode_s}


def run_one(name: str, spec: str | None, args) -> dict:
    env = dict(os.environ)
    env.pop("LLAMA_CPP_LIB_PATH", None)
    env.pop("MTMD_CPP_LIB", None)
    env.pop("DCP_LLAMA_CPU_VARIANT", None)
    if spec:
        path, _, variant = spec.partition(":")
        env["LLAMA_CPP_LIB_PATH"] = env["MTMD_CPP_LIB"] = str(Path(path).resolve())
        if variant:
            env["DCP_LLAMA_CPU_VARIANT"] = variant
    code = ("import json, sys; from dcp_desktop.bench.llama_builds import worker; "
            f"print('RESULT', json.dumps(worker({str(args.model)!r}, {args.prompt}, {args.decode}, {args.threads})))")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        import signal

        how = (f"killed by {signal.Signals(-result.returncode).name}" if result.returncode < 0
               else f"exit {result.returncode}")
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        return {"name": name, "error": f"{how}\n{tail}"}
    return {"name": name, **json.loads(lines[0][len("RESULT "):])}


def table(rows: list[dict]) -> str:
    ok = [r for r in rows if "error" not in r]
    base = ok[0] if ok else None
    out = ["| build | CPU variant | prefill s | prefill tok/s | decode tok/s | prefill vs first | decode vs first |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['name']} | – | crashed: {r['error'].splitlines()[0]} | | | | |")
            continue
        out.append(f"| {r['name']} | {r['cpu_variant'] or 'built in'} | {r['prefill_s']:.1f} | {r['prefill_tok_s']:.1f} | "
                   f"{r['decode_tok_s']:.2f} | {r['prefill_tok_s'] / base['prefill_tok_s']:.2f}× | "
                   f"{r['decode_tok_s'] / base['decode_tok_s']:.2f}× |")
    return "\n".join(out)


def main(args) -> None:
    from .ttft import model_files

    args.model = str(model_files(args.shapes)[0])
    builds = [tuple(item.split("=", 1)) for item in args.lib] + [("ours", None)]
    rows = []
    for name, spec in builds:
        print(f"{name}: {spec or 'dcp_desktop/llama_lib'} ...", file=sys.stderr, flush=True)
        rows.append(run_one(name, spec, args))
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{Path(args.model).name}, {args.prompt}-token prefill + {args.decode} decoded tokens, "
              f"{args.threads} threads, one run each, {time.strftime('%Y-%m-%d')}")
        print(table(rows))
