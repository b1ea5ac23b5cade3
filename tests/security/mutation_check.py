"""Mutation check: does the security suite fail when a guard is removed?

Each mutation below deletes or disables one guard in the broker's source.  For each, the
script copies the repository to a temporary folder, applies the mutation to the copy's text,
and runs ``python -m pytest tests/security -x -q`` there (``PYTHONPATH`` = the copy, so the
mutated code is what gets imported).  A mutation is *caught* when the suite fails; one that
leaves the suite green *survived*, and the script exits non-zero.  A mutation whose text is no
longer in the source is reported *stale* (the guard moved: update the table), also non-zero.

Not part of the normal test command (it runs the suite once per mutation).  Run it with::

    .venv/bin/python tests/security/mutation_check.py              # every mutation
    .venv/bin/python tests/security/mutation_check.py --jobs 2     # two at a time
    .venv/bin/python tests/security/mutation_check.py -k approval  # names containing "approval"
    .venv/bin/python tests/security/mutation_check.py --list
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IGNORED = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", ".broker",
                                 "node_modules", "*.db", "*.db-wal", "*.db-shm", ".mypy_cache", ".ruff_cache")


@dataclass(frozen=True)
class Mutation:
    """Replace the first match of ``pattern`` (a regular expression) in ``path`` by ``replacement``."""

    name: str
    path: str
    pattern: str
    replacement: str
    guard: str          # what the mutation removes, in words

    def apply(self, root: Path) -> bool:
        target = root / self.path
        text = target.read_text(encoding="utf-8")
        mutated, count = re.subn(self.pattern, self.replacement, text, count=1)
        if count == 0:
            return False
        target.write_text(mutated, encoding="utf-8")
        return True


MUTATIONS: tuple[Mutation, ...] = (
    # --- policy rendering
    Mutation("rendering-widening-table", "broker/domain/rendering.py",
             r"for needle, why in WIDENING_SUBSTRINGS:", "for needle, why in ():",
             "the table of widening substrings ('..', '//', '*', ...)"),
    Mutation("rendering-safe-characters", "broker/domain/rendering.py",
             r"if not SAFE_VALUE\.fullmatch\(value\):", "if False:",
             "the ARN-safe character rule (control, non-Latin-1, whitespace, %)"),
    Mutation("rendering-separator-only", "broker/domain/rendering.py",
             r'if value\.startswith\("/"\) and value\.strip\("/"\) == "":', "if False:",
             "the 'only a path separator' rule (Unity Catalog whole-bucket shape)"),
    Mutation("rendering-max-length", "broker/domain/rendering.py",
             r"if len\(raw\) > spec\.max_length:", "if False:", "the per-parameter length limit"),
    Mutation("rendering-unknown-parameter", "broker/domain/rendering.py",
             r"\n    if unknown:", "\n    if False:", "the refusal of undeclared parameters"),
    # --- signed templates
    Mutation("signatures-distinct-owners", "broker/domain/template_signatures.py",
             r"elif owner in owners:", "elif False:", "a template owner counts once"),
    Mutation("signatures-digest", "broker/domain/template_signatures.py",
             r"if signature\.digest != template\.version_digest:", "if False:",
             "a signature over another version does not count"),
    Mutation("signatures-verify", "broker/domain/template_signatures.py",
             r"key\.verify\(raw, message\)", "pass", "the Ed25519 check of a template signature"),
    Mutation("signatures-required-at-load", "broker/storage/template_files.py",
             r"if not verdict\.satisfied:", "if False:", "serve refuses a template short of signatures"),
    # --- two-person rule
    Mutation("approval-self", "broker/domain/requests.py",
             r"if approver\.id == facts\.requester:", "if False:", "no self-approval"),
    Mutation("approval-agents-human", "broker/domain/requests.py",
             r"if facts\.acts_for is not None and \(approver\.id == facts\.acts_for", "if False and (approver.id == facts.acts_for",
             "the agent's own human may not approve (by id, or as the same person)"),
    Mutation("approval-agent-cannot-cosign", "broker/domain/requests.py",
             r"if approver\.acts_for is not None:", "if False:", "agents never co-sign"),
    Mutation("approval-approver-role", "broker/domain/requests.py",
             r"if Role\.APPROVER not in approver\.roles:", "if False:", "the approver role is required"),
    Mutation("approval-binding-digest", "broker/domain/requests.py",
             r"and sig\.binding_digest == binding_digest", "", "an approval counts only for its binding"),
    Mutation("approval-still-allowed", "broker/domain/requests.py",
             r"and still_allowed\.get\(sig\.approver, False\)", "", "a removed approver no longer counts"),
    Mutation("approval-one-vote-per-human", "broker/usecases/cosigning.py",
             r"if repo\.has_decided\(row\.id, principal\.id\) or self\._person_decided\(repo, row, principal\):",
             "if False:", "one human counts once (by principal id, and by person across linked ids)"),
    Mutation("approval-expiry-on-decide", "broker/usecases/cosigning.py",
             r"expired = self\._expire_if_stale\(repo, row, now, outbox\)", "expired = False",
             "no approval after the wait expired"),
    # --- redemption
    Mutation("redeem-conditional-update", "broker/usecases/issuance.py",
             r"(if not repo\.transition_request\(row\.id, from_statuses=\[RequestStatus\.APPROVED\.value)\],",
             r"\1, RequestStatus.ISSUING.value, RequestStatus.ISSUED.value],",
             "the conditional update that lets exactly one redeemer win (the update still runs, unguarded)"),
    Mutation("mint-from-stored-row", "broker/usecases/issuance.py",
             r"policy_json=plan\.policy\.json", "policy_json=row.policy",
             "STS gets the policy re-rendered from what the approvals bind, not the stored text"),
    Mutation("redeem-stored-row-check", "broker/usecases/issuance.py",
             r"                if altered:\n", "                if False:\n",
             "a stored row that disagrees with its approved rendering fails instead of being minted"),
    Mutation("redeem-not-requester", "broker/usecases/issuance.py",
             r"if row\.requester != principal\.id:", "if False:", "only the requesting agent redeems"),
    Mutation("request-visibility", "broker/usecases/requests.py",
             r"principal\.id in \(row\.requester, row\.acts_for\)", "True",
             "requests are invisible to unrelated principals"),
    # --- authentication
    Mutation("auth-api-key-compare", "broker/identity/apikeys.py",
             r"return hmac\.compare_digest\(token_hash\.encode\(\"utf-8\"\), stored_hash\.encode\(\"utf-8\"\)\)",
             "return True", "API-key hash comparison"),
    Mutation("auth-jwt-signature", "broker/identity/oidc/verifier.py",
             r'"verify_signature": True,', '"verify_signature": False,', "JWT signature verification"),
    Mutation("auth-jwt-alg-allow-list", "broker/identity/oidc/verifier.py",
             r"if not isinstance\(alg, str\) or alg not in cfg\.algorithms:", "if not isinstance(alg, str):",
             "the configured algorithm allow-list"),
    Mutation("auth-jwt-key-url-headers", "broker/identity/oidc/verifier.py",
             r"if FORBIDDEN_HEADERS & header\.keys\(\):", "if False:", "refusal of jku/x5u/jwk/x5c headers"),
    # --- secrets and API
    Mutation("secrets-botocore-body-filter", "broker/aws/sts.py",
             r"logging\.getLogger\(_logger_name\)\.addFilter\(DropResponseBodies\(_prefixes\)\)", "pass",
             "botocore's DEBUG records with secrets (AssumeRole answers, the broker's own token) kept out of the log"),
    Mutation("api-after-seq-bound", "broker/api/routes_events.py",
             r"Query\(0, ge=0, le=MAX_SEQ\)", "Query(0, ge=0)", "after_seq bounded to the column's range"),
    # --- the issuance log (issue 15, finding 1)
    Mutation("log-sign-only-an-extension", "broker/usecases/checkpoints.py",
             r"refusal = self\._refusal\(repo, latest, head_seq, head_hash\)", "refusal = None",
             "no checkpoint over a log that does not extend the last one"),
    Mutation("log-head-not-behind", "broker/domain/log/export.py",
             r"if head_seq < latest\.seq:", "if False:", "the head may not be behind the last checkpoint"),
    Mutation("log-remembered-checkpoints", "broker/usecases/checkpoints.py",
             r"if known is not None:", "if False:", "checkpoints this broker signed must still be stored"),
    Mutation("log-trusted-fork", "broker/domain/log/export.py",
             r"if trusted\.head_hash != this_hash:", "if False:", "an export must extend a trusted checkpoint"),
    Mutation("log-full-export-genesis", "broker/domain/log/export.py",
             r"        if first_seq > start:", "        if False:",
             "a full export (its signed statement says so) must start at seq 1 (finding 9)"),
)


@dataclass
class Result:
    mutation: Mutation
    verdict: str        # caught | SURVIVED | stale
    seconds: float
    first_failure: str = ""


def _copy_repo(destination: Path) -> Path:
    root = destination / "repo"
    shutil.copytree(REPO, root, ignore=IGNORED, symlinks=True)
    return root


def _pytest(root: Path, python: str, extra: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PYTHONDONTWRITEBYTECODE": "1"}
    command = [python, "-m", "pytest", "tests/security", "-x", "-q", "-p", "no:cacheprovider", *extra]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _imports_from_copy(root: Path, python: str) -> bool:
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([python, "-c", "import broker; print(broker.__file__)"], cwd=root, env=env,
                         capture_output=True, text=True, check=False).stdout.strip()
    return out.startswith(str(root))


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED tests/", "ERROR tests/")):
            return line.split(" - ")[0]
    return ""


def run_one(mutation: Mutation, python: str, extra: list[str], timeout: float) -> Result:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"mutation-{mutation.name}-") as tmp:
        root = _copy_repo(Path(tmp))
        if not mutation.apply(root):
            return Result(mutation, "stale", time.monotonic() - started)
        try:
            completed = _pytest(root, python, extra, timeout)
        except subprocess.TimeoutExpired:
            return Result(mutation, "SURVIVED", time.monotonic() - started, f"timed out after {timeout:.0f}s")
        output = completed.stdout + completed.stderr
        verdict = "caught" if completed.returncode == 1 else "SURVIVED"
        if completed.returncode not in (0, 1):
            verdict, output = "SURVIVED", f"pytest exit {completed.returncode}\n{output}"
        return Result(mutation, verdict, time.monotonic() - started,
                      _first_failure(output) or output.strip().splitlines()[-1:][0] if output.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="keyword", default="", help="only mutations whose name contains this")
    parser.add_argument("--jobs", type=int, default=1, help="mutations run at the same time")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per mutation")
    parser.add_argument("--python", default=sys.executable, help="interpreter with the test dependencies")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--skip-baseline", action="store_true", help="do not first check the unmutated suite")
    parser.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    args = parser.parse_args(argv)

    selected = [m for m in MUTATIONS if args.keyword in m.name]
    if args.list:
        for m in selected:
            print(f"{m.name:<32} {m.path:<32} {m.guard}")
        return 0
    if not selected:
        print("no mutation matches", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="mutation-baseline-") as tmp:
        root = _copy_repo(Path(tmp))
        if not _imports_from_copy(root, args.python):
            print("the copy's broker package is not the one imported (PYTHONPATH ignored?)", file=sys.stderr)
            return 2
        if not args.skip_baseline:
            started = time.monotonic()
            baseline = _pytest(root, args.python, args.pytest_args, args.timeout)
            print(f"baseline (no mutation): exit {baseline.returncode} in {time.monotonic() - started:.0f}s",
                  flush=True)
            if baseline.returncode != 0:
                print(baseline.stdout[-4000:], baseline.stderr[-2000:], file=sys.stderr)
                print("the unmutated suite fails: fix it before checking mutations", file=sys.stderr)
                return 2

    results: list[Result] = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_one, m, args.python, args.pytest_args, args.timeout) for m in selected]
        for future in futures:
            result = future.result()
            results.append(result)
            print(f"{result.verdict:<9} {result.mutation.name:<32} {result.seconds:6.0f}s  {result.first_failure}",
                  flush=True)

    caught = sum(r.verdict == "caught" for r in results)
    print(f"\n{caught}/{len(results)} mutations caught")
    for r in results:
        if r.verdict != "caught":
            print(f"  {r.verdict}: {r.mutation.name} ({r.mutation.path}): {r.mutation.guard}")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
