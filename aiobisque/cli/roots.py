"""Which argument is the server's root: ROOT, ``$BISQUE_ROOT``, or a data_service URL."""

from __future__ import annotations

import argparse
import os
import re
from urllib.parse import urlsplit

from aiobisque.cli.exits import CommandError
from aiobisque.cli.options import ROOT_ENV
from aiobisque.protocol import redact_url

__all__ = ["split_positionals"]


def _is_root_url(text: str) -> bool:
    """An http(s) URL naming a server, not a resource (those name a uniq)."""
    if not text.startswith(("http://", "https://")):
        return False
    parts = urlsplit(text)
    return "resource=" not in parts.query and "/data_service/" not in parts.path + "/"


#: ``host:port`` (optionally with a path): a server named without its scheme.
_HOST_PORT = re.compile(r"[\w.-]+:\d+(/.*)?")


def _meant_as_root(text: str, given: int, most: int) -> bool:
    """Whether a first positional that is no http(s) root was meant as ROOT anyway.

    It was when there is one positional too many for UNIQ [PATH], or when it is clearly a
    server: another scheme (``ftp://host``) or ``host:port``.
    """
    if text.startswith(("http://", "https://")):
        return given > most  # a resource URL in ROOT's place
    return given > most or "://" in text or bool(_HOST_PORT.fullmatch(text))


def _bad_root(text: str, where: str = "ROOT") -> CommandError:
    if text.startswith(("http://", "https://")):
        return CommandError(f"{where} must be a server's root URL such as https://host, "
                            f"got {redact_url(text)!r}")
    shown = text.rpartition("@")[2]  # never echo userinfo: it may hold a password
    return CommandError(f"{where} must start with http:// or https://, got {shown!r}")


def split_positionals(args: argparse.Namespace, wanted: str,
                       most: int = 2) -> tuple[str, list[str]]:
    """(root, the other positionals): ROOT is optional when ``$BISQUE_ROOT`` is set.

    ``most`` is how many positionals the command takes after ROOT.
    """
    given = [x for x in (args.root, args.uniq, args.path) if x is not None]
    where = "ROOT"
    if given and _is_root_url(given[0]):
        root = given.pop(0)
    elif given and _meant_as_root(given[0], len(given), most):
        raise _bad_root(given[0])
    elif os.environ.get(ROOT_ENV):
        root = os.environ[ROOT_ENV]
        where = f"${ROOT_ENV}"
    elif given and "/data_service/" in urlsplit(given[0]).path:
        # a data_service URL names its server too
        url = given[0]
        root = url[: url.index("/data_service/")]
    else:
        raise CommandError(f"no server given: pass ROOT (https://host) or set ${ROOT_ENV}"
                           f" (usage: {wanted})")
    parts = urlsplit(root)
    if parts.username or parts.password:
        raise CommandError(
            "ROOT must not contain credentials; use --user with $BISQUE_PASSWORD or ~/.netrc")
    if not root.startswith(("http://", "https://")) or not parts.hostname:
        raise _bad_root(root, where)
    return root, given
