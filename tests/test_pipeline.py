"""End to end on the tiny GGUF pair: pruning reaches the LLM as exactly K rows, at their patches'
positions, the cache is reused across turns, and several images fit in one conversation. Counts
come from llama.cpp's own KV cache (llama_memory_seq_pos_*, llama_state_seq_get_size), not from
our bookkeeping."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from dcp_desktop.engine import GenerationParams
from dcp_desktop.errors import InputError
from dcp_desktop.models import resolve
from dcp_desktop.pipeline import Pipeline, PipelineOptions

SHORT = GenerationParams(max_tokens=4)


@pytest.fixture(scope="module")
def pipe(tiny):
    with Pipeline(resolve(str(tiny.dir), None), PipelineOptions(n_ctx=2048, n_threads=2)) as pipeline:
        yield pipeline


def _turn_tokens(pipe, turn, question: str, first_turn: bool) -> int:
    """Text tokens + image rows a user turn added, counted from the tokenizer and the arrays."""
    engine, images = pipe.engine, turn.images
    head = len(engine.tokenize("USER:")) + (0 if first_turn else 1)  # + </s> closing the last answer
    tail = len(engine.tokenize(("\n" if images else " ") + question + " ASSISTANT:"))
    return head + sum(len(image.embeddings) for image in images) + tail


def _spread(turn) -> int:
    """Positions a turn's images span beyond their cells (576 - K each, at grid positions)."""
    return sum(image.n_full - len(image.embeddings) for image in turn.images)


def _state_bytes(pipe) -> int:
    """Sequence 0's saved state in llama.cpp: grows with the cells it holds, not with positions."""
    return pipe.engine.llama.state_bytes()


@pytest.mark.parametrize("method,n_keep,acgr_layer,expected_rows", [
    ("dcp", 16, None, 16), ("dcp", 16, 1, 16), ("fastervlm", 16, None, 16), ("pool", 16, None, 16),
    ("random", 8, None, 8), ("visionzip", 16, None, 16), ("divprune", 16, None, 16),
    ("cdpruner", 16, None, 16), ("acgr", 16, 2, 16), ("tatcs", 16, None, 16), ("full", 16, None, 576)])
def test_llm_sees_exactly_k_image_rows(tiny, image_path, method, n_keep, acgr_layer, expected_rows):
    options = PipelineOptions(method=method, n_keep=n_keep, acgr_layer=acgr_layer, n_ctx=2048)
    with Pipeline(resolve(str(tiny.dir), None), options) as pipe:
        image = pipe.encode_image(image_path)
        assert len(image.features) == (576 if acgr_layer is None else 4 * n_keep)
        sizes = {}
        for positions in ("packed", "grid"):
            pipe.configure(replace(options, positions=positions))
            pipe.new_chat()
            before = pipe.engine.kv_positions()
            turn = pipe.ask("What is in the image?", [image], SHORT)
            answer = "".join(turn)
            assert answer == turn.answer and turn.n_answer_tokens <= SHORT.max_tokens
            assert turn.images[0].embeddings.shape == (expected_rows, pipe.engine.n_embd)
            cells = _turn_tokens(pipe, turn, "What is in the image?", True) + turn.n_answer_tokens
            assert turn.n_prompt_tokens + turn.n_answer_tokens == cells
            spread = _spread(turn) if positions == "grid" else 0
            assert pipe.engine.kv_positions() - before == cells + spread
            assert pipe.engine.n_past == pipe.engine.n_prefix + cells  # the engine counts cells
            sizes[positions] = (_state_bytes(pipe), turn.n_answer_tokens)
        if sizes["grid"][1] == sizes["packed"][1]:  # same answer length: the same cells
            assert sizes["grid"][0] == sizes["packed"][0]


def test_in_encoder_acgr_keeps_masses_and_grid_positions(tiny, image_path):
    options = PipelineOptions(method="dcp", n_keep=8, acgr_layer=2, acgr_anchors=40, n_ctx=2048)
    with Pipeline(resolve(str(tiny.dir), None), options) as pipe:
        image = pipe.encode_image(image_path)
        assert image.features.shape == (40, pipe.vision.cfg.width)
        assert image.masses.sum() == pytest.approx(576, rel=1e-4)  # spatial links absorb every patch
        assert np.all(np.diff(image.patch_idx) > 0) and image.patch_idx.max() < 576
        assert image.timings_ms["vision_saved_estimate"] >= 0
        tokens = pipe.prepare(image, "What is in the image?")
        assert set(tokens.selection.indices) <= set(image.patch_idx)
        # the grid assignment composes encoder ACGR (patch → anchor) with the final pruning (anchor → token)
        grid = tokens.grid_assignment
        assert grid.shape == (576,) and grid.dtype == np.int32
        np.testing.assert_array_equal(grid[tokens.selection.indices], np.arange(8))
        assert set(grid[grid >= 0]) == set(range(8))
        anchor_of = image.anchor_assignment
        expected = np.where(anchor_of >= 0, tokens.selection.assignment[np.maximum(anchor_of, 0)], -1)
        np.testing.assert_array_equal(grid, expected)


@pytest.mark.parametrize("layer,anchors,match", [(0, None, "--acgr-layer"), (9, None, "--acgr-layer"),
                                                 (1, 8, "--acgr-anchors")])
def test_bad_in_encoder_settings_are_clear_errors(tiny, layer, anchors, match):
    options = PipelineOptions(n_keep=16, acgr_layer=layer, acgr_anchors=anchors)
    with pytest.raises(InputError, match=match):
        Pipeline(resolve(str(tiny.dir), None), options)


def test_question_embeddings_are_token_embd_rows(pipe, tiny):
    default = pipe.options
    pipe.configure(replace(default, method="cdpruner"))  # a method that reads the question loads its rows
    pipe.configure(default)
    ids = pipe.engine.tokenize("What is in the image?")
    rows = pipe.token_embeddings.rows(ids)
    expected = tiny.model.model.language_model.embed_tokens.weight[ids].detach().numpy()
    np.testing.assert_allclose(rows, expected, atol=1e-6)
    assert pipe.question_features("What is in the image?").shape == (len(ids), pipe.vision.cfg.width)


def test_follow_up_reuses_the_cache(pipe, image_path):
    pipe.new_chat()
    assert pipe.engine.kv_positions() == pipe.engine.n_prefix  # the system prompt stays cached
    image = pipe.encode_image(image_path)
    "".join(pipe.ask("What is in the image?", [image], SHORT))
    assert pipe.engine.kv_positions() == pipe.engine.position  # llama.cpp agrees with our count
    after_first = pipe.engine.kv_positions()
    turn = pipe.ask("how many?", [], SHORT)
    turn.text()
    # Only the follow-up's text and answer were decoded: the image rows were not sent again.
    assert pipe.engine.kv_positions() - after_first == _turn_tokens(pipe, turn, "how many?", False) \
        + turn.n_answer_tokens


def test_several_images_in_one_conversation(pipe, image_path, tmp_path):
    from PIL import Image
    second = tmp_path / "gray.png"
    Image.fromarray(np.full((100, 200), 128, dtype=np.uint8)).save(second)
    pipe.new_chat()
    images = [pipe.encode_image(image_path), pipe.encode_image(second)]
    before = pipe.engine.kv_positions()
    turn = pipe.ask("compare them", images, SHORT)
    turn.text()
    assert len(turn.images) == 2
    assert pipe.engine.kv_positions() - before == _turn_tokens(pipe, turn, "compare them", True) \
        + _spread(turn) + turn.n_answer_tokens
    "".join(pipe.ask("and the third?", [pipe.encode_image(image_path)], SHORT))  # an image mid-chat


def test_generation_is_deterministic_and_streams(pipe, image_path):
    image = pipe.encode_image(image_path)
    answers = []
    for _ in range(2):
        pipe.new_chat()
        turn = pipe.ask("What is in the image?", [image], GenerationParams(max_tokens=6))
        answers.append(list(turn))
    assert answers[0] == answers[1]
    assert turn.first_token_ms is None or turn.first_token_ms >= turn.prefill_ms


def test_stopping_early_keeps_the_conversation_usable(pipe, image_path):
    pipe.new_chat()
    stream = pipe.ask("What is in the image?", [pipe.encode_image(image_path)], GenerationParams(max_tokens=50))
    next(stream, None)
    stream.close()  # what the GUI's Stop button does
    "".join(pipe.ask("and now?", [], SHORT))
    assert pipe.engine.kv_positions() == pipe.engine.position


def test_an_image_whose_span_does_not_fit_is_packed(tiny, image_path):
    """600 positions hold the prefix and 16 rows but not the 576 positions of the full image: the rows
    are packed instead of refused."""
    with Pipeline(resolve(str(tiny.dir), None), PipelineOptions(n_keep=16, n_ctx=600)) as pipe:
        "".join(pipe.ask("What is in the image?", [pipe.encode_image(image_path)], SHORT))
        assert pipe.engine.kv_positions() == pipe.engine.n_past == pipe.engine.position


def test_full_context_is_a_clear_error(tiny, image_path):
    options = PipelineOptions(method="full", n_ctx=600)
    with Pipeline(resolve(str(tiny.dir), None), options) as pipe:
        with pytest.raises(InputError, match="new chat or use fewer image tokens"):
            "".join(pipe.ask("What is in the image?", [pipe.encode_image(image_path)], SHORT))
        assert pipe.engine.kv_positions() == pipe.engine.n_prefix  # nothing half-written


def test_empty_question_is_refused(pipe, image_path):
    with pytest.raises(InputError, match="question"):
        "".join(pipe.ask("   ", [pipe.encode_image(image_path)]))


def test_reprune_gives_a_follow_up_its_own_tokens(tiny, image_path):
    """--follow-ups reprune: the follow-up's cache is the one a chat would have had if the image had been
    pruned with the follow-up question from the start (llama.cpp's logits agree)."""
    first, follow_up = "What is in the image?", "Is the red one bigger than the square?"
    no_answer = GenerationParams(max_tokens=0)  # each turn's prefill only: the chats differ in the image alone
    options = PipelineOptions(method="cdpruner", n_keep=16, n_ctx=2048, follow_ups="reprune")
    with Pipeline(resolve(str(tiny.dir), None), options) as pipe:
        image = pipe.encode_image(image_path)
        kept_first = pipe.prepare(image, first).selection.indices
        kept_follow_up = pipe.prepare(image, follow_up)
        assert not np.array_equal(kept_first, kept_follow_up.selection.indices)  # the question matters here

        pipe.new_chat()
        pipe.ask(first, [image], no_answer).text()
        cells_before = pipe.engine.n_past
        turn = pipe.ask(follow_up, [], no_answer)
        turn.text()
        np.testing.assert_array_equal(turn.repruned[0].selection.indices, kept_follow_up.selection.indices)
        assert pipe.engine.kv_positions() == pipe.engine.position  # llama.cpp agrees with our count
        assert pipe.engine.n_past - cells_before == _turn_tokens(pipe, turn, follow_up, False)
        assert turn.n_image_tokens == 16 and turn.n_prompt_tokens > pipe.engine.n_past - cells_before
        repruned = pipe.engine.next_token_logits()

        engine = pipe.engine  # the same chat by hand, pruned with the follow-up from the start
        pipe.new_chat()
        engine.add_user_turn(first, [kept_follow_up.rows("grid", mass_bias=True)])
        list(engine.generate(no_answer))
        engine.add_user_turn(follow_up)
        np.testing.assert_allclose(repruned, engine.next_token_logits(), rtol=1e-4, atol=1e-4)

        pipe.configure(replace(options, follow_ups="keep"))  # and keeping the first tokens is another cache
        pipe.new_chat()
        pipe.ask(first, [image], no_answer).text()
        kept = pipe.ask(follow_up, [], no_answer)
        kept.text()
        assert kept.repruned == []
        assert not np.allclose(repruned, pipe.engine.next_token_logits(), rtol=1e-4, atol=1e-4)


def test_reprune_replays_answers_and_later_images(tiny, image_path, tmp_path):
    """A longer chat: answers and a second image after the first are decoded again in place."""
    from PIL import Image
    second = tmp_path / "gray.png"
    Image.fromarray(np.full((100, 200), 128, dtype=np.uint8)).save(second)
    options = PipelineOptions(method="cdpruner", n_keep=8, n_ctx=2048, follow_ups="reprune")
    with Pipeline(resolve(str(tiny.dir), None), options) as pipe:
        pipe.ask("What is in the image?", [pipe.encode_image(image_path)], SHORT).text()
        pipe.ask("and this one?", [pipe.encode_image(second)], SHORT).text()
        positions = pipe.engine.kv_positions()
        turn = pipe.ask("which is brighter?", [], SHORT)
        turn.text()
        assert len(turn.repruned) == 2 and turn.images == []
        assert pipe.engine.kv_positions() == pipe.engine.position
        assert pipe.engine.kv_positions() - positions == _turn_tokens(pipe, turn, "which is brighter?", False) \
            + turn.n_answer_tokens  # the replay put back as many cells as it took


def test_a_text_free_method_keeps_its_tokens_for_follow_ups(tiny, image_path):
    options = PipelineOptions(method="dcp", n_keep=16, n_ctx=2048, follow_ups="reprune")
    with Pipeline(resolve(str(tiny.dir), None), options) as pipe:
        assert not pipe.reprunes_follow_ups  # dcp reads no question by default: it would pick the same tokens
        pipe.ask("What is in the image?", [pipe.encode_image(image_path)], SHORT).text()
        assert pipe.ask("how many?", [], SHORT).repruned == []
        pipe.configure(replace(options, prune_options={"tatcs_use_text": 1.0}))
        assert pipe.reprunes_follow_ups


def test_unknown_follow_ups_is_a_clear_error(tiny):
    with pytest.raises(InputError, match="--follow-ups"):
        Pipeline(resolve(str(tiny.dir), None), PipelineOptions(follow_ups="sometimes"))
