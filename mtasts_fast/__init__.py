"""mtasts-fast: a Postfix TLS-policy socketmap daemon for MTA-STS (RFC 8461).

Importing the package has no side effects and loads nothing heavy; the daemon,
the query tool and the library modules are imported where they are used.
"""

__all__ = ["__version__"]

__version__ = "0.1.0.dev0"
