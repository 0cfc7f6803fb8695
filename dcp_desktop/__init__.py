"""dcp-desktop: private, offline image chat with LLaVA GGUF models.

Data flow, one module per stage: image → vision → prune → project (vision) → engine (inject, generate).
"""

__version__ = "0.1.0"
