"""Signing checkpoints: only over a log that extends the last signed checkpoint.

The broker signs whatever its database says unless it checks first: with write access to the
database, someone could cut the newest entries and move the head back, or rewrite an old entry
and re-chain everything after it, and have the broker sign the result.  So before signing, in the
unit of work that holds the log's lock:

* the last stored checkpoint must be signed by this broker's key (or a previous key it was given);
* the checkpoints this process signed or accepted before must all still be there, chained;
* the stored entries from the last checkpoint's seq to the head must chain from the entry that
  checkpoint signed (same hash at its seq, each entry matching its own hash), and the head must
  not be behind it (``broker.domain.log.check_extends``).

Otherwise the broker refuses to sign (``CheckpointRefused``) and raises the alarm: an ERROR line on
the ``broker.audit`` logger, ``broker_log_checkpoint_refusals_total{reason}``, and, once per
last checkpoint and reason, a ``checkpoint_refused`` entry when the log can still be written.
Exports and ``POST /v1/events/checkpoints`` then fail with 409 ``checkpoint_refused`` until an
operator restores the database.  What this cannot catch (entries cut before any checkpoint
covered them, or a rewrite by whoever holds both the database and the key) is what trusted
checkpoints and anchors are for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.domain import log as issuance_log
from broker.domain.events import EventType, log_entry
from broker.errors import BrokerError, LogIntegrityError, StorageUnavailable
from broker.ports import Clock, Store, UnitOfWork

log = logging.getLogger("broker.audit")

# A stand-in for "no checkpoint yet": the stored chain must then start from genesis.
_GENESIS = issuance_log.Checkpoint(seq=0, head_hash=issuance_log.GENESIS_HASH, time="", key_id="0" * 16,
                                   signature="")


class CheckpointRefused(LogIntegrityError):
    """The stored log does not extend the last signed checkpoint: nothing is signed."""

    code = "checkpoint_refused"
    status = 409


class RefusalAlarm(Protocol):
    """Where a refusal to sign is counted (the metrics)."""

    def checkpoint_refused(self, reason: str) -> None: ...


class CheckpointAnchors(Protocol):
    """An append-only place off the host that keeps every signed checkpoint (broker.aws.anchors)."""

    def put(self, checkpoint: issuance_log.Checkpoint, *, now: datetime) -> str: ...

    def latest(self) -> issuance_log.Checkpoint | None: ...


@dataclass
class Checkpointer:
    database: Store
    signer: issuance_log.CheckpointSigner
    clock: Clock
    alarm: RefusalAlarm | None = None
    # Keys that signed this log before a key rotation: their checkpoints may precede ours.
    previous_keys: Sequence[Ed25519PublicKey] = ()
    anchors: CheckpointAnchors | None = None
    _known: issuance_log.Checkpoint | None = field(default=None, init=False)
    _alerted: set[tuple[str, str]] = field(default_factory=set, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def checkpoint(self) -> issuance_log.Checkpoint:
        """Sign the current head if the log extends the last checkpoint (idempotent for an unchanged
        head).  Two replicas serialize on the log's lock; a lost insert race is retried once."""
        try:
            return self._checkpoint_once()
        except StorageUnavailable:
            return self._checkpoint_once()

    def _checkpoint_once(self) -> issuance_log.Checkpoint:
        with self.database.transaction() as repo:
            head_seq, head_hash = repo.lock_log_head()
            latest = repo.latest_checkpoint()
            refusal = self._refusal(repo, latest, head_seq, head_hash)
            signed = False
            if refusal is None:
                if latest is not None and latest.seq == head_seq and latest.key_id == self.signer.key_id:
                    checkpoint = latest
                else:
                    checkpoint = self.signer.sign(
                        head_seq, head_hash, issuance_log.log_time(self.clock.now()),
                        prev_checkpoint=latest.hash() if latest is not None else issuance_log.GENESIS_HASH)
                    repo.add_checkpoint(checkpoint)
                    signed = True
        if refusal is not None:
            self._raise_alarm(refusal, latest, head_seq)
            raise CheckpointRefused(f"refusing to sign a checkpoint: {refusal.message}",
                                    details={"reason": refusal.reason})
        with self._lock:
            self._known = checkpoint
        if signed and self.anchors is not None:
            self._anchor(checkpoint)
        return checkpoint

    def _anchor(self, checkpoint: issuance_log.Checkpoint) -> None:
        """Put a newly signed checkpoint off the host.  It is signed and stored already: a failure is an
        ERROR on broker.audit (alert on it), not a failed checkpoint."""
        assert self.anchors is not None
        try:
            self.anchors.put(checkpoint, now=self.clock.now())
        except BrokerError:
            log.error("the checkpoint for seq %s could not be anchored", checkpoint.seq, exc_info=True)

    # --- the checks ------------------------------------------------------------------------
    def _refusal(self, repo: UnitOfWork, latest: issuance_log.Checkpoint | None, head_seq: int,
                 head_hash: str) -> issuance_log.SigningRefusal | None:
        with self._lock:
            known = self._known
        if known is None and self.anchors is not None:
            known = self._latest_anchored()
        if latest is not None and not self._signed_by_us(latest):
            return issuance_log.SigningRefusal(
                "checkpoint_unverifiable", f"the last stored checkpoint (seq {latest.seq}, key {latest.key_id}) "
                "is not signed by this broker's key or a previous key it was given.")
        if known is not None:
            missing = self._known_missing(repo, known)
            if missing is not None:
                return missing
        base = latest or _GENESIS
        return issuance_log.check_extends(base, repo.stored_entry_lines(from_seq=max(base.seq, 1)),
                                          head_seq=head_seq, head_hash=head_hash)

    def _latest_anchored(self) -> issuance_log.Checkpoint | None:
        """After a start, the newest anchored checkpoint is what the stored ones must still contain: a database
        rolled back (entries and checkpoints cut) across a restart is refused too."""
        assert self.anchors is not None
        try:
            anchored = self.anchors.latest()
        except BrokerError:
            log.error("the anchored checkpoints cannot be read: signing without comparing with them", exc_info=True)
            return None
        if anchored is not None and not self._signed_by_us(anchored):
            log.error("the newest anchored checkpoint (seq %s) is not signed by this broker's key", anchored.seq)
            return None
        with self._lock:
            self._known = self._known or anchored
        return anchored

    def _signed_by_us(self, checkpoint: issuance_log.Checkpoint) -> bool:
        return any(issuance_log.verify_signature(checkpoint, key)
                   for key in (self.signer.public_key, *self.previous_keys))

    def _known_missing(self, repo: UnitOfWork, known: issuance_log.Checkpoint) -> issuance_log.SigningRefusal | None:
        """The checkpoints since the last one this process saw must start with it and chain."""
        chain = repo.checkpoints(from_seq=known.seq)
        hashes = [checkpoint.hash() for checkpoint in chain]
        if known.hash() not in hashes:
            return issuance_log.SigningRefusal(
                "checkpoint_removed", f"the checkpoint for seq {known.seq} this broker signed or accepted is no "
                "longer stored: checkpoints were removed or replaced.")
        later = chain[hashes.index(known.hash()) + 1:]
        previous = known
        for checkpoint in later:
            if checkpoint.prev_checkpoint != previous.hash() or not self._signed_by_us(checkpoint):
                return issuance_log.SigningRefusal(
                    "checkpoint_removed", f"the stored checkpoint for seq {checkpoint.seq} does not chain from "
                    f"the one for seq {previous.seq}: checkpoints were removed or inserted.")
            previous = checkpoint
        return None

    # --- the alarm -------------------------------------------------------------------------
    def _raise_alarm(self, refusal: issuance_log.SigningRefusal, latest: issuance_log.Checkpoint | None,
                     head_seq: int) -> None:
        log.error("refusing to sign a log checkpoint (%s): %s", refusal.reason, refusal.message)
        if self.alarm is not None:
            self.alarm.checkpoint_refused(refusal.reason)
        latest_hash = latest.hash() if latest is not None else issuance_log.GENESIS_HASH
        with self._lock:
            if (latest_hash, refusal.reason) in self._alerted:
                return
            self._alerted.add((latest_hash, refusal.reason))
        body = log_entry(EventType.CHECKPOINT_REFUSED, now=self.clock.now(), actor="broker",
                         reason_code=refusal.reason,
                         details={"message": refusal.message, "head_seq": head_seq,
                                  "checkpoint_seq": latest.seq if latest is not None else None,
                                  "checkpoint_hash": latest_hash})
        try:
            with self.database.transaction() as repo:
                repo.append_event(body)
        except Exception:  # noqa: BLE001 - the log may be what is broken; the alarm above stands
            log.error("the checkpoint_refused entry could not be written", exc_info=True)
