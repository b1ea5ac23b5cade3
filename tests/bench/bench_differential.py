"""Differential check of the evaluator against an independent IAM simulator (cloud-copilot iam-simulate, npm).

Generates policies from a small grammar (actions and NotAction with wildcards and mixed case, Resource/NotResource
with short ARNs, policy variables and defaults, every condition operator family with IfExists, Null,
ForAllValues/ForAnyValue, permissions boundaries), decides each request with :func:`broker.domain.evaluator.evaluate`
(every key not given is absent) and with the simulator, and prints the tallies and every divergence: the evaluator
answering "allowed" where the simulator denies, or "denied" where it allows.  "undecidable" is never a divergence.

The grammar leaves out two places where the simulator is known to differ from AWS's documentation: policies
without "Version": "2012-10-17" (it substitutes variables anyway) and epoch-second dates (it compares them with
milliseconds).

    cd /tmp/sim && npm install @cloud-copilot/iam-simulate@0.1.173
    BROKER_IAM_SIMULATE_DIR=/tmp/sim python -m tests.bench.bench_differential [CASES] [SEED]

Session 4: 12,000 cases (seeds 3-6), 0 divergences, 2.9% undecidable; ~4 s per 3,000 cases in the simulator.
"""

from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from broker.domain.evaluator import AccessRequest, PolicyKind, PolicySet, evaluate

DRIVER = """
import { runSimulation } from '@cloud-copilot/iam-simulate'
import { readFileSync } from 'fs'
const out = []
for (const c of readFileSync(process.argv[2], 'utf8').split('\\n').filter(Boolean).map(JSON.parse)) {
  const sim = {
    identityPolicies: c.identity.map((p, i) => ({ name: 'p' + i, policy: p })),
    serviceControlPolicies: [], resourceControlPolicies: [], resourcePolicy: undefined,
    permissionBoundaryPolicies: c.boundary ? c.boundary.map((p, i) => ({ name: 'b' + i, policy: p })) : undefined,
    request: { principal: 'arn:aws:iam::111111111111:user/Alice', action: c.action,
               resource: { resource: c.resource, accountId: '111111111111' }, contextVariables: c.context } }
  try { const r = await runSimulation(sim, {}); out.push(r.result?.analysis?.result ?? 'error') }
  catch (e) { out.push('error') }
}
console.log(JSON.stringify(out))
"""

ACTIONS = ["s3:GetObject", "s3:Get*", "s3:*", "*", "s3:PutObject", "S3:GETOBJECT", "s3:?etObject", "ec2:*", "s3:Get"]
RES = [
    "*",
    "arn:aws:s3:::b/*",
    "arn:aws:s3:::b/k",
    "arn:aws:s3:::b/k*",
    "arn:aws:s3:::B/*",
    "arn:aws:s3:::b/${aws:username}",
    "arn:aws:s3:::b/${aws:username}*",
    "arn:aws:s3:*",
    "arn:aws:s3",
    "arn:aws:*",
    "arn:aws:s3:::?/k",
    "arn:aws:s3:::b/?",
    "arn:aws:s3:::b/${aws:PrincipalTag/team, 'k'}",
    "arn:aws:s3:::b/${*}",
    "arn:aws:s3:::*/k",
    "arn:aws:s3:us-east-1::b/k",
    "arn:aws:s3:*:*:b/*",
    "arn:aws:s3:::b*",
]
STR_KEYS = ["aws:username", "aws:PrincipalTag/team"]
STR_VALS = [
    "alice",
    "Alice",
    "al*",
    "${aws:username}",
    ["bob", "alice"],
    "*",
    "sre",
    "${aws:PrincipalTag/team}",
    "a?ice",
]


def _cond(rng):
    kind = rng.choice(["str", "str", "num", "date", "bool", "ip", "arn", "null", "set"])
    ie = rng.choice(["", "", "IfExists"])
    if kind == "str":
        op = rng.choice(
            [
                "StringEquals",
                "StringNotEquals",
                "StringLike",
                "StringNotLike",
                "StringEqualsIgnoreCase",
                "StringNotEqualsIgnoreCase",
            ]
        )
        return {op + ie: {rng.choice(STR_KEYS): rng.choice(STR_VALS)}}
    if kind == "num":
        op = rng.choice(["NumericEquals", "NumericNotEquals", "NumericLessThan", "NumericGreaterThanEquals"])
        return {op + ie: {"aws:MultiFactorAuthAge": rng.choice(["3600", "10", 3600, "0"])}}
    if kind == "date":
        op = rng.choice(["DateLessThan", "DateGreaterThan", "DateEquals", "DateNotEquals"])
        return {
            op + ie: {
                rng.choice(["aws:CurrentTime", "aws:TokenIssueTime"]): rng.choice(
                    ["2024-06-01T00:00:00Z", "2024-06-01"]
                )
            }
        }
    if kind == "bool":
        return {
            "Bool" + ie: {
                rng.choice(["aws:SecureTransport", "aws:MultiFactorAuthPresent"]): rng.choice(["true", "false", True])
            }
        }
    if kind == "ip":
        return {
            rng.choice(["IpAddress", "NotIpAddress"]) + ie: {
                "aws:SourceIp": rng.choice(["10.0.0.0/8", "203.0.113.7/32", ["10.0.0.0/8", "192.0.2.0/24"]])
            }
        }
    if kind == "arn":
        return {
            rng.choice(["ArnLike", "ArnEquals", "ArnNotLike", "ArnNotEquals"]) + ie: {
                "aws:SourceArn": rng.choice(
                    [
                        "arn:aws:sns:*:111111111111:t",
                        "arn:aws:sns:us-east-1:111111111111:*",
                        "arn:aws:sns:*",
                        "arn:aws:sqs:*:*:*",
                        "arn:aws:sns:us-east-1:111111111111:t",
                    ]
                )
            }
        }
    if kind == "null":
        return {"Null": {rng.choice(STR_KEYS + ["aws:SourceIp", "aws:TagKeys"]): rng.choice(["true", "false"])}}
    op = rng.choice(
        [
            "ForAllValues:StringEquals",
            "ForAnyValue:StringEquals",
            "ForAllValues:StringLike",
            "ForAnyValue:StringNotEquals",
            "ForAllValues:StringNotLike",
        ]
    )
    return {op: {"aws:TagKeys": rng.choice([["env"], ["env", "team"], "e*", ["cost"]])}}


def _statement(rng):
    s = {"Effect": rng.choice(["Allow", "Allow", "Deny"])}
    if rng.random() < 0.8:
        s["Action"] = rng.choice(ACTIONS) if rng.random() < 0.7 else rng.sample(ACTIONS, 2)
    else:
        s["NotAction"] = rng.choice(ACTIONS)
    if rng.random() < 0.8:
        s["Resource"] = rng.choice(RES) if rng.random() < 0.7 else rng.sample(RES, 2)
    else:
        s["NotResource"] = rng.choice(RES)
    if rng.random() < 0.6:
        c = {}
        for _ in range(rng.randint(1, 2)):
            c.update(_cond(rng))
        s["Condition"] = c
    return s


def _policy(rng):
    d = {"Statement": [_statement(rng) for _ in range(rng.randint(1, 3))]}
    d = {"Version": "2012-10-17", **d}
    return d


def _context(rng):
    c = {}
    if rng.random() < 0.7:
        c["aws:username"] = rng.choice(["alice", "Alice", "bob", "a*"])
    if rng.random() < 0.5:
        c["aws:PrincipalTag/team"] = rng.choice(["sre", "k", "dev"])
    if rng.random() < 0.5:
        c["aws:MultiFactorAuthAge"] = rng.choice(["10", "7200", "3600"])
    if rng.random() < 0.5:
        c["aws:CurrentTime"] = rng.choice(["2024-05-01T00:00:00Z", "2024-07-01T00:00:00Z", "2024-06-01T00:00:00Z"])
    if rng.random() < 0.3:
        c["aws:TokenIssueTime"] = rng.choice(["2024-05-01T00:00:00Z", "2024-07-01T00:00:00Z"])
    if rng.random() < 0.5:
        c["aws:SecureTransport"] = rng.choice(["true", "false"])
    if rng.random() < 0.3:
        c["aws:MultiFactorAuthPresent"] = rng.choice(["true", "false"])
    if rng.random() < 0.5:
        c["aws:SourceIp"] = rng.choice(["10.1.2.3", "203.0.113.7", "198.51.100.1"])
    if rng.random() < 0.5:
        c["aws:SourceArn"] = rng.choice(
            ["arn:aws:sns:us-east-1:111111111111:t", "arn:aws:sqs:us-east-1:111111111111:q"]
        )
    if rng.random() < 0.5:
        c["aws:TagKeys"] = rng.choice([["env"], ["env", "team"], ["cost", "env"], []])
    return c


def generate(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "identity": [_policy(rng) for _ in range(rng.randint(1, 2))],
            "boundary": [_policy(rng)] if rng.random() < 0.2 else None,
            "action": rng.choice(["s3:GetObject", "s3:PutObject"]),
            "resource": rng.choice(["arn:aws:s3:::b/k", "arn:aws:s3:::b/alice", "arn:aws:s3:::b/sre"]),
            "context": _context(rng),
        }
        for _ in range(count)
    ]


def ours(case: dict) -> str:
    sets = [PolicySet.of(PolicyKind.IDENTITY, *case["identity"], name="role")]
    if case["boundary"]:
        sets.append(PolicySet.of(PolicyKind.PERMISSIONS_BOUNDARY, *case["boundary"], name="boundary"))
    return evaluate(
        sets, AccessRequest(case["action"], case["resource"], case["context"], context_complete=True)
    ).outcome.value


def theirs(cases: list[dict], simulator: Path) -> list[str]:
    with tempfile.TemporaryDirectory() as scratch:
        driver = simulator / "broker-differential.mjs"
        driver.write_text(DRIVER)
        data = Path(scratch) / "cases.jsonl"
        data.write_text("".join(json.dumps(c) + "\n" for c in cases))
        done = subprocess.run(
            ["node", str(driver), str(data)], capture_output=True, text=True, cwd=simulator, timeout=600, check=True
        )
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    count, seed = (int(argv[0]) if argv else 3000), (int(argv[1]) if len(argv) > 1 else 3)
    simulator = Path(os.environ.get("BROKER_IAM_SIMULATE_DIR", "/tmp/sim"))
    if not (simulator / "node_modules" / "@cloud-copilot" / "iam-simulate").is_dir():
        print(f"no iam-simulate in {simulator} (see this module's docstring)", file=sys.stderr)
        return 2
    cases = generate(count, seed)
    started = time.perf_counter()
    mine = [ours(c) for c in cases]
    evaluator_seconds = time.perf_counter() - started
    started = time.perf_counter()
    answers = theirs(cases, simulator)
    simulator_seconds = time.perf_counter() - started
    tally = collections.Counter(zip(mine, answers, strict=True))
    divergent = [
        i
        for i, (m, t) in enumerate(zip(mine, answers, strict=True))
        if (m == "allowed" and t in ("ExplicitlyDenied", "ImplicitlyDenied")) or (m == "denied" and t == "Allowed")
    ]
    for (m, t), n in sorted(tally.items()):
        print(f"{m:12} {t:18} {n:6}")
    print(
        f"{count} cases (seed {seed}): {len(divergent)} divergent, "
        f"{sum(m == 'undecidable' for m in mine) / count:.1%} undecidable; evaluator {evaluator_seconds:.2f} s, "
        f"simulator {simulator_seconds:.2f} s"
    )
    for i in divergent[:20]:
        print(json.dumps({"ours": mine[i], "theirs": answers[i], **cases[i]}))
    return 1 if divergent else 0


if __name__ == "__main__":
    sys.exit(main())
