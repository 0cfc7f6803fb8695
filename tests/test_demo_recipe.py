"""The demo model's training recipe (models/demo/train.py) on a micro config: its token ids are
llama.cpp's, the shared-prefix forward equals the plain one, training lowers the loss, and a checkpoint
resumes exactly."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from dcp_desktop import scenes
from dcp_desktop.export import export_llava


def _load_recipe():
    path = Path(__file__).resolve().parents[1] / "models" / "demo" / "train.py"
    spec = importlib.util.spec_from_file_location("demo_train", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["demo_train"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


train = _load_recipe()
MICRO = dataclasses.replace(train.PRESETS["smoke"], vision_layers=2, llm_layers=1, ground_layer=0, lr=3e-3, warmup_steps=1,
                            steps=10, bf16=False)


@pytest.fixture(scope="module")
def parts():
    vocab = train.demo_vocab()
    tokenizer = train.SpmTokenizer(vocab)
    batch = train.make_batch(scenes.make_split("train", 2, 2), tokenizer, MICRO.small_weight)
    return vocab, tokenizer, batch, torch.tensor(tokenizer.prefix())


def test_token_ids_equal_llama_cpp_on_the_exported_vocabulary(parts, tmp_path):
    vocab, tokenizer, _, _ = parts
    llm, _ = export_llava(train.build_model(MICRO, len(vocab.tokens)), vocab, tmp_path, name=train.NAME)
    texts = train.template_texts(scenes.make_split("test", 40)) + ["What is in the image?", "a, b. c? human's"]
    train.check_tokenizer(tokenizer, llm, texts)  # raises on the first difference
    assert all(len(tokenizer.encode(answer)) == 1 for answer in scenes.ANSWERS)  # evaluate() relies on it


def test_shared_prefix_forward_equals_one_sequence_per_question(parts):
    vocab, _, batch, prefix = parts
    model = train.build_model(MICRO, len(vocab.tokens)).eval()
    with torch.no_grad():
        _, image_rows = train.see(model, batch.pixels)
        ours = train.answer_logits(model, image_rows, prefix, batch.rows, batch.image_of)  # (n, T, vocab)
        images = torch.stack(model.model.get_image_features(
            pixel_values=batch.pixels, vision_feature_layer=-2, vision_feature_select_strategy="default").pooler_output)
        torch.testing.assert_close(image_rows, images)  # see() reads the features LLaVA reads
        embed = model.model.language_model.get_input_embeddings()
        for row, image in enumerate(batch.image_of.tolist()):
            sequence = torch.cat([embed(prefix), images[image], embed(batch.rows[row])]).unsqueeze(0)
            logits = model.lm_head(model.model.language_model(inputs_embeds=sequence).last_hidden_state)
            torch.testing.assert_close(ours[row], logits[0, -batch.rows.shape[1]:], atol=1e-4, rtol=1e-4)


def test_steps_on_a_repeated_batch_lower_the_loss(parts):
    vocab, _, batch, prefix = parts
    model = train.build_model(MICRO, len(vocab.tokens))
    optimizer, scheduler = train.make_optimizer(model, MICRO)
    losses = [sum(train.train_step(model, optimizer, scheduler, prefix, batch, MICRO)) for _ in range(6)]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.85 * losses[0], losses


def test_checkpoint_resumes_exactly(parts, tmp_path):
    vocab, _, batch, prefix = parts

    def fresh():
        model = train.build_model(MICRO, len(vocab.tokens))
        return (model, *train.make_optimizer(model, MICRO))

    model, optimizer, scheduler = fresh()
    for _ in range(2):
        train.train_step(model, optimizer, scheduler, prefix, batch, MICRO)
    path = tmp_path / "checkpoint.pt"
    train.save_checkpoint(path, model, optimizer, scheduler, MICRO, step=2)
    resumed, resumed_optimizer, resumed_scheduler = fresh()
    assert train.load_checkpoint(path, resumed, resumed_optimizer, resumed_scheduler, MICRO) == 2
    train.train_step(model, optimizer, scheduler, prefix, batch, MICRO)
    train.train_step(resumed, resumed_optimizer, resumed_scheduler, prefix, batch, MICRO)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert scheduler.get_last_lr() == resumed_scheduler.get_last_lr()
    with pytest.raises(SystemExit, match="llm_layers: checkpoint 1, asked 2"):
        train.load_checkpoint(path, *fresh(), dataclasses.replace(MICRO, llm_layers=2))


def test_export_only_writes_an_f16_pair_that_both_runtimes_load(parts, tmp_path):
    from dcp_desktop.engine import Engine, GenerationParams
    from dcp_desktop.models import ModelFiles, validate
    from dcp_desktop.bench.mtmd_peer import MtmdEncoder
    from dcp_desktop.pipeline import Pipeline, PipelineOptions

    vocab, _, batch, _ = parts
    model = train.build_model(MICRO, len(vocab.tokens))
    train.save_checkpoint(tmp_path / "checkpoint.pt", model, *train.make_optimizer(model, MICRO), MICRO, step=3)
    train.main(["--out", str(tmp_path), "--export-only"])
    files = ModelFiles("micro", tmp_path / f"{train.NAME}.gguf", tmp_path / f"mmproj-{train.NAME}.gguf")
    validate(files)
    item = scenes.make_split("test", 1, 1)[0]
    with Pipeline(files, PipelineOptions(n_threads=1)) as pipe:
        answer = "".join(pipe.ask(item.question, [pipe.encode_image(item.image())], GenerationParams(max_tokens=4)))
    assert isinstance(answer, str)
    with Engine(str(files.llm), n_ctx=1024) as engine, MtmdEncoder(str(files.mmproj), engine.llama) as mtmd:
        assert mtmd.encode(item.image()).shape[0] == 576


def test_grounding_points_at_the_named_objects_from_their_words(parts):
    """Each mention looks, from its own last word, at the patches of the objects it names; the last
    question position looks at all of them; a question about nothing in the image gives no pairs."""
    _, tokenizer, _, _ = parts
    red_star = scenes.SceneObject("star", "red", 60, 60, 60, (30, 30, 90, 90), 1500)
    blue_circle = scenes.SceneObject("circle", "blue", 250, 250, 40, (230, 230, 270, 270), 1250)
    scene = scenes.Scene(seed=0, objects=(red_star, blue_circle))
    owners = scenes.patch_owners(scene).reshape(-1)
    question = "Which is bigger, the red star or the blue circle?"
    ids = tokenizer.question(question)
    pairs = train.grounding(question, len(ids) - 1, scene, owners, tokenizer)
    assert [ids[position] for position, _ in pairs] == [tokenizer.ids["▁star"], tokenizer.ids["▁circle"], ids[-1]]
    star, circle, both = (patches.reshape(scenes.GRID, scenes.GRID) for _, patches in pairs)
    rows, cols = star.nonzero()
    assert star.any() and rows.min() >= 30 // 14 and rows.max() <= 90 // 14 and cols.max() <= 90 // 14
    assert star[60 // 14, 60 // 14] and circle[250 // 14, 250 // 14] and not (star & circle).any()
    assert (both == (star | circle)).all()
    assert train.grounding("Is there a green hexagon in the image?", 9, scene, owners, tokenizer) == []


def test_exported_pair_reads_back_into_the_same_weights(parts, tmp_path):
    """--init-from a folder with the shipped pair: read_llava_state inverts export_llava, so a run can go
    on from dcp_desktop/demo/ when no checkpoint survives. Only what the pair does not hold (the probe,
    the last ViT block, the post-LN) keeps its fresh start."""
    vocab, _, _, _ = parts
    model = train.build_model(MICRO, len(vocab.tokens))
    export_llava(model, vocab, tmp_path, name=train.NAME)  # f32: exact
    fresh = train.build_model(dataclasses.replace(MICRO, seed=1), len(vocab.tokens))
    train.init_weights(fresh, tmp_path)
    unread = (f"model.vision_tower.encoder.layers.{MICRO.vision_layers - 1}.", "model.vision_tower.post_layernorm.",
              "patch_probe.")
    compared = 0
    for (name, ours), theirs in zip(model.state_dict().items(), fresh.state_dict().values()):
        if not name.startswith(unread):
            torch.testing.assert_close(theirs, ours, rtol=0, atol=0, msg=name)
            compared += 1
    assert compared == len(model.state_dict()) - 16 - 2 - 2  # 16 tensors per ViT block, post-LN, probe
    assert not torch.equal(model.patch_probe.weight, fresh.patch_probe.weight)  # the seeds differ
    with pytest.raises(SystemExit, match="neither a checkpoint nor a folder"):
        train.init_weights(fresh, tmp_path / "nowhere")
