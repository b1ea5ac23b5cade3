"""Request and response bodies of HTTP API v1 (the contract outside tests use)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class CreateRequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = Field(min_length=1, max_length=100)
    parameters: dict[str, Any] = Field(default_factory=dict)
    ttl_seconds: int | None = Field(default=None, strict=True)
    reason: str = Field(min_length=1, max_length=1000)


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: str = Field(pattern="^(approve|deny)$")
    reason: str = Field(min_length=1, max_length=1000)


class CredentialsOut(BaseModel):
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: str


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class RequestOut(BaseModel):
    """A request as the API shows it; ``credentials`` only on the response that issues them."""

    model_config = ConfigDict(extra="allow")

    id: str
    status: str
    template: str
    credentials: CredentialsOut | None = None
    grant: dict[str, Any] | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422, 429, 503)
}
