"""How a trace measures each restore, and what a LocoGen window does (constants the CLI offers without importing
torch)."""

from __future__ import annotations

from diffloc.errors import ConfigError

#: ``exact``: one restored run per site; ``attribution``: every site estimated from one backward pass per item;
#: ``screen``: every site estimated, the ``top_k`` highest restored exactly
METHODS = ("exact", "attribution", "screen")
#: sites a screen confirms exactly unless told otherwise
DEFAULT_TOP_K = 8
#: LocoGen's interventions: cross-attention (UNet families), and the two joint-attention ones (SD3, FLUX); see
#: :class:`~diffloc.tracing.config.LocoGenConfig`
LOCOGEN_VARIANTS = ("cross-attention", "text-stream", "prompt-injection")


def check_method(method: str, top_k: int) -> None:
    """Refuse an unknown method or a screen size below 1 (one line each).

    Raises:
        ConfigError: ``method`` is not one of :data:`METHODS`, or ``top_k`` < 1.
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be an integer >= 1 (sites the screen confirms exactly), got {top_k!r}")
