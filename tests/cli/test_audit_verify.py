"""`broker audit verify FILE --public-key PEMFILE`: exit 0 intact, 1 tampered, 2 unusable."""

from __future__ import annotations

import json

import pytest

from broker.cli.main import main
from broker.domain import log

SIZE = 6
TIME = "2024-05-01T12:00:00.000000Z"


@pytest.fixture(scope="module")
def key():
    return log.generate_signing_key()


@pytest.fixture
def files(tmp_path, key):
    """An intact export of SIZE entries and the matching public key PEM."""
    entries, prev_hash = [], log.GENESIS_HASH
    for seq in range(1, SIZE + 1):
        body = {"event_id": f"e-{seq}", "time": TIME, "type": "issued", "actor": "agent:demo",
                "template": "s3-read", "access_key_id": f"ASIA{seq:016d}", "parameters": {}}
        entries.append(log.seal_entry(body, seq=seq, prev_hash=prev_hash))
        prev_hash = entries[-1]["hash"]
    checkpoint = log.CheckpointSigner(key).sign(SIZE, prev_hash, TIME)
    export = tmp_path / "log.jsonl"
    with export.open("wb") as out:
        log.write_export(entries, checkpoint, out)
    pem = tmp_path / "log-key.pem"
    pem.write_bytes(log.public_key_pem(key))
    return export, pem


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["audit", "verify", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_intact_export_exits_zero(files, capsys):
    export, pem = files
    code, out, _ = run(capsys, export, "--public-key", pem)
    assert code == 0 and out.startswith("OK:") and f"{SIZE} entries" in out


def test_modified_entry_exits_one_naming_seq_and_line(files, capsys):
    export, pem = files
    lines = export.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b"agent:demo", b"agent:demx")
    export.write_bytes(b"".join(lines))
    code, _, err = run(capsys, export, "--public-key", pem)
    assert code == 1
    assert "TAMPERED [modified]" in err and "seq 4" in err and "line 4" in err


def test_removed_entry_exits_one(files, capsys):
    export, pem = files
    lines = export.read_bytes().splitlines(keepends=True)
    del lines[1]
    export.write_bytes(b"".join(lines))
    code, _, err = run(capsys, export, "--public-key", pem)
    assert code == 1 and "[removed]" in err and "seq 2" in err and "line 2" in err


def test_complete_refuses_an_export_missing_its_start(files, capsys):
    export, pem = files
    export.write_bytes(b"".join(export.read_bytes().splitlines(keepends=True)[2:]))
    code, out, _ = run(capsys, export, "--public-key", pem)
    assert code == 0 and "taken as given" in out
    code, _, err = run(capsys, export, "--public-key", pem, "--complete")
    assert code == 1 and "[removed]" in err and "seq 1" in err


def test_json_format_reports_the_fields(files, capsys):
    export, pem = files
    lines = export.read_bytes().splitlines(keepends=True)
    export.write_bytes(b"".join(lines[:-3] + lines[-1:]))  # drops seq 5 and 6
    code, out, _ = run(capsys, export, "--public-key", pem, "--format", "json")
    report = json.loads(out)
    assert code == 1
    assert (report["ok"], report["problem"], report["first_bad_seq"]) == (False, "truncated", 5)


def test_other_key_exits_one(files, capsys, tmp_path):
    export, _ = files
    other = tmp_path / "other.pem"
    other.write_bytes(log.public_key_pem(log.generate_signing_key()))
    code, _, err = run(capsys, export, "--public-key", other)
    assert code == 1 and "[wrong_key]" in err


@pytest.mark.parametrize("case", ["missing export", "missing key", "unreadable key", "private key"])
def test_unusable_input_exits_two(files, capsys, tmp_path, key, case):
    export, pem = files
    if case == "missing export":
        export = tmp_path / "nope.jsonl"
    elif case == "missing key":
        pem = tmp_path / "nope.pem"
    elif case == "unreadable key":
        pem.write_bytes(b"not a pem")
    else:
        pem.write_bytes(log.private_key_pem(key))
    code, out, err = run(capsys, export, "--public-key", pem)
    assert code == 2 and out == "" and err.startswith("error")


def test_public_key_is_required(files):
    export, _ = files
    with pytest.raises(SystemExit) as exited:
        main(["audit", "verify", str(export)])
    assert exited.value.code == 2
