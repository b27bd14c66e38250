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
#: which way a trace patches: ``restore`` (denoising: the corrupted run gets one site's clean value; is the site
#: *enough* to bring the attribute back?) or ``remove`` (noising: the clean run gets one site's corrupted value; is
#: the site *needed* for the attribute?)
DIRECTIONS = ("restore", "remove")


def check_direction(direction: str) -> None:
    """Refuse an unknown trace direction (one line).

    Raises:
        ConfigError: ``direction`` is not one of :data:`DIRECTIONS`.
    """
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")


def check_exact_only(method: str, *, direction: str, fraction: float) -> None:
    """Refuse, with a gradient method, what only exact patching measures (one line each): the ``remove``
    direction (the estimates are taken around the corrupted run, the point a restore starts from) and a partial
    patch, ``fraction`` < 1 (attribution estimates a full patch, and a screen ranks by it).

    Raises:
        ConfigError: ``remove`` or ``fraction`` < 1 with ``attribution``/``screen``.
    """
    if method not in METHODS or method == "exact":
        return
    if direction == "remove":
        raise ConfigError(f"direction 'remove' is traced with method 'exact' only; {method!r} estimates restores "
                          "(gradients taken at the corrupted run)")  # fmt: skip
    if fraction != 1:
        raise ConfigError(f"fraction {fraction!r} is traced with method 'exact' only; {method!r} estimates full "
                          "patches")  # fmt: skip


def check_method(method: str, top_k: int) -> None:
    """Refuse an unknown method or a screen size below 1 (one line each).

    Raises:
        ConfigError: ``method`` is not one of :data:`METHODS`, or ``top_k`` < 1.
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be an integer >= 1 (sites the screen confirms exactly), got {top_k!r}")
