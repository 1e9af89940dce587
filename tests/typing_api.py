"""What a type checker sees of the public API: checked by mypy (CI runs it
with pyproject.toml's [tool.mypy], which lists this file), never run.

Each wrong call carries ``# type: ignore[code]``: strict mode reports an
ignore that is not needed, so a signature that stopped catching the mistake
fails the check.  ``assert_type`` pins what calls return.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING, List, Optional

from persistqueue_liteq import (LiteQueue, Message, PersistentPriorityQueue,
                                PersistentProcessPoolExecutor, PersistentQueue,
                                PersistentThreadPoolExecutor)

if TYPE_CHECKING:
    from typing_extensions import assert_type

    from persistqueue_liteq.aio import AsyncPersistentQueue


def area(width: int, height: int) -> float:
    return width * height / 2


def _never_called() -> None:
    q: PersistentQueue[int] = PersistentQueue("jobs.db")
    q.put(1)
    q.put("one")  # type: ignore[arg-type]
    assert_type(q.get(), int)
    assert_type(q.get(timeout=1.5), int)
    q.get(timeout="soon")  # type: ignore[arg-type]

    prio: PersistentPriorityQueue[tuple[int, str]] = PersistentPriorityQueue("p.db")
    prio.put((1, "a"))
    prio.put(1)  # type: ignore[arg-type]

    lite = LiteQueue("lite.db")
    assert_type(lite.put(b"payload"), int)
    lite.put("text")  # type: ignore[arg-type]
    message = lite.pop()
    assert_type(message, Optional[Message])
    if message is not None:
        assert_type(message.data, bytes)
        assert_type(lite.ack(message), bool)
    assert_type(lite.pop_batch(max_messages=10), List[Message])

    with PersistentThreadPoolExecutor("pool.db") as ex:
        assert_type(ex.submit(area, 3, 4), Future[float])
        ex.submit(area, 3, "4")  # type: ignore[arg-type]
        assert_type(list(ex.map(area, [1], [2])), List[float])
    with PersistentProcessPoolExecutor("pool.db") as px:
        assert_type(px.submit(area, 3, 4).result(), float)


async def _never_awaited() -> None:
    q: AsyncPersistentQueue[str] = AsyncPersistentQueue("async.db")
    await q.put("job")
    await q.put(1)  # type: ignore[arg-type]
    assert_type(await q.get(), str)
