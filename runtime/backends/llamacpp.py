"""The llama.cpp backend: a ``llama-server`` child process serving a GGUF model, driven over HTTP.

llama.cpp's server batches concurrent sequences continuously (a trajectory that stops at a code
block leaves the batch and its next request rejoins it, while the others keep decoding), keeps each
slot's KV cache between requests (``cache_prompt``: a trajectory's next round re-uses the prefix it
already computed, and a new problem re-uses the shared few-shot prefix of the slot it lands in), and
applies GGUF LoRA adapters.  On a 2-core CPU it decodes a single stream ~4x faster than PyTorch, and
batches as fast as batched bf16 ``generate`` (issue #15's measurements).

Why this module and not :class:`runtime.backends.openai_backend.OpenAIBackend` against the server's
``/v1/completions``: that OpenAI-compatible answer says ``finish_reason: "stop"`` for a stop string
and for end-of-turn alike and strips the stop string, so the loop could not tell "the model closed a
code block" from "the model finished".  The server's native ``POST /completion`` says which
(``stop_type``: ``word`` with ``stopping_word``, ``eos``, ``limit``) and how many prompt tokens it
really computed (``timings.prompt_n``; the rest came from the cache), which the benchmarks report.

The process belongs to the backend: started by :meth:`LlamaCppBackend.launch` on a free loopback
port, it dies with the Python process that started it (``PR_SET_PDEATHSIG``, so a SIGKILLed host
leaves no server behind) and is stopped by :meth:`LlamaCppBackend.aclose` (SIGTERM, then SIGKILL).
The ``llama-server`` binary is built from the llama.cpp sources vendored in the ``llama-cpp-python``
source package by ``make llama-server`` (``deploy/build-llama-server.sh``): no prebuilt binary can be
downloaded where this project is developed.  Settings: ``MATHCODER_LLAMA_*``.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.backends.base import BackendError, Completion, CompletionRequest
from runtime.settings import RuntimeSettings

_PR_SET_PDEATHSIG = 1


class LlamaCppSettings(BaseSettings):
    """How the ``llama-server`` child runs (environment variables ``MATHCODER_LLAMA_*``)."""

    model_config = SettingsConfigDict(env_prefix="MATHCODER_LLAMA_", frozen=True, extra="forbid")

    binary: Path | None = Field(
        default=None,
        description="The llama-server executable; default: llama-server on PATH, else next to this Python.",
    )
    parallel: int = Field(default=16, ge=1, description="Sequences decoded together (server slots).")
    ctx_per_slot: int = Field(
        default=4096, ge=256, description="Context tokens per slot (the server's -c is this x parallel)."
    )
    threads: int | None = Field(default=None, ge=1, description="CPU threads; default: the usable cores.")
    batch_size: int = Field(default=512, ge=32, description="Prompt tokens evaluated per step (-b).")
    startup_timeout_s: float = Field(default=180.0, gt=0, description="Seconds to wait for /health.")
    read_timeout_s: float = Field(default=600.0, gt=0, description="Seconds one generation may take.")
    extra_args: list[str] = Field(default_factory=list, description="More llama-server arguments.")


def find_server_binary(settings: LlamaCppSettings) -> Path:
    """The ``llama-server`` executable, or ``BackendError`` saying how to build one."""
    if settings.binary is not None:
        if not os.access(settings.binary, os.X_OK):
            raise BackendError(f"MATHCODER_LLAMA_BINARY={settings.binary} is not an executable file")
        return settings.binary
    for candidate in (shutil.which("llama-server"), Path(sys.executable).parent / "llama-server"):
        if candidate is not None and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise BackendError(
        "llama-server was not found on PATH or next to this Python; build it with `make llama-server` "
        "(from the llama-cpp-python source package, a few minutes on 2 cores) or set MATHCODER_LLAMA_BINARY"
    )


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaCppBackend:
    """Continue prompts with a ``llama-server`` child; see the module docstring."""

    name = "llamacpp"

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        base_url: str,
        *,
        model: Path,
        lora: Path | None,
        settings: LlamaCppSettings,
        tokenizer: Any | None = None,
    ) -> None:
        self.process = process
        self.base_url = base_url
        self.model = model
        self.lora = lora
        self.settings = settings
        self.tokenizer = tokenizer
        self.prompt_tokens_computed = 0  # prompt tokens the server evaluated (not served from its cache)
        self.prompt_tokens_total = 0
        self.log_path: Path | None = None
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(settings.read_timeout_s, connect=10.0, pool=None),
            limits=httpx.Limits(max_connections=settings.parallel * 4),
        )

    @classmethod
    def launch(
        cls,
        model: str | None = None,
        runtime: RuntimeSettings | None = None,
        *,
        lora: str | Path | None = None,
        settings: LlamaCppSettings | None = None,
    ) -> LlamaCppBackend:
        """Start ``llama-server`` on ``model`` (a ``.gguf`` file; None: the default model) and wait until it serves."""
        from runtime.model_store import ensure_default_model

        runtime = runtime or RuntimeSettings()
        settings = settings or LlamaCppSettings()
        binary = find_server_binary(settings)
        gguf = ensure_default_model(runtime) if model is None else Path(model).expanduser()
        if gguf.suffix != ".gguf" or not gguf.is_file():
            raise BackendError(f"backend 'llamacpp' needs a .gguf model file; {gguf} is not one")
        adapter = _gguf_adapter(runtime, model, binary) if lora is None else Path(lora).expanduser()
        if adapter is not None and not adapter.is_file():
            raise BackendError(f"LoRA adapter {adapter} does not exist (a GGUF LoRA file is expected)")
        threads = settings.threads or len(os.sched_getaffinity(0))
        port = _free_port()
        args = [
            str(binary),
            "--model", str(gguf),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--parallel", str(settings.parallel),
            "--ctx-size", str(settings.ctx_per_slot * settings.parallel),
            "--threads", str(threads),
            "--threads-batch", str(threads),
            "--batch-size", str(settings.batch_size),
            "--no-webui",
        ]  # fmt: skip
        if adapter is not None:
            args += ["--lora", str(adapter)]
        args += settings.extra_args
        # The server logs every request: to a file, never to a pipe nobody drains (it would block).
        log_dir = runtime.cache_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"llama-server-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # only prctl runs there: no locks, no allocation to speak of
            )
        base_url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(process, base_url, settings.startup_timeout_s, log_path)
        except BaseException:
            _stop(process)
            raise
        backend = cls(
            process,
            base_url,
            model=gguf,
            lora=adapter,
            settings=settings,
            tokenizer=_tokenizer(runtime, None if model is None else gguf),
        )
        backend.log_path = log_path
        return backend

    # ----- the Backend protocol -----

    async def complete(self, request: CompletionRequest) -> Completion:
        """Continue ``request.prompt`` on the server (native ``/completion``: exact stop reasons)."""
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "n_predict": request.max_tokens,
            "stop": list(request.stop),
            "temperature": request.sampling.temperature,
            "top_p": request.sampling.top_p,
            "top_k": 0,
            "min_p": 0.0,
            "repeat_penalty": 1.0,
            "cache_prompt": True,
        }
        if request.sampling.seed is not None:
            body["seed"] = request.sampling.seed
        if self.process.poll() is not None:
            raise BackendError(f"llama-server exited with status {self.process.returncode}")
        try:
            response = await self._client.post("/completion", json=body)
        except httpx.HTTPError as exc:
            raise BackendError(f"llama-server at {self.base_url} failed: {exc!r}") from exc
        if response.status_code != 200:
            raise BackendError(f"llama-server answered {response.status_code}: {response.text[:500]}")
        data = response.json()
        stop_type = data.get("stop_type")
        word = data.get("stopping_word") or None
        if stop_type == "word" and word:
            finish, stop = "stop", word
        elif stop_type == "limit":
            finish, stop = "length", None
        else:
            finish, stop = "eos", None
        timings = data.get("timings") or {}
        prompt_total = int(data.get("tokens_evaluated") or 0)
        self.prompt_tokens_total += prompt_total
        self.prompt_tokens_computed += int(timings.get("prompt_n", prompt_total))
        return Completion(
            text=data.get("content", ""),
            finish_reason=finish,
            stop=stop,
            prompt_tokens=prompt_total,
            completion_tokens=int(data.get("tokens_predicted") or 0),
        )

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text))
        return (len(text) + 3) // 4

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if self.tokenizer is not None:
            rendered = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            return str(rendered)
        turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return f"{turns}<|im_start|>assistant\n"

    async def aclose(self) -> None:
        await self._client.aclose()
        await asyncio.to_thread(_stop, self.process)


def _gguf_adapter(runtime: RuntimeSettings, model: str | None, binary: Path) -> Path | None:
    """The adapter ``runtime.adapter`` selects, as a GGUF LoRA file (converted once, then cached).

    Conversion runs llama.cpp's own ``convert_lora_to_gguf.py``, installed beside the binary by
    ``deploy/build-llama-server.sh``, against the default model's Hugging Face folder.
    """
    from runtime.adapter import AdapterError, check_base, read_card, resolve_adapter, sha256_of
    from runtime.model_store import default_model_path, ensure_hf_model

    try:
        folder = resolve_adapter(runtime, model)
        if folder is None:
            return None
        if model is None:
            check_base(read_card(folder), default_model_path(runtime))
    except AdapterError as exc:
        raise BackendError(str(exc)) from exc
    weights = folder / "adapter_model.safetensors"
    target = runtime.cache_dir / "adapters" / f"{folder.name}-{sha256_of(weights)[:16]}.gguf"
    if target.is_file():
        return target
    share = binary.parent.parent / "share" / "llama.cpp"
    script = share / "convert_lora_to_gguf.py"
    if not script.is_file():
        raise BackendError(f"{script} is missing: rebuild with `make llama-server` to convert LoRA adapters")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".gguf.partial")
    env = {**os.environ, "PYTHONPATH": str(share / "gguf-py")}
    done = subprocess.run(
        [sys.executable, str(script), "--base", str(ensure_hf_model(runtime)), "--outfile", str(partial),
         "--outtype", "f16", str(folder)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise BackendError(f"converting adapter {folder} to GGUF failed:\n{done.stderr[-2000:]}")
    partial.replace(target)
    return target


def _tokenizer(runtime: RuntimeSettings, gguf: Path | None) -> Any | None:
    """The served model's tokenizer (exact token counts, its chat template) where transformers is
    installed: the default model's converted folder, or read from the GGUF file a user named."""
    try:
        from transformers import AutoTokenizer

        from runtime.model_store import ensure_hf_model
    except ImportError:
        return None
    if gguf is None:
        return AutoTokenizer.from_pretrained(str(ensure_hf_model(runtime)))
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _wait_healthy(process: subprocess.Popen[bytes], base_url: str, timeout_s: float, log_path: Path) -> None:
    """Poll ``/health`` until 200 (the model is loaded); fail at once if the process exits."""
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    with httpx.Client(timeout=2.0) as client:
        while True:
            if process.poll() is not None:
                err = log_path.read_text(errors="replace")[-2000:]
                raise BackendError(
                    f"llama-server exited with status {process.returncode} at start-up:\n{err}"
                )
            try:
                if client.get(f"{base_url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise BackendError(f"llama-server did not become healthy within {timeout_s:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


def _stop(process: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
