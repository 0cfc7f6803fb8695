"""Write a small random LLaVA-1.5 pair of GGUF files for tests and the offline quick start.

The model has the real LLaVA-1.5 shapes where they matter to the pipeline (336 px images, 14 px
patches, 24×24 = 576 patches + CLS, a llama-architecture LLM with a real SentencePiece vocabulary)
and tiny widths everywhere else, so it builds in seconds. Its weights are random: it answers
nonsense, but every code path (vision, pruning, injection, generation) runs for real.

    python models/make_test_model.py OUT_DIR [--seed 0] [--f16]

The same random `transformers` model is the reference in the parity test (tests/test_parity.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import transformers

from dcp_desktop import template
from dcp_desktop.export import export_llava, spm_vocab

# Words the tokenizer can spell as whole pieces: the LLaVA-1.5 prompt plus short answers.
WORDS = (
    template.SYSTEM + " " + template.USER + template.ASSISTANT + " What is in the "
    "image? Is there a red green blue yellow circle square triangle star on left right top bottom of "
    "this picture how many colour color shape yes no one two three four five six seven eight"
).replace(".", " ").replace(",", " ").replace("?", " ").replace(":", " ").split()

VOCAB_SIZE = 1024


def tiny_llava(seed: int = 0, llm_width: int = 96) -> transformers.LlavaForConditionalGeneration:
    """A random LLaVA-1.5 with real image geometry and tiny widths (float32, eval mode)."""
    torch.manual_seed(seed)
    vision = transformers.CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        image_size=336, patch_size=14, projection_dim=64, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    text = transformers.LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=llm_width, intermediate_size=192, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6)
    config = transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=VOCAB_SIZE - 1,
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu")
    model = transformers.LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # HF's init is near-zero for some tensors; spread values so outputs differ
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.08)
    return model


def build(out_dir: str | Path, *, seed: int = 0, dtype: str = "f32", llm_width: int = 96):
    """Build the random model and export it; returns (transformers model, llm_path, mmproj_path)."""
    model = tiny_llava(seed, llm_width)
    vocab = spm_vocab(list(WORDS), size=VOCAB_SIZE)
    return (model, *export_llava(model, vocab, out_dir, name="tiny-llava", dtype=dtype))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder to write tiny-llava.gguf and mmproj-tiny-llava.gguf into")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument("--f16", action="store_true", help="store weights in float16 instead of float32")
    args = parser.parse_args()
    _, llm, mmproj = build(args.out_dir, seed=args.seed, dtype="f16" if args.f16 else "f32")
    print(f"wrote {llm}\nwrote {mmproj}")


if __name__ == "__main__":
    main()
