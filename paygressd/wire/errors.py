"""The error_type catalogue (protocol §2.6): every refusal paygressd sends is built here.

The strings are a public contract (consumers act on them), so they live in one place.
"""

from __future__ import annotations

from enum import StrEnum

from paygressd.wire.models import ErrorReply


class ErrorType(StrEnum):
    INVALID_REQUEST = "invalid_request"
    NOT_ADDRESSED = "not_addressed"
    TEMPLATE_UNSUPPORTED = "template_unsupported"
    INVALID_TOKEN = "invalid_token"
    NON_WHITELISTED_MINT = "non_whitelisted_mint"
    TOKEN_ALREADY_SPENT = "token_already_spent"
    TOKEN_PENDING = "token_pending"
    MINT_NETWORK_ERROR = "mint_network_error"
    UNSUPPORTED_UNIT = "unsupported_unit"
    MINT_ERROR = "mint_error"
    NO_SPECS = "no_specs"
    INSUFFICIENT_PAYMENT = "insufficient_payment"
    PROVISIONING_ERROR = "provisioning_error"
    UNKNOWN_TEMPLATE = "unknown_template"
    INVALID_VOLUME_ENCRYPTION = "invalid_volume_encryption"
    MISSING_WORKLOAD_ID = "missing_workload_id"
    BACKEND_ERROR = "backend_error"
    INVALID_POD_ID = "invalid_pod_id"
    NOT_OWNER = "not_owner"
    NOT_FOUND = "not_found"
    LEASE_EXPIRED = "lease_expired"
    SPEC_UNAVAILABLE = "spec_unavailable"
    RACE_LOST = "race_lost"
    # paygressd additions: same reply shape, new stable codes for refusals upstream never made.
    UNKNOWN_SPEC = "unknown_spec"
    STALE_REQUEST = "stale_request"
    RATE_LIMITED = "rate_limited"
    CAPACITY_EXHAUSTED = "capacity_exhausted"
    SHUTTING_DOWN = "shutting_down"


def error(kind: ErrorType, message: str, details: str | None = None) -> ErrorReply:
    return ErrorReply(error_type=kind.value, message=message, details=details)


def invalid_request(parser_error: str, content: str) -> ErrorReply:
    shown = content[:100] + ("..." if len(content) > 100 else "")
    # The echo must stay encodable even if the content held a raw surrogate.
    shown = shown.encode("utf-8", "backslashreplace").decode("utf-8")
    return error(
        ErrorType.INVALID_REQUEST,
        "Failed to parse request",
        f"JSON parsing failed: {parser_error}. Content: '{shown}'",
    )


def template_unsupported() -> ErrorReply:
    return error(
        ErrorType.TEMPLATE_UNSUPPORTED,
        "this provider's backend serves its own image and cannot run templates",
    )


def invalid_token(reason: str) -> ErrorReply:
    return error(ErrorType.INVALID_TOKEN, f"Invalid Cashu token: {reason}")


def non_whitelisted_mint(normalized_url: str) -> ErrorReply:
    return error(ErrorType.NON_WHITELISTED_MINT, f"Mint {normalized_url} is not accepted by this provider")


def token_already_spent() -> ErrorReply:
    return error(ErrorType.TOKEN_ALREADY_SPENT, "This Cashu token has already been spent at the mint")


def token_pending() -> ErrorReply:
    return error(ErrorType.TOKEN_PENDING, "Token is pending at the mint; retry shortly")


def mint_network_error(err: str) -> ErrorReply:
    return error(ErrorType.MINT_NETWORK_ERROR, f"Could not reach mint: {err}")


def unsupported_unit(unit: str) -> ErrorReply:
    return error(ErrorType.UNSUPPORTED_UNIT, f"Token unit {unit} is not supported")


def mint_error(err: str) -> ErrorReply:
    return error(ErrorType.MINT_ERROR, f"Mint rejected redemption: {err}")


def no_specs() -> ErrorReply:
    return error(ErrorType.NO_SPECS, "No pod specifications available on this provider")


def insufficient_payment_spawn(min_seconds: int, rate: int) -> ErrorReply:
    return error(
        ErrorType.INSUFFICIENT_PAYMENT,
        f"Insufficient payment for minimum duration. Required: {min_seconds * rate} msats for {min_seconds}s",
    )


def insufficient_payment_topup(msats: int, rate: int) -> ErrorReply:
    return error(
        ErrorType.INSUFFICIENT_PAYMENT,
        f"Insufficient topup: {msats} msats buys 0 seconds at {rate} msats/sec",
    )


def provisioning_error(err: str) -> ErrorReply:
    return error(ErrorType.PROVISIONING_ERROR, f"Failed to find available ID: {err}")


def no_free_vmid(start: int, end: int) -> ErrorReply:
    return provisioning_error(f"no available VM id in range {start}..={end}")


def backend_error(err: str) -> ErrorReply:
    return error(ErrorType.BACKEND_ERROR, f"Backend failed to create workload: {err}")


def invalid_pod_id(pod_npub: str) -> ErrorReply:
    return error(
        ErrorType.INVALID_POD_ID,
        f"Could not parse pod identifier `{pod_npub}`; expected `container-<id>` or numeric id",
    )


def not_owner() -> ErrorReply:
    return error(ErrorType.NOT_OWNER, "Pod not owned by requester")


def topup_not_found(pod_npub: str) -> ErrorReply:
    return error(ErrorType.NOT_FOUND, f"Pod {pod_npub} not found")


def lease_expired(pod_npub: str) -> ErrorReply:
    return error(ErrorType.LEASE_EXPIRED, f"Pod {pod_npub} lease has already expired; spawn a new pod instead")


def spec_unavailable(pod_npub: str, spec_id: str) -> ErrorReply:
    return error(
        ErrorType.SPEC_UNAVAILABLE,
        f"Pod {pod_npub} references unknown spec `{spec_id}`; provider misconfiguration",
    )


def race_lost() -> ErrorReply:
    # Upstream's text says the token is kept; paygressd refunds, and says so in details.
    return error(ErrorType.RACE_LOST, "Pod was cleaned up before topup could be applied; token has been spent")


def status_not_found(pod_id: str) -> ErrorReply:
    return error(ErrorType.NOT_FOUND, f"Workload {pod_id} not found or you don't have access")


def unknown_spec(spec_id: str, known: list[str]) -> ErrorReply:
    return error(
        ErrorType.UNKNOWN_SPEC,
        f"Tier `{spec_id}` is not offered by this provider; offered: {', '.join(known)}",
    )


def stale_request(age_seconds: int) -> ErrorReply:
    return error(
        ErrorType.STALE_REQUEST,
        f"Spawn request is {age_seconds}s old; it was not processed and the token was not redeemed",
    )


def rate_limited() -> ErrorReply:
    return error(ErrorType.RATE_LIMITED, "Too many requests; slow down and retry later")


def capacity_exhausted(what: str) -> ErrorReply:
    return error(ErrorType.CAPACITY_EXHAUSTED, f"Provider has no capacity for this tier right now: {what}")


def shutting_down() -> ErrorReply:
    return error(ErrorType.SHUTTING_DOWN, "Provider is shutting down; the token was not redeemed, retry later")
