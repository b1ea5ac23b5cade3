"""The offline IAM evaluator, table-style, with cases from AWS's documentation: IAM User Guide
"Policy evaluation logic", "IAM JSON policy elements: Version / Resource / Condition operators",
"Conditions with multiple context keys or values", "Single-valued vs. multivalued context keys",
"IAM policy elements: Variables and tags", and the STS API reference (GetCallerIdentity)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.domain.evaluator import (
    AccessRequest,
    Outcome,
    PolicyKind,
    PolicySet,
    KnownSuffix,
    Tri,
    action_matches,
    arn_match,
    arn_matches,
    evaluate,
    evaluate_condition,
)

ALLOWED, DENIED, UNDECIDABLE = Outcome.ALLOWED, Outcome.DENIED, Outcome.UNDECIDABLE
BUCKET = "arn:aws:s3:::reports"
OBJECT = "arn:aws:s3:::reports/2024/jan.csv"


def doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(action: Any, resource: Any = "*", condition: dict | None = None, sid: str | None = None, **extra):
    statement = {"Effect": "Allow", "Action": action, "Resource": resource, **extra}
    if condition:
        statement["Condition"] = condition
    if sid:
        statement["Sid"] = sid
    return statement


def deny(action: Any, resource: Any = "*", condition: dict | None = None, sid: str | None = None):
    statement = allow(action, resource, condition, sid)
    statement["Effect"] = "Deny"
    return statement


def identity(*statements):
    return PolicySet.of(PolicyKind.IDENTITY, doc(*statements), name="role")


def session(*statements):
    return PolicySet.of(PolicyKind.SESSION, doc(*statements), name="session")


# ----------------------------------------------------------------------------- evaluation order
ORDER_CASES = [
    ("no policy at all: implicit deny", [], "s3:GetObject", OBJECT, DENIED),
    ("identity allows, no session policy", [identity(allow("s3:GetObject"))], "s3:GetObject", OBJECT, ALLOWED),
    ("nothing matches: implicit deny", [identity(allow("s3:PutObject"))], "s3:GetObject", OBJECT, DENIED),
    ("explicit deny beats allow in the same policy",
     [identity(allow("s3:*"), deny("s3:GetObject"))], "s3:GetObject", OBJECT, DENIED),
    ("explicit deny in the session policy beats the role's allow",
     [identity(allow("s3:*")), session(allow("s3:*"), deny("s3:GetObject", OBJECT))], "s3:GetObject", OBJECT, DENIED),
    ("explicit deny in the role beats the session's allow",
     [identity(allow("s3:*"), deny("s3:*", BUCKET + "/*")), session(allow("s3:GetObject"))],
     "s3:GetObject", OBJECT, DENIED),
    ("intersection: both allow", [identity(allow("s3:*")), session(allow("s3:GetObject", BUCKET + "/*"))],
     "s3:GetObject", OBJECT, ALLOWED),
    ("intersection: role allows, session does not",
     [identity(allow("s3:*")), session(allow("s3:GetObject", BUCKET + "/*"))], "s3:PutObject", OBJECT, DENIED),
    ("intersection: session allows, role does not",
     [identity(allow("s3:ListBucket")), session(allow("s3:*"))], "s3:GetObject", OBJECT, DENIED),
    ("permissions boundary must allow too",
     [identity(allow("s3:*")), PolicySet.of(PolicyKind.PERMISSIONS_BOUNDARY, doc(allow("s3:List*"))),
      session(allow("s3:*"))], "s3:GetObject", OBJECT, DENIED),
    ("allow in one of several role documents",
     [PolicySet.of(PolicyKind.IDENTITY, doc(allow("ec2:*")), doc(allow("s3:GetObject")), name="role")],
     "s3:GetObject", OBJECT, ALLOWED),
    ("single statement object (not a list)",
     [PolicySet.of(PolicyKind.IDENTITY, {"Version": "2012-10-17", "Statement": allow("s3:GetObject")})],
     "s3:GetObject", OBJECT, ALLOWED),
    # NotAction / NotResource
    ("NotAction allow: everything but IAM", [identity(allow(None, NotAction="iam:*") | {"Action": None})],
     "s3:GetObject", OBJECT, ALLOWED),
]


def _clean(policies):
    # allow(None, NotAction=...) helper: drop the None Action key.
    for policy_set in policies:
        for document in policy_set.documents:
            statements = document["Statement"] if isinstance(document["Statement"], list) else [document["Statement"]]
            for statement in statements:
                if statement.get("Action", "") is None:
                    del statement["Action"]
    return policies


@pytest.mark.parametrize(("policies", "action", "resource", "expected"),
                         [pytest.param(p, a, r, e, id=i) for i, p, a, r, e in ORDER_CASES])
def test_evaluation_order(policies, action, resource, expected):
    assert evaluate(_clean(policies), AccessRequest(action, resource)).outcome is expected


NOT_CASES = [
    ("NotAction allow covers others", allow(None, NotAction=["iam:*"]), "s3:GetObject", OBJECT, ALLOWED),
    ("NotAction allow excludes what it names", allow(None, NotAction=["iam:*"]), "iam:CreateUser",
     "arn:aws:iam::1:user/x", DENIED),
    ("NotAction is case-insensitive", allow(None, NotAction=["IAM:*"]), "iam:CreateUser", "arn:aws:iam::1:user/x",
     DENIED),
    ("NotResource allow covers others", allow("s3:GetObject", None, NotResource=[BUCKET + "/secret/*"]),
     "s3:GetObject", OBJECT, ALLOWED),
    ("NotResource allow excludes what it names", allow("s3:GetObject", None, NotResource=[BUCKET + "/secret/*"]),
     "s3:GetObject", BUCKET + "/secret/k", DENIED),
]


@pytest.mark.parametrize(("statement", "action", "resource", "expected"),
                         [pytest.param(s, a, r, e, id=i) for i, s, a, r, e in NOT_CASES])
def test_not_action_and_not_resource(statement, action, resource, expected):
    statement = {k: v for k, v in statement.items() if v is not None}
    assert evaluate([identity(statement)], AccessRequest(action, resource)).outcome is expected


def test_deny_with_not_action_denies_everything_else():
    policies = [identity(allow("*"), {"Effect": "Deny", "NotAction": ["s3:GetObject"], "Resource": "*"})]
    assert evaluate(policies, AccessRequest("s3:GetObject", OBJECT)).outcome is ALLOWED
    assert evaluate(policies, AccessRequest("s3:PutObject", OBJECT)).outcome is DENIED


# ----------------------------------------------------------------------------- wildcards
@pytest.mark.parametrize(("pattern", "action", "expected"), [
    ("s3:GetObject", "s3:GetObject", True),
    ("s3:getobject", "S3:GETOBJECT", True),           # actions are case-insensitive
    ("s3:Get*", "s3:GetObjectAcl", True),
    ("s3:Get*", "s3:PutObject", False),
    ("s3:?etObject", "s3:GetObject", True),
    ("s3:?etObject", "s3:GGetObject", False),
    ("*", "iam:CreateUser", True),
    ("s3:*", "s3express:CreateSession", False),
    ("s3:Get", "s3:GetObject", False),
])
def test_action_wildcards(pattern, action, expected):
    assert action_matches(pattern, action) is expected


T, F, U = Tri.TRUE, Tri.FALSE, Tri.UNKNOWN
EC2_I1 = "arn:aws:ec2:us-east-1:123456789012:instance/i-1"
SQS_Q = "arn:aws:sqs:us-east-1:111111111111:queue1"
# "IAM JSON policy elements: Resource", Using wildcards in resource ARNs: wildcards work "within the individual
# segments of an ARN (the parts separated by colons)"; "If the * wildcard is the last character of a resource ARN
# segment, it can expand to match beyond the colon boundaries"; ARNs are case-sensitive; * in the resource part
# spans '/' (the doc's amzn-s3-demo-bucket/*/test/* example).
ARN_CASES = [
    ("*", OBJECT, T),
    (BUCKET + "/*", OBJECT, T),                                  # * in the resource part spans '/'
    (BUCKET + "/*", BUCKET, F),
    (BUCKET, BUCKET + "/x", F),
    ("arn:aws:s3:::REPORTS/*", OBJECT, F),                       # ARNs are case-sensitive
    ("arn:aws:s3:::amzn-s3-demo-bucket/*/test/*", "arn:aws:s3:::amzn-s3-demo-bucket/1/2/test/3/object.jpg", T),
    ("arn:aws:s3:::amzn-s3-demo-bucket/*/test/*", "arn:aws:s3:::amzn-s3-demo-bucket//test/object.jpg", T),
    ("arn:aws:s3:::amzn-s3-demo-bucket/*/test/*", "arn:aws:s3:::amzn-s3-demo-bucket/1/test/", T),
    ("arn:aws:s3:::amzn-s3-demo-bucket/*/test/*", "arn:aws:s3:::amzn-s3-demo-bucket/1-test/object.jpg", F),
    ("arn:aws:s3:::amzn-s3-demo-bucket/*/test/*", "arn:aws:s3:::amzn-s3-demo-bucket/test/object.jpg", F),
    ("arn:aws:logs:*:123456789012:log-group:/aws/lambda/api:*",
     "arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/api:log-stream:abc", T),   # spans ':' in resource
    ("arn:aws:ec2:*:123456789012:instance/*", EC2_I1, T),
    ("arn:aws:ec2:us-*:123456789012:instance/*", "arn:aws:ec2:eu-west-1:123456789012:instance/i-1", F),
    ("arn:aws:ec2:us-east-?:123456789012:instance/i-1", EC2_I1, T),   # ? is exactly one character
    ("arn:aws:ec2:us-east-??:123456789012:instance/i-1", EC2_I1, F),
    ("arn:aws:ec2:us-*-1:123456789012:instance/i-1", EC2_I1, T),      # a * inside a segment stays in it
    ("arn:aws:ec2:us-*-1:123456789012:instance/i-1", "arn:aws:ec2:us-east:x-1:123456789012:instance/i-1", F),
    ("arn:aws:iam::*:role/broker-target-*", "arn:aws:iam::123456789012:role/broker-target-x", T),
    ("arn:aws:iam::*:role/broker-target-*", "arn:aws:iam::123456789012:role/admin", F),
    # Fewer than six segments.  A trailing * in the last segment expands across colons (the documented rule; an
    # independent simulator's missing-segments-are-* reading agrees):
    ("arn:aws:sns:*", "arn:aws:sns:us-east-1:123456789012:topic", T),
    ("arn:aws:s3:*", OBJECT, T),
    ("arn:aws:*", EC2_I1, T),
    ("arn:aws:sqs:us-*", SQS_Q, T),
    ("arn:aws:sqs:us-east-1:1111*", SQS_Q, T),
    ("arn:aws:sqs:eu-*", SQS_Q, F),
    ("arn:aws:sns:*", SQS_Q, F),                                      # the service segment still has to match
    ("arn:aws:sqs:us-east-1:2222*", SQS_Q, F),
    # ...where the two readings differ, the evaluator cannot decide (and never answers "denied" for it):
    ("arn:aws:ec2:*:instance/*", EC2_I1, U),        # documented: region * spans; padded: account is "instance/*"
    ("arn:aws:sqs", SQS_Q, U),                      # no wildcard: documented no match; padded arn:aws:sqs:*:*:*
    ("arn:aws:sqs:us-east-1", SQS_Q, U),
    ("arn:aws:sqs:us-west-2", SQS_Q, F),            # both readings: no
]


@pytest.mark.parametrize(("pattern", "arn", "expected"), ARN_CASES)
def test_arn_wildcards(pattern, arn, expected):
    assert arn_match(pattern, arn) is expected
    assert arn_matches(pattern, arn) is (expected is not F)     # "may match", for the guardrails


def test_a_short_arn_pattern_in_a_policy_is_undecidable_not_denied():
    decision = evaluate([identity(allow("ec2:StartInstances", "arn:aws:ec2:*:instance/*"))],
                        AccessRequest("ec2:StartInstances", EC2_I1))
    assert decision.outcome is UNDECIDABLE and "fewer than six" in decision.reason
    decision = evaluate([identity(allow("sns:Publish", "arn:aws:sns:*"))],
                        AccessRequest("sns:Publish", "arn:aws:sns:us-east-1:123456789012:alerts"))
    assert decision.outcome is ALLOWED


# ----------------------------------------------------------------------------- conditions
def cond(operator: str, key: str, expected: Any, context: dict[str, Any] | None, *, complete: bool = True) -> Tri:
    request = AccessRequest("s3:GetObject", OBJECT, context=context or {}, context_complete=complete)
    return evaluate_condition(operator, key, expected, request)[0]


CONDITION_CASES = [
    # String
    ("StringEquals", "aws:username", "alice", {"aws:username": "alice"}, T),
    ("StringEquals", "aws:username", "alice", {"aws:username": "Alice"}, F),
    ("StringEquals", "AWS:USERNAME", "alice", {"aws:username": "alice"}, T),        # key names case-insensitive
    ("StringEquals", "aws:username", ["bob", "alice"], {"aws:username": "alice"}, T),  # values OR'd
    ("StringEquals", "aws:username", "alice", {}, F),                                 # missing key: false
    ("StringNotEquals", "aws:username", ["bob", "carol"], {"aws:username": "alice"}, T),  # NOR
    ("StringNotEquals", "aws:username", ["bob", "alice"], {"aws:username": "alice"}, F),
    ("StringNotEquals", "aws:username", "bob", {}, T),                                # negated + missing: true
    ("StringEqualsIgnoreCase", "aws:username", "ALICE", {"aws:username": "alice"}, T),
    ("StringNotEqualsIgnoreCase", "aws:username", "ALICE", {"aws:username": "alice"}, F),
    ("StringLike", "s3:prefix", "home/*", {"s3:prefix": "home/alice/x"}, T),
    ("StringLike", "s3:prefix", "home/?", {"s3:prefix": "home/ab"}, F),
    ("StringNotLike", "s3:prefix", "home/*", {"s3:prefix": "etc/passwd"}, T),
    ("StringNotLike", "s3:prefix", "home/*", {}, T),
    # Numeric
    ("NumericEquals", "s3:max-keys", "10", {"s3:max-keys": "10"}, T),
    ("NumericNotEquals", "s3:max-keys", "10", {"s3:max-keys": "11"}, T),
    ("NumericLessThan", "s3:max-keys", "10", {"s3:max-keys": "9"}, T),
    ("NumericLessThan", "s3:max-keys", "10", {"s3:max-keys": "10"}, F),
    ("NumericLessThanEquals", "s3:max-keys", "10", {"s3:max-keys": "10"}, T),
    ("NumericGreaterThan", "s3:max-keys", "10", {"s3:max-keys": "10.5"}, T),
    ("NumericGreaterThanEquals", "s3:max-keys", "10", {"s3:max-keys": "9"}, F),
    ("NumericEquals", "s3:max-keys", "ten", {"s3:max-keys": "10"}, U),               # cannot parse: undecidable
    ("NumericEquals", "s3:max-keys", 10, {"s3:max-keys": "10.0"}, T),                # a JSON number in the policy
    ("NumericLessThan", "s3:max-keys", "0.3", {"s3:max-keys": "0.1"}, T),
    ("NumericEquals", "s3:max-keys", "0.3", {"s3:max-keys": ".3"}, T),
    ("NumericEquals", "s3:max-keys", "NaN", {"s3:max-keys": "NaN"}, U),              # not an IAM number
    ("NumericLessThan", "aws:MultiFactorAuthAge", "3600", {"aws:MultiFactorAuthAge": 60}, T),   # a number given
    ("Bool", "aws:SecureTransport", "true", {"aws:SecureTransport": True}, T),                  # a boolean given
    ("NumericEquals", "s3:max-keys", "1_0", {"s3:max-keys": "10"}, U),
    ("NumericEquals", "s3:max-keys", "1e1", {"s3:max-keys": "10"}, U),
    # Date (ISO 8601 and epoch seconds)
    ("DateLessThan", "aws:CurrentTime", "2024-06-01T00:00:00Z", {"aws:CurrentTime": "2024-05-31T23:59:59Z"}, T),
    ("DateLessThan", "aws:CurrentTime", "2024-06-01T00:00:00Z", {"aws:CurrentTime": "2024-06-01T00:00:00Z"}, F),
    ("DateLessThanEquals", "aws:CurrentTime", "2024-06-01T00:00:00Z", {"aws:CurrentTime": "1717200000"}, T),
    ("DateGreaterThan", "aws:CurrentTime", "2024-06-01", {"aws:CurrentTime": "2024-06-01T00:00:01Z"}, T),
    ("DateGreaterThanEquals", "aws:CurrentTime", "2024-06-01T00:00:00+00:00", {"aws:CurrentTime": "1717200000"}, T),
    ("DateEquals", "aws:CurrentTime", "1717200000", {"aws:CurrentTime": "2024-06-01T00:00:00Z"}, T),
    ("DateNotEquals", "aws:CurrentTime", "1717200000", {"aws:CurrentTime": "2024-06-01T00:00:00Z"}, F),
    # Bool
    ("Bool", "aws:SecureTransport", "true", {"aws:SecureTransport": "true"}, T),
    ("Bool", "aws:SecureTransport", "true", {"aws:SecureTransport": "false"}, F),
    ("Bool", "aws:SecureTransport", True, {"aws:SecureTransport": "TRUE"}, T),
    ("Bool", "aws:SecureTransport", "false", {}, F),
    # Binary
    ("BinaryEquals", "key", "QmluYXJ5VmFsdWU=", {"key": "QmluYXJ5VmFsdWU="}, T),
    ("BinaryEquals", "key", "QmluYXJ5VmFsdWU=", {"key": "T3RoZXI="}, F),
    # IP address
    ("IpAddress", "aws:SourceIp", "203.0.113.0/24", {"aws:SourceIp": "203.0.113.7"}, T),
    ("IpAddress", "aws:SourceIp", "203.0.113.0/24", {"aws:SourceIp": "198.51.100.7"}, F),
    ("IpAddress", "aws:SourceIp", "2001:DB8:1234:5678::/64", {"aws:SourceIp": "2001:db8:1234:5678::1"}, T),
    ("IpAddress", "aws:SourceIp", "203.0.113.0/24", {"aws:SourceIp": "2001:db8::1"}, F),
    ("NotIpAddress", "aws:SourceIp", ["203.0.113.0/24", "10.0.0.0/8"], {"aws:SourceIp": "198.51.100.7"}, T),
    ("NotIpAddress", "aws:SourceIp", "203.0.113.0/24", {"aws:SourceIp": "203.0.113.7"}, F),
    # ARN
    ("ArnEquals", "aws:SourceArn", "arn:aws:sns:us-east-1:1:topic", {"aws:SourceArn": "arn:aws:sns:us-east-1:1:topic"},
     T),
    ("ArnLike", "aws:SourceArn", "arn:aws:sns:*:1:*", {"aws:SourceArn": "arn:aws:sns:us-east-1:1:topic"}, T),
    ("ArnLike", "aws:SourceArn", "arn:aws:sns:*:1:*", {"aws:SourceArn": "arn:aws:sqs:us-east-1:1:q"}, F),
    ("ArnNotEquals", "aws:SourceArn", "arn:aws:sns:us-east-1:1:topic", {"aws:SourceArn": "arn:aws:sns:us-east-1:1:x"},
     T),
    ("ArnNotLike", "aws:SourceArn", "arn:aws:sns:*:*:*", {"aws:SourceArn": "arn:aws:sns:us-east-1:1:x"}, F),
    # "Each of the six colon-delimited components of the ARN is checked separately": a pattern of fewer than six
    # segments may match nothing in a condition (an independent simulator: invalid, false even negated), or match
    # like a Resource pattern (arn:aws:sns:* every SNS ARN).  Only "false" is certain.
    ("ArnLike", "aws:SourceArn", "arn:aws:sns:*", {"aws:SourceArn": "arn:aws:sns:us-east-1:1:x"}, U),
    ("ArnLike", "aws:SourceArn", "arn:aws:sqs:*", {"aws:SourceArn": "arn:aws:sns:us-east-1:1:x"}, F),
    ("ArnNotLike", "aws:SourceArn", "arn:aws:sqs:*", {"aws:SourceArn": "arn:aws:sns:us-east-1:1:x"}, U),
    ("ArnNotEquals", "aws:SourceArn", "arn:aws:sns:*", {"aws:SourceArn": "arn:aws:sns:us-east-1:1:x"}, F),
    ("ArnLike", "aws:SourceArn", "arn:aws:SNS:*:*:*", {"aws:SourceArn": "arn:aws:sns:us-east-1:1:x"}, F),  # case
    ("StringLike", "aws:SourceArn", "arn:aws:SNS:*", {"aws:SourceArn": "arn:aws:sns:us-east-1:1:x"}, F),
    ("StringLike", "aws:username", "ALICE", {"aws:username": "alice"}, F),            # StringLike is case-sensitive
    # Null
    ("Null", "aws:TokenIssueTime", "true", {}, T),
    ("Null", "aws:TokenIssueTime", "true", {"aws:TokenIssueTime": "2024-01-01T00:00:00Z"}, F),
    ("Null", "aws:TokenIssueTime", "false", {"aws:TokenIssueTime": "2024-01-01T00:00:00Z"}, T),
    ("Null", "aws:TagKeys", "true", {"aws:TagKeys": ["env"]}, F),
    ("Null", "aws:TagKeys", "false", {"aws:TagKeys": []}, U),     # present with no value: readings differ
    ("Null", "aws:TagKeys", "true", {"aws:TagKeys": []}, U),
    # ...IfExists
    ("StringEqualsIfExists", "ec2:InstanceType", "t3.micro", {}, T),
    ("StringEqualsIfExists", "ec2:InstanceType", "t3.micro", {"ec2:InstanceType": "m5.large"}, F),
    ("NumericLessThanIfExists", "s3:max-keys", "10", {}, T),
    ("DateLessThanIfExists", "aws:CurrentTime", "2024-06-01", {}, T),
    ("BoolIfExists", "aws:MultiFactorAuthPresent", "true", {}, T),
    ("IpAddressIfExists", "aws:SourceIp", "10.0.0.0/8", {"aws:SourceIp": "11.0.0.1"}, F),
    ("ArnLikeIfExists", "aws:SourceArn", "arn:aws:sns:*:*:*", {}, T),
    # set operators on multivalued keys
    ("ForAllValues:StringEquals", "aws:TagKeys", ["env", "team"], {"aws:TagKeys": ["env", "team"]}, T),
    ("ForAllValues:StringEquals", "aws:TagKeys", ["env", "team"], {"aws:TagKeys": ["env", "cost"]}, F),
    ("ForAllValues:StringEquals", "aws:TagKeys", ["env"], {}, T),                    # vacuously true
    ("ForAnyValue:StringEquals", "aws:TagKeys", ["env"], {"aws:TagKeys": ["cost", "env"]}, T),
    ("ForAnyValue:StringEquals", "aws:TagKeys", ["env"], {"aws:TagKeys": ["cost"]}, F),
    ("ForAnyValue:StringEquals", "aws:TagKeys", ["env"], {}, F),
    ("ForAnyValue:StringLike", "aws:TagKeys", ["project-*"], {"aws:TagKeys": ["project-x"]}, T),
    ("ForAllValues:StringNotEquals", "aws:TagKeys", ["secret"], {"aws:TagKeys": ["env", "team"]}, T),
    # policy variables in condition values
    ("StringLike", "s3:prefix", "home/${aws:username}/*", {"s3:prefix": "home/alice/a", "aws:username": "alice"}, T),
    ("StringLike", "s3:prefix", "home/${aws:username}/*", {"s3:prefix": "home/bob/a", "aws:username": "alice"}, F),
    ("StringEquals", "s3:prefix", "${*}", {"s3:prefix": "*"}, T),
    ("StringLike", "s3:prefix", "a${*}", {"s3:prefix": "ab"}, F),                     # ${*} is a literal star
    ("StringEquals", "s3:prefix", "${aws:username, 'anon'}", {"s3:prefix": "anon"}, T),
]


@pytest.mark.parametrize(("operator", "key", "expected", "context", "truth"),
                         [pytest.param(*case, id=f"{case[0]}-{i}") for i, case in enumerate(CONDITION_CASES)])
def test_condition_operators(operator, key, expected, context, truth):
    assert cond(operator, key, expected, context) is truth


@pytest.mark.parametrize(("operator", "key", "expected", "context"), [
    ("StringSoundsLike", "aws:username", "alice", {"aws:username": "alice"}),    # unknown operator
    ("ForSomeValues:StringEquals", "aws:TagKeys", "env", {"aws:TagKeys": ["env"]}),  # unknown qualifier
    ("StringEquals", "aws:username", "alice", None),                              # key not supplied
    ("StringEqualsIfExists", "aws:username", "alice", None),                      # may or may not exist
    ("Null", "aws:username", "true", None),
    ("StringLike", "s3:prefix", "home/${aws:username}/*", {"s3:prefix": "home/a/x"}),  # variable not supplied
    ("StringEquals", "aws:username", "alice", {"aws:username": ["alice", "bob"]}),  # multivalued without qualifier
])
def test_conditions_it_cannot_decide_are_unknown(operator, key, expected, context):
    assert cond(operator, key, expected, context, complete=False) is U


def test_multiple_keys_and_operators_are_anded():
    statement = allow("s3:ListBucket", BUCKET, {"StringLike": {"s3:prefix": "home/*"},
                                                 "Bool": {"aws:SecureTransport": "true"}})
    both = {"s3:prefix": "home/x", "aws:SecureTransport": "true"}
    one = {"s3:prefix": "home/x", "aws:SecureTransport": "false"}
    assert evaluate([session(statement)], AccessRequest("s3:ListBucket", BUCKET, both)).outcome is ALLOWED
    assert evaluate([session(statement)], AccessRequest("s3:ListBucket", BUCKET, one)).outcome is DENIED


# ----------------------------------------------------------------------------- policy variables in resources
def test_policy_variable_in_resource():
    statement = allow("s3:GetObject", "arn:aws:s3:::home/${aws:username}/*")
    ok = AccessRequest("s3:GetObject", "arn:aws:s3:::home/alice/x", {"aws:username": "alice"})
    other = AccessRequest("s3:GetObject", "arn:aws:s3:::home/bob/x", {"aws:username": "alice"})
    absent = AccessRequest("s3:GetObject", "arn:aws:s3:::home/alice/x", context_complete=True)
    unknown = AccessRequest("s3:GetObject", "arn:aws:s3:::home/alice/x")
    assert evaluate([session(statement)], ok).outcome is ALLOWED
    assert evaluate([session(statement)], other).outcome is DENIED
    assert evaluate([session(statement)], absent).outcome is DENIED
    assert evaluate([session(statement)], unknown).outcome is UNDECIDABLE


def test_a_star_in_a_variable_value_is_not_a_wildcard():
    statement = allow("s3:GetObject", "arn:aws:s3:::home/${aws:username}/*")
    request = AccessRequest("s3:GetObject", "arn:aws:s3:::home/alice/x", {"aws:username": "*"})
    assert evaluate([session(statement)], request).outcome is DENIED


# ----------------------------------------------------------------------------- undecidable, never "deny"
UNDECIDABLE_CASES = [
    ("allow depends on an unknown key", [session(allow("s3:GetObject", OBJECT, {"StringLike": {"s3:ExistingObjectTag/team": "a*"}}))],
     UNDECIDABLE),
    ("deny depends on an unknown key: may allow, not deny",
     [identity(allow("s3:*"), deny("s3:*", "*", {"StringNotEquals": {"aws:PrincipalTag/team": "sre"}}))],
     UNDECIDABLE),
    ("deny with an unknown operator: may allow",
     [identity(allow("s3:*"), deny("s3:*", "*", {"StringFuzzy": {"aws:username": "x"}}))], UNDECIDABLE),
    ("a definite explicit deny wins over unknowns", [identity(allow("s3:*", "*", {"StringFuzzy": {"k": "v"}}),
                                                              deny("s3:GetObject"))], DENIED),
    ("a definite implicit deny in another set wins over unknowns",
     [identity(allow("ec2:*")), session(allow("s3:*", "*", {"StringFuzzy": {"k": "v"}}))], DENIED),
    ("a definite allow elsewhere does not hide an unknown deny",
     [identity(allow("s3:*"), deny("s3:GetObject", "*", {"Bool": {"aws:MultiFactorAuthPresent": "false"}}))],
     UNDECIDABLE),
]


@pytest.mark.parametrize(("policies", "expected"), [pytest.param(p, e, id=i) for i, p, e in UNDECIDABLE_CASES])
def test_undecidable(policies, expected):
    decision = evaluate(policies, AccessRequest("s3:GetObject", OBJECT))
    assert decision.outcome is expected
    if expected is UNDECIDABLE:
        assert decision.unknowns and decision.reason.startswith("may allow")


def test_revocation_deny_applies_to_old_tokens_only():
    revocation = deny("*", "*", {"DateLessThan": {"aws:TokenIssueTime": "2024-06-01T00:00:00Z"}}, sid="BrokerRevoke")
    policies = [identity(allow("s3:*"), revocation), session(allow("s3:GetObject"))]
    old = AccessRequest("s3:GetObject", OBJECT, {"aws:TokenIssueTime": "2024-05-31T12:00:00Z"})
    new = AccessRequest("s3:GetObject", OBJECT, {"aws:TokenIssueTime": "2024-06-01T12:00:00Z"})
    decided = evaluate(policies, old)
    assert decided.outcome is DENIED and decided.deciding.sid == "BrokerRevoke"
    assert evaluate(policies, new).outcome is ALLOWED
    assert evaluate(policies, AccessRequest("s3:GetObject", OBJECT)).outcome is UNDECIDABLE


def test_decision_names_the_deciding_statements():
    decision = evaluate([identity(allow("s3:*", sid="RoleAll")), session(allow("s3:GetObject", sid="OnlyGet"))],
                        AccessRequest("s3:GetObject", OBJECT))
    assert decision.allowed
    assert [s.sid for s in decision.statements] == ["RoleAll", "OnlyGet"]
    assert "OnlyGet" in decision.reason and decision.to_dict()["outcome"] == "allowed"


# ----------------------------------------------------------------------------- properties
ACTIONS = st.sampled_from(["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "iam:PassRole", "ec2:RunInstances"])


@given(role=st.lists(ACTIONS, min_size=1, max_size=3), sess=st.lists(ACTIONS, min_size=1, max_size=3),
       denied=st.lists(ACTIONS, max_size=2), action=ACTIONS)
def test_session_never_exceeds_either_policy(role, sess, denied, action):
    role_statements = [allow(role)] + ([deny(denied)] if denied else [])
    decision = evaluate([identity(*role_statements), session(allow(sess))], AccessRequest(action, OBJECT))
    expected = action in role and action in sess and action not in denied
    assert decision.allowed is expected
    assert decision.outcome is not UNDECIDABLE


@given(key_value=st.text(max_size=20), policy_value=st.text(max_size=20))
def test_unknown_keys_never_turn_into_a_deny(key_value, policy_value):
    statement = deny("s3:*", "*", {"StringEquals": {"aws:PrincipalTag/team": policy_value}})
    decision = evaluate([identity(allow("s3:*"), statement)], AccessRequest("s3:GetObject", OBJECT))
    assert decision.outcome is UNDECIDABLE
    known = AccessRequest("s3:GetObject", OBJECT, {"aws:PrincipalTag/team": key_value})
    assert evaluate([identity(allow("s3:*"), statement)], known).outcome is (
        DENIED if key_value == policy_value else ALLOWED)


# ----------------------------------------------------------------------------- the Version element
HOME = "arn:aws:s3:::home/${aws:username}/*"
# "IAM JSON policy elements: Version": without "Version": "2012-10-17" (no Version, or 2008-10-17) "variables such as
# ${aws:username} aren't recognized as variables and are instead treated as literal strings in the policy".
VERSION_CASES = [
    ("2012-10-17: variable substituted", "2012-10-17", "arn:aws:s3:::home/alice/x", ALLOWED),
    ("2012-10-17: other user's folder", "2012-10-17", "arn:aws:s3:::home/bob/x", DENIED),
    ("no Version: literal text, not alice's folder", None, "arn:aws:s3:::home/alice/x", DENIED),
    ("no Version: literally the text ${aws:username}", None, "arn:aws:s3:::home/${aws:username}/x", ALLOWED),
    ("2008-10-17: literal text", "2008-10-17", "arn:aws:s3:::home/alice/x", DENIED),
    ("2008-10-17: literally the text", "2008-10-17", "arn:aws:s3:::home/${aws:username}/x", ALLOWED),
    ("a Version IAM does not know: undecidable", "2024-01-01", "arn:aws:s3:::home/alice/x", UNDECIDABLE),
]


@pytest.mark.parametrize(("version", "resource", "expected"),
                         [pytest.param(v, r, e, id=i) for i, v, r, e in VERSION_CASES])
def test_policy_variables_need_version_2012_10_17(version, resource, expected):
    document = {"Statement": [allow("s3:GetObject", HOME)]} | ({"Version": version} if version else {})
    request = AccessRequest("s3:GetObject", resource, {"aws:username": "alice"})
    assert evaluate([PolicySet.of(PolicyKind.SESSION, document)], request).outcome is expected


HOME_PREFIX = "home/${aws:username}/*"


@pytest.mark.parametrize(("version", "pattern", "prefix", "truth"), [
    ("2012-10-17", HOME_PREFIX, "home/alice/a", T),
    (None, HOME_PREFIX, "home/alice/a", F),
    (None, HOME_PREFIX, "home/${aws:username}/a", T),
    ("2012-10-17", "a${*}", "a*", T),        # with variables ${*} is a literal star...
    ("2012-10-17", "a${*}", "ab", F),
    (None, "a${*}", "a${xyz}", T),           # ...without, "a${" then a wildcard then "}"
    (None, "a${*}", "a*", F),
])
def test_condition_values_need_version_2012_10_17_for_variables(version, pattern, prefix, truth):
    request = AccessRequest("s3:ListBucket", BUCKET, {"s3:prefix": prefix, "aws:username": "alice"},
                            context_complete=True)
    got, _ = evaluate_condition("StringLike", "s3:prefix", pattern, request, variables=version == "2012-10-17")
    assert got is truth


# ----------------------------------------------------------------------------- sts:GetCallerIdentity
# STS API reference, GetCallerIdentity: "No permissions are required to perform this operation. If an administrator
# attaches a policy to your identity that explicitly denies access to the sts:GetCallerIdentity action, you can
# still perform this operation."
@pytest.mark.parametrize("policies", [
    [],
    [identity(allow("s3:GetObject"))],
    [identity(allow("*"), deny("*"))],
    [identity(allow("*")), session(deny("sts:GetCallerIdentity"))],
    [identity(deny("sts:*", "*", {"StringFuzzy": {"k": "v"}}))],
], ids=["no policy", "not granted", "deny everything", "explicit deny", "undecidable deny"])
@pytest.mark.parametrize("action", ["sts:GetCallerIdentity", "STS:getcalleridentity"])
def test_get_caller_identity_needs_no_permission_and_cannot_be_denied(policies, action):
    assert evaluate(policies, AccessRequest(action, "*")).outcome is ALLOWED


def test_other_sts_actions_are_evaluated():
    assert evaluate([identity(allow("*"), deny("sts:*"))], AccessRequest("sts:GetSessionToken", "*")).outcome is DENIED


# ----------------------------------------------------------------------------- malformed policies: never decided
MALFORMED = [
    ("Action and NotAction", {"Effect": "Allow", "Action": "s3:*", "NotAction": "iam:*", "Resource": "*"}),
    ("Resource and NotResource", {"Effect": "Allow", "Action": "s3:*", "Resource": "*", "NotResource": BUCKET}),
    ("no Action", {"Effect": "Allow", "Resource": "*"}),
    ("no Resource", {"Effect": "Allow", "Action": "s3:*"}),
    ("null condition value", allow("s3:*", "*", {"StringEquals": {"aws:username": None}})),
    ("empty condition list", allow("s3:*", "*", {"StringEquals": {"aws:username": []}})),
    ("condition block not an object", allow("s3:*", "*") | {"Condition": ["StringEquals"]}),
    ("lower-case effect", allow("s3:*") | {"Effect": "allow"}),
]


@pytest.mark.parametrize("statement", [pytest.param(s, id=i) for i, s in MALFORMED])
def test_a_malformed_statement_is_undecidable_not_denied(statement):
    decision = evaluate([identity(statement)], AccessRequest("s3:GetObject", OBJECT, {"aws:username": "alice"}))
    assert decision.outcome is UNDECIDABLE


# ----------------------------------------------------------------------------- unresolvable policy variables
# "If AWS cannot resolve a variable this might cause the entire statement to be invalid" ("Policy variables"):
# a positive match fails either way; a negated one (which would otherwise come out true) cannot be decided.
@pytest.mark.parametrize(("operator", "truth"), [
    ("StringEquals", F), ("StringLike", F), ("StringNotEquals", U), ("StringNotLike", U),
    ("StringEqualsIfExists", F), ("StringNotEqualsIfExists", U),
])
def test_an_absent_variable_in_a_condition_value(operator, truth):
    request = AccessRequest("s3:GetObject", OBJECT, {"aws:PrincipalTag/team": "sre"}, context_complete=True)
    assert evaluate_condition(operator, "aws:PrincipalTag/team", "${aws:username}", request)[0] is truth


def test_an_absent_variable_with_a_default_is_decided():
    request = AccessRequest("s3:GetObject", OBJECT, {"aws:PrincipalTag/team": "sre"}, context_complete=True)
    assert evaluate_condition("StringNotEquals", "aws:PrincipalTag/team", "${aws:username, 'sre'}", request)[0] is F


def test_not_resource_with_an_absent_variable_is_undecidable():
    statement = {"Effect": "Deny", "Action": "s3:*", "NotResource": "arn:aws:s3:::home/${aws:username}/*"}
    decision = evaluate([identity(allow("s3:*"), statement)], AccessRequest("s3:GetObject", OBJECT,
                                                                            context_complete=True))
    assert decision.outcome is UNDECIDABLE


# ----------------------------------------------------------------------------- partly known values (aws:userid)
SESSION_NAME = "demo-0123abcd"
USERID = KnownSuffix(":" + SESSION_NAME)
PARTIAL_CASES = [
    ("StringLike", f"*:{SESSION_NAME}", T),           # the broker's revocation deny: certain without the role id
    ("StringLike", "*:other-session", F),
    ("StringLike", ["*:a", f"*:{SESSION_NAME}"], T),
    ("StringLike", "AROA*:" + SESSION_NAME, U),        # depends on the role id
    ("StringLike", "*", T),
    ("StringLike", "*x", F),
    ("StringNotLike", f"*:{SESSION_NAME}", F),
    ("StringNotLike", "*:other-session", T),
    ("StringEquals", f"AROAEXAMPLE:{SESSION_NAME}", U),
    ("StringEquals", f"aroa-lower:{SESSION_NAME}", F),  # a role id is upper-case letters and digits
    ("StringEquals", "AROAEXAMPLE:other", F),
    ("StringEqualsIgnoreCase", f"aroaexample:{SESSION_NAME.upper()}", U),
    ("ArnLike", "arn:aws:*", U),
]


@pytest.mark.parametrize(("operator", "expected", "truth"), PARTIAL_CASES)
def test_a_value_known_only_by_its_suffix(operator, expected, truth):
    request = AccessRequest("s3:GetObject", OBJECT, {"aws:userid": USERID}, context_complete=True)
    assert evaluate_condition(operator, "aws:userid", expected, request)[0] is truth


def test_a_partly_known_value_is_undecidable_as_a_variable():
    statement = allow("s3:GetObject", "arn:aws:s3:::home/${aws:userid}/*")
    request = AccessRequest("s3:GetObject", "arn:aws:s3:::home/x/y", {"aws:userid": USERID}, context_complete=True)
    assert evaluate([session(statement)], request).outcome is UNDECIDABLE
