"""The agent SDK: ask the broker for short-lived, least-privilege AWS credentials.

    from broker.sdk import BrokerClient
    client = BrokerClient()                      # BROKER_URL + BROKER_TOKEN / _FILE / _COMMAND
    s3 = client.boto3_session("s3-read-prefix", {"prefix": "reports"},
                              reason="investigate the cost report").client("s3")

It speaks only the HTTP API v1's JSON; it imports nothing of the server.
"""

from broker.sdk.client import BrokerClient, IssuedCredentials, PendingRequest, TokenSource
from broker.sdk.errors import (ApprovalDenied, ApprovalPending, ApprovalRequired, ApprovalTimeout, BrokerAPIError,
                               BrokerUnreachable, ConfigurationError, Conflict, Forbidden, InvalidRequest, NotFound,
                               PayloadTooLarge, RateLimited, RequestExpired, Unauthenticated, Unavailable)

__all__ = ["ApprovalDenied", "ApprovalPending", "ApprovalRequired", "ApprovalTimeout", "BrokerAPIError",
           "BrokerClient", "BrokerUnreachable", "ConfigurationError", "Conflict", "Forbidden", "IssuedCredentials",
           "InvalidRequest", "NotFound", "PayloadTooLarge", "PendingRequest", "RateLimited", "RequestExpired",
           "TokenSource", "Unauthenticated", "Unavailable"]
