"""Dynamic batching, the way Triton's dynamic batcher does it: requests queue; a batch runs when it
holds ``max_batch_size`` samples or its oldest request has waited ``max_queue_delay_s``; with
preferred sizes, a batch that may not grow further is cut to the largest preferred size it holds;
results are split back per request; a cancelled request leaves the queue; a failing batch fails
only its own requests.

One batch runs at a time (inference already uses every core through ONNX Runtime's threads): while
it runs, the next requests queue, so batches grow exactly when there is load to batch. Each batch
is a span (size, requests, queue time) linked to the ``inference`` span of every request in it, and
each of those is linked back to it (OpenTelemetry span links: a batch belongs to many traces).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import numpy as np
from opentelemetry import trace

from ml_pipeline.core.wire import Attr
from ml_pipeline.observability import metrics


@dataclass(eq=False)
class _Waiting:
    batch: np.ndarray
    done: asyncio.Future[np.ndarray]
    span: trace.Span  # the request's inference span: linked to its batch
    enqueued: float = field(default_factory=time.monotonic)
    started: float | None = None  # when its batch started to run


class DynamicBatcher:
    def __init__(
        self,
        infer: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        preferred_sizes: Sequence[int] = (),
        tracer: trace.Tracer,
        service: str = "model",
    ):
        if max_batch_size < 1 or max_queue_delay_s < 0:
            raise ValueError("max_batch_size must be >= 1 and max_queue_delay_s >= 0")
        self._infer = infer  # blocking, thread-safe: runs in a worker thread
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.preferred_sizes = sorted({s for s in preferred_sizes if 1 <= s <= max_batch_size})
        self._tracer = tracer
        self._service = service
        self._queue: collections.deque[_Waiting] = collections.deque()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        return len(self._queue)

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run_forever())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        for waiting in self._queue:
            if not waiting.done.done():
                waiting.done.set_exception(RuntimeError("the model is shutting down"))
        self._queue.clear()

    async def submit(self, batch: np.ndarray) -> np.ndarray:
        """``batch``'s rows of the model's output, computed in some batch with other requests'."""
        output, _ = await self.submit_timed(batch)
        return output

    async def submit_timed(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        """``submit``'s answer, and the seconds the request queued before its batch started to run."""
        if self._worker is None or self._worker.done():
            raise RuntimeError("the batcher is not running")
        waiting = _Waiting(batch, asyncio.get_running_loop().create_future(), trace.get_current_span())
        self._queue.append(waiting)
        self._arrived.set()
        try:
            output = await waiting.done
        except asyncio.CancelledError:
            if waiting in self._queue:  # not started yet: leaves the queue (a running batch just drops its rows)
                self._queue.remove(waiting)
            raise
        return output, (waiting.started or waiting.enqueued) - waiting.enqueued

    # ----------------------------------------------------------------------- the worker

    async def _run_forever(self) -> None:
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            await self._wait_for_batch()
            taken = self._take()
            if taken:
                await self._run(taken)

    async def _wait_for_batch(self) -> None:
        """Until the queue holds a full batch or its oldest request has waited the delay."""
        while self._queue and self._queued_samples() < self.max_batch_size:
            left = self._queue[0].enqueued + self.max_queue_delay_s - time.monotonic()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                async with asyncio.timeout(left):
                    await self._arrived.wait()
            except TimeoutError:
                return
            if not self._queue:  # every waiting request was cancelled meanwhile
                return

    def _queued_samples(self) -> int:
        return sum(len(w.batch) for w in self._queue)

    def _take(self) -> list[_Waiting]:
        """The oldest requests that fit in one batch, whole (a request is never split), cut to the
        largest preferred size they reach when there are preferred sizes."""
        taken: list[_Waiting] = []
        samples = 0
        while self._queue and (not taken or samples + len(self._queue[0].batch) <= self.max_batch_size):
            waiting = self._queue.popleft()
            taken.append(waiting)
            samples += len(waiting.batch)
        if self.preferred_sizes and len(taken) > 1:
            sizes = np.cumsum([len(w.batch) for w in taken])
            fitting = [i for i, size in enumerate(sizes) if size in self.preferred_sizes]
            if fitting and fitting[-1] < len(taken) - 1:
                for waiting in reversed(taken[fitting[-1] + 1 :]):  # back to the front of the queue
                    self._queue.appendleft(waiting)
                taken = taken[: fitting[-1] + 1]
        return taken

    async def _run(self, taken: list[_Waiting]) -> None:
        live = [w for w in taken if not w.done.done()]
        if not live:
            return
        started = time.monotonic()
        rows = [len(w.batch) for w in live]
        links = [trace.Link(w.span.get_span_context()) for w in live if w.span.get_span_context().is_valid]
        with self._tracer.start_as_current_span("batch", links=links) as span:
            queue_s = started - min(w.enqueued for w in live)
            span.set_attribute(Attr.BATCH_SIZE, sum(rows))
            span.set_attribute(Attr.BATCH_REQUESTS, len(live))
            span.set_attribute(Attr.BATCH_QUEUE_MS, queue_s * 1000)
            metrics.BATCH_SIZE.labels(self._service).observe(sum(rows))
            for waiting in live:
                waiting.started = started
                metrics.BATCH_QUEUE_DURATION.labels(self._service).observe(started - waiting.enqueued)
                waiting.span.add_link(span.get_span_context(), {Attr.LINK_KIND: "batch"})
            try:
                joined = live[0].batch if len(live) == 1 else np.concatenate([w.batch for w in live])
                output = await anyio.to_thread.run_sync(self._infer, joined)
            except Exception as exc:  # this batch's requests fail; the next batch is unaffected
                span.record_exception(exc)
                for waiting in live:
                    if not waiting.done.done():
                        waiting.done.set_exception(exc)
                return
        offsets = np.cumsum([0, *rows])
        for waiting, start, end in zip(live, offsets[:-1], offsets[1:], strict=True):
            if not waiting.done.done():  # cancelled while its batch ran: the rows are dropped
                waiting.done.set_result(output[start:end])
