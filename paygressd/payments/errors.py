"""RedeemError: every payment failure, carrying the wire reply the consumer gets (protocol §2.6)."""

from __future__ import annotations

from paygressd.wire import errors
from paygressd.wire.errors import ErrorType
from paygressd.wire.models import ErrorReply


class RedeemError(Exception):
    """A refusal with a stable ``error_type``.

    ``token_untouched`` is True only when we certainly did not spend the token (refused offline,
    or the mint said no / could not be connected to); callers may then say "your token is still good".
    """

    def __init__(self, reply: ErrorReply, *, token_untouched: bool) -> None:
        super().__init__(reply.message)
        self.reply = reply
        self.error_type = ErrorType(reply.error_type)
        self.token_untouched = token_untouched

    def __repr__(self) -> str:
        return f"RedeemError({self.error_type.value!r}, untouched={self.token_untouched})"


def invalid_token(reason: str) -> RedeemError:
    return RedeemError(errors.invalid_token(reason), token_untouched=True)


def non_whitelisted_mint(normalized_url: str) -> RedeemError:
    return RedeemError(errors.non_whitelisted_mint(normalized_url), token_untouched=True)


def unsupported_unit(unit_label: str) -> RedeemError:
    return RedeemError(errors.unsupported_unit(unit_label), token_untouched=True)


def already_spent() -> RedeemError:
    # Spent by somebody, not by us: from our side the token was not touched.
    return RedeemError(errors.token_already_spent(), token_untouched=True)


def pending() -> RedeemError:
    return RedeemError(errors.token_pending(), token_untouched=True)


def network(err: str, *, untouched: bool) -> RedeemError:
    return RedeemError(errors.mint_network_error(err), token_untouched=untouched)


def mint_rejected(err: str) -> RedeemError:
    return RedeemError(errors.mint_error(err), token_untouched=True)
