"""Model handling: the catalog, finding the two GGUF files, downloading them, checking them.

A LLaVA-1.5 model is two GGUF files: the language model (LLM, run by llama.cpp) and the mmproj (CLIP
vision tower + 2-layer MLP projector, run by our PyTorch code). `resolve` turns what the user typed
(a catalog name, a .gguf file, a folder) into the two paths; `validate` checks them with
`gguf.GGUFReader` alone (memory-mapped, cheap) before anything loads; `pull` downloads a catalog model
into the standard Hugging Face cache. Every problem is an InputError whose one-line message names the
file, what was expected, what was found and what to do next.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gguf import GGUFReader
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import HTTPError, XetDownloadError
from huggingface_hub.utils import silent_tqdm

from .errors import InputError
from .gguf_file import LLAVA_PROJECTOR, VisionConfig, gguf_value, open_gguf, projector_type, read_vision


# --- catalog ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CatalogEntry:
    """A downloadable LLaVA-1.5-architecture model: two files in one Hugging Face repo."""

    name: str  # what the user types: `dcp-chat pull llava-1.5-7b`
    repo_id: str
    llm_file: str
    mmproj_file: str
    download_gb: float  # both files together, as listed on the Hub (for display only)
    description: str


# Repo and file names and sizes as listed on the repos' "Files and versions" pages.
CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        "llava-1.5-7b", "second-state/Llava-v1.5-7B-GGUF",
        "llava-v1.5-7b-Q4_K_M.gguf", "llava-v1.5-7b-mmproj-model-f16.gguf", 4.7,
        "LLaVA-1.5 7B (Vicuna-7B, Q4_K_M): the model the DCP-Prune paper reports on",
    ),
    CatalogEntry(
        "llava-1.5-13b", "mys/ggml_llava-v1.5-13b",
        "ggml-model-q4_k.gguf", "mmproj-model-f16.gguf", 8.5,
        "LLaVA-1.5 13B (Vicuna-13B, Q4_K): more accurate, needs about twice the memory",
    ),
    CatalogEntry(
        "bakllava-1", "mys/ggml_bakllava-1",
        "ggml-model-q4_k.gguf", "mmproj-model-f16.gguf", 5.0,
        "BakLLaVA-1 (Mistral-7B, Q4_K) trained with the LLaVA-1.5 recipe",
    ),
)
DEFAULT_MODEL = "llava-1.5-7b"



@dataclass(frozen=True)
class BundledModel:
    """A model shipped inside the package: works offline with no download."""

    name: str
    llm: str  # path relative to this package's folder
    mmproj: str
    description: str

    @property
    def files(self) -> ModelFiles:
        package = Path(__file__).parent
        return ModelFiles(self.name, package / self.llm, package / self.mmproj)

    def missing_files(self) -> list[Path]:
        """Its files that are not on disk (a broken or partial install)."""
        return [path for path in (self.files.llm, self.files.mmproj) if not path.is_file()]


BUNDLED: dict[str, BundledModel] = {model.name: model for model in (
    BundledModel("demo", "demo/dcp-demo.gguf", "demo/mmproj-dcp-demo.gguf",
                 "a 4 MB LLaVA-1.5-architecture model trained on the synthetic shapes benchmark (models/demo): "
                 "it answers questions about coloured shapes only; for trying the app and dcp-eval"),
)}


def catalog_entry(name: str) -> CatalogEntry:
    """The catalog entry called `name`; InputError listing the known names otherwise."""
    for entry in CATALOG:
        if entry.name == name:
            return entry
    known = ", ".join([*BUNDLED, *(entry.name for entry in CATALOG)])
    raise InputError(
        f"model '{name}' is unknown: expected one of {known}, a .gguf file or a folder; "
        "run `dcp-chat models` to see them"
    )


# --- the two files ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelFiles:
    """Where a model's two GGUF files are. `name` is the catalog name, or the file/folder name."""

    name: str
    llm: Path
    mmproj: Path


@dataclass(frozen=True)
class ModelInfo:
    """What validate() learned from the two files' metadata, without loading them."""

    name: str
    llm: Path
    mmproj: Path
    n_embd: int  # LLM embedding width == projector output width
    vision: VisionConfig  # the mmproj's vision tower and projector
    llm_arch: str  # general.architecture of the LLM, e.g. 'llama'
    n_ctx_train: int
    size_bytes: int  # both files on disk


def cache_dir() -> Path:
    """The Hugging Face hub cache that models are downloaded to (HF_HUB_CACHE, else HF_HOME/hub).

    Read from the environment on every call, like huggingface_hub does at import time, so that a
    changed HF_HOME (tests, a GUI setting) is honoured; we pass it to every huggingface_hub call.
    """
    hub_cache = os.environ.get("HF_HUB_CACHE")
    if not hub_cache:
        xdg_cache = os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache"))
        hf_home = os.environ.get("HF_HOME", os.path.join(xdg_cache, "huggingface"))
        hub_cache = os.path.join(hf_home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(hub_cache)))


def resolve(model: str | None, mmproj: str | None) -> ModelFiles:
    """The two files for `model`: a catalog name (default DEFAULT_MODEL), an LLM .gguf file
    (with `mmproj`, or one *mmproj*.gguf beside it) or a folder holding both. Nothing is downloaded."""
    name = model or DEFAULT_MODEL
    path = Path(name).expanduser()
    if name not in BUNDLED and (path.exists() or _looks_like_path(name)):
        return _files_at(path, mmproj)
    if mmproj:
        raise InputError(
            f"--mmproj {mmproj}: only used with a model file or folder, but '{name}' is a named model "
            "that comes with its own projector; drop --mmproj or pass the LLM .gguf with --model"
        )
    if name in BUNDLED:
        return BUNDLED[name].files
    return _cached_files(catalog_entry(name))


def _looks_like_path(text: str) -> bool:
    return text.lower().endswith(".gguf") or "/" in text or os.sep in text


def _files_at(path: Path, mmproj: str | None) -> ModelFiles:
    explicit_mmproj = _existing_file(Path(mmproj).expanduser(), "--mmproj") if mmproj else None
    if path.is_dir():
        return _files_in_folder(path, explicit_mmproj)
    llm = _existing_file(path, "--model")
    return ModelFiles(llm.stem, llm, explicit_mmproj or _mmproj_beside(llm))


def _existing_file(path: Path, argument: str) -> Path:
    if not path.exists():
        raise InputError(f"{argument} {path}: no such file or folder; check the path")
    if not path.is_file():
        raise InputError(f"{argument} {path}: expected a .gguf file, found a folder or special file")
    return path


def _mmproj_beside(llm: Path) -> Path:
    found = [p for p in sorted(llm.parent.glob("*.gguf")) if "mmproj" in p.name.lower() and p != llm]
    if len(found) != 1:
        raise InputError(
            f"{llm}: no --mmproj given, and {_count_and_names(found)} *mmproj*.gguf files beside it "
            "(expected exactly one); pass the vision projector with --mmproj FILE"
        )
    return found[0]


def _files_in_folder(folder: Path, explicit_mmproj: Path | None) -> ModelFiles:
    ggufs = sorted(folder.glob("*.gguf"))
    projectors = _projectors_among(ggufs)
    llms = [p for p in ggufs if p not in projectors and p != explicit_mmproj]
    mmproj = explicit_mmproj or _exactly_one(projectors, folder, "mmproj (vision projector)")
    return ModelFiles(folder.name, _exactly_one(llms, folder, "language-model"), mmproj)


def _projectors_among(ggufs: list[Path]) -> list[Path]:
    """The *mmproj* files; failing that, the files whose general.architecture is 'clip'. Names come
    first because reading an LLM's metadata takes seconds (its whole vocabulary is parsed)."""
    named = [p for p in ggufs if "mmproj" in p.name.lower()]
    return named or [p for p in ggufs if _architecture(p) == "clip"]


def _architecture(path: Path) -> str | None:
    try:
        return gguf_value(open_gguf(path), "general.architecture", None)
    except InputError:
        return None  # a broken file counts as an LLM candidate; validate() then says what is wrong


def _exactly_one(found: list[Path], folder: Path, kind: str) -> Path:
    if len(found) != 1:
        raise InputError(
            f"{folder}: expected exactly one {kind} .gguf, found {_count_and_names(found)}; "
            "pass the files with --model LLM.gguf --mmproj MMPROJ.gguf"
        )
    return found[0]


def _count_and_names(paths: list[Path]) -> str:
    return f"{len(paths)} ({', '.join(p.name for p in paths)})" if paths else "0"


def _cached_files(entry: CatalogEntry) -> ModelFiles:
    llm, mmproj = _cached_path(entry, entry.llm_file), _cached_path(entry, entry.mmproj_file)
    if llm is None or mmproj is None:
        raise InputError(
            f"model '{entry.name}' is not downloaded yet (looked in {cache_dir()}): "
            f"run `dcp-chat pull {entry.name}` (needs internet, ~{entry.download_gb:.1f} GB)"
        )
    return ModelFiles(entry.name, llm, mmproj)


def _cached_path(entry: CatalogEntry, filename: str) -> Path | None:
    found = try_to_load_from_cache(entry.repo_id, filename, cache_dir=cache_dir())
    return Path(found) if isinstance(found, str) else None  # None, or the "known missing" marker


# --- download --------------------------------------------------------------------------------------

# What a failed transfer raises: OSError covers HTTP status errors, offline mode, a missing cache entry
# after a failed connection and disk problems; the HTTP client's own errors and Xet errors are not OSErrors.
_DOWNLOAD_ERRORS = (OSError, HTTPError, XetDownloadError)


def pull(name: str, *, progress: bool = True) -> ModelFiles:
    """Download a catalog model's two files into the Hugging Face cache, then validate() them.

    An interrupted download leaves a partial file that hf_hub_download resumes on the next call;
    files already complete are not downloaded again. `progress` shows huggingface_hub's tqdm bars.
    """
    entry = catalog_entry(name)
    llm = _download(entry, entry.llm_file, progress)
    mmproj = _download(entry, entry.mmproj_file, progress)
    files = ModelFiles(entry.name, llm, mmproj)
    validate(files)
    return files


def _download(entry: CatalogEntry, filename: str, progress: bool) -> Path:
    try:
        path = hf_hub_download(
            entry.repo_id, filename, cache_dir=cache_dir(), tqdm_class=None if progress else silent_tqdm
        )
    except _DOWNLOAD_ERRORS as error:
        raise InputError(
            f"download of {entry.repo_id}/{filename} failed: {_one_line(error)}; "
            f"run `dcp-chat pull {entry.name}` again and it will resume where it stopped"
        ) from error
    return Path(path)


def _one_line(error: BaseException) -> str:
    """The error's first line, plus its cause's (the socket error behind "cannot reach the Hub")."""
    def first_line(e: BaseException) -> str:
        return (str(e).strip().splitlines() or [type(e).__name__])[0]

    cause = error.__cause__
    return first_line(error) + (f" ({first_line(cause)})" if cause is not None else "")


@dataclass(frozen=True)
class ModelStatus:
    """A catalog entry and whether both its files are in the local cache."""

    entry: CatalogEntry
    files: ModelFiles | None  # None until both files are downloaded
    size_bytes: int  # on disk, of whichever files are there

    @property
    def downloaded(self) -> bool:
        return self.files is not None


def list_models() -> list[ModelStatus]:
    """Every catalog entry with its download state, for `dcp-chat models`. Never touches the network."""
    statuses = []
    for entry in CATALOG:
        llm, mmproj = _cached_path(entry, entry.llm_file), _cached_path(entry, entry.mmproj_file)
        present = [p for p in (llm, mmproj) if p is not None]
        files = ModelFiles(entry.name, llm, mmproj) if llm and mmproj else None
        statuses.append(ModelStatus(entry, files, sum(p.stat().st_size for p in present)))
    return statuses


# --- validation ------------------------------------------------------------------------------------

def validate(files: ModelFiles) -> ModelInfo:
    """Check that `files` are a LLaVA-1.5 LLM + mmproj pair llama.cpp and our vision code can run,
    reading only GGUF metadata (never llama.cpp). Returns what was read; InputError otherwise."""
    redownload = f"`dcp-chat pull {files.name}`" if files.name in {entry.name for entry in CATALOG} else None
    llm = open_gguf(_existing_file(files.llm, "model"), redownload=redownload)
    mmproj = open_gguf(_existing_file(files.mmproj, "mmproj"), redownload=redownload)
    llm_arch, n_embd, n_ctx_train = _check_llm(llm, files.llm)
    vision = _check_mmproj(mmproj, files.mmproj)
    if vision.n_embd != n_embd:
        raise InputError(
            f"mmproj {files.mmproj} projects to {vision.n_embd} values per token but LLM {files.llm} has "
            f"n_embd {n_embd}: these files are not a pair; use the mmproj published with this LLM"
        )
    size = files.llm.stat().st_size + files.mmproj.stat().st_size
    return ModelInfo(files.name, files.llm, files.mmproj, n_embd, vision, llm_arch, n_ctx_train, size)


def _check_llm(reader: GGUFReader, path: Path) -> tuple[str, int, int]:
    arch = gguf_value(reader, "general.architecture")
    if arch == "clip":
        raise InputError(
            f"{path}: is a CLIP vision projector (general.architecture is 'clip'), not a language model; "
            "pass the LLM .gguf as the model and this file with --mmproj"
        )
    n_embd = gguf_value(reader, f"{arch}.embedding_length")
    return arch, int(n_embd), int(gguf_value(reader, f"{arch}.context_length"))


def _check_mmproj(reader: GGUFReader, path: Path) -> VisionConfig:
    arch = gguf_value(reader, "general.architecture", None)
    if arch != "clip":
        raise InputError(
            f"{path}: not a CLIP vision projector (general.architecture is '{arch}'); "
            "pass the mmproj file with --mmproj"
        )
    if not gguf_value(reader, "clip.has_vision_encoder", False):
        raise InputError(f"{path}: CLIP file without a vision encoder; pass the mmproj file of a LLaVA model")
    projector = projector_type(reader)
    if projector != LLAVA_PROJECTOR:
        raise InputError(
            f"{path}: projector type is '{projector}', expected LLaVA-1.5's 2-layer MLP ('mlp'); "
            "dcp-chat runs LLaVA-1.5-architecture models only"
        )
    return read_vision(reader, path)
