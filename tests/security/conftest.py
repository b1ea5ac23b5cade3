import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.runtime.devmode import DEV_PRINCIPALS
from broker.identity.apikeys import generate_api_key
from tests.conftest import TEST_PRINCIPALS, TEST_SCOPES, _fresh_pg_database, build_harness

# ----------------------------------------------------------------------------- a shared broker
SECURITY_SCOPES = Path(__file__).parent / "scopes"
# Principals beyond the harness's, each made to probe one approval rule:
EXTRA_PRINCIPALS = {
    # an agent that also holds the approver role, in group sre, acting for nobody: only the
    # self-approval rule stands between it and approving its own request
    "agent:selfish": (("agent", "approver"), ("sre",), None),
    # an agent misconfigured with the approver role, acting for carol
    "agent:sneaky": (("agent", "approver"), ("sre",), "human:carol"),
    # an admin in group sre who is not an approver
    "human:boss": (("admin",), ("sre",), None),
}
STANDARD_PRINCIPALS = {**DEV_PRINCIPALS, **TEST_PRINCIPALS, **EXTRA_PRINCIPALS}


def add_api_key(harness, principal_id: str, label: str) -> None:
    """Give ``principal_id`` another API key, usable as ``harness.keys[label]``."""
    issued = generate_api_key()
    with harness.container.database.transaction() as repo:
        repo.add_api_key(key_id=issued.key_id, token_hash=issued.token_hash, principal_id=principal_id,
                         now=datetime.now(UTC))
    harness.keys[label] = issued.token


def reset_principals(harness) -> None:
    """Undo a test's edits of principals (disabled, moved out of a group...)."""
    with harness.container.database.transaction() as repo:
        for principal_id, (roles, groups, acts_for) in STANDARD_PRINCIPALS.items():
            repo.upsert_principal(principal_id=principal_id, roles=roles, groups=groups, acts_for=acts_for,
                                  now=datetime.now(UTC))
            repo.set_principal_disabled(principal_id, False)  # upsert keeps a disabled principal disabled


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def security_broker(request, moto_server, tmp_path_factory):
    """One broker per database, shared by a module (tests compare counts before/after, never totals).

    Its catalog is the test scopes plus ``sec-open-path`` (a free-form path parameter); its
    principals add ``EXTRA_PRINCIPALS`` and a second API key for bob (``human:bob#2``).
    """
    root = tmp_path_factory.mktemp(f"security-{request.param}")
    scopes = root / "scopes"
    shutil.copytree(TEST_SCOPES, scopes)
    for template in SECURITY_SCOPES.glob("*.yaml"):
        shutil.copy(template, scopes)
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{root / 'broker.db'}"
    else:
        url, drop = _fresh_pg_database(request.getfixturevalue("pg_admin_url"))
    harness = build_harness(db_url=url, scopes=scopes, aws_endpoint=moto_server.endpoint_url,
                            state_dir=root / "state")
    reset_principals(harness)
    for principal_id in EXTRA_PRINCIPALS:
        add_api_key(harness, principal_id, principal_id)
    add_api_key(harness, "human:bob", "human:bob#2")
    yield harness
    harness.container.database.engine.dispose()
    if drop is not None:
        drop()


# ----------------------------------------------------------------------------- attack summary
from tests.security.attack_tally import TALLY, summary_lines  # noqa: E402

# The JWT/API-key suite counts itself by test outcome: each parametrized case is one attack.
_OUTCOME_COUNTED = {
    "test_jwt_attack_refused": "authentication (JWT)",
    "test_api_key_attack_refused": "authentication (API key)",
}


def pytest_runtest_logreport(report):
    if report.when != "call" or "tests/security/" not in report.nodeid.replace("\\", "/"):
        return
    name = report.nodeid.split("::")[-1].split("[")[0]
    if name in _OUTCOME_COUNTED:
        TALLY[_OUTCOME_COUNTED[name]].tried += 1
        if report.passed:
            TALLY[_OUTCOME_COUNTED[name]].refused += 1


def pytest_terminal_summary(terminalreporter):
    if not TALLY:
        return
    terminalreporter.section("security suite: attacks tried / refused")
    for line in summary_lines():
        terminalreporter.write_line(line)
