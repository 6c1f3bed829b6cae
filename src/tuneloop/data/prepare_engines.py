"""Where ``data prepare``'s per-record stages run: in this process, in forked worker processes, or
on a Ray cluster through Ray Data (``--engine ray``).

Every engine takes the chunks of :func:`~tuneloop.data.prepare_chunks.read_chunks` and yields their
:class:`~tuneloop.data.prepare_chunks.ChunkResult` in input order, with only a few chunks in flight
at a time, so memory stays bounded however large the input; the caller merges them in that order,
which is why the output does not depend on the engine or the number of workers.

Ray is imported only here and only for ``--engine ray``: ``pip install 'tuneloop[scale]'``.
"""

from __future__ import annotations

import itertools
import os
import pickle
from collections import deque
from collections.abc import Iterator

from tuneloop.data.prepare_chunks import Chunk, ChunkResult, process_chunk
from tuneloop.errors import UserError

ENGINES = ("local", "ray")
PARALLEL_MIN_RECORDS = 20_000  # below this, starting worker processes costs more than it saves
RAY_INSTALL_HINT = "pip install 'tuneloop[scale]' (or: pip install 'ray[data]>=2.55.1,<3')"


def default_workers() -> int:
    return min(os.cpu_count() or 1, 4)


def run_chunks(chunks: Iterator[Chunk], task: str, options) -> Iterator[ChunkResult]:
    """Results of every chunk, in order, on ``options.engine`` with ``options.workers``."""
    if options.engine == "ray":
        return ray_results(chunks, task, options)
    workers = options.workers or default_workers()
    head, size = [], 0
    for chunk in chunks:  # look ahead: a small input runs here, without starting processes
        head.append(chunk)
        size += len(chunk)
        if size >= PARALLEL_MIN_RECORDS:
            break
    chunks = itertools.chain(head, chunks)
    import multiprocessing

    if size < PARALLEL_MIN_RECORDS or workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return (process_chunk(chunk, task, options) for chunk in chunks)
    return _forked_results(chunks, task, options, workers)


def _forked_results(chunks: Iterator[Chunk], task: str, options, workers: int) -> Iterator[ChunkResult]:
    """Chunks on forked workers (they inherit the loaded tokenizer); at most two per worker in flight."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(process_chunk, (chunk, task, options)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is the ray[data] extra)
    except ImportError as e:
        raise UserError(f"--engine ray needs Ray Data, which is not installed ({e})", hint=RAY_INSTALL_HINT) from None
    return ray


def ray_results(chunks: Iterator[Chunk], task: str, options) -> Iterator[ChunkResult]:
    """Chunks through Ray Data ``map_batches`` (one chunk per row), a window of chunks at a time.

    Connects to ``options.ray_address`` (``ray://host:10001``, ``host:6379`` or ``auto``) when given,
    else starts a local cluster with ``options.workers`` CPUs (default: all cores), and shuts down
    only a cluster it started. The cluster's nodes need the same tuneloop installed.
    """
    ray = import_ray()
    import logging

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # per-dataset INFO lines for every window
    started = not ray.is_initialized()
    if started:
        _init_ray(ray, options)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # results in input order, as the merge needs
        context.enable_progress_bars = False
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        window: list[bytes] = []
        for chunk in chunks:
            window.append(pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL))
            if len(window) >= 4 * cpus:
                yield from _ray_window(ray, window, task, options)
                window = []
        if window:
            yield from _ray_window(ray, window, task, options)
    finally:
        if started:
            ray.shutdown()


def _init_ray(ray, options) -> None:
    import warnings

    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    # A notice about GPU visibility that Ray prints on every init; nothing here uses GPUs.
    warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)
    try:
        if options.ray_address:
            ray.init(address=options.ray_address, **kwargs)
        else:
            ray.init(num_cpus=options.workers or os.cpu_count() or 1, **kwargs)
    except ConnectionError as e:
        raise UserError(f"--ray-address {options.ray_address}: cannot connect to a Ray cluster ({e})",
                        hint="start one with `ray start --head` and pass its address, or leave "
                             "--ray-address out for a local cluster") from None


def _ray_window(ray, window: list[bytes], task: str, options) -> Iterator[ChunkResult]:
    dataset = ray.data.from_items([{"chunk": blob} for blob in window], override_num_blocks=len(window))
    dataset = dataset.map_batches(_process_batch, batch_size=1, batch_format="numpy",
                                  fn_kwargs={"task": task, "options": options})
    for row in dataset.iter_rows():
        yield pickle.loads(row["result"])


def _process_batch(batch: dict, task: str, options) -> dict:
    """Ray Data batch function: a column of pickled chunks -> a column of pickled results."""
    import numpy as np

    results = [pickle.dumps(process_chunk(pickle.loads(blob), task, options), protocol=pickle.HIGHEST_PROTOCOL)
               for blob in batch["chunk"]]
    return {"result": np.array(results, dtype=object)}
