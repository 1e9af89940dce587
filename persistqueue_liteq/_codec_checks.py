"""What a persistent queue was written with: the codec checks of the first
put and the first get (CodecMismatch, storing, leasing and dead-lettering
nothing), their messages, and ``upgrade_signatures``, which re-signs the
messages of 0.1.0 in the format that binds each to its id and queue.

:class:`_CodecChecks` is mixed into :class:`~persistqueue_liteq._queue_base._QueueBase`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Optional, Union

from .exceptions import CodecMismatch
from .serializers import SignatureError, UnboundSignature

if TYPE_CHECKING:
    import threading

    from .engine import Engine, Message
    from .serializers import Codec, Signer


class _CodecChecks:
    """The queue's codec compared with the one its file records."""

    # Set by the queue (see _QueueBase._configure and _open_engine).
    _codec: Codec
    _codec_ok: bool
    _engine: Engine
    _statement_lock: Union[threading.Lock, threading.RLock]
    name: str
    path: str

    def _claim_codec(self) -> None:
        """Before the first put (with the statement lock held): record this
        object's codec for its queue, or raise CodecMismatch if the queue
        holds messages of another."""
        ours = self._codec.fingerprint()
        stored = self._engine.claim_codec(self.name, ours)
        if stored != ours:
            raise CodecMismatch(self._mismatch(stored, "nothing was stored"))
        self._codec_ok = True

    def _check_codec(self, msg: Optional[Message] = None) -> bool:
        """Before a get leases (and after, if the queue recorded no codec
        then): compare the codec that the queue records with ours; on a
        mismatch hand ``msg`` back untouched and raise CodecMismatch.  A queue
        that records none (written by 0.1.0, or only around the queue
        objects), or another but has no live message (a reader of a new key
        that starts before its writers), is compared again at the next get.
        True once the codec is ours."""
        stored = self._engine.codec_of(self.name)
        if stored is None:
            return False
        if stored != self._codec.fingerprint():
            if msg is None and not self._engine.has_live(self.name):
                return False  # nothing to misread: the next writer may change the codec
            if msg is not None:
                self._engine.release(msg.id, msg.lease, attempted=False)
            raise CodecMismatch(self._mismatch(
                stored, "nothing was read, nothing was dead-lettered"))
        self._codec_ok = True
        return True

    def _mismatch(self, stored: str, outcome: str) -> str:
        theirs = dict(part.split("=", 1) for part in stored.split(";") if "=" in part)
        ours = dict(part.split("=", 1) for part in self._codec.fingerprint().split(";"))
        differences = []
        if theirs.get("serializer") != ours["serializer"]:
            differences.append("it was written with serializer %s, this %s has %s" % (
                theirs.get("serializer", "?"), type(self).__name__, ours["serializer"]))
        if theirs.get("key") != ours["key"]:
            if theirs.get("key") == "none":
                differences.append("it was written without hmac_key, this %s has one"
                                   % type(self).__name__)
            elif ours["key"] == "none":
                differences.append("it was written with an hmac_key, this %s has none"
                                   % type(self).__name__)
            else:
                differences.append("it was written with another hmac_key than this %s's"
                                   % type(self).__name__)
        return "queue %r in %s: %s; %s" % (
            self.name, self.path, " and ".join(differences) or "its codec is %s" % stored,
            outcome)

    def upgrade_signatures(self) -> int:
        """Re-sign, once, the messages of this queue (dead letters included)
        that persistqueue_liteq 0.1.0 signed with this object's key, in the
        format that binds each to its id and queue; return how many.

        Run it from a process you trust, on a file you trust as it is now: a
        copied row of 0.1.0 is re-signed as genuine too, which is why
        such rows are refused until then.  Messages whose signature does not
        match at all are left as they are (refused at delivery).
        """
        if not self._codec.signed:
            raise ValueError("upgrade_signatures() needs the queue's hmac_key")
        signer: Signer
        signer, upgraded = self._codec.signer, 0  # type: ignore[assignment]  # signed: not None
        with self._statement_lock:
            if not self._codec_ok:
                self._claim_codec()
            after = 0
            while True:
                page = self._engine.messages(self.name, after, 1000)
                if not page:
                    break
                after = page[-1].id
                upgraded += self._upgrade(signer, page)
            upgraded += self._upgrade(signer, self._engine.dead_letters(self.name))
        return upgraded

    def _upgrade(self, signer: Signer, messages: Iterable[Message]) -> int:
        upgraded = 0
        for msg in messages:
            try:
                self._codec.unseal(self.name, msg.id, msg.data)
                continue  # bound already
            except UnboundSignature:
                payload = msg.data[signer.SIGNATURE_SIZE:]
            except SignatureError:
                continue  # not ours at all: refused when delivered
            if self._engine.replace_data(msg.id, msg.data,
                                         self._codec.seal(self.name, msg.id, payload)):
                upgraded += 1
        return upgraded
