"""What the pool's process and its workers share: the tunables, what crosses
the file (pickled calls, outcomes and tracebacks), a pool's configuration,
and waiting out storage faults."""

from __future__ import annotations

import logging
import pickle
import signal
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable, Iterable, List, Optional, Tuple, Type, TypeVar

from ..backends import redact
from ..exceptions import (DatabaseBusy, IncompatibleDatabase, PayloadTooLarge, SerializationError,
                          StorageError, StorageFault)
from ..serializers import SignatureError, Signer

if TYPE_CHECKING:
    from typing import ParamSpec

    from ..engine import Engine, EngineSpec, Message

    _P = ParamSpec("_P")

    class _Task(Message):
        """A task as a worker leased it (for type checkers only): stored by
        put_keyed, so never without its key, and with its lease."""

        key: str
        lease: int

_T = TypeVar("_T")
_E = TypeVar("_E", bound=BaseException)

try:
    import cloudpickle  # type: ignore[import-untyped]  # cloudpickle ships no type hints
except ImportError:  # optional: lambdas and closures need it
    cloudpickle = None

logger = logging.getLogger("persistqueue_liteq")

# A worker's state: starting (until its initializer ran and its engine is
# open), its initializer failed, up, or stopped by a bug of its own (not a
# storage fault, not its task's).
_IDLE, _INIT_FAILED, _UP, _BUG = 0, 1, 2, 3
# Workers that die before they are up, in a row, that break a process pool.
_FAILED_STARTS = 3
# Workers stopped by a bug in a row, no result stored meanwhile, that break a
# pool: a bug that stops every worker would otherwise replace them forever.
_BUGS_IN_A_ROW = 3
# The stdlib's pools log an initializer's failure there, with its traceback.
_futures_logger = logging.getLogger("concurrent.futures")
# A task of a worker's batch: leased and waiting, started, or cancelled (or
# handed back) before it started.
_WAITING, _STARTED, _DROPPED = 0, 1, 2
# Most tasks a worker leases at once, and about how long a batch should run.
_BATCH_MAX = 64
_BATCH_SECONDS = 0.002
# How long a finished task's outcome may wait, to be stored with the next
# ones in one transaction, before its worker stores it between two tasks.
_FLUSH_AGE = 0.001
# Most tasks the storer writes in one transaction.
_STORE_BATCH = 1000
# How often a worker's overseer looks at the task it runs (see _Overseer).
_WATCH_EVERY = 0.001
# The GIL's switch interval while a worker's overseer stores outcomes (each
# statement lets go of the GIL and must get it back from the task), and in a
# process worker all the time (the overseer's look at the task needs it).
_PROMPT_SWITCH = 0.00002
_WORKER_SWITCH = 0.0005
# How many distinct calls a pool counts in memory; the counts of any more go
# to a temporary file (see _Occurrences).
_OCCURRENCES_IN_MEMORY = 65536
# The keys submit() and map() give their calls: a digest and a number.
_CALL_KEYS = "[0-9a-f]" * 32 + "#*"
# How often an idle worker looks for a stop request even without a wake-up.
_IDLE_CHECK = 1.0
# What a storage fault raises: the engine's (every error of the driver is one
# of ours: a lock held too long, StorageError and its kinds, a file that is
# no longer a usable queue database, a value too long to store) and the OS's.
# Anything else is a bug, not a fault: never waited out, it is logged and
# fails the futures it concerns.
_STORAGE_ERRORS = (DatabaseBusy, StorageError, IncompatibleDatabase, PayloadTooLarge, OSError)
# Waits between two tries of a failing storage call: doubling, up to the last.
_FAULT_FIRST_RETRY = 0.05
_FAULT_LONGEST_RETRY = 1.0

# -- what crosses the file -----------------------------------------------------

def _dumps(obj: object, what: str) -> bytes:
    # Pickling runs the caller's code (__reduce__, __getstate__): any
    # exception of it means "cannot pickle".
    try:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        if cloudpickle is not None:
            try:
                data: bytes = cloudpickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
                return data
            except Exception:  # the caller's code again
                pass
        hint = ""
        if cloudpickle is None and ("lambda" in str(exc) or "local object" in str(exc)):
            hint = (" (lambdas and closures need cloudpickle: pip install "
                    "'persistqueue_liteq[cloudpickle]', or define the function at module level)")
        raise SerializationError("cannot pickle the %s: %s%s" % (what, exc, hint)) from exc


class _RemoteTraceback(Exception):
    def __init__(self, tb: str) -> None:
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _rebuild_exception(exc: _E, tb: str) -> _E:
    exc.__cause__ = _RemoteTraceback(tb)
    return exc


class _ExceptionWithTraceback:
    """Pickles an exception with its traceback text, which comes back as the
    exception's ``__cause__`` (as CPython's process pool does)."""

    def __init__(self, exc: BaseException) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.exc, self.tb = exc, '\n"""\n%s"""' % tb

    def __reduce__(self) -> Tuple[Callable[[BaseException, str], BaseException],
                                  Tuple[BaseException, str]]:
        return _rebuild_exception, (self.exc, self.tb)


def _failure_payload(exc: BaseException) -> bytes:
    """Pickled exception with its traceback; if the exception itself cannot be
    pickled, a SerializationError that says so and carries its text."""
    try:
        return pickle.dumps(_ExceptionWithTraceback(exc), pickle.HIGHEST_PROTOCOL)
    except Exception as pickling_error:  # any exception of the task's exception's own code
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return pickle.dumps(SerializationError(
            "the task raised %s, which cannot be pickled (%s):\n%s"
            % (type(exc).__name__, pickling_error, text)))


def _apply_chunk(fn: Callable[..., _T], chunk: Iterable[Tuple[Any, ...]]) -> List[_T]:
    return [fn(*args) for args in chunk]


def _describe_exit(exitcode: Optional[int]) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return "signal %s" % signal.Signals(-exitcode).name
        except ValueError:
            return "signal %d" % -exitcode
    return "exit code %s" % exitcode


# -- the worker ----------------------------------------------------------------------

class _Config:
    """What a worker needs to know; picklable, for spawn."""

    def __init__(self, spec: EngineSpec, queue: str, timeout: float, lease_seconds: float,
                 max_retries: int, retry_backoff: float, retry_backoff_max: float,
                 retry_on: Tuple[Type[BaseException], ...] = (),
                 hmac_key: Optional[bytes] = None) -> None:
        # Read when the pool is made, so that a worker started by spawn or
        # forkserver sees what its pool's process has (tests change it).
        self.batch_seconds = _BATCH_SECONDS
        self.flush_age = _FLUSH_AGE
        self.spec = spec  # the engine's EngineSpec: how a worker opens it
        self.path = redact(spec.location)  # for messages
        self.queue = queue
        self.lease_seconds = lease_seconds
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.retry_on = retry_on
        # How long a storage fault may last before it fails what it holds up:
        # a lease, which the heartbeat could not extend meanwhile, so that a
        # worker's tasks are no longer its own by then; and at least two
        # timeout_seconds, so that one lock held a little too long is waited out.
        self.fault_seconds = max(lease_seconds, 2 * timeout)
        self.signer = None if hmac_key is None else Signer(hmac_key)

    # With hmac_key, task rows are signed for their queue and key and result
    # rows for their queue, key and ok flag (Signer): a row that does not
    # match is never unpickled.  Without, the pickles are stored as they are.

    def seal_task(self, key: str, data: bytes) -> bytes:
        if self.signer is None:
            return data
        return self.signer.seal(Signer.task_context(self.queue, key), data)

    def open_task(self, msg: _Task) -> bytes:
        """The pickled call of a leased task; SerializationError if its
        signature does not match."""
        if self.signer is None:
            return msg.data
        try:
            return self.signer.open(Signer.task_context(self.queue, msg.key), msg.data)
        except SignatureError:
            raise SerializationError(
                "task %s of queue %r refused: its signature does not match the pool's "
                "hmac_key, queue and task key (written without the key, or altered); it "
                "was not unpickled" % (msg.key, self.queue)) from None

    def seal_result(self, key: str, ok: bool, data: bytes) -> bytes:
        if self.signer is None:
            return data
        return self.signer.seal(Signer.result_context(self.queue, key, ok), data)

    def open_result(self, key: str, ok: bool, data: bytes) -> bytes:
        if self.signer is None:
            return data
        try:
            return self.signer.open(Signer.result_context(self.queue, key, ok), data)
        except SignatureError:
            raise SerializationError(
                "the stored %s of task %s of queue %r refused: its signature does not "
                "match the pool's hmac_key, queue and task key (written without the key, "
                "or altered); it was not unpickled"
                % ("result" if ok else "exception", key, self.queue)) from None

    def backoff(self, attempts: int) -> float:
        if not self.retry_backoff:
            return 0.0
        delay: float = min(self.retry_backoff * 2 ** (attempts - 1), self.retry_backoff_max)
        return delay

    def open_engine(self) -> Engine:
        return self.spec.open()


def _patiently(cfg: _Config, what: str, fn: Callable[_P, _T], *args: _P.args,
               **kwargs: _P.kwargs) -> _T:
    """Return ``fn(*args, **kwargs)``, a storage call, trying it again after
    a backoff while it fails, for at most ``cfg.fault_seconds``; then raise
    StorageFault, which names the file, what failed and why.  Safe for any
    engine method: each is one transaction, which a failure rolls back."""
    began, delay, failures = time.monotonic(), _FAULT_FIRST_RETRY, 0
    while True:
        try:
            value = fn(*args, **kwargs)
        except StorageFault:
            raise
        except _STORAGE_ERRORS as exc:
            failures += 1
            waited = time.monotonic() - began
            if waited >= cfg.fault_seconds:
                raise StorageFault(
                    "%s: %s failed for more than %gs (lease_seconds, or twice timeout_seconds): %s"
                    % (cfg.path, what, cfg.fault_seconds, exc)) from exc
            if failures == 1:
                logger.warning("%s: %s failed, retrying for up to %gs: %s",
                               cfg.path, what, cfg.fault_seconds, exc)
            time.sleep(min(delay, cfg.fault_seconds - waited))
            delay = min(delay * 2, _FAULT_LONGEST_RETRY)
            continue
        if failures:
            logger.info("%s: %s works again, after %d failure%s in %.1fs", cfg.path, what,
                        failures, "" if failures == 1 else "s", time.monotonic() - began)
        return value


class _Patient:
    """An engine whose every call waits out a passing storage fault
    (:func:`_patiently`); ``raw`` is the engine itself."""

    def __init__(self, engine: Engine, cfg: _Config) -> None:
        self.raw, self._cfg = engine, cfg

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.raw, name)
        if not callable(method) or name in ("waiter", "wake"):  # not storage
            return method
        return lambda *args, **kwargs: _patiently(self._cfg, name, method, *args, **kwargs)
