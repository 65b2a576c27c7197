"""Local models through Hugging Face transformers, concurrent requests batched into one generate.

Loading.  ``TransformersBackend.load(None, settings)`` uses the default model, converted once into a
Hugging Face folder by ``model_store.ensure_hf_model`` (a sub-second load after that).  A folder or
hub id loads with ``from_pretrained``; a ``.gguf`` file through transformers' GGUF reader, which
dequantises it on every load (slow).  The model's own generation config is replaced by a bare one
that keeps only its special tokens: sampling comes from each request, never from defaults shipped
with the model.

Batching.  ``complete`` tokenises the prompt and queues it.  One batcher task (per event loop) takes
the first waiting request, waits ``batch_wait_ms`` for others to arrive, and runs up to
``max_batch_size`` of them as one left-padded ``model.generate`` in a single worker thread, so the
event loop never blocks and generate calls never overlap.  Requests arriving meanwhile form the next
batch (static batching: a batch lasts as long as its longest row; vLLM batches continuously).
Requests are never split by their parameters: each row keeps its own stop strings, token budget and
sampling (a per-row stopping criterion and a per-row sampler, below), so one batch serves them all.
``stats`` counts generate calls and batch sizes.

Streaming.  ``stream`` queues its request like ``complete`` and asks for its row's tokens as they
are generated: after each step the stopping criterion hands each streaming row its new token (one
copy of the batch's last column), the event loop decodes it incrementally, and the text goes out
through the stop-string hold-back.  The batch is the same: every row streams its own tokens.

Stopping.  After every step, per row: its last token is an end-of-turn id (the model's eos ids and
the tokenizer's eos, e.g. ``<|im_end|>``) -> ``eos``; the decoded tail of its new tokens contains one
of its stop strings -> ``stop``; it has ``max_tokens`` new tokens -> ``length``.  generate pads a
finished row from then on, and the row is cut afterwards: ``text`` is its new tokens decoded
without special tokens, up to the first occurrence of any of its stop strings (searched in the
completion only, never in the prompt).  ``completion_tokens`` counts the tokens the model generated,
including the end-of-turn token or the token that completed the stop string (as OpenAI-style servers
count them).  Stop strings are matched on text, so one spanning several tokens is found too.

Sampling.  Greedy rows (temperature 0) take the argmax.  Other rows are drawn by a logits processor
(temperature, then top-p) that leaves the drawn token the only finite score, so generate itself
always runs greedy.  A row with a seed draws from its own ``torch.Generator``: the same seed gives
the same text for the same batch shapes (batched floating point differs slightly between shapes).

GPU.  Eager decoding of a small model is bound by kernel launches on a GPU.  ``kv_cache="static"``
(the default on CUDA) makes generate preallocate the KV cache, and ``torch_compile`` (default on with
a static cache on CUDA) lets transformers compile the decoding step (``torch.compile``, CUDA graphs).
To bound recompilations, such batches are padded to a power-of-two number of rows with filler rows
that stop after one token; transformers sizes the cache to the longest length seen so far.  Set
``MATHCODER_KV_CACHE=dynamic`` to turn both off.  On CPU both are off.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from runtime.adapter import AdapterError, check_base, read_card, resolve_adapter
from runtime.backends.base import BackendError, Completion, CompletionRequest, FinishReason, SamplingParams
from runtime.backends.stops import StreamedText
from runtime.cpu import batch_invariant_bf16
from runtime.model_store import ModelFetchError, default_model_path, ensure_hf_model
from runtime.settings import RuntimeSettings

# Untyped in transformers' annotations (mypy --strict refuses calls to them from typed code).
_GenerationConfig: Any = GenerationConfig

_DECODE: dict[str, Any] = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}

_Work = tuple[CompletionRequest, list[int], Callable[[], bool], Callable[[int], None] | None]
"""One row of a batch as the worker thread gets it: request, prompt ids, abandoned?, token sink."""


@dataclass
class BatchStats:
    """How the batcher grouped requests: one entry per ``model.generate`` call."""

    generate_calls: int = 0
    requests: int = 0
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1024))  # real rows, latest last


@dataclass
class _Row:
    """One sequence of a batch, and why and when it ended (written by ``_RowStopping``)."""

    prompt_tokens: int
    max_new: int
    stops: tuple[str, ...]
    window: int  # new tokens decoded each step to look for a stop string
    ended: int | None = None  # new tokens when it ended
    reason: FinishReason = "length"
    # True once nobody waits for the row (its caller was cancelled): it ends at the next step, so a
    # batch whose callers are all gone stops decoding.  Read from the worker thread: a flag read.
    abandoned: Callable[[], bool] = lambda: False
    on_token: Callable[[int], None] | None = None  # a streaming caller's: each new token, from the worker


@dataclass
class _Pending:
    request: CompletionRequest
    prompt_ids: list[int]
    future: asyncio.Future[Completion]
    on_token: Callable[[int], None] | None = None


class _RowStopping(StoppingCriteria):
    """Ends each row at its own eos, stop strings or token budget; ends all rows when cancelled."""

    def __init__(
        self, rows: list[_Row], width: int, eos_ids: frozenset[int], decode: Any, cancel: threading.Event
    ) -> None:
        self.rows, self.width, self.eos_ids, self.decode, self.cancel = rows, width, eos_ids, decode, cancel

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        n = input_ids.shape[1] - self.width  # new tokens so far, >= 1
        active = [i for i, row in enumerate(self.rows) if row.ended is None]
        streaming = [i for i in active if self.rows[i].on_token is not None]
        if streaming:
            last = input_ids[:, -1].tolist()
            for i in streaming:
                self.rows[i].on_token(last[i])  # type: ignore[misc]  # not None: filtered above
        if active and not self.cancel.is_set():
            span = min(n, max(self.rows[i].window for i in active))
            tails = input_ids[:, -span:].tolist()  # the one device-to-host copy per step
            searching = []
            for i in active:
                row = self.rows[i]
                if tails[i][-1] in self.eos_ids:
                    row.ended, row.reason = n, "eos"
                elif row.stops:
                    searching.append(i)
            if searching:
                texts = self.decode([tails[i][-self.rows[i].window :] for i in searching])
                for i, text in zip(searching, texts, strict=True):
                    if any(stop in text for stop in self.rows[i].stops):
                        self.rows[i].ended, self.rows[i].reason = n, "stop"
            for i in active:
                if self.rows[i].ended is None and (n >= self.rows[i].max_new or self.rows[i].abandoned()):
                    self.rows[i].ended, self.rows[i].reason = n, "length"
        done = [row.ended is not None or self.cancel.is_set() for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class _RowSampler(LogitsProcessor):
    """Draws a token for each sampled row (temperature > 0) and leaves it the only finite score."""

    def __init__(self, params: Sequence[SamplingParams], device: torch.device) -> None:
        picked = [i for i, p in enumerate(params) if p.temperature > 0]
        sampled = [params[i] for i in picked]
        self.rows = torch.tensor(picked, dtype=torch.long, device=device)
        self.temperature = torch.tensor([p.temperature for p in sampled], device=device)[:, None]
        self.top_p = torch.tensor([p.top_p for p in sampled], device=device)[:, None]
        self.filter_top_p = any(p.top_p < 1.0 for p in sampled)
        unseeded = [j for j, p in enumerate(sampled) if p.seed is None]
        self.unseeded = torch.tensor(unseeded, dtype=torch.long, device=device)
        self.seeded = [
            (j, torch.Generator(device=device).manual_seed(p.seed))
            for j, p in enumerate(sampled)
            if p.seed is not None
        ]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = (scores[self.rows].float() / self.temperature).softmax(dim=-1)
        if self.filter_top_p:  # keep the smallest set of most likely tokens reaching top_p
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(dim=-1) - sorted_probs > self.top_p  # the first always stays
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs.masked_fill(outside, 0.0))
        choice = torch.empty(len(self.rows), dtype=torch.long, device=scores.device)
        if len(self.unseeded):
            choice[self.unseeded] = torch.multinomial(probs[self.unseeded], 1).squeeze(1)
        for j, generator in self.seeded:
            choice[j] = torch.multinomial(probs[j], 1, generator=generator)[0]
        out = scores.clone()
        out[self.rows] = float("-inf")
        out[self.rows, choice] = 0.0
        return out  # type: ignore[return-value]


class TransformersBackend:
    """A local causal LM; see the module docstring for batching, stopping and the GPU settings."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        settings: RuntimeSettings | None = None,
        *,
        name: str = "transformers",
    ) -> None:
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.settings = settings if settings is not None else RuntimeSettings()
        self.stats = BatchStats()
        original = model.generation_config
        eos = set(_ids(original.eos_token_id)) | set(_ids(tokenizer.eos_token_id))
        self._eos_ids = frozenset(eos)
        pad = next(
            (t for t in (tokenizer.pad_token_id, original.pad_token_id, *sorted(eos)) if t is not None), 0
        )
        self._pad_id: int = pad
        self._special_tokens: dict[str, Any] = {
            "bos_token_id": original.bos_token_id,
            "eos_token_id": sorted(eos) or None,
            "pad_token_id": pad,
        }
        model.generation_config = _GenerationConfig(**self._special_tokens)
        self._max_positions: int | None = getattr(model.config, "max_position_embeddings", None)
        self.device: torch.device = model.device
        on_cuda = self.device.type == "cuda"
        kv = self.settings.kv_cache
        self.static_cache = kv == "static" or (kv == "auto" and on_cuda)
        compile_ = self.settings.torch_compile
        self.compile = self.static_cache and (compile_ if compile_ is not None else on_cuda)
        self._tokenizer_lock = threading.Lock()  # the event loop encodes while the worker decodes
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transformers-generate")
        self._cancel = threading.Event()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Pending] | None = None
        self._batcher: asyncio.Task[None] | None = None
        self._inflight: list[_Pending] = []

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        settings: RuntimeSettings | None = None,
        device: str | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> TransformersBackend:
        """Load ``model`` (None: the default model; a folder, a ``.gguf`` file or a hub id)."""
        settings = settings if settings is not None else RuntimeSettings()
        where = torch.device(device or settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        weights = _resolve_dtype(dtype if dtype is not None else settings.dtype, where)
        adapter = _adapter_for(settings, model)  # before the weights: a wrong adapter fails fast
        kwargs: dict[str, Any] = {}
        if model is None:
            try:
                source: str | Path = ensure_hf_model(settings)
            except ModelFetchError as exc:
                raise BackendError(f"the default model is unavailable: {exc}") from exc
            label = default_model_path(settings).stem
        else:
            path, label = Path(model).expanduser(), str(model)
            if path.suffix == ".gguf" and path.is_file():
                source, kwargs["gguf_file"] = path.parent, path.name
            elif path.is_dir():
                if not (path / "config.json").is_file():
                    raise BackendError(f"{path} is not a Hugging Face model folder: it has no config.json")
                source = path
            elif label.startswith(("/", ".", "~")) or path.suffix == ".gguf":
                raise BackendError(
                    f"model {label} does not exist; pass a model folder, a .gguf file or a hub id"
                )
            else:
                source = label  # a hub id: downloaded, or taken from the Hugging Face cache
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            loaded: Any = AutoModelForCausalLM.from_pretrained(
                source, dtype=weights, device_map=str(where), **kwargs
            )
        except Exception as exc:
            hint = ""
            if isinstance(source, str) and "connect" in str(exc):
                hint = " (offline? HF_HUB_OFFLINE=1 fails fast; or pass a local folder)"
            raise BackendError(
                f"could not load model {label} from {source}: {type(exc).__name__}: {exc}{hint}"
            ) from exc
        if adapter is not None:
            from peft import PeftModel

            # Merged once at load: generation then runs at the base model's speed.  peft reads an
            # attribute transformers 5 deprecated; the warning is theirs, not the user's.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
                loaded = PeftModel.from_pretrained(loaded, str(adapter)).merge_and_unload()
            label = f"{label}+{adapter.name}"
        loaded.eval()
        return cls(loaded, tokenizer, settings, name=f"transformers:{label}")

    # -- the Backend protocol ------------------------------------------------------------------

    async def complete(self, request: CompletionRequest) -> Completion:
        return await self._submit(request)

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[str | Completion, None]:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[int | Completion | BaseException] = asyncio.Queue()

        async def run() -> None:
            try:
                items.put_nowait(await self._submit(request, on_token))
            except Exception as exc:  # handed to the consumer, raised there
                items.put_nowait(exc)

        def on_token(token: int) -> None:  # the worker thread's; the result comes after every token
            loop.call_soon_threadsafe(items.put_nowait, token)

        task = loop.create_task(run())
        shown = StreamedText(request.stop)
        text = _IncrementalText(self._decode_many)
        try:
            while True:
                item = await items.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Completion):
                    rest = shown.rest(item.text)
                    if rest:
                        yield rest
                    yield item
                    return
                if item in self._eos_ids:
                    continue
                piece = shown.piece(text.add(item))
                if piece:
                    yield piece
        finally:
            task.cancel()  # the row's future: the row ends at the next step when nobody waits

    async def _submit(
        self, request: CompletionRequest, on_token: Callable[[int], None] | None = None
    ) -> Completion:
        queue = self._ensure_batcher()
        ids = self._encode_prompt(request.prompt)
        if not ids:
            raise BackendError("the prompt is empty: nothing to continue")
        if self._max_positions is not None and len(ids) >= self._max_positions:
            raise BackendError(
                f"the prompt has {len(ids)} tokens; {self.name} reads at most {self._max_positions}"
            )
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        queue.put_nowait(_Pending(request, ids, future, on_token))
        return await future

    def count_tokens(self, text: str) -> int:
        with self._tokenizer_lock:
            return len(self.tokenizer.encode(text, add_special_tokens=False))

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise BackendError(f"{self.name} has no chat template; use a preset that renders its own prompt")
        with self._tokenizer_lock:
            return str(
                self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            )

    async def aclose(self) -> None:
        """Stop the batcher, fail requests still waiting, and wait for a running generate to end."""
        if self._closed:
            return
        self._closed = True
        self._cancel.set()  # a running generate ends after its current step
        waiting = list(self._inflight)
        task = self._batcher
        if task is not None and not task.done():
            if self._loop is asyncio.get_running_loop():
                task.cancel()
                await asyncio.wait([task])
            elif self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(task.cancel)
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for pending in waiting:
            if not pending.future.done():
                pending.future.set_exception(
                    BackendError(f"{self.name} was closed before this request finished")
                )
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    # -- batching --------------------------------------------------------------------------------

    def _ensure_batcher(self) -> asyncio.Queue[_Pending]:
        if self._closed:
            raise BackendError(f"{self.name} is closed (aclose was called); load a new backend")
        loop = asyncio.get_running_loop()
        if self._queue is None or self._batcher is None or self._batcher.done() or self._loop is not loop:
            self._loop, self._queue = loop, asyncio.Queue()
            self._batcher = loop.create_task(self._batch_loop(self._queue), name="transformers-batcher")
        return self._queue

    async def _batch_loop(self, queue: asyncio.Queue[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        wait_s = self.settings.batch_wait_ms / 1000
        while True:
            batch = [await queue.get()]
            if wait_s > 0:
                await asyncio.sleep(wait_s)  # let the other trajectories' requests arrive
            while len(batch) < self.settings.max_batch_size and not queue.empty():
                batch.append(queue.get_nowait())
            batch = [p for p in batch if not p.future.done()]  # callers cancelled while queued
            if not batch:
                continue
            self._inflight = batch
            work = [(p.request, p.prompt_ids, p.future.done, p.on_token) for p in batch]
            try:
                results = await loop.run_in_executor(self._executor, self._generate, work)
            except Exception as exc:
                for p in batch:
                    if not p.future.done():
                        error = BackendError(
                            f"{self.name}: generate failed for a batch of {len(batch)}: {type(exc).__name__}: {exc}"
                        )
                        error.__cause__ = exc
                        p.future.set_exception(error)
                continue
            finally:
                self._inflight = []
            self.stats.generate_calls += 1
            self.stats.requests += len(batch)
            self.stats.batch_sizes.append(len(batch))
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)

    # -- the worker thread -----------------------------------------------------------------------

    def _generate(self, work: list[_Work]) -> list[Completion]:
        """One batched generate (runs in the worker thread)."""
        prompts = [ids for _, ids, _, _ in work]
        rows = [
            self._row(request, len(ids), abandoned, on_token) for request, ids, abandoned, on_token in work
        ]
        params = [request.sampling for request, _, _, _ in work]
        if self.static_cache:  # fixed batch shapes, so compiled graphs are reused
            for _ in range(len(work), 1 << (len(work) - 1).bit_length()):
                prompts.append(prompts[0])
                rows.append(_Row(prompt_tokens=len(prompts[0]), max_new=1, stops=(), window=1))
                params.append(SamplingParams())
        width = max(len(ids) for ids in prompts)
        input_ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, ids in enumerate(prompts):  # left padding: every row's next token is in the last column
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, width - len(ids) :] = 1
        config = _GenerationConfig(
            **self._special_tokens,
            max_new_tokens=max(row.max_new for row in rows),
            do_sample=False,  # sampled rows are drawn by _RowSampler
            cache_implementation="static" if self.static_cache else None,
            disable_compile=not self.compile,
        )
        stopping = _RowStopping(rows, width, self._eos_ids, self._decode_many, self._cancel)
        processors = LogitsProcessorList()
        if any(p.temperature > 0 for p in params):
            processors.append(_RowSampler(params, self.device))
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([stopping]),
                logits_processor=processors,
            )
        new_tokens = out[: len(work), width:].tolist()
        return [self._finish(rows[i], new_tokens[i]) for i in range(len(work))]

    def _row(
        self,
        request: CompletionRequest,
        prompt_tokens: int,
        abandoned: Callable[[], bool] = lambda: False,
        on_token: Callable[[int], None] | None = None,
    ) -> _Row:
        max_new = request.max_tokens
        if self._max_positions is not None:
            max_new = min(max_new, self._max_positions - prompt_tokens)
        stops = tuple(s for s in request.stop if s)
        # A stop string of b bytes lies within its last b tokens (each token is at least one byte);
        # two more keep a decoder's cleanup of the window's first token away from it.
        window = max((len(s.encode()) for s in stops), default=0) + 2
        return _Row(
            prompt_tokens=prompt_tokens,
            max_new=max_new,
            stops=stops,
            window=window,
            abandoned=abandoned,
            on_token=on_token,
        )

    def _finish(self, row: _Row, new_tokens: list[int]) -> Completion:
        ended = row.ended if row.ended is not None else len(new_tokens)
        tokens = new_tokens[:ended]
        if row.reason == "eos" and row.ended is not None:
            tokens = tokens[:-1]
        text = self._decode_many([tokens])[0]
        first = _first_stop(text, row.stops)
        if first is not None:
            at, stop = first
            return Completion(
                text=text[:at],
                finish_reason="stop",
                stop=stop,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=ended,
            )
        # "stop" without the string in the whole text cannot happen: a window's text is part of it.
        reason: FinishReason = "eos" if row.reason == "eos" and row.ended is not None else "length"
        return Completion(
            text=text, finish_reason=reason, prompt_tokens=row.prompt_tokens, completion_tokens=ended
        )

    # -- tokenizer -------------------------------------------------------------------------------

    def _encode_prompt(self, prompt: str) -> list[int]:
        # Rendered chats already start with the BOS text where the template wants one; other
        # prompts get the tokenizer's own special tokens (a BOS for the models that need one).
        bos = self.tokenizer.bos_token
        add_special = not (bos and prompt.startswith(bos))
        with self._tokenizer_lock:
            return list(self.tokenizer(prompt, add_special_tokens=add_special)["input_ids"])

    def _decode_many(self, sequences: list[list[int]]) -> list[str]:
        with self._tokenizer_lock:
            return list(self.tokenizer.batch_decode(sequences, **_DECODE))


class _IncrementalText:
    """Text of a growing token sequence, a piece per token: each piece is the difference between the
    decoded tail with and without the new token, held while it ends in an incomplete character (a
    byte-level token may carry part of one).  Decoding only a short tail keeps a token's cost flat."""

    TAIL = 6  # tokens of left context decoded with each new one, so merges at the seam come out right

    def __init__(self, decode: Callable[[list[list[int]]], list[str]]) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.prefix = 0  # where the context of the next decode begins
        self.read = 0  # tokens whose text was handed out

    def add(self, token: int) -> str:
        self.ids.append(token)
        before, after = self.decode([self.ids[self.prefix : self.read], self.ids[self.prefix :]])
        if after.endswith("\ufffd") or not after.startswith(before):
            return ""
        self.read = len(self.ids)
        self.prefix = max(0, self.read - self.TAIL)
        return after[len(before) :]


def _first_stop(text: str, stops: tuple[str, ...]) -> tuple[int, str] | None:
    """The earliest stop string in ``text`` (the first listed one on a tie) and where it starts."""
    found = [(at, i) for i, stop in enumerate(stops) if (at := text.find(stop)) >= 0]
    if not found:
        return None
    at, i = min(found)
    return at, stops[i]


def _ids(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def _resolve_dtype(dtype: torch.dtype | str, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and batch_invariant_bf16())
        return torch.bfloat16 if native else torch.float32
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise BackendError(f"unknown dtype {dtype!r}; choose auto, float32, bfloat16 or float16")
    return value


def _adapter_for(settings: RuntimeSettings, model: str | Path | None) -> Path | None:
    """The LoRA adapter to merge into ``model`` (see ``runtime.adapter.resolve_adapter``), checked
    against the base weights it was trained on when it goes on the default model."""
    try:
        adapter = resolve_adapter(settings, model)
        if adapter is not None and model is None:
            check_base(read_card(adapter), default_model_path(settings))
    except AdapterError as exc:
        raise BackendError(str(exc)) from exc
    return adapter
