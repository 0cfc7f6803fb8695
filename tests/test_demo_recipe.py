"""The demo model's training recipe (models/demo/train.py) on a micro config: its token ids are
llama.cpp's, a training conversation is what the engine decodes, the shared-prefix forward equals the
plain one, the CLS head learns the right targets, training lowers the loss, and a checkpoint resumes
exactly."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
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
    batch = train.make_batch(scenes.make_split("train", 2, 6), tokenizer, MICRO.small_weight, max_turns=4)
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
        image_rows = train.see(model, batch.pixels).image_rows
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
    assert answer.strip() and len(answer.split()) <= 4, answer  # at most max_tokens pieces, one word each
    exported = train.build_model(dataclasses.replace(MICRO, seed=1), len(vocab.tokens))
    train.init_weights(exported, tmp_path)  # the pair holds the checkpoint's weights (f16), not fresh ones
    for (name, ours), theirs in zip(model.state_dict().items(), exported.state_dict().values()):
        if name.startswith("model.language_model.") or name.startswith("model.multi_modal_projector."):
            torch.testing.assert_close(theirs, ours.half().float(), rtol=0, atol=0, msg=name)
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
    the CLS head, the last ViT block, the post-LN) keeps its fresh start."""
    vocab, _, _, _ = parts
    model = train.build_model(MICRO, len(vocab.tokens))
    export_llava(model, vocab, tmp_path, name=train.NAME)  # f32: exact
    fresh = train.build_model(dataclasses.replace(MICRO, seed=1), len(vocab.tokens))
    train.init_weights(fresh, tmp_path)
    unread = (f"model.vision_tower.encoder.layers.{MICRO.vision_layers - 1}.", "model.vision_tower.post_layernorm.",
              "patch_probe.", "cls_head.")
    compared = 0
    for (name, ours), theirs in zip(model.state_dict().items(), fresh.state_dict().values()):
        if not name.startswith(unread):
            torch.testing.assert_close(theirs, ours, rtol=0, atol=0, msg=name)
            compared += 1
    assert compared == len(model.state_dict()) - 16 - 2 - 2 - 2  # 16 tensors per ViT block, post-LN, probe, CLS head
    assert not torch.equal(model.patch_probe.weight, fresh.patch_probe.weight)  # the seeds differ
    with pytest.raises(SystemExit, match="neither a checkpoint nor a folder"):
        train.init_weights(fresh, tmp_path / "nowhere")


def test_a_training_conversation_is_what_the_engine_decodes(parts, tmp_path, monkeypatch):
    """The recipe's row for a three-question chat about one image equals, token for token, what Engine
    decodes into llama.cpp for the same chat (the image first, then follow-ups without it), with every
    answer and its </s> as a target where the engine would sample it."""
    from dcp_desktop.engine import Engine, GenerationParams, ImageRows

    vocab, tokenizer, _, _ = parts
    llm, _ = export_llava(train.build_model(MICRO, len(vocab.tokens)), vocab, tmp_path, name=train.NAME)
    chat = [("What colour is the hexagon?", "orange"), ("How many stars are there?", "zero"),
            ("Is there a red circle in the image?", "yes")]
    fed = []
    decode_tokens = Engine.decode_tokens
    monkeypatch.setattr(Engine, "decode_tokens", lambda self, tokens: (fed.extend(tokens), decode_tokens(self, tokens)))
    with Engine(str(llm), n_ctx=1024) as engine:
        monkeypatch.setattr(engine, "inject", lambda image, room_after=0: fed.extend(["image"] * len(image.embeddings)))
        answers = iter([])
        monkeypatch.setattr(engine, "_sample", lambda params: next(answers))
        for k, (question, answer) in enumerate(chat):
            engine.add_user_turn(question, [ImageRows(np.zeros((576, MICRO.llm_width), np.float32))] if k == 0 else [])
            sampled_from = len(fed)
            answers = iter(engine.tokenize(answer) + [engine.llama.eos])
            assert "".join(engine.generate(GenerationParams(max_tokens=8))) == answer
            assert fed[sampled_from:] == engine.tokenize(answer)  # the sampled </s> is not decoded
    ids, turns = train.conversation_ids(tokenizer, chat)
    assert fed == tokenizer.prefix() + ["image"] * 576 + ids
    assert ids.count(tokenizer.eos) == 2 and [turn.answer[-1] for turn in turns] == [tokenizer.eos] * 3
    for turn, (_, answer) in zip(turns, chat):  # the answer follows its question's last position
        assert ids[turn.answer_at + 1:turn.answer_at + len(turn.answer)] == tokenizer.encode(answer)


def test_batch_rows_are_conversations_with_a_loss_on_every_answer(parts):
    _, tokenizer, batch, _ = parts
    items = scenes.make_split("train", 2, 6)
    assert len(batch.types) == len(items) == len(batch.answer_at)
    assert [t for t in batch.types] == [item.type for item in items]
    at = batch.answer_at
    answers = [tokenizer.encode(item.answer)[0] for item in items]
    assert batch.targets[at[:, 0], at[:, 1]].tolist() == answers  # each answer's first token is a target ...
    assert (batch.targets[at[:, 0], at[:, 1] + 1] == tokenizer.eos).all()  # ... and then its </s>
    assert (batch.targets != train.IGNORE).sum() == 2 * len(items)  # and nothing else
    assert batch.turns.max() > 0 and (batch.turns == 0).sum() == len(batch.rows)  # one first question per row
    lengths = [train.conversation_lengths(seed, 6, 4) for seed in sorted({item.image_seed for item in items})]
    assert all(1 <= n <= 4 for each in lengths for n in each) and sum(map(sum, lengths)) == len(items)
    assert len(batch.rows) == sum(map(len, lengths))
    assert batch.pixels.shape == (2, 3, scenes.IMAGE_SIZE, scenes.IMAGE_SIZE)  # whole images, one per scene


def test_cls_targets_name_the_shapes_and_colours_present():
    red_star = scenes.SceneObject("star", "red", 60, 60, 60, (30, 30, 90, 90), 1500)
    blue_circle = scenes.SceneObject("circle", "blue", 250, 250, 40, (230, 230, 270, 270), 1250)
    tiny_red_cross = scenes.SceneObject("cross", "red", 150, 300, 12, (144, 294, 156, 306), 60)
    scene = scenes.Scene(seed=0, objects=(red_star, blue_circle, tiny_red_cross))
    targets = dict(zip(train.CLS_CLASSES, train.cls_targets(scene).tolist()))
    assert {name for name, on in targets.items() if on} == {"star", "circle", "cross", "red", "blue"}
    assert len(targets) == len(scenes.SHAPES) + len(scenes.COLOURS)
    assert train.cls_targets(scenes.Scene(seed=0, objects=())).sum() == 0


def test_cls_attention_is_the_gather_blocks_attention_and_auc_counts_ranks(parts):
    """cls_attention equals the attention weights transformers itself computes in the block that outputs
    the features LLaVA reads; auc is the Mann-Whitney statistic, ties counting half."""
    vocab, _, batch, _ = parts
    model = train.build_model(MICRO, len(vocab.tokens)).eval()
    model.model.vision_tower.set_attn_implementation("eager")
    with torch.no_grad():
        out = model.model.vision_tower(batch.pixels, output_hidden_states=True, output_attentions=True)
        ours = train.cls_attention(model, out.hidden_states)
    torch.testing.assert_close(ours, out.attentions[-2].mean(1)[:, 0, 1:], atol=1e-5, rtol=1e-4)
    assert train.auc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([True, True, False, False])) == 1.0
    assert train.auc(np.array([0.1, 0.5, 0.5, 0.9]), np.array([True, True, False, False])) == 0.125
