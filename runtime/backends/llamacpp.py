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
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncGenerator
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
    spin_count: int = Field(
        default=1000,
        ge=0,
        description="How long the server's OpenMP threads busy-wait at a barrier before they sleep "
        "(GOMP_SPINCOUNT; libgomp's own default is 300000). Long spinning beside another busy process "
        "(a training run, a second server) slowed generation 8-40x on 2 cores; 1000 costs a quiet "
        "machine little (docs/engines.md).",
    )
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


def server_environment(settings: LlamaCppSettings) -> dict[str, str]:
    """The server's environment: ours, with how long its OpenMP threads spin bounded.

    The server is built with OpenMP (``deploy/build-llama-server.sh``): every step of a forward pass
    ends at a barrier where libgomp's threads spin before they sleep.  When another process keeps the
    cores busy, a spinning thread holds a core its descheduled partner needs, at every barrier of
    every token, and generation crawls; a short spin sleeps instead (docs/engines.md)."""
    return {**os.environ, "GOMP_SPINCOUNT": str(settings.spin_count)}


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
        named = None if model is None else Path(model).expanduser()
        if named is not None and not servable(named):
            raise BackendError(
                f"backend 'llamacpp' needs a .gguf model file or a local Hugging Face model folder; "
                f"{named} is neither"
            )
        if named is None:
            gguf = ensure_default_model(runtime)
        elif named.is_dir():
            gguf = _gguf_model(runtime, named, binary)
        else:
            gguf = named
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
            "--metrics",  # decode steps and requests in flight: how batching and cancellation show
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
                env=server_environment(settings),
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
            tokenizer=_tokenizer(runtime, named),
        )
        backend.log_path = log_path
        return backend

    # ----- the Backend protocol -----

    async def complete(self, request: CompletionRequest) -> Completion:
        """Continue ``request.prompt`` on the server (native ``/completion``: exact stop reasons).

        Streamed even here: llama-server notices a closed connection only while streaming, so a
        caller cancelled mid-generation (a client gone, a trajectory abandoned) frees its slot at
        once instead of decoding to the token budget."""
        async for item in self.stream(request):
            if isinstance(item, Completion):
                return item
        raise BackendError("llama-server ended the stream without a final message")  # stream raises first

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[str | Completion, None]:
        """``complete``, token by token: text pieces as the server decodes them, then the ``Completion``.

        The server holds back text that may be the start of a stop string until it knows, so no
        piece ever holds part of a delimiter.  Leaving the iterator early closes the connection,
        and the server then stops decoding that sequence."""
        self._check_alive()
        pieces: list[str] = []
        try:
            async with self._client.stream(
                "POST", "/completion", json=self._body(request, stream=True)
            ) as response:
                if response.status_code != 200:
                    body = (await response.aread()).decode(errors="replace")
                    raise BackendError(f"llama-server answered {response.status_code}: {body[:500]}")
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = json.loads(line[6:])
                    if data.get("content"):
                        pieces.append(data["content"])
                        yield data["content"]
                    if data.get("stop"):
                        yield self._completion(data, "".join(pieces))
                        return
        except httpx.HTTPError as exc:
            raise BackendError(f"llama-server at {self.base_url} failed: {exc!r}") from exc
        raise BackendError("llama-server ended the stream without a final message")

    async def metrics(self) -> dict[str, float]:
        """The server's Prometheus counters without the ``llamacpp:`` prefix (``n_decode_total``:
        decode steps, each advancing every busy slot; ``requests_processing``; token totals)."""
        response = await self._client.get("/metrics")
        values: dict[str, float] = {}
        for line in response.text.splitlines():
            if line.startswith("llamacpp:"):
                name, _, value = line.partition(" ")
                values[name.removeprefix("llamacpp:")] = float(value)
        return values

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BackendError(f"llama-server exited with status {self.process.returncode}")

    @staticmethod
    def _body(request: CompletionRequest, *, stream: bool) -> dict[str, Any]:
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
            "stream": stream,
        }
        if request.sampling.seed is not None:
            body["seed"] = request.sampling.seed
        return body

    def _completion(self, data: dict[str, Any], text: str) -> Completion:
        """The server's final message as a ``Completion``, counting the prompt tokens it computed."""
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
        computed = int(timings.get("prompt_n", prompt_total))
        self.prompt_tokens_total += prompt_total
        self.prompt_tokens_computed += computed
        return Completion(
            text=text,
            finish_reason=finish,
            stop=stop,
            prompt_tokens=prompt_total,
            completion_tokens=int(data.get("tokens_predicted") or 0),
            cached_prompt_tokens=max(0, prompt_total - computed),
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
    base = ["--base", str(ensure_hf_model(runtime)), "--outtype", "f16"]
    return _convert(binary, "convert_lora_to_gguf.py", [*base, str(folder)], target)


def servable(model: Path) -> bool:
    """Whether llama-server can serve ``model``: a ``.gguf`` file, or a local Hugging Face folder
    with safetensors weights (converted to GGUF once, see :func:`_gguf_model`)."""
    if model.is_file():
        return model.suffix == ".gguf"
    return (model / "config.json").is_file() and any(model.glob("*.safetensors"))


def _gguf_model(runtime: RuntimeSettings, folder: Path, binary: Path) -> Path:
    """A Hugging Face model folder (``mathcoder train``'s full weights, say) as a GGUF file, converted
    once by llama.cpp's ``convert_hf_to_gguf.py`` to 8-bit (q8_0: near-lossless, and the fastest
    CPU format after 4-bit) and cached under the weights' hash."""
    from runtime.adapter import sha256_of

    digest = hashlib.sha256()
    for weights in sorted(folder.glob("*.safetensors")):
        digest.update(sha256_of(weights).encode())
    target = runtime.cache_dir / "models" / "converted" / f"{folder.name}-{digest.hexdigest()[:16]}.q8_0.gguf"
    return _convert(binary, "convert_hf_to_gguf.py", ["--outtype", "q8_0", str(folder)], target)


def _convert(binary: Path, script_name: str, args: list[str], target: Path) -> Path:
    """Run one of llama.cpp's converters (installed beside the binary by ``make llama-server``) into
    ``target``, written under a temporary name and renamed: an interrupted conversion leaves no
    half file that a later run would take for a model."""
    if target.is_file():
        return target
    share = binary.parent.parent / "share" / "llama.cpp"
    script = share / script_name
    if not script.is_file():
        raise BackendError(f"{script} is missing: rebuild with `make llama-server` to convert models")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    env = {**os.environ, "PYTHONPATH": str(share / "gguf-py")}
    done = subprocess.run(
        [sys.executable, str(script), "--outfile", str(partial), *args],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BackendError(f"{script_name} {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    partial.replace(target)
    return target


def _tokenizer(runtime: RuntimeSettings, model: Path | None) -> Any | None:
    """The served model's tokenizer (exact token counts, its chat template) where transformers is
    installed: the default model's converted folder, the folder a user named, or read from the GGUF
    file a user named."""
    try:
        from transformers import AutoTokenizer

        from runtime.model_store import ensure_hf_model
    except ImportError:
        return None
    if model is None:
        return AutoTokenizer.from_pretrained(str(ensure_hf_model(runtime)))
    if model.is_dir():
        return AutoTokenizer.from_pretrained(str(model))
    return AutoTokenizer.from_pretrained(str(model.parent), gguf_file=model.name)


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
