"""The PyTorch vision tower against Hugging Face CLIP, layer by layer, and across GGUF tensor types."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

from dcp_desktop.vision import VisionTower


@pytest.fixture(scope="module")
def tower(tiny):
    return VisionTower.from_gguf(tiny.mmproj)


@pytest.fixture(scope="module")
def pixels():
    return torch.from_numpy(np.random.default_rng(2).standard_normal((3, 336, 336)).astype(np.float32))


@pytest.fixture(scope="module")
def hf(tiny, pixels):
    clip = tiny.model.model.vision_tower
    clip.config._attn_implementation = "eager"  # so attention probabilities are returned
    with torch.no_grad():
        return clip(pixels[None], output_hidden_states=True, output_attentions=True)


def test_stores_every_block_up_to_the_feature_layer(tower, tiny):
    assert tower.cfg.n_blocks == tiny.model.config.vision_config.num_hidden_layers - 1
    assert (tower.cfg.grid, tower.cfg.n_patches) == (24, 576)


@pytest.mark.parametrize("stop", [1, 2, 3])
def test_hidden_states_match_each_layer(tower, hf, pixels, stop):
    state = tower.encode(pixels, stop=stop)
    np.testing.assert_allclose(state.hidden.numpy(), hf.hidden_states[stop][0].numpy(), atol=2e-5)


def test_cls_attention_and_keys_match(tower, hf, pixels, tiny):
    state = tower.encode(pixels)
    last = tower.cfg.n_blocks - 1
    expected_attn = hf.attentions[last][0, :, 0, 1:].mean(0)  # heads → mean, [CLS] row, patch columns
    np.testing.assert_allclose(state.cls_attn.numpy(), expected_attn.numpy(), atol=1e-6)
    layer = tiny.model.model.vision_tower.encoder.layers[last]
    with torch.no_grad():
        keys = layer.self_attn.k_proj(layer.layer_norm1(hf.hidden_states[last][0]))[1:]
    np.testing.assert_allclose(state.keys.numpy(), keys.numpy(), atol=2e-5)
    assert state.keys.shape == (576, tower.cfg.width)


def test_continue_on_all_tokens_equals_one_pass(tower, pixels):
    early = tower.encode(pixels, stop=1)
    with torch.no_grad():
        resumed = tower.run_blocks(early.hidden, 1, tower.cfg.n_blocks)
    np.testing.assert_allclose(resumed.hidden.numpy(), tower.encode(pixels).hidden.numpy(), atol=1e-5)


def test_continue_on_a_token_subset(tower, pixels):
    early = tower.encode(pixels, stop=1)
    keep = torch.tensor([0, 5, 17, 300, 576])  # CLS + four patches
    with torch.no_grad():
        plain = tower.run_blocks(early.hidden[keep], 1, tower.cfg.n_blocks)
        zero_bias = tower.run_blocks(early.hidden[keep], 1, tower.cfg.n_blocks, attn_bias=torch.zeros(5))
        massed = tower.run_blocks(early.hidden[keep], 1, tower.cfg.n_blocks,
                                  attn_bias=torch.log(torch.tensor([1.0, 3, 1, 1, 9])))
    assert plain.hidden.shape == (5, tower.cfg.width) and plain.cls_attn.shape == (4,)
    np.testing.assert_allclose(plain.hidden.numpy(), zero_bias.hidden.numpy(), atol=1e-6)
    assert not np.allclose(plain.hidden.numpy(), massed.hidden.numpy())  # log-mass changes attention


def _rewrite(src, dst, tensor_type: GGMLQuantizationType):
    """Copy an mmproj, storing every matrix whose rows fit the type's block size as `tensor_type`."""
    reader = GGUFReader(str(src))
    writer = GGUFWriter(str(dst), "clip")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        writer.add_key_value(field.name, value, field.types[0],
                             sub_type=field.types[-1] if len(field.types) > 1 else None)
    block = gguf.GGML_QUANT_SIZES[tensor_type][0]
    for tensor in reader.tensors:
        data = np.array(tensor.data)
        if data.ndim == 2 and data.shape[-1] % block == 0:
            quantized = gguf.quants.quantize(data, tensor_type)
            writer.add_tensor(tensor.name, quantized, raw_shape=quantized.shape, raw_dtype=tensor_type)
        else:
            writer.add_tensor(tensor.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("tensor_type,tolerance", [(GGMLQuantizationType.F16, 1e-2),
                                                    (GGMLQuantizationType.BF16, 5e-2),
                                                    (GGMLQuantizationType.Q8_0, 5e-2)])
def test_f16_bf16_q8_0_files_load(tiny, tower, pixels, tmp_path, tensor_type, tolerance):
    path = tmp_path / f"mmproj-{tensor_type.name}.gguf"
    _rewrite(tiny.mmproj, path, tensor_type)
    other = VisionTower.from_gguf(path)
    ours, theirs = tower.encode(pixels).patches, other.encode(pixels).patches
    cos = torch.nn.functional.cosine_similarity(ours, theirs, dim=1)
    assert cos.min() > 1 - tolerance


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_runs_on_cuda(tiny, tower, pixels):
    gpu = VisionTower.from_gguf(tiny.mmproj, device="cuda")
    np.testing.assert_allclose(gpu.encode(pixels).patches.cpu().numpy(), tower.encode(pixels).patches.numpy(),
                               atol=1e-3)
