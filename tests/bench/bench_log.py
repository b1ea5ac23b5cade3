"""Benchmark of the issuance log: seal (append) and verify throughput.

Run: ``python -m tests.bench.bench_log [COUNT]`` (default 1,000,000 entries).  Not a test:
it prints figures.  Entries are realistic (uuids, times, parameters, approvals) and are
streamed through a temporary export file, so memory stays flat.  The export is format 2, as the
broker writes it: a chained checkpoint every CHECKPOINT_EVERY entries (BROKER_CHECKPOINT_EVERY's
default), the signed export statement and the final checkpoint; verify checks every one, in one pass
(``verify_export``) and as ``broker audit verify`` does (``verify_export_file``: a segment per CPU).
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

from broker.domain import log
from broker.storage.export_files import available_cpus, verify_export_file

CHECKPOINT_EVERY = 100
TYPES = ("requested", "approved", "issued", "refused", "expired", "revoked")


def realistic_body(seq: int, start: datetime) -> dict:
    moment = start + timedelta(milliseconds=seq)
    return {
        "event_id": str(uuid.uuid4()), "time": log.log_time(moment),
        "type": TYPES[seq % len(TYPES)],
        "request_id": str(uuid.uuid4()), "grant_id": str(uuid.uuid4()),
        "actor": f"agent:worker-{seq % 50}", "acts_for": f"human:user{seq % 200}",
        "template": ("s3-read-bucket", "ec2-describe", "dynamodb-write-table")[seq % 3],
        "template_digest": "9f" * 32,
        "parameters": {"bucket": f"team-{seq % 30}-logs", "prefix": f"runs/{seq}/",
                       "region": "eu-west-1"},
        "policy_digest": "3c" * 32, "access_key_id": f"ASIA{seq:016X}",
        "expiration": log.log_time(moment + timedelta(minutes=15)), "source_ip": "10.1.2.3",
        "approvals": ([{"approver": "human:bob", "time": log.log_time(moment)}]
                      if seq % 4 == 0 else []),
        "reason_code": "guardrail_violation" if seq % 6 == 3 else None,
        "details": {"ttl_seconds": 900, "user_agent": "broker-sdk/0.1"},
    }


def _cpu_with_children() -> float:
    """CPU seconds of this process and of its children that have ended (the verifier's segments)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(count: int) -> None:
    start = datetime(2024, 5, 1, tzinfo=UTC)
    bodies = [realistic_body(seq, start) for seq in range(1, 1001)]  # body building not timed
    signer = log.CheckpointSigner(log.generate_signing_key())
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    try:
        prev_hash, size, checkpoint = log.GENESIS_HASH, 0, None
        with os.fdopen(fd, "wb") as out:
            began, began_cpu = time.perf_counter(), time.process_time()
            for seq in range(1, count + 1):
                entry = log.seal_entry(bodies[seq % 1000], seq=seq, prev_hash=prev_hash)
                line = log.entry_line(entry) + b"\n"
                out.write(line)
                prev_hash, size = entry["hash"], size + len(line)
                if seq % CHECKPOINT_EVERY == 0 or seq == count:
                    checkpoint = signer.sign(seq, prev_hash, log.log_time(datetime.now(UTC)),
                                             prev_checkpoint=checkpoint.hash() if checkpoint else log.GENESIS_HASH)
                    if seq != count:
                        out.write(log.checkpoint_line(checkpoint))
            sealed, sealed_cpu = time.perf_counter() - began, time.process_time() - began_cpu
            statement = signer.sign_export(checkpoint, first_seq=1, since=None, time=checkpoint.time)
            out.write(log.statement_line(statement) + log.checkpoint_line(checkpoint))
        print(f"entries: {count:,}  (avg line {size / count:.0f} bytes, file {size / 1e6:.0f} MB)")
        print(f"seal + serialize + sign: {count / sealed:,.0f} entries/s wall ({sealed:.1f} s), "
              f"{count / sealed_cpu:,.0f} entries/s CPU ({sealed_cpu:.1f} s)")
        with open(path, "rb") as export:
            began, began_cpu = time.perf_counter(), time.process_time()
            report = log.verify_export(export, signer.public_key)
            verified, verified_cpu = time.perf_counter() - began, time.process_time() - began_cpu
        assert report.ok and report.entries == count and report.full, report
        print(f"checkpoints: {report.checkpoints:,} (one every {CHECKPOINT_EVERY} entries), all verified")
        print(f"verify export, one pass:  {count / verified:,.0f} entries/s wall ({verified:.1f} s), "
              f"{count / verified_cpu:,.0f} entries/s CPU ({verified_cpu:.1f} s)")
        # What `broker audit verify` runs: the file cut at checkpoint lines, a segment per CPU.
        began, began_cpu = time.perf_counter(), _cpu_with_children()
        again = verify_export_file(path, signer.public_key)
        verified, verified_cpu = time.perf_counter() - began, _cpu_with_children() - began_cpu
        assert again == report, again
        print(f"verify export file, {available_cpus()} CPU(s) (broker audit verify): {count / verified:,.0f} "
              f"entries/s wall ({verified:.1f} s); {verified_cpu:.1f} s CPU in all its processes, so "
              f"{count / verified_cpu * available_cpus():,.0f} entries/s wall on {available_cpus()} idle CPUs")
        print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
              "(wall figures drop when other work shares the CPUs)")
    finally:
        os.unlink(path)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
