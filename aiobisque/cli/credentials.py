"""Credentials for a command: never from argv; from the environment, netrc or a prompt."""

from __future__ import annotations

import argparse
import getpass
import logging
import netrc
import os
import sys
from urllib.parse import urlsplit

from aiobisque.cli.exits import EXIT_AUTH, CommandError
from aiobisque.cli.options import PASSWORD_ENV, config_from
from aiobisque.errors import InsecureTransportError
from aiobisque.protocol import redact_url
from aiobisque.session import Auth, BisqueSession, MexToken

__all__ = ["make_session", "netrc_file", "resolve_auth"]

log = logging.getLogger("aiobisque")


def netrc_file() -> tuple[str, str]:
    """(the netrc file in use, how to name it in messages): ``$NETRC`` or ``~/.netrc``."""
    path = os.environ.get("NETRC")
    if path:
        return path, f"$NETRC ({path})"
    return os.path.join(os.path.expanduser("~"), ".netrc"), "~/.netrc"


def netrc_entry(host: str) -> tuple[str, str] | None:
    """(login, password) for ``host`` from ``$NETRC`` or ``~/.netrc``, if there is one."""
    path, _ = netrc_file()
    if not os.path.isfile(path):
        return None
    try:
        entry = netrc.netrc(path).authenticators(host)
    except netrc.NetrcParseError as exc:
        # the parser's message may quote a token of the file, which can be a password
        raise CommandError(f"cannot read {exc.filename or path} (line {exc.lineno}): "
                           "it is not valid netrc syntax", EXIT_AUTH) from None
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}", EXIT_AUTH) from None
    if entry is None or not entry[0] or entry[2] is None:
        return None
    return entry[0], entry[2]


def make_session(args: argparse.Namespace, root: str, auth: Auth) -> BisqueSession:
    """The command's session (nothing is sent before it is entered).

    The session refuses credentials over plain http to another host; here that refusal
    names the option that lifts it.
    """
    try:
        return BisqueSession(root, auth=auth, config=config_from(args))
    except InsecureTransportError:
        raise CommandError(
            f"refusing to send credentials unencrypted to {redact_url(root)} (plain http); "
            "use https, or pass --allow-insecure if you accept the risk") from None


def resolve_auth(args: argparse.Namespace, root: str) -> Auth:
    """Credentials from the options, environment, netrc or a prompt; ``None``: anonymous."""
    host = urlsplit(root).hostname or ""
    if args.mex_token_env or args.user:
        # refuse before asking for a password that could not be sent: the session's own
        # rule decides, on a stand-in credential (a session does no I/O until entered)
        make_session(args, root, MexToken("-"))
    if args.mex_token_env:
        token = os.environ.get(args.mex_token_env)
        if not token:
            raise CommandError(f"--mex-token-env: environment variable {args.mex_token_env} "
                               "is not set or empty")
        return MexToken(token, user=args.user)
    if args.user:
        password = os.environ.get(PASSWORD_ENV)
        if password is None:
            entry = netrc_entry(host)
            if entry is not None and entry[0] == args.user:
                password = entry[1]
        if password is None:
            if not sys.stdin.isatty():
                raise CommandError(
                    f"no password for user {args.user!r}: set ${PASSWORD_ENV}, add {host} "
                    f"to {netrc_file()[1]}, or run in a terminal to be asked", EXIT_AUTH)
            password = getpass.getpass(f"password for {args.user} at {host}: ")
        return (args.user, password)
    entry = netrc_entry(host)
    if entry is not None:
        log.info("logging in as %s (from netrc)", entry[0])
        return entry
    return None
