"""What the supervisor builds and checks from a configuration before it forks on it.

At start-up, before the privilege drop and the first fork, and again at every
reload before a worker of the new configuration is forked: a configuration
that fails here is refused while the running workers go on serving.
"""

from __future__ import annotations

import os
import ssl

from mtasts_fast.cache import create_cache
from mtasts_fast.config import Config
from mtasts_fast.errors import ConfigError
from mtasts_fast.fetcher import PolicyFetcher

__all__ = ["ca_stamp", "check_config", "make_fetcher"]


def make_fetcher(config: Config) -> PolicyFetcher:
    """A fetcher with the CA bundle loaded, not started; ConfigError if unusable.

    Built in the supervisor, before the privilege drop (a CA file only root
    can read still works) and before the fork; each worker starts its own
    copy's resolver and HTTP session inside its own event loop.
    """
    try:
        return PolicyFetcher(nameservers=config.nameservers, ca_file=config.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            config.filename, "ca_file", f"cannot load {config.ca_file}: {exc}"
        ) from exc
    except ValueError as exc:
        raise ConfigError(config.filename, "nameservers", str(exc)) from exc


def check_config(config: Config) -> None:
    """Raise ConfigError for what validation alone cannot see (cache backend library).

    The backend object is built and dropped again: it is never set up here,
    and each worker builds and opens its own after the fork. Building it also
    imports its module while the supervisor can still read every file.
    """
    cache = create_cache(config.cache, config.filename)
    del cache


def ca_stamp(config: Config) -> tuple[int, int, int] | None:
    """Identifies the CA file's contents, so a reload notices a replaced bundle."""
    if config.ca_file is None:
        return None
    try:
        st = os.stat(config.ca_file)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
