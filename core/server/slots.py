"""Parallel slots served by continuous batching, as llama-server's update_slots() does.

One scheduler thread owns the `Context`. Each slot is one sequence id in the context's unified KV
cache and may hold `n_ctx // n_parallel` cells. Every step the scheduler puts the next token of
every generating slot, then prompt chunks of the slots still reading their prompts (up to
`n_batch` tokens in all), into ONE `Context.decode` batch, samples each slot's token from its
logits row, and hands the results to the request's event loop.

A slot keeps the tokens its cache holds after a request ends; the next request placed in it keeps
the longest common prefix (`cache_prompt`) and evaluates only the rest. A request that cannot get a
slot waits in a bounded queue; a full queue is refused (the app answers 503). A request whose
client went away is cancelled: its slot is freed at the start of the next step.

With `kv_unified` (llama-server's --kv-unified) every slot may hold the whole cache: the slots
share one pool of `n_ctx` cells. When a step's tokens do not fit in the free cells, the caches of
idle slots are dropped one at a time; when they still do not fit, every active request fails with
"Context size has been exceeded." (a 500) and its cells are freed: the pool is aborted as a whole,
as llama-server's update_slots() does when a one-token batch finds no room.

With a prompt cache (`cache_ram_mib`, llama-server's --cache-ram, PR 16391), a slot about to lose
most of what it holds (chosen by LRU, or keeping less than half of its cached tokens) saves its
tokens and KV rows to host memory first, and takes the cached prompt that shares the most with the
new request, if one keeps at least a quarter of itself and beats what the slot holds.

Slot actions (`/slots/{id}?action=save|restore|erase`) run on the scheduler thread between steps,
once their slot is idle (llama-server defers them the same way).

An embedding task (`Task.pooling` set) reads its whole prompt afresh (no cached prefix: pooling
needs every token's hidden state) in steps whose decode gives hidden states instead of logits;
a step is of one kind, so when both kinds are active the steps alternate between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmrt.engine import Batch, Context, Model, pool_embeddings
from llmrt.errors import LlmrtError
from llmrt.grammar import Constraint, grammar_tokenizer
from llmrt.sampling import Sampler, SamplingParams

log = logging.getLogger("llmrt.server")


class QueueFull(Exception):
    """The request queue is full."""


@dataclass
class Task:
    """One generation request, from its submission to its final result."""

    prompt: list[int]
    params: SamplingParams
    n_predict: int = -1  # -1: until end of generation or the slot's context is full
    stop: list[str] = field(default_factory=list)
    n_probs: int = 0
    post_sampling_probs: bool = False
    cache_prompt: bool = True
    n_keep: int = 0  # --context-shift: prompt tokens a shift keeps (-1: the whole prompt)
    n_discard: int = 0  # --context-shift: tokens a shift drops (0: half of those after n_keep)
    id_slot: int = -1
    ignore_eos: bool = False  # reported; the sampler's logit_bias bans the end tokens
    stream: bool = False
    verbose: bool = False  # the response carries `__verbose`
    want_probs: bool = False  # the chosen tokens' probabilities, even with n_probs 0
    return_tokens: bool = False  # the final result lists the generated token ids
    return_progress: bool = False  # emit "progress" events while the prompt is read
    timings_per_token: bool = False  # token and progress events carry the timings so far
    index: int = 0  # which of its request's tasks (prompts x choices) this is
    grammar: str | None = None  # an llguidance grammar (llmrt.grammar) the output must match
    tools: Any = None  # the chat request's tools (llmrt.server.tools.ToolRequest), if any
    pooling: str | None = None  # an embedding task: none, mean, cls or last
    embd_normalize: int = 2  # llama.cpp's embd_normalize for a pooled embedding
    id: int = 0
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None
    cancelled: bool = False
    t_submit: float = 0.0

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        """Hand an event, (index, kind, data), to the request's event loop (from the scheduler
        thread). The tasks of one request may share one queue."""
        if self.loop is None or self.events is None:
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (self.index, kind, data))
        except RuntimeError:  # the loop is closed: nobody listens any more
            self.cancelled = True


@dataclass
class SlotAction:
    """/slots/{id}?action=...: save (the slot's KV cache and tokens to `path`), restore (from
    it) or erase; its result, or the error, is handed to the request's event loop."""

    kind: str
    slot: int
    path: Path | None = None
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future | None = None

    def reply(self, result: dict[str, Any] | Exception) -> None:
        def settle() -> None:
            if self.future is None or self.future.done():
                return
            if isinstance(result, Exception):
                self.future.set_exception(result)
            else:
                self.future.set_result(result)

        if self.loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                self.loop.call_soon_threadsafe(settle)


# llama-server's packed tokens in a slot file: LLAMA_TOKEN_NULL, its format version, the token
# list and the (here always empty) list of media chunks; a file without the marker is a plain
# token list, as older llama-servers wrote
TOKENS_NULL, TOKENS_VERSION = -1, 1


def pack_tokens(tokens: list[int]) -> list[int]:
    return [TOKENS_NULL, TOKENS_VERSION, len(tokens), *tokens, 0]


def unpack_tokens(words: list[int]) -> list[int]:
    if not words or words[0] != TOKENS_NULL:
        return words
    if len(words) < 3 or words[1] != TOKENS_VERSION:
        raise LlmrtError("the slot file's token list has an unknown version")
    n = words[2]
    if not 0 <= n <= len(words) - 4 or words[3 + n] != 0 or len(words) != n + 4:
        what = "images or audio" if 0 <= n < len(words) - 3 and words[3 + n] else "a broken"
        raise LlmrtError(f"the slot file's token list holds {what} (text only here)")
    return words[3 : 3 + n]


@dataclass
class Slot:
    id: int
    n_ctx: int
    cache: list[int] = field(default_factory=list)  # tokens the KV cache holds for this slot
    task: Task | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not evaluated yet
    sampler: Sampler | None = None
    decoder: Any = None
    last: int = -1  # sampled token to evaluate next step
    n_decoded: int = 0
    n_prompt_eval: int = 0
    n_cached: int = 0
    text: str = ""
    n_sent: int = 0  # characters of text already streamed
    t_start: float = 0.0
    t_prompt_done: float = 0.0
    t_last_used: float = 0.0
    probs: list[dict[str, Any]] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)  # the tokens sampled for the task
    truncated: bool = False  # generation stopped because the slot's context was full
    embd_rows: list[np.ndarray] = field(default_factory=list)  # an embedding task's hidden states

    @property
    def busy(self) -> bool:
        return self.task is not None


@dataclass
class CachedPrompt:
    """A prompt in the host-memory prompt cache: its tokens and its KV cache rows."""

    tokens: list[int]
    pos: np.ndarray
    rows: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        return self.pos.nbytes + sum(r.nbytes for r in self.rows.values())


class PromptCache:
    """llama-server's server_prompt_cache: prompts of slots that were about to be overwritten,
    oldest first, within `limit_bytes` (0: no limit) and `limit_tokens` (0: no limit; raised to
    what the byte limit holds at the entries' average size)."""

    def __init__(self, limit_mib: int, limit_tokens: int) -> None:
        self.limit_bytes = 0 if limit_mib < 0 else limit_mib * 1024 * 1024
        self.limit_tokens = limit_tokens
        self.states: list[CachedPrompt] = []

    def size(self) -> int:
        return sum(st.nbytes for st in self.states)

    def n_tokens(self) -> int:
        return sum(len(st.tokens) for st in self.states)

    def save(self, tokens: list[int], read: Any) -> bool:
        """Add a prompt (its rows from `read()`) unless the cache already holds all of it;
        cached prompts it contains are dropped, the oldest make room."""
        if not tokens:
            return False
        if any(common_prefix(st.tokens, tokens) == len(tokens) for st in self.states):
            return False
        pos, rows = read()
        entry = CachedPrompt(list(tokens), pos, rows)
        if self.limit_bytes and entry.nbytes > self.limit_bytes:
            log.warning("prompt cache: a %d-token prompt (%.1f MiB) exceeds the limit; not kept",
                        len(tokens), entry.nbytes / 2**20)  # fmt: skip
            return False
        self.states = [st for st in self.states
                       if common_prefix(st.tokens, tokens) != len(st.tokens)]  # fmt: skip
        while self.states and self.limit_bytes and self.size() + entry.nbytes > self.limit_bytes:
            self.states.pop(0)
        self.states.append(entry)
        return True

    def take(self, held: list[int], prompt: list[int]) -> CachedPrompt | None:
        """The cached prompt to load instead of what a slot holds (`held`) for `prompt`: the
        one that keeps more of itself and covers more of the prompt than `held`, and keeps at
        least a quarter of itself; it leaves the cache."""
        lcp = common_prefix(held, prompt)
        keep_best = lcp / len(held) if held else -1.0  # an empty slot: any entry wins
        sim_best = lcp / max(1, len(prompt))
        best = None
        for st in self.states:
            n = common_prefix(st.tokens, prompt)
            keep, sim = n / len(st.tokens), n / max(1, len(prompt))
            if keep >= 0.25 and keep > keep_best and sim > sim_best:
                keep_best, sim_best, best = keep, sim, st
        if best is not None:
            self.states.remove(best)
        return best

    def update(self) -> None:
        """Drop the oldest prompts beyond the limits."""
        while self.states and self.limit_bytes and self.size() > self.limit_bytes:
            self.states.pop(0)
        per_token = max(1.0, self.size() / max(1, self.n_tokens()))
        limit = self.limit_tokens
        if self.limit_bytes:
            limit = max(limit, int(self.limit_bytes / per_token))
        while self.states and self.limit_tokens and self.n_tokens() > limit:
            self.states.pop(0)


@dataclass
class Metrics:
    """Counters for /metrics (llama-server's names)."""

    prompt_tokens_total: int = 0
    prompt_tokens_cached_total: int = 0
    n_tokens_max: int = 0  # the largest decode batch
    prompt_seconds_total: float = 0.0
    tokens_predicted_total: int = 0
    tokens_predicted_seconds_total: float = 0.0
    n_decode_total: int = 0
    n_busy_slots_total: int = 0
    requests_total: int = 0
    requests_cancelled: int = 0


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _partial_stop(text: str, stops: list[str]) -> int:
    """Where a suffix of text starts that could begin a stop string (len(text) if none)."""
    best = len(text)
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                best = min(best, len(text) - k)
                break
    return best


class Scheduler:
    """The slots and the thread that serves them."""

    def __init__(
        self,
        model: Model,
        n_ctx: int,
        n_parallel: int = 1,
        n_batch: int = 512,
        queue_size: int = 64,
        n_predict_max: int = -1,
        context_shift: bool = False,
        kv_unified: bool = False,
        cache_ram_mib: int = 0,
    ) -> None:
        self.model = model
        self.tokenizer = model.tokenizer
        n_parallel = max(1, n_parallel)
        self.ctx = Context(model, n_ctx=n_ctx, n_ubatch=min(512, n_batch))
        self.kv_unified = kv_unified
        self.n_ctx_slot = self.ctx.n_ctx // n_parallel
        if kv_unified:  # one slot may fill the pool (llama.cpp's n_ctx_seq), up to n_ctx_train
            self.n_ctx_slot = min(self.ctx.n_ctx, model.hp.n_ctx_train or self.ctx.n_ctx)
        self.prompt_cache = PromptCache(cache_ram_mib, self.ctx.n_ctx) if cache_ram_mib else None
        self.slots = [Slot(i, self.n_ctx_slot) for i in range(n_parallel)]
        self.n_batch = n_batch
        self.queue_size = queue_size
        self.n_predict_max = n_predict_max
        self.context_shift = context_shift
        self.waiting: deque[Task] = deque()
        self.actions: deque[SlotAction] = deque()
        self.cond = threading.Condition()
        self.metrics = Metrics()
        self.error: str | None = None
        self._ids = itertools.count()
        self._embd_turn = False  # with both kinds of task active: whose turn the next step is
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="llmrt-scheduler", daemon=True)

    # --- called from the event loop ---
    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify_all()
        self._thread.join(timeout=30)

    def submit(self, task: Task) -> Task:
        with self.cond:
            if len(self.waiting) >= self.queue_size:
                raise QueueFull
            task.id = next(self._ids)
            task.t_submit = time.perf_counter()
            self.waiting.append(task)
            self.metrics.requests_total += 1
            self.cond.notify_all()
        return task

    def act(self, action: SlotAction) -> None:
        """Queue a slot action; it runs once its slot is idle."""
        with self.cond:
            self.actions.append(action)
            self.cond.notify_all()

    def cancel(self, task: Task) -> None:
        with self.cond:
            if not task.cancelled:
                task.cancelled = True
                self.metrics.requests_cancelled += 1
            if task in self.waiting:
                self.waiting.remove(task)
            self.cond.notify_all()

    @property
    def n_waiting(self) -> int:
        return len(self.waiting)

    @property
    def n_busy(self) -> int:
        return sum(s.busy for s in self.slots)

    # --- the scheduler thread ---
    def _run(self) -> None:
        while True:
            with self.cond:
                while (not self._stop and not self.waiting and not self.actions
                       and not any(s.busy for s in self.slots)):  # fmt: skip
                    self.cond.wait()
                if self._stop:
                    return
                for slot in self.slots:
                    if slot.busy and slot.task.cancelled:
                        self._release(slot)
                self._run_actions()
                self._assign()
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - keep serving; fail the requests involved
                log.exception("a decode step failed; failing the requests in it")
                self._fail_all(f"{type(exc).__name__}: {exc}")

    def _assign(self) -> None:
        """Place waiting tasks in idle slots: the asked-for slot, else the one sharing the
        longest cached prefix, else the least recently used."""
        kept: deque[Task] = deque()
        while self.waiting:
            task = self.waiting.popleft()
            idle = [s for s in self.slots if not s.busy]
            if task.id_slot >= 0:
                idle = [s for s in idle if s.id == task.id_slot]
            if not idle:
                kept.append(task)
                continue
            slot = max(
                idle,
                key=lambda s: (
                    common_prefix(s.cache, task.prompt) if task.cache_prompt else 0,
                    -s.t_last_used,
                ),
            )
            try:
                sampler = self._sampler(task) if task.pooling is None else None
            except LlmrtError as exc:  # a grammar that cannot run: this request fails alone
                task.emit("error", {"message": str(exc)})
                continue
            if self.prompt_cache is not None and task.pooling is None:
                self._update_prompt_cache(slot, task.prompt)
            self._launch(slot, task, sampler)
        self.waiting = kept

    def _update_prompt_cache(self, slot: Slot, prompt: list[int]) -> None:
        """--cache-ram, as llama-server's get_available_slot(): a slot that keeps less than half
        of what it holds for this prompt (or shares under a tenth of the prompt, as a slot
        picked by LRU does) saves it to the prompt cache, then loads the cached prompt that
        serves this one better, if any."""
        lcp = common_prefix(slot.cache, prompt)
        if slot.cache and lcp / max(1, len(prompt)) > 0.1 and lcp / len(slot.cache) >= 0.5:
            return
        cache = self.prompt_cache
        if cache.save(slot.cache, lambda: self.ctx.read_seq(slot.id)):
            log.info("slot %d: %d tokens saved to the prompt cache (%d prompts, %.1f MiB)",
                     slot.id, len(slot.cache), len(cache.states), cache.size() / 2**20)  # fmt: skip
        best = cache.take(slot.cache, prompt)
        if best is not None:
            try:
                self.ctx.write_seq(slot.id, best.pos, best.rows)
                slot.cache = best.tokens
                log.info("slot %d: %d tokens loaded from the prompt cache", slot.id,
                         len(best.tokens))  # fmt: skip
            except LlmrtError:  # no room for it: the slot starts empty
                self.ctx.remove(slot.id)
                slot.cache = []
        cache.update()

    def _room(self, active: list[Slot]) -> bool:
        """--kv-unified: make room in the shared pool for this step's tokens (each generating
        slot's, then prompt chunks up to the batch size) by dropping idle slots' caches; when
        that is not enough, fail every active request and free its cells (False)."""
        n_gen = sum(1 for s in active if not s.pending and s.last >= 0)
        need = n_gen + min(max(0, self.n_batch - n_gen), sum(len(s.pending) for s in active))
        idle = [s for s in self.slots if not s.busy and s.cache]
        while need > self.ctx.n_free and idle:
            slot = idle.pop(0)
            log.warning("slot %d: purged (%d tokens) to make room in the KV cache", slot.id,
                        len(slot.cache))  # fmt: skip
            self.ctx.remove(slot.id)
            slot.cache = []
        if need <= self.ctx.n_free:
            return True
        message = "Context size has been exceeded."
        log.error("%s %d tokens for %d cells free", message, need, self.ctx.n_free)
        self._fail_active(message)
        return False

    def _run_actions(self) -> None:
        """Run the slot actions whose slot is idle; the others wait for a later step."""
        kept: deque[SlotAction] = deque()
        for action in self.actions:
            slot = self.slots[action.slot]
            if slot.busy:
                kept.append(action)
                continue
            t0 = time.perf_counter()
            try:
                result = getattr(self, f"_slot_{action.kind}")(slot, action)
            except (LlmrtError, OSError) as exc:
                result = exc
            if isinstance(result, dict) and "timings" in result:
                name = "save_ms" if action.kind == "save" else "restore_ms"
                result["timings"] = {name: (time.perf_counter() - t0) * 1e3}
            action.reply(result)
        self.actions = kept

    def _slot_save(self, slot: Slot, action: SlotAction) -> dict[str, Any]:
        n = self.ctx.save_seq_file(action.path, slot.id, pack_tokens(slot.cache))
        return {"id_slot": slot.id, "filename": action.path.name, "n_saved": len(slot.cache),
                "n_written": n, "timings": {}}  # fmt: skip

    def _slot_restore(self, slot: Slot, action: SlotAction) -> dict[str, Any]:
        # the file is checked before the slot changes; a failure after that leaves it empty
        with open(action.path, "rb") as f:
            head = f.read(12)
        if len(head) == 12:
            (n_words,) = struct.unpack_from("<I", head, 8)
            if n_words > slot.n_ctx + 4:  # the packed list's 4 words beside the tokens
                raise LlmrtError(f"the restored prompt does not fit in the slot's context "
                                 f"({slot.n_ctx})")  # fmt: skip
        try:
            words, n = self.ctx.load_seq_file(action.path, slot.id)
            tokens = unpack_tokens(words)
            if len(tokens) > slot.n_ctx:
                raise LlmrtError(f"the restored prompt ({len(tokens)} tokens) does not fit in "
                                 f"the slot's context ({slot.n_ctx})")  # fmt: skip
            n_vocab = self.model.hp.n_vocab
            if any(not 0 <= t < n_vocab for t in tokens):
                raise LlmrtError("the slot file holds token ids outside the vocabulary")
            held = int(np.count_nonzero(self.ctx.cell_seq == slot.id))
            if held != len(tokens) or self.ctx.seq_len(slot.id) != len(tokens):
                raise LlmrtError("the slot file's cache does not hold its tokens")
        except (LlmrtError, OSError):
            self.ctx.remove(slot.id)
            slot.cache = []
            raise
        slot.cache = tokens
        return {"id_slot": slot.id, "filename": action.path.name, "n_restored": len(tokens),
                "n_read": n, "timings": {}}  # fmt: skip

    def _slot_erase(self, slot: Slot, action: SlotAction) -> dict[str, Any]:
        n = len(slot.cache)
        self.ctx.remove(slot.id)
        slot.cache = []
        return {"id_slot": slot.id, "n_erased": n}

    def _sampler(self, task: Task) -> Sampler:
        n_vocab = self.model.hp.n_vocab
        constraint = None
        if task.grammar is not None:  # its tokenizer was built when the request was checked
            constraint = Constraint(grammar_tokenizer(self.tokenizer, n_vocab), task.grammar)
        return Sampler(task.params, n_vocab, constraint=constraint)

    def _launch(self, slot: Slot, task: Task, sampler: Sampler | None) -> None:
        keep = common_prefix(slot.cache, task.prompt) if task.cache_prompt else 0
        keep = min(keep, len(task.prompt) - 1)  # the last prompt token is evaluated for logits
        if task.pooling is not None:  # every token's hidden state is computed anew
            keep = 0
        self.ctx.remove(slot.id, start=keep)
        slot.cache = slot.cache[:keep]
        slot.task = task
        slot.pending = list(task.prompt[keep:])
        slot.sampler = sampler
        for tok in task.prompt if sampler is not None else ():
            slot.sampler.accept(int(tok))
        slot.embd_rows = []
        slot.decoder = self.tokenizer.decoder()
        slot.last, slot.n_decoded, slot.text, slot.n_sent = -1, 0, "", 0
        slot.n_cached, slot.n_prompt_eval = keep, 0
        slot.probs, slot.generated, slot.truncated = [], [], False
        slot.t_start = time.perf_counter()
        slot.t_prompt_done = 0.0
        if task.return_progress:
            self._progress(slot)

    def _progress(self, slot: Slot) -> None:
        """How far the prompt is read (llama-server's prompt_progress): at the start, and after
        each chunk of it."""
        now = time.perf_counter()
        progress = {
            "total": len(slot.task.prompt),
            "cache": slot.n_cached,
            "processed": len(slot.cache),
            "time_ms": int((now - slot.t_start) * 1e3),
        }
        data = {"progress": progress}
        if slot.task.timings_per_token:
            data["timings"] = self._timings(slot, now)
        slot.task.emit("progress", data)

    def _release(self, slot: Slot) -> None:
        slot.task = None
        slot.pending = []
        slot.sampler = None
        slot.t_last_used = time.perf_counter()

    def _step(self) -> None:
        tokens: list[int] = []
        pos: list[int] = []
        seqs: list[int] = []
        want: list[bool] = []
        owners: list[Slot] = []  # the slot of each wanted output row, in order
        active = [s for s in self.slots if s.busy]
        # One decode gives logits or hidden states, not both (llama-server's can_batch_with):
        # when tasks of both kinds are active, the steps take them in turn.
        kinds = {s.task.pooling is not None for s in active}
        if len(kinds) > 1:
            self._embd_turn = not self._embd_turn
        embd = self._embd_turn if len(kinds) > 1 else True in kinds
        active = [s for s in active if (s.task.pooling is not None) == embd]
        for slot in active:
            full = len(slot.cache) + 1 >= slot.n_ctx
            if self.context_shift and full and not slot.pending and slot.last >= 0:
                self._shift(slot)
        if self.kv_unified and not self._room(active):
            return
        for slot in active:  # generating slots first: one token each
            if not slot.pending and slot.last >= 0:
                tokens.append(slot.last)
                pos.append(len(slot.cache))
                seqs.append(slot.id)
                want.append(True)
                owners.append(slot)
                slot.cache.append(slot.last)
        budget = self.n_batch - len(tokens)
        reading: list[Slot] = []
        for slot in active:  # then prompt chunks
            if not slot.pending or budget <= 0:
                continue
            reading.append(slot)
            chunk, slot.pending = slot.pending[:budget], slot.pending[budget:]
            budget -= len(chunk)
            start = len(slot.cache)
            tokens.extend(chunk)
            pos.extend(range(start, start + len(chunk)))
            seqs.extend([slot.id] * len(chunk))
            if embd:  # the rows its pooling reads: all of them, the first, or the last
                pooling = slot.task.pooling
                rows = [pooling in ("mean", "none") or (pooling == "cls" and start + i == 0)
                        for i in range(len(chunk))]  # fmt: skip
                rows[-1] = rows[-1] or (pooling == "last" and not slot.pending)
            else:
                rows = [False] * (len(chunk) - 1) + [not slot.pending]
            want.extend(rows)
            owners.extend([slot] * sum(rows) if embd else [slot] * (not slot.pending))
            slot.cache.extend(chunk)
            if slot.n_decoded == 0:  # not what a context shift reads again
                slot.n_prompt_eval += len(chunk)
        if not tokens:
            return
        logits = self.ctx.decode(
            Batch(
                np.asarray(tokens, np.int32),
                np.asarray(pos, np.int32),
                np.asarray(seqs, np.int32),
                np.asarray(want, bool),
            ),
            embeddings=embd,
        )
        now = time.perf_counter()
        self.metrics.n_decode_total += 1
        self.metrics.n_tokens_max = max(self.metrics.n_tokens_max, len(tokens))
        self.metrics.n_busy_slots_total += len(active)
        if embd:
            for row, slot in enumerate(owners):
                slot.embd_rows.append(logits[row])
            for slot in reading:
                if not slot.pending:
                    self._finish_embedding(slot, now)
            return
        for slot in reading:
            if slot.task.return_progress and slot.n_decoded == 0:
                self._progress(slot)
        for row, slot in enumerate(owners):  # owners are in the order of the wanted rows
            try:
                self._sample(slot, logits[row], now)
            except LlmrtError as exc:  # the grammar failed: fail this request, not the others
                slot.task.emit("error", {"message": str(exc)})
                self._release(slot)

    def _sample(self, slot: Slot, logits: np.ndarray, now: float) -> None:
        task = slot.task
        if task is None:
            return
        if slot.n_decoded == 0:
            slot.t_prompt_done = now
            self.metrics.prompt_tokens_total += slot.n_prompt_eval
            self.metrics.prompt_seconds_total += now - slot.t_start
            self.metrics.prompt_tokens_cached_total += slot.n_cached
        want = task.n_probs > 0 or task.want_probs
        # the chain's candidates as they are before this draw moves the sampler's state
        cands = slot.sampler.probs(logits, 0) if want and task.post_sampling_probs else None
        tok = slot.sampler.sample(logits)
        slot.n_decoded += 1
        slot.last = tok
        slot.generated.append(tok)
        probs = self._probs(slot, logits, tok, cands) if want else None
        stop_type, stopping_word = "", ""
        piece = ""
        if tok in self.tokenizer.eog_ids:
            stop_type = "eos"
        else:
            piece = slot.decoder.add(tok)
            slot.text += piece
            hit = self._find_stop(slot, piece)
            if hit is not None:
                stop_type, stopping_word = "word", hit
        if not stop_type and task.n_predict >= 0 and slot.n_decoded >= task.n_predict:
            stop_type = "limit"
        if not stop_type and len(slot.cache) >= slot.n_ctx and not self.context_shift:
            stop_type, slot.truncated = "limit", True  # the slot's context is full
        if stop_type != "word" and stop_type:
            tail = slot.decoder.flush()
            slot.text += tail
            piece += tail
        if probs is not None:  # the text this token added (UTF-8 split over tokens waits)
            probs["token"] = piece
        # stream what cannot be the start of a stop string
        upto = len(slot.text) if stop_type else _partial_stop(slot.text, task.stop)
        upto = max(upto, slot.n_sent)
        content = slot.text[slot.n_sent : upto]
        slot.n_sent = upto
        partial: dict[str, Any] = {"content": content, "tokens": [tok], "id_slot": slot.id}
        if task.timings_per_token:
            partial["timings"] = self._timings(slot, now)
        if probs is not None:
            partial["completion_probabilities"] = [probs]
            slot.probs.append(probs)
        task.emit("token", partial)
        if stop_type:
            self._finish(slot, stop_type, stopping_word, now)

    def _shift(self, slot: Slot) -> None:
        """--context-shift, as llama-server's: the slot's context is full, so keep its first
        n_keep tokens (the request's, +1 for a BOS; -1: the whole prompt), drop n_discard
        after them (the request's, else half of the rest) and go on with what follows.

        llama.cpp moves the cache rows that follow down and re-ropes their keys in place (a
        K-shift). Here they are evaluated again at their new positions instead: a prefill of
        at most half a slot every half slot of generation. That is exact (the cache is what a
        fresh evaluation of the shortened text gives: no f16 rounding of rotated keys, and no
        values that still saw the dropped tokens) and it needs nothing of a backend beyond the
        decode every backend runs, where a K-shift needs a rope over the cache on each device
        and each architecture's rope details (gemma3's per-layer bases, sliding windows)."""
        task = slot.task
        n_keep = task.n_keep if task.n_keep >= 0 else len(task.prompt)
        n_keep += int(self.tokenizer.add_bos)
        n_keep = min(slot.n_ctx - 4, n_keep)
        n_left = len(slot.cache) - n_keep
        n_discard = task.n_discard or n_left // 2
        n_discard = min(max(n_discard, 0), max(0, n_left - 1))
        tail = slot.cache[n_keep + n_discard :]
        log.info("slot %d: context shift, n_keep = %d, n_left = %d, n_discard = %d",
                 slot.id, n_keep, n_left, n_discard)  # fmt: skip
        self.ctx.remove(slot.id, start=n_keep)
        slot.cache = slot.cache[:n_keep]
        # the rest, then the sampled token, are read again; its logits give the next token
        slot.pending = [*tail, slot.last]
        slot.last = -1
        slot.truncated = True

    def _find_stop(self, slot: Slot, piece: str) -> str | None:
        stops = slot.task.stop
        if not stops:
            return None
        best: tuple[int, str] | None = None
        for s in stops:
            if not s:
                continue
            start = max(0, len(slot.text) - len(piece) - len(s))
            i = slot.text.find(s, start)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is None:
            return None
        slot.text = slot.text[: best[0]]
        return best[1]

    def _probs(
        self, slot: Slot, logits: np.ndarray, tok: int, cands: list[tuple[int, float]] | None
    ) -> dict[str, Any]:
        """llama-server's completion_probabilities entry: softmax of the raw logits by default,
        the sampler chain's probabilities with post_sampling_probs."""
        task = slot.task
        n = task.n_probs

        def info(t: int) -> dict[str, Any]:
            piece = self.tokenizer.token_to_piece(t, special=False)  # as llama-server
            return {
                "id": t,
                "token": piece.decode("utf-8", errors="replace"),
                "bytes": list(piece),
            }

        if cands is not None:  # post_sampling_probs
            p = dict(cands)
            top = [{**info(t), "prob": q} for t, q in cands[:n]]
            return {**info(tok), "prob": p.get(tok, 0.0), "top_probs": top}
        x = logits.astype(np.float64)
        x = x - x.max()
        logp = x - math.log(np.exp(x).sum())
        best = np.argsort(-logp, kind="stable")[:n]
        top = [{**info(int(t)), "logprob": float(logp[t])} for t in best]
        return {**info(tok), "logprob": float(logp[tok]), "top_logprobs": top}

    @staticmethod
    def _timings(slot: Slot, now: float) -> dict[str, Any]:
        """llama-server's timings. The first token comes from the prompt's last batch, so the
        generation rate is over the decode steps after it (n - 1), as llama-server counts."""
        reading = slot.t_prompt_done == 0.0
        t_prompt = ((now if reading else slot.t_prompt_done) - slot.t_start) * 1e3
        t_gen = 0.0 if reading else (now - slot.t_prompt_done) * 1e3
        n_prompt, n_gen = slot.n_prompt_eval, slot.n_decoded
        steps = max(n_gen - 1, 0)
        return {
            "cache_n": slot.n_cached,
            "prompt_n": n_prompt,
            "prompt_ms": t_prompt if n_prompt else 0.0,
            "prompt_per_token_ms": t_prompt / n_prompt if n_prompt else 0.0,
            "prompt_per_second": 1e3 * n_prompt / t_prompt if n_prompt and t_prompt > 0 else 0.0,
            "predicted_n": n_gen,
            "predicted_ms": t_gen,
            "predicted_per_token_ms": t_gen / steps if steps else 0.0,
            "predicted_per_second": 1e3 * steps / t_gen if steps and t_gen > 0 else 0.0,
        }

    def _finish(self, slot: Slot, stop_type: str, word: str, now: float) -> None:
        task = slot.task
        timings = self._timings(slot, now)
        n_gen = slot.n_decoded
        self.metrics.tokens_predicted_total += n_gen
        self.metrics.tokens_predicted_seconds_total += timings["predicted_ms"] / 1e3
        task.emit(
            "done",
            {
                "content": slot.text,
                "id_slot": slot.id,
                "stop_type": stop_type,
                "stopping_word": word,
                "tokens_predicted": n_gen,
                "tokens_evaluated": len(task.prompt),
                "tokens_cached": len(slot.cache),
                "timings": timings,
                "completion_probabilities": slot.probs,
                "tokens": slot.generated,
                "n_prompt": len(task.prompt),
                "truncated": slot.truncated,
                "seed": slot.sampler.seed,
                "n_ctx": slot.n_ctx,
            },
        )
        self._release(slot)

    def _finish_embedding(self, slot: Slot, now: float) -> None:
        """An embedding task has read its prompt: pool its rows and hand the result over (the
        slot's cache keeps the prompt, as after a completion)."""
        task = slot.task
        self.metrics.prompt_tokens_total += slot.n_prompt_eval
        self.metrics.prompt_seconds_total += now - slot.t_start
        vectors = pool_embeddings(np.stack(slot.embd_rows), task.pooling, task.embd_normalize)
        slot.embd_rows = []
        task.emit("done", {
            "embedding": vectors if task.pooling == "none" else vectors[None, :],
            "n_tokens": len(task.prompt),
            "id_slot": slot.id,
        })  # fmt: skip
        self._release(slot)

    def _fail_all(self, message: str) -> None:
        """A decode failed: tell every active request and drop the slots' caches."""
        self.error = message
        with self.cond:
            self._fail_active(message, drop_idle=True)

    def _fail_active(self, message: str, drop_idle: bool = False) -> None:
        """Tell every active request `message`, free its slot and drop its cache (and the idle
        slots' caches too with drop_idle)."""
        for slot in self.slots:
            if slot.busy:
                slot.task.emit("error", {"message": message})
                self._release(slot)
            elif not drop_idle:
                continue
            self.ctx.remove(slot.id)
            slot.cache = []
