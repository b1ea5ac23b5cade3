from tests.identity.jwt_factory import (  # noqa: F401 (fixtures)
    attacker_server,
    clock,
    ec_signer,
    ed_signer,
    jwks_server,
    rsa_signer,
    verifier,
)


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
