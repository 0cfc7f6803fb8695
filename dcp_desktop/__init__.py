"""dcp-desktop: private, offline image chat with LLaVA GGUF models.

Data flow, one module per stage: image → vision → prune → project (vision) → engine (inject, generate).
"""

__version__ = "0.1.0"

# Before any module imports llama_cpp: point llama-cpp-python at the project's own llama.cpp build
# and load its ggml backends (see llama_build.py). Modules should import llama_cpp from there.
from . import llama_build  # noqa: E402,F401
