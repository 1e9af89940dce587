"""PersistentPriorityQueue's order: the stored keys (serializers.order_key)
compared byte by byte must agree with Python's own comparison of the values.

Randomized with the standard library's random and fixed seeds, so that a
failure reproduces.
"""

import decimal
import enum
import fractions
import functools
import math
import random
import sys

import pytest

from persistqueue_liteq import PersistentPriorityQueue
from persistqueue_liteq.serializers import order_key

MAX = sys.float_info.max
TINY = 5e-324  # the smallest subnormal


def python_cmp(a, b):
    """-1, 0 or 1 as Python orders a and b; None where Python refuses."""
    try:
        return (a > b) - (a < b)
    except TypeError:
        return None


def key_cmp(a, b):
    ka, kb = order_key(a), order_key(b)
    return (ka > kb) - (ka < kb)


def random_number(rng):
    sign = rng.choice((1, -1))
    kind = rng.randrange(9)
    if kind == 0:
        return rng.randint(-1000, 1000)
    if kind == 1:  # where floats stop being able to hold every int
        return sign * (2 ** 53 + rng.randint(-4, 4))
    if kind == 2:  # beyond any float
        return sign * rng.getrandbits(rng.randint(900, 1100))
    if kind == 3:  # around the largest float
        return sign * (int(MAX) + rng.randint(-2 ** 972, 2 ** 972))
    if kind == 4:
        return rng.uniform(-1e6, 1e6)
    if kind == 5:
        return sign * rng.choice((0.0, math.inf, MAX, TINY, 2.0 ** 53, 2.0 ** 53 + 2, 1.5, 1e300))
    if kind == 6:
        return rng.choice((True, False))
    if kind == 7:  # a float equal to an int, or that int
        value = float(sign * rng.getrandbits(rng.randint(1, 80)))
        return value if rng.random() < 0.5 else int(value)
    while True:  # any float but NaN (NaN compares neither way in Python)
        value = rng.choice((-1, 1)) * math.ldexp(rng.random(), rng.randint(-1074, 1024))
        if not math.isnan(value):
            return value


ALPHABET = ["", "\x00", "\x01", "a", "b", "\x7f", "\xe9", "\uffff", "\U0001f600", "\ud800"]
BYTES = [b"", b"\x00", b"\x01", b"a", b"\xfe", b"\xff"]


def random_str(rng):
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 4)))


def random_bytes(rng):
    return b"".join(rng.choice(BYTES) for _ in range(rng.randint(0, 4)))


def random_scalar(rng):
    kind = rng.randrange(3)
    if kind == 0:
        # Few distinct numbers, so that tuples often share a prefix.
        return rng.choice((0, 1, 1.0, True, -2, 2 ** 60, 2.5))
    return random_str(rng) if kind == 1 else random_bytes(rng)


def random_tuple(rng, depth=0):
    elements = []
    for _ in range(rng.randint(0, 4)):
        if depth < 2 and rng.random() < 0.2:
            elements.append(random_tuple(rng, depth + 1))
        else:
            elements.append(random_scalar(rng))
    return tuple(elements) if rng.random() < 0.8 else list(elements)


@pytest.mark.parametrize("generate", [random_number, random_str, random_bytes, random_tuple],
                         ids=lambda f: f.__name__)
def test_keys_order_as_python_orders(generate):
    rng = random.Random(20240917)
    comparable = 0
    for _ in range(20000):
        a, b = generate(rng), generate(rng)
        expected = python_cmp(a, b)
        if expected is None:  # Python refuses (a str with a number): any order
            continue
        comparable += 1
        assert key_cmp(a, b) == expected, (a, b)
    assert comparable > 5000


def test_sorting_by_key_sorts_numbers():
    rng = random.Random(7)
    values = [random_number(rng) for _ in range(3000)]
    ordered = sorted(values, key=order_key)
    assert all(a <= b for a, b in zip(ordered, ordered[1:]))


@pytest.mark.parametrize("a, b", [
    (1, 1.0), (1, True), (0, False), (0.0, -0.0), (0, -0.0), (2 ** 53, 2.0 ** 53),
    (2 ** 1000, 2.0 ** 1000), (int(MAX), MAX), ((1, "a"), (1.0, "a")), (3, enum.IntEnum("E", "X Y Z").Z),
])
def test_equal_values_have_equal_keys(a, b):
    assert a == b and order_key(a) == order_key(b)


def test_ints_compare_exactly_with_floats_and_each_other():
    assert float(2 ** 53 + 1) == 2.0 ** 53  # a float cannot tell them apart
    assert order_key(2 ** 53) < order_key(2 ** 53 + 1) < order_key(2.0 ** 53 + 2)
    assert order_key(-(2 ** 53) - 1) < order_key(-(2.0 ** 53))
    big = 10 ** 400  # float(big) overflows
    assert order_key(MAX) < order_key(big) < order_key(big + 1) < order_key(math.inf)
    assert order_key(-math.inf) < order_key(-big - 1) < order_key(-big) < order_key(-MAX)
    assert order_key(-TINY) < order_key(0) < order_key(TINY)


def test_nan_sorts_after_infinity_and_ties():
    assert order_key(math.inf) < order_key(math.nan)
    assert order_key(math.nan) == order_key(-math.nan) == order_key(float("nan"))


def test_a_shorter_tuple_sorts_before_a_longer_one_with_its_prefix():
    assert order_key(()) < order_key((0,)) < order_key((0, 0)) < order_key((1,))
    assert order_key(("a",)) < order_key(("a", "")) < order_key(("a\x00",)) < order_key(("a\x01",))
    assert order_key((b"\x00",)) < order_key((b"\x00", b"")) < order_key((b"\x00\x00",))


class Task:
    """An item part with no order of its own (module level: it pickles)."""

    def __init__(self, n):
        self.n = n


def test_a_tuple_with_an_unorderable_tail_is_ordered_by_its_head():
    a, b = (1, Task(1)), (1, Task(2))
    assert order_key(a) == order_key(b)  # ties: the queue then keeps arrival order
    assert order_key((0, "z")) < order_key(a) < order_key((2,))
    # Nested: the key stops at the first element that has no order.
    assert order_key(((1, Task(1)), 5)) == order_key(((1, Task(2)), 6))


@pytest.mark.parametrize("value", [
    None, Task(1), (None, 1), ((Task(1),), 1), 1 + 2j, decimal.Decimal("1.5"),
    fractions.Fraction(1, 3), {1: 2}, {1},
])
def test_a_value_without_order_names_the_way_out(value):
    with pytest.raises(TypeError, match="key="):
        order_key(value)


def test_the_queue_delivers_in_python_order_ties_first_in_first_out(tmp_path):
    rng = random.Random(11)
    priorities = [rng.choice((0, 1, 1.0, True, 2.5, -3, 2 ** 70, 2.0 ** 70, -math.inf))
                  for _ in range(300)]
    items = [(priority, Task(n)) for n, priority in enumerate(priorities)]
    q = PersistentPriorityQueue(tmp_path / "p.db")
    for item in items:
        q.put(item)
    got = [q.get_nowait() for _ in items]
    expected = sorted(items, key=lambda item: item[0])  # a stable sort: FIFO ties
    assert [(p, task.n) for p, task in got] == [(p, task.n) for p, task in expected]
    q.close()


def test_mixed_values_come_out_sorted(tmp_path):
    rng = random.Random(12)
    values = [random_number(rng) for _ in range(200)]
    q = PersistentPriorityQueue(tmp_path / "p.db")
    for value in values:
        q.put(value)
    got = [q.get_nowait() for _ in values]
    assert got == sorted(values, key=functools.cmp_to_key(python_cmp))
    q.close()


def test_an_unorderable_item_is_refused_and_key_is_the_way_out(tmp_path):
    q = PersistentPriorityQueue(tmp_path / "p.db")
    with pytest.raises(TypeError, match="key="):
        q.put(Task(1))
    with pytest.raises(TypeError, match="key="):
        q.put((Task(1), 1))
    assert q.qsize() == 0 and q.unfinished_tasks == 0  # nothing stored
    q.close()

    q = PersistentPriorityQueue(tmp_path / "k.db", key=lambda task: -task.n)
    for n in (1, 3, 2):
        q.put(Task(n))
    assert [q.get().n for _ in range(3)] == [3, 2, 1]
    with pytest.raises(TypeError, match="key"):
        PersistentPriorityQueue(tmp_path / "k.db", key=lambda task: task).put(Task(4))
    q.close()


# -- dataclasses: the queue module's recipe ------------------------------------------

import dataclasses  # noqa: E402
from typing import Any  # noqa: E402


@dataclasses.dataclass(order=True)
class PrioritizedItem:
    """The recipe of the queue module's documentation, verbatim."""

    priority: int
    item: Any = dataclasses.field(compare=False)


@dataclasses.dataclass(order=True)
class Job:
    """Every field compared: ordered as the tuple (deadline, name, tags)."""

    deadline: float
    name: str
    tags: tuple = ()


def test_the_queue_docs_recipe_is_ordered_by_priority_then_arrival(tmp_path):
    q = PersistentPriorityQueue(str(tmp_path / "p.db"))
    try:
        for priority, item in [(3, "c"), (1, "a1"), (2, "b"), (1, "a2")]:
            q.put(PrioritizedItem(priority, item))
        got = [q.get() for _ in range(4)]
    finally:
        q.close()
    assert [(g.priority, g.item) for g in got] == [(1, "a1"), (1, "a2"), (2, "b"), (3, "c")]
    assert all(type(g) is PrioritizedItem for g in got)


def test_an_ordered_dataclass_comes_out_as_sorted_would(tmp_path):
    rng = random.Random(15)
    jobs = [Job(rng.choice((1, 2.5, -1, 10 ** 20)), rng.choice("abc"),
                tuple(rng.choice("xy") for _ in range(rng.randrange(3))))
            for _ in range(60)]
    q = PersistentPriorityQueue(str(tmp_path / "p.db"))
    try:
        for job in jobs:
            q.put(job)
        got = [q.get() for _ in jobs]
    finally:
        q.close()
    assert got == sorted(jobs)  # sorted is stable: ties in arrival order, as ours


def test_ordered_dataclass_keys_agree_with_python():
    rng = random.Random(7)
    values = [Job(rng.randint(-3, 3), rng.choice("ab"), (rng.randint(0, 2),)) for _ in range(40)]
    values += [(1, Job(0, "a")), (1, Job(1, "a")), (0, PrioritizedItem(5, object()))]
    for a in values:
        for b in values:
            expected = python_cmp(a, b)
            if expected is not None:
                assert key_cmp(a, b) == expected, (a, b)


def test_a_dataclass_without_order_is_refused_with_the_way_out():
    @dataclasses.dataclass
    class Plain:
        priority: int

    with pytest.raises(TypeError, match="key="):
        order_key(Plain(1))
