"""The acknowledgements of the asyncio.Queue drop-ins' task_done(), off the loop.

:class:`_Acknowledging` is mixed into
:class:`~persistqueue_liteq.aio.AsyncPersistentQueue`: ``task_done`` (and
``auto_ack``) acknowledge on the queue's storage thread, the loop is woken
only if a ``join`` waits for them, and ``join`` and ``aclose`` wait for those
under way.  Used by :mod:`persistqueue_liteq.aio`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import threading
    from typing import Set

    from ._aio_channels import _Channels
    from ._aio_offload import _Offloader
    from ._aio_sync import _TaskLeases
    from ._leases import _Lease

logger = logging.getLogger("persistqueue_liteq")


class _Acknowledging:
    """The acknowledgements of an async queue: the queue's ``__init__`` makes
    ``_acks`` (the concurrent futures of those under way) and ``_acks_lock``
    (which guards it: they end on the storage thread)."""

    if TYPE_CHECKING:
        # The async queue's, made by its __init__.
        _sync: _TaskLeases
        _offload: _Offloader
        _channels: _Channels
        _acks: Set[concurrent.futures.Future[None]]
        _acks_lock: threading.Lock

    def _acknowledge(self, lease: _Lease) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside the loop: acknowledge here
            self._sync._acknowledge(lease)
            return
        # The acknowledgement ends on the storage thread, and wakes the loop
        # only if a join() waits for it: one cross-thread wake-up per
        # task_done() instead of two.
        future = self._offload.submit(self._sync._acknowledge, lease)
        with self._acks_lock:
            self._acks.add(future)
        future.add_done_callback(functools.partial(self._acknowledged, loop))

    def _acknowledged(self, loop: asyncio.AbstractEventLoop,
                      future: concurrent.futures.Future[None]) -> None:
        """On the storage thread (or here, if it ended already)."""
        try:
            if not future.cancelled() and future.exception() is not None:
                # Still held: the heartbeat keeps it; close() hands it back.
                logger.warning("task_done() of queue %r in %s: the acknowledgement "
                               "failed (%s); the item will be delivered again",
                               self._sync.name, self._sync.path, future.exception())
            channel = self._channels.find("done", self._sync.name)
            if channel is not None:  # a join() is under way
                with contextlib.suppress(RuntimeError):  # the loop was closed
                    loop.call_soon_threadsafe(channel.wake)
        finally:
            # Only now: whoever sees no acknowledgement under way finds its
            # wake-up already queued on the loop.
            with self._acks_lock:
                self._acks.discard(future)

    async def _acknowledgements(self) -> bool:
        """Wait for the acknowledgements under way; False if there were none."""
        with self._acks_lock:
            acks = [asyncio.wrap_future(future) for future in self._acks]
        if acks:
            self._offload.in_flight += 1  # until the caller goes on
            try:
                await asyncio.wait(acks)
            finally:
                self._offload.in_flight -= 1
        return bool(acks)
