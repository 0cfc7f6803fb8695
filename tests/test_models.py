"""Model handling on tiny generated GGUF files: resolving, validating, the cache and downloads.

Nothing here touches the network: huggingface_hub is put in offline mode before it is imported, the
Hugging Face cache is a temporary folder, and hf_hub_download is replaced by a fake in every test.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # read by huggingface_hub at import time

from pathlib import Path  # noqa: E402

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from huggingface_hub.utils import silent_tqdm  # noqa: E402

from dcp_desktop import gguf_file, models  # noqa: E402
from dcp_desktop.errors import InputError  # noqa: E402

N_EMBD = 16  # LLM width of the fake pair
VISION_WIDTH = 6
PROJECTOR_HIDDEN = 8


# --- tiny GGUF files -------------------------------------------------------------------------------

def write_mmproj(path: Path, *, width: int = N_EMBD, projector: str | None = "mlp",
                 with_mm2: bool = True) -> Path:
    """A CLIP mmproj as llama.cpp's LLaVA converter writes it, with a tiny vision tower.
    `projector=None` writes a 2023-style file that only says clip.has_llava_projector."""
    writer = gguf.GGUFWriter(str(path), arch="clip")
    writer.add_bool("clip.has_text_encoder", False)
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.has_llava_projector", True)
    if projector is not None:
        writer.add_string("clip.projector_type", projector)
    writer.add_uint32("clip.vision.image_size", 28)
    writer.add_uint32("clip.vision.patch_size", 14)
    writer.add_uint32("clip.vision.embedding_length", VISION_WIDTH)
    writer.add_uint32("clip.vision.feed_forward_length", 12)
    writer.add_uint32("clip.vision.projection_dim", 4)
    writer.add_uint32("clip.vision.block_count", 1)
    writer.add_uint32("clip.vision.attention.head_count", 2)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    writer.add_array("clip.vision.image_mean", [0.48145466, 0.4578275, 0.40821073])
    writer.add_array("clip.vision.image_std", [0.26862954, 0.26130258, 0.27577711])
    writer.add_bool("clip.use_gelu", False)
    rng = np.random.default_rng(0)
    writer.add_tensor("v.class_embd", rng.standard_normal(VISION_WIDTH, dtype=np.float32))
    writer.add_tensor("mm.0.weight", rng.standard_normal((PROJECTOR_HIDDEN, VISION_WIDTH), dtype=np.float32))
    if with_mm2:
        writer.add_tensor("mm.2.weight", rng.standard_normal((width, PROJECTOR_HIDDEN), dtype=np.float32))
    _finish(writer)
    return path


def write_llm(path: Path, *, n_embd: int = N_EMBD) -> Path:
    """A text-only llama GGUF with just the metadata validate() reads and a token embedding."""
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_uint32("llama.embedding_length", n_embd)
    writer.add_context_length(64)
    writer.add_tensor("token_embd.weight", np.zeros((10, n_embd), dtype=np.float32))
    _finish(writer)
    return path


def _finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_pair(folder: Path, **mmproj_options) -> models.ModelFiles:
    folder.mkdir(parents=True, exist_ok=True)
    llm = write_llm(folder / "tiny-llava-Q4_K_M.gguf")
    mmproj = write_mmproj(folder / "tiny-llava-mmproj-f16.gguf", **mmproj_options)
    return models.ModelFiles("tiny", llm, mmproj)


def put_in_hf_cache(entry: models.CatalogEntry, llm: Path, mmproj: Path) -> None:
    """Lay the files out as huggingface_hub's cache does: refs/main -> snapshots/<commit>/<file>."""
    repo = models.cache_dir() / f"models--{entry.repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / entry.llm_file).write_bytes(llm.read_bytes())
    (snapshot / entry.mmproj_file).write_bytes(mmproj.read_bytes())


def cut(path: Path, n_bytes: int) -> Path:
    path.write_bytes(path.read_bytes()[:n_bytes])
    return path


@pytest.fixture(autouse=True)
def offline_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache per test, and a download function that fails if anything calls it."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError(f"a test tried to download {args}")

    monkeypatch.setattr(models, "hf_hub_download", no_network)


# --- resolve -------------------------------------------------------------------------------------

def test_folder_with_one_pair(tmp_path):
    pair = write_pair(tmp_path / "tiny-model")
    files = models.resolve(str(tmp_path / "tiny-model"), None)
    assert files == models.ModelFiles("tiny-model", pair.llm, pair.mmproj)


def test_folder_finds_projector_by_architecture(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    llm = write_llm(folder / "language.gguf")
    projector = write_mmproj(folder / "vision.gguf")  # no "mmproj" in the name
    assert models.resolve(str(folder), None) == models.ModelFiles("m", llm, projector)


def test_folder_without_gguf_files(tmp_path):
    with pytest.raises(InputError, match="expected exactly one mmproj.*found 0"):
        models.resolve(str(tmp_path), None)


def test_folder_with_two_llms_lists_them(tmp_path):
    write_pair(tmp_path)
    write_llm(tmp_path / "other-llm.gguf")
    with pytest.raises(InputError, match="found 2") as error:
        models.resolve(str(tmp_path), None)
    assert "other-llm.gguf" in str(error.value) and "tiny-llava-Q4_K_M.gguf" in str(error.value)
    assert "--mmproj" in str(error.value)


def test_file_with_explicit_mmproj(tmp_path):
    (tmp_path / "llm-folder").mkdir()
    llm = write_llm(tmp_path / "llm-folder" / "llm.gguf")
    mmproj = write_mmproj(tmp_path / "projector.gguf")
    assert models.resolve(str(llm), str(mmproj)) == models.ModelFiles("llm", llm, mmproj)


def test_file_finds_the_mmproj_beside_it(tmp_path):
    pair = write_pair(tmp_path)
    assert models.resolve(str(pair.llm), None).mmproj == pair.mmproj


def test_file_with_two_mmprojs_beside_it_asks_for_mmproj(tmp_path):
    pair = write_pair(tmp_path)
    write_mmproj(tmp_path / "second-mmproj.gguf")
    with pytest.raises(InputError, match="pass the vision projector with --mmproj"):
        models.resolve(str(pair.llm), None)


def test_file_alone_asks_for_mmproj(tmp_path):
    llm = write_llm(tmp_path / "llm.gguf")
    with pytest.raises(InputError, match=r"no --mmproj given, and 0 \*mmproj\*"):
        models.resolve(str(llm), None)


@pytest.mark.parametrize("which", ["model", "mmproj"])
def test_missing_path_is_named(tmp_path, which):
    pair = write_pair(tmp_path)
    missing = tmp_path / "nope.gguf"
    model, mmproj = (missing, pair.mmproj) if which == "model" else (pair.llm, missing)
    with pytest.raises(InputError, match="no such file") as error:
        models.resolve(str(model), str(mmproj))
    assert str(missing) in str(error.value)


def test_catalog_name_not_downloaded():
    with pytest.raises(InputError, match=r"not downloaded yet.*run `dcp-chat pull llava-1.5-7b`.*GB"):
        models.resolve("llava-1.5-7b", None)


def test_default_model_is_the_7b():
    with pytest.raises(InputError, match="'llava-1.5-7b' is not downloaded"):
        models.resolve(None, None)


def test_catalog_name_in_hf_cache(tmp_path):
    pair = write_pair(tmp_path / "src")
    entry = models.catalog_entry("bakllava-1")
    put_in_hf_cache(entry, pair.llm, pair.mmproj)
    files = models.resolve("bakllava-1", None)
    assert files.name == "bakllava-1"
    assert files.llm.name == entry.llm_file and files.mmproj.name == entry.mmproj_file
    assert models.validate(files).n_embd == N_EMBD


def test_catalog_name_with_mmproj_is_refused(tmp_path):
    with pytest.raises(InputError, match="--mmproj"):
        models.resolve("llava-1.5-7b", str(write_mmproj(tmp_path / "m.gguf")))


def test_unknown_name_lists_known_names():
    with pytest.raises(InputError, match="unknown") as error:
        models.resolve("llava-9000", None)
    assert all(entry.name in str(error.value) for entry in models.CATALOG)


def test_catalog_names_are_unique_and_described():
    names = [entry.name for entry in models.CATALOG]
    assert len(set(names)) == len(names) and models.DEFAULT_MODEL in names
    assert all(entry.description and entry.download_gb > 0 for entry in models.CATALOG)


# --- validate ------------------------------------------------------------------------------------

def test_validate_reads_widths_and_vision_parameters(tmp_path):
    pair = write_pair(tmp_path)
    info = models.validate(pair)
    assert (info.name, info.llm, info.mmproj) == (pair.name, pair.llm, pair.mmproj)
    assert (info.n_embd, info.llm_arch, info.n_ctx_train) == (N_EMBD, "llama", 64)
    assert info.size_bytes == pair.llm.stat().st_size + pair.mmproj.stat().st_size
    vision = info.vision
    assert (vision.image_size, vision.patch_size, vision.width) == (28, 14, VISION_WIDTH)
    assert (vision.n_blocks, vision.n_heads, vision.ff_width) == (1, 2, 12)
    assert vision.eps == pytest.approx(1e-5)
    assert vision.image_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert vision.image_std == pytest.approx([0.26862954, 0.26130258, 0.27577711])


def test_validate_accepts_2023_mmproj_without_projector_type(tmp_path):
    assert models.validate(write_pair(tmp_path, projector=None)).n_embd == N_EMBD


def test_truncated_tensor_data(tmp_path):
    pair = write_pair(tmp_path)
    size = pair.mmproj.stat().st_size
    cut(pair.mmproj, size - 20)
    expected = rf"truncated GGUF \(expected at least \d+ bytes, found {size - 20}\)"
    with pytest.raises(InputError, match=expected):
        models.validate(pair)


def test_truncated_header(tmp_path):
    pair = write_pair(tmp_path)
    cut(pair.llm, 40)
    with pytest.raises(InputError, match="truncated GGUF") as error:
        models.validate(pair)
    assert str(pair.llm) in str(error.value)


def test_truncated_catalog_file_suggests_pull(tmp_path):
    pair = write_pair(tmp_path)
    cut(pair.llm, pair.llm.stat().st_size - 8)
    with pytest.raises(InputError, match=r"truncated.*`dcp-chat pull llava-1.5-7b`"):
        models.validate(models.ModelFiles("llava-1.5-7b", pair.llm, pair.mmproj))


@pytest.mark.parametrize("content, found", [(b"PK\x03\x04zipzip", "starts with"), (b"", "empty")])
def test_not_a_gguf_file(tmp_path, content, found):
    pair = write_pair(tmp_path)
    pair.llm.write_bytes(content)
    with pytest.raises(InputError, match=f"not a GGUF file \\(.*{found}"):
        models.validate(pair)


def test_unreadable_gguf(tmp_path):
    pair = write_pair(tmp_path)
    data = bytearray(pair.llm.read_bytes())
    data[4:8] = (99).to_bytes(4, "little")  # a GGUF version no reader knows
    pair.llm.write_bytes(bytes(data))
    with pytest.raises(InputError, match="unreadable GGUF .*version 99"):
        models.validate(pair)


def test_text_only_gguf_as_mmproj(tmp_path):
    pair = write_pair(tmp_path)
    with pytest.raises(InputError, match=r"not a CLIP vision projector \(general.architecture is 'llama'\)"):
        models.validate(models.ModelFiles("x", pair.llm, pair.llm))


def test_mmproj_as_llm(tmp_path):
    pair = write_pair(tmp_path)
    with pytest.raises(InputError, match="not a language model.*--mmproj"):
        models.validate(models.ModelFiles("x", pair.mmproj, pair.mmproj))


def test_width_mismatch_names_both_widths(tmp_path):
    pair = write_pair(tmp_path, width=24)
    expected = "projects to 24 values per token .* has n_embd 16: these files are not a pair"
    with pytest.raises(InputError, match=expected):
        models.validate(pair)


def test_other_projector_type_is_refused(tmp_path):
    with pytest.raises(InputError, match="projector type is 'ldp'"):
        models.validate(write_pair(tmp_path, projector="ldp"))


def test_missing_projector_tensor(tmp_path):
    with pytest.raises(InputError, match="'mm.2.weight' is missing"):
        models.validate(write_pair(tmp_path, with_mm2=False))


# --- gguf_value ----------------------------------------------------------------------------------

def test_gguf_value_reads_strings_scalars_and_arrays(tmp_path):
    reader = gguf_file.open_gguf(write_mmproj(tmp_path / "m.gguf"))
    assert gguf_file.gguf_value(reader, "general.architecture") == "clip"
    assert gguf_file.gguf_value(reader, "clip.vision.image_size") == 28
    assert gguf_file.gguf_value(reader, "clip.has_vision_encoder") is True
    assert len(gguf_file.gguf_value(reader, "clip.vision.image_std")) == 3
    assert gguf_file.gguf_value(reader, ("clip.vision.projector_type", "clip.projector_type")) == "mlp"
    assert gguf_file.gguf_value(reader, "no.such.key", None) is None
    with pytest.raises(InputError, match="'no.such.key' is missing") as error:
        gguf_file.gguf_value(reader, "no.such.key")
    assert "m.gguf" in str(error.value)


# --- cache, list, pull ---------------------------------------------------------------------------

def test_cache_dir_follows_hf_home_and_hf_hub_cache(tmp_path, monkeypatch):
    assert models.cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert models.cache_dir() == tmp_path / "elsewhere"


def test_list_models_with_empty_cache():
    statuses = models.list_models()
    assert [status.entry for status in statuses] == list(models.CATALOG)
    assert all(not status.downloaded and status.files is None for status in statuses)
    assert all(status.size_bytes == 0 for status in statuses)


def test_list_models_sees_a_cached_model(tmp_path):
    pair = write_pair(tmp_path / "src")
    put_in_hf_cache(models.catalog_entry("llava-1.5-13b"), pair.llm, pair.mmproj)
    status = {status.entry.name: status for status in models.list_models()}["llava-1.5-13b"]
    assert status.downloaded and status.files.name == "llava-1.5-13b"
    assert status.size_bytes == pair.llm.stat().st_size + pair.mmproj.stat().st_size


def test_pull_connection_error_says_it_will_resume(monkeypatch):
    def unreachable(repo_id, filename, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(models, "hf_hub_download", unreachable)
    with pytest.raises(InputError, match="download of second-state/Llava-v1.5-7B-GGUF/.* failed") as error:
        models.pull("llava-1.5-7b")
    message = str(error.value)
    assert "resume" in message and "Name or service not known" in message and "\n" not in message


def test_pull_downloads_both_files_into_the_cache_and_validates(tmp_path, monkeypatch):
    pair = write_pair(tmp_path / "src")
    served = {"ggml-model-q4_k.gguf": pair.llm, "mmproj-model-f16.gguf": pair.mmproj}
    calls = []

    def fake_download(repo_id, filename, *, cache_dir, tqdm_class):
        calls.append((repo_id, filename, Path(cache_dir), tqdm_class))
        return str(served[filename])

    monkeypatch.setattr(models, "hf_hub_download", fake_download)
    files = models.pull("bakllava-1", progress=False)
    assert files == models.ModelFiles("bakllava-1", pair.llm, pair.mmproj)
    assert calls == [("mys/ggml_bakllava-1", name, models.cache_dir(), silent_tqdm) for name in served]


def test_pull_unknown_name():
    with pytest.raises(InputError, match="unknown"):
        models.pull("nope")
