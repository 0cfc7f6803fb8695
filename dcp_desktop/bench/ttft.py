"""`dcp-bench ttft`: time to first token and memory, our path against llama.cpp's own multimodal
path, on the same GGUF pair, the same image and question, the same threads, in one run.

Configurations (CONFIGS): `llamacpp-576` is llama.cpp's own path: libmtmd tokenizes the turn,
preprocesses and encodes the image (ViT + projector in its own graph), and the chunks are decoded as
its helpers decode them (text tokens, then the image rows packed); the others are our Pipeline (PyTorch ViT, native pruning, projector on the K kept tokens,
injection) with a pruning method and token budget.

What one run measures, from the decoded image in memory to the first token:
  vision   our preprocess + ViT (+ in-encoder ACGR) | mtmd_tokenize (preprocess) + mtmd_encode_chunk (ViT + projector)
  prune    selecting K tokens, question embeddings included (ours only)
  project  the projector on the K tokens (ours only; mtmd projects inside vision)
  prefill  `USER:` + the image rows + `\\n{question} ASSISTANT:` into the KV cache
  ttft     wall clock over all of the above + the first (greedy) token id
  decode   DECODE_TOKENS further greedy steps; EOS does not stop them (random weights)
Both paths decode the same Vicuna system prefix once per model load and keep it cached; a run
starts from that cache. Each configuration runs in a fresh process (one model load, reported
apart as load_ms; its peak RSS is that process's), one warm-up run, then the median of `runs`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

# Nothing here imports torch: the llama.cpp worker must not pay for it (its peak RSS). Our path's
# modules (pipeline, vision) are imported where they are used.
from .. import template
from ..engine import Engine, GenerationParams, ImageRows
from ..errors import InputError
from ..image import load_image
from ..gguf_file import gguf_value, open_gguf
from ..models import ModelFiles, validate
from .machine import machine
from .mtmd_peer import MtmdEncoder
from .random_gguf import LLAVA_7B, build_pair, pair_bytes, pair_paths

N_CTX = 4096
QUESTION = "What is in the image?"
DECODE_TOKENS = 16
DEFAULT_RUNS = {"tiny": 5, "7b": 3}
DEFAULT_ACGR_LAYER = {"tiny": 1, "7b": 8}  # of 3 stored blocks (tiny) and 23 (ViT-L)
MULTI_IMAGE_TOKENS = 16
MULTI_IMAGE_ANSWER_TOKENS = 8
FIELDS = ("vision_ms", "prune_ms", "project_ms", "prefill_ms", "ttft_ms", "decode_tokens_per_s")


@dataclass(frozen=True)
class Config:
    name: str
    method: str | None  # pruning method of our path; None: llama.cpp's own path (mtmd)
    n_keep: int  # image rows the LLM sees
    in_encoder: bool = False  # ACGR inside the encoder at the acgr layer


CONFIGS = (
    Config("llamacpp-576", None, 576),
    Config("full-576", "full", 576),
    Config("dcp-64", "dcp", 64),
    Config("dcp-16", "dcp", 16),
    Config("dcp-16-inencoder", "dcp", 16, in_encoder=True),
)


# --- files (built once, cached outside the repository) --------------------------------------------

def cache_dir() -> Path:
    """$DCP_BENCH_CACHE, else the user cache: ~/.cache/dcp-desktop/bench (XDG_CACHE_HOME honoured)."""
    explicit = os.environ.get("DCP_BENCH_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "dcp-desktop" / "bench"


def model_files(shapes: str, progress: bool = True) -> tuple[Path, Path]:
    """(llm, mmproj) for `shapes`, built on first use."""
    folder = cache_dir() / shapes
    if shapes == "tiny":
        return _tiny_files(folder)
    if shapes == "7b":
        return _random_7b_files(folder, progress)
    raise ValueError(f"--shapes: expected tiny or 7b, got {shapes!r}")


def _tiny_files(folder: Path) -> tuple[Path, Path]:
    """The test model of models/make_test_model.py (a source checkout's file, as the tests use it)."""
    llm, mmproj = folder / "tiny-llava.gguf", folder / "mmproj-tiny-llava.gguf"
    if not (llm.exists() and mmproj.exists()):
        recipe = Path(__file__).resolve().parents[2] / "models" / "make_test_model.py"
        if not recipe.exists():
            raise FileNotFoundError(f"{recipe}: not found; --shapes tiny needs a source checkout of dcp-desktop")
        spec = importlib.util.spec_from_file_location("make_test_model", recipe)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.build(folder)
    return llm, mmproj


def _random_7b_files(folder: Path, progress: bool) -> tuple[Path, Path]:
    paths = pair_paths(LLAVA_7B, folder)
    if all(path.exists() for path in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    needed, free = pair_bytes(LLAVA_7B), shutil.disk_usage(folder).free
    if free < needed * 1.1:
        raise OSError(f"{folder}: the random 7B pair needs {needed / 1e9:.1f} GB but {free / 1e9:.1f} GB are free; "
                      "free some space or point DCP_BENCH_CACHE elsewhere")
    with tqdm(total=needed, unit="B", unit_scale=True, desc="random LLaVA-1.5-7B GGUF pair",
              disable=not progress) as bar:
        return build_pair(LLAVA_7B, folder, _prompt_words(), progress=bar.update)


def _prompt_words() -> list[str]:
    """Whole-word pieces for the prompt, so it tokenizes to about as many tokens as with Llama's vocabulary."""
    text = f"{template.SYSTEM} {template.USER}{template.ASSISTANT} {QUESTION}"
    return text.translate(str.maketrans(".,?:'", "     ")).split()


def bench_image(folder: Path) -> Path:
    """A 640×480 noise PNG (not square: padding runs); values do not change the time."""
    path = folder / "noise-640x480.png"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
    return path


def kv_bytes_per_row(llm: Path) -> int:
    """KV-cache bytes one position takes: n_layers × (K, V) × n_kv_heads × head_dim × 2 B (f16: llama.cpp's
    default KV type)."""
    reader = open_gguf(llm)
    arch = gguf_value(reader, "general.architecture")

    def value(key: str) -> int:
        return int(gguf_value(reader, f"{arch}.{key}"))

    head_dim = value("embedding_length") // value("attention.head_count")
    return value("block_count") * 2 * value("attention.head_count_kv") * head_dim * 2


# --- one configuration, in its own process ---------------------------------------------------------

def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _first_token_and_decode(engine, start: float) -> tuple[float, float]:
    """(ms from `start` to the first greedy token id, decode tokens/s over DECODE_TOKENS more steps).
    Engine.generate would stop at EOS or wait for printable text; with random weights either may
    come at any step, so the bench decodes a fixed number of tokens itself."""
    token = int(np.argmax(engine.next_token_logits()))
    ttft_ms = _ms_since(start)
    decode_start = time.perf_counter()
    for _ in range(DECODE_TOKENS):
        engine.decode_tokens([token])
        token = int(np.argmax(engine.next_token_logits()))
    return ttft_ms, DECODE_TOKENS / (time.perf_counter() - decode_start)


def _prompt_tokens(engine) -> dict[str, int]:
    head = template.turn_head_ids(engine.tokenize, eos=-1, after_answer=False)
    return {"prefix": engine.n_prefix,
            "turn_text": len(head) + len(template.turn_tail_ids(engine.tokenize, QUESTION, has_images=True))}


class _Ours:
    """Our Pipeline with one configuration; `run()` is one image turn up to DECODE_TOKENS tokens."""

    def __init__(self, spec: dict):
        from ..pipeline import Pipeline, PipelineOptions

        cfg = Config(**spec["config"])
        options = PipelineOptions(method=cfg.method, n_keep=cfg.n_keep, n_ctx=N_CTX, n_threads=spec["threads"],
                                  acgr_layer=spec["acgr_layer"] if cfg.in_encoder else None)
        self.pipeline = Pipeline(ModelFiles("bench", Path(spec["llm"]), Path(spec["mmproj"])), options)
        self.engine, self.load_ms = self.pipeline.engine, self.pipeline.load_ms["load"]
        self.image = load_image(spec["image"])  # decoded once: file decoding is not part of TTFT
        self.last_embeddings = None

    def run(self) -> dict:
        pipeline = self.pipeline
        pipeline.new_chat()
        start = time.perf_counter()
        tokens = pipeline.prepare(pipeline.encode_image(self.image), QUESTION)
        prefill_start = time.perf_counter()
        self.engine.add_user_turn(QUESTION, [tokens.rows(pipeline.options.positions)])
        prefill_ms = _ms_since(prefill_start)
        ttft_ms, decode_tps = _first_token_and_decode(self.engine, start)
        self.last_embeddings = tokens.embeddings
        stages = tokens.timings_ms
        return {"vision_ms": stages["vision"], "prune_ms": stages["prune"], "project_ms": stages["project"],
                "prefill_ms": prefill_ms, "ttft_ms": ttft_ms, "decode_tokens_per_s": decode_tps}

    def image_embeddings(self):
        """(K, n_embd): the last run's image rows."""
        return self.last_embeddings

    def close(self) -> None:
        self.pipeline.close()


class _LlamaCpp:
    """llama.cpp's own path: mtmd cuts the turn into chunks, preprocesses and encodes the image (ViT +
    projector in its own graph); the chunks go into our Engine as mtmd_helper_eval_chunks would decode
    them (text tokens, then the image rows packed), with the same cached prefix and greedy loop."""

    def __init__(self, spec: dict):
        start = time.perf_counter()
        info = validate(ModelFiles("bench", Path(spec["llm"]), Path(spec["mmproj"])))
        self.engine = Engine(spec["llm"], n_ctx=min(N_CTX, info.n_ctx_train), n_threads=spec["threads"])
        self.mtmd = MtmdEncoder(spec["mmproj"], self.engine.llama, n_threads=spec["threads"])
        self.bitmap = self.mtmd.read_image(spec["image"])
        self.load_ms = _ms_since(start)
        self.image = spec["image"]

    def run(self) -> dict:
        self.engine.new_chat()
        timings = {"vision_ms": 0.0, "prefill_ms": 0.0}
        start = time.perf_counter()
        chunks = self.mtmd.turn(template.turn_text_with_marker(QUESTION, self.mtmd.marker),
                                self.bitmap)
        while True:
            mark = time.perf_counter()
            chunk = next(chunks, None)  # mtmd's time: tokenizing preprocesses the image, then encoding
            timings["vision_ms"] += _ms_since(mark)
            if chunk is None:
                break
            mark = time.perf_counter()
            if isinstance(chunk, np.ndarray):
                self.engine.inject(ImageRows(chunk))
            else:
                self.engine.decode_tokens(chunk)
            timings["prefill_ms"] += _ms_since(mark)
        ttft_ms, decode_tps = _first_token_and_decode(self.engine, start)
        return {**timings, "prune_ms": None, "project_ms": None, "ttft_ms": ttft_ms,
                "decode_tokens_per_s": decode_tps}

    def image_embeddings(self):
        """(576, n_embd): mtmd's embeddings of the image (for the KV cross-check; not timed)."""
        with Image.open(self.image) as image:
            return self.mtmd.encode(image)

    def close(self) -> None:
        self.mtmd.free_image(self.bitmap)
        self.mtmd.close()
        self.engine.close()


def measure(spec: dict) -> dict:
    """One configuration: load, warm up, `runs` runs; medians, load time, KV counts, peak RSS."""
    cfg = Config(**spec["config"])
    session = _LlamaCpp(spec) if cfg.method is None else _Ours(spec)
    try:
        session.run()  # warm-up
        runs = [session.run() for _ in range(spec["runs"])]
        result = {"config": cfg.name, "n_image_tokens": cfg.n_keep, "load_ms": session.load_ms}
        for field in FIELDS:
            values = [run[field] for run in runs]
            result[field] = None if values[0] is None else statistics.median(values)
        result["kv_bytes_image_llamacpp"] = session.engine.image_state_bytes(ImageRows(session.image_embeddings()))
        result["prompt_tokens"] = _prompt_tokens(session.engine)
    finally:
        session.close()
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def measure_multi_image(spec: dict) -> dict:
    """One conversation, one turn per image (the same image, encoded once), dcp at 16 tokens."""
    session = _Ours(spec)
    pipeline, n_images = session.pipeline, spec["multi_image"]
    encoded = pipeline.encode_image(session.image)
    params = GenerationParams(max_tokens=MULTI_IMAGE_ANSWER_TOKENS)
    done, error = 0, None
    try:
        for _ in range(n_images):
            list(pipeline.ask(QUESTION, [encoded], params))  # the whole (short) answer goes into the cache
            done += 1
    except InputError as e:  # the context is full
        error = str(e)
    finally:
        kv_positions, n_ctx = pipeline.engine.kv_positions(), pipeline.engine.n_ctx
        session.close()
    return {"config": spec["config"]["name"], "images": n_images, "images_done": done, "ok": done == n_images,
            "error": error, "kv_positions": kv_positions, "n_ctx": n_ctx}


def peak_rss_mb() -> float:
    """This process's peak resident set size. Linux: VmHWM, which starts afresh at exec; ru_maxrss
    would carry over the parent's peak from before the fork."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024  # kB
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB (BSD), bytes (macOS)
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _in_fresh_process(spec: dict) -> dict:
    """Run measure() (or measure_multi_image()) in a new Python process: a per-configuration peak RSS,
    and no configuration inherits another's allocations or warm caches."""
    with tempfile.TemporaryDirectory(prefix="dcp-bench-ttft-") as folder:
        spec_path, out_path = Path(folder) / "spec.json", Path(folder) / "result.json"
        spec_path.write_text(json.dumps({**spec, "out": str(out_path)}))
        done = subprocess.run([sys.executable, "-m", __name__, str(spec_path)], capture_output=True, text=True)
        if done.returncode != 0 or not out_path.exists():
            raise RuntimeError(f"dcp-bench ttft: configuration {spec['config']['name']} failed "
                               f"(exit {done.returncode}):\n{done.stderr[-3000:]}")
        return json.loads(out_path.read_text())


def _worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = measure_multi_image(spec) if spec.get("multi_image") else measure(spec)
    Path(spec["out"]).write_text(json.dumps(result))


# --- the report --------------------------------------------------------------------------------------

def run(shapes: str = "tiny", *, threads: int | None = None, runs: int | None = None,
        acgr_layer: int | None = None, multi_image: int = 0, configs=CONFIGS, progress: bool = True) -> dict:
    """Measure every configuration of `configs` (any iterable, e.g. wrapped in a progress bar) on
    the `shapes` pair ("tiny" or "7b"), each in a fresh process."""
    for option, value in (("--threads", threads), ("--runs", runs), ("--acgr-layer", acgr_layer),
                          ("--multi-image", multi_image or None)):
        if value is not None and value < 1:
            raise ValueError(f"{option}: expected a positive number, got {value}")
    llm, mmproj = model_files(shapes, progress)
    spec = {"llm": str(llm), "mmproj": str(mmproj), "image": str(bench_image(cache_dir())),
            "threads": threads or os.cpu_count(), "runs": runs or DEFAULT_RUNS[shapes],
            "acgr_layer": acgr_layer or DEFAULT_ACGR_LAYER[shapes], "multi_image": 0}
    results = [_in_fresh_process({**spec, "config": asdict(cfg)}) for cfg in configs]
    prompt = results[0]["prompt_tokens"]  # the same in every configuration
    per_row = kv_bytes_per_row(llm)
    for result in results:
        del result["prompt_tokens"]
        result["kv_bytes_image"] = result["n_image_tokens"] * per_row
    multi = None
    if multi_image:
        cfg = Config(f"dcp-{MULTI_IMAGE_TOKENS}", "dcp", MULTI_IMAGE_TOKENS)
        multi = _in_fresh_process({**spec, "config": asdict(cfg), "multi_image": multi_image})
    return {"shapes": shapes, "threads": spec["threads"], "machine": machine(), "runs": spec["runs"],
            "acgr_layer": spec["acgr_layer"], "image": spec["image"], "question": QUESTION,
            "decode_tokens": DECODE_TOKENS, "n_ctx": N_CTX,
            "files": {"llm": str(llm), "mmproj": str(mmproj), "llm_bytes": llm.stat().st_size,
                      "mmproj_bytes": mmproj.stat().st_size},
            "results": results, "context_fit": context_fit(prompt, per_row), "multi_image": multi}


def context_fit(prompt: dict[str, int], kv_per_row: int, budgets=(576, 16)) -> dict:
    """Images a 4096-token context holds, one per turn: system prefix once, then per image
    `USER:` + K rows + `\\n{question} ASSISTANT:` + a DECODE_TOKENS answer + `</s>`. Packed, a turn takes
    as many positions as cells; at grid positions (the default) an image takes 576 positions while
    they fit and is packed after that (engine.py), so fewer images fit."""
    turn_text = prompt["turn_text"] + DECODE_TOKENS + 1
    return {"n_ctx": N_CTX, "prefix": prompt["prefix"], "turn_text": turn_text,
            "images": {str(k): (N_CTX - prompt["prefix"]) // (k + turn_text) for k in budgets},
            "images_grid": {str(k): _grid_images(prompt["prefix"], turn_text, k) for k in budgets},
            "kv_bytes_per_image": {str(k): k * kv_per_row for k in budgets}}


def _grid_images(prefix: int, turn_text: int, n_rows: int, span: int = 576) -> int:
    used, images = prefix, 0
    while True:
        turn = (span if used + span + turn_text <= N_CTX else n_rows) + turn_text
        if used + turn > N_CTX:
            return images
        used, images = used + turn, images + 1


def table(report: dict) -> str:
    """Markdown: one row per configuration, ratios to llama.cpp's own path, then the notes."""
    base = next((r for r in report["results"] if r["config"] == "llamacpp-576"), None)
    lines = ["| config | image tokens | vision ms | prune ms | project ms | prefill ms | TTFT ms | TTFT speed-up "
             "(llama.cpp / this) | decode tok/s | peak RSS MB | KV bytes (image) | load ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        speedup = f"{base['ttft_ms'] / r['ttft_ms']:.2f}×" if base else "–"
        lines.append(f"| {r['config']} | {r['n_image_tokens']} | {_ms(r['vision_ms'])} | {_ms(r['prune_ms'])} | "
                     f"{_ms(r['project_ms'])} | {_ms(r['prefill_ms'])} | {_ms(r['ttft_ms'])} | {speedup} | "
                     f"{r['decode_tokens_per_s']:.1f} | {r['peak_rss_mb']:.0f} | {_size(r['kv_bytes_image'])} | "
                     f"{r['load_ms']:.0f} |")
    return "\n".join([*_header(report), "", *lines, "", *_notes(report)])


def _header(report: dict) -> list[str]:
    return [f"machine: {report['machine']}",
            f"shapes: {report['shapes']} ({Path(report['files']['llm']).name} {_gb(report['files']['llm_bytes'])}, "
            f"{Path(report['files']['mmproj']).name} {_gb(report['files']['mmproj_bytes'])}); "
            f"threads: {report['threads']} (torch, llama.cpp n_threads and n_threads_batch, mtmd); "
            f"median of {report['runs']} runs after 1 warm-up; in-encoder ACGR after block {report['acgr_layer']}",
            f"One turn: a {Path(report['image']).stem} image and \"{report['question']}\". The system prompt prefix "
            "is decoded once per model load and cached in BOTH paths; TTFT runs from the decoded image to the first "
            f"greedy token id; decode = {report['decode_tokens']} more tokens.",
            "Each configuration runs in a fresh process: peak RSS is that process's VmHWM, imports included, and "
            "counts the memory-mapped GGUF pages it read (file-backed) beside llama.cpp's own copies."]


def _notes(report: dict) -> list[str]:
    fit = report["context_fit"]
    lines = [f"A {fit['n_ctx']}-token context (system prefix {fit['prefix']} tokens; per image turn K rows + "
             f"{fit['turn_text']} tokens of question, answer and </s>) holds "
             + ", ".join(f"{n} images at {k} tokens ({_size(fit['kv_bytes_per_image'][k])} of KV each)"
                         for k, n in fit["images"].items())
             + f" with packed positions; at grid positions (the default) {fit['images_grid']['16']} images at 16 "
               "tokens (each takes 576 positions while they fit)."]
    checks = [f"{r['config']} {r['kv_bytes_image_llamacpp'] - r['kv_bytes_image']:+d} B"
              for r in report["results"]]
    lines.append("KV bytes = rows × layers × 2 (K, V) × kv heads × head dim × 2 B (f16), from the GGUF. "
                 "Cross-check, the growth of llama.cpp's saved sequence state when the image rows are injected "
                 "(KV + cell metadata), minus that: " + ", ".join(checks) + ".")
    multi = report.get("multi_image")
    if multi:
        outcome = "worked" if multi["ok"] else f"stopped after {multi['images_done']}: {multi['error']}"
        lines.append(f"Multi-image: one conversation with {multi['images']} images at {MULTI_IMAGE_TOKENS} tokens "
                     f"{outcome}; KV positions used: {multi['kv_positions']} of {multi['n_ctx']}.")
    return lines


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.1f} KiB"


def _gb(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.2f} GB"


def main(args) -> None:
    configs = tqdm(CONFIGS, unit="config", desc="dcp-bench ttft", disable=args.json)
    report = run(args.shapes, threads=args.threads, runs=args.runs, acgr_layer=args.acgr_layer,
                 multi_image=args.multi_image, configs=configs)
    print(json.dumps(report, indent=1) if args.json else table(report))


if __name__ == "__main__":
    _worker(sys.argv[1])
