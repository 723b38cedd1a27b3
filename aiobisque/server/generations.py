"""Server generations: how BisQue 0.5/0.6, its Python 3 port and ViQi differ on the wire.

The table URL grammar is the same in all three; what differs is small and listed here, so
the rest of the server asks a :class:`Generation` instead of testing names:

* ``"bisque"`` (the default): BisQue 0.5/0.6. ``/services`` lists
  ``<tag name="service" type="NAME" value="URL"/>``; ``auth_service/session`` answers
  ``<tag name="user" value="NAME"/>``; no cookies.
* ``"py3"``: BisQue's Python 3 port. As ``"bisque"``, except that its CSV exporter calls
  pandas' ``to_csv(line_terminator=...)``, which pandas 2 no longer takes: every CSV data
  answer is its exporter's ``400 Data cannot be converted to CSV`` (``info/format:csv``
  still works). Source: ``bq/table/controllers/exporters/to_csv.py`` in BisQue. The
  port's other known failures (500 for the JSON of string cells, for matrix filters and
  for table ranges of more than two entries; see README) are not emulated: their exact
  answers were not recorded.
* ``"viqi"``: ViQi. Services renamed as ``vqapi``'s ``ServiceFactory.RENAMED_SERVICES``
  says (``table`` -> ``tables``, ``auth_service`` -> ``auths``, ``data_service`` ->
  ``meta``...); ``/services`` lists ``<service type="NAME">URL</service>`` elements (what
  ``BQSession._load_services`` reads: each child's ``type`` and text); the session is
  natural XML (``<session><user>..</user><username>NAME</username>...``, what
  ``AuthProxy._fetch_session`` and ``BQSession._check_session`` read); a request with
  valid credentials opens a cookie session (``mex_session``, the cookie ``vqapi`` pickles
  with a session) that later requests may carry instead of credentials, as ``vqapi``'s
  ``AuthProxy.login`` does (Basic for the session check, then cookies only), until
  ``{auths}/logout_handler`` (``AuthProxy.logout``) ends it; every answer carries
  ``x-viqi-api-version``. Basic credentials stay accepted on every request: nothing in
  ``vqapi`` says a ViQi server refuses them.

  Not confirmed (no ViQi server's code is public): the header's value (viqi-api sends its
  own version in ``x-viqi-api-version`` on requests and reads ``x-viqi-api-deprecated``
  from answers; that answers carry ``x-viqi-api-version`` is the protocol notes' word), the
  session document's fields beyond ``user`` and ``username`` (vqapi reads no others), and
  what ``logout_handler`` answers (here a redirect to the root, as login pages do).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["GENERATIONS", "Generation", "by_name"]

#: the names of BisQue's services in ViQi (vqapi's ServiceFactory.RENAMED_SERVICES)
VIQI_NAMES: Mapping[str, str] = MappingProxyType({
    "table": "tables",
    "auth_service": "auths",
    "data_service": "meta",
    "blob_service": "blobs",
    "image_service": "pixels",
    "dataset_service": "datasets",
    "mex_service": "mexes",
    "pipeline": "pipelines",
    "preference": "preferences",
})


@dataclass(frozen=True)
class Generation:
    """What one generation of servers does differently (see the module docstring)."""

    name: str
    #: BisQue's service name -> this generation's (absent: unchanged)
    renamed: Mapping[str, str] = field(default_factory=dict)
    #: ``/services`` as ``tag`` elements (BisQue) or ``service`` elements (ViQi)
    services_as_elements: bool = False
    #: the session document in ViQi's natural XML rather than BisQue's tag XML
    natural_session: bool = False
    #: valid credentials open a cookie session that later requests may carry
    cookie_sessions: bool = False
    #: the value of ``x-viqi-api-version`` on every answer (None: no such header)
    api_version: str | None = None
    #: CSV data answers fail with the exporter's 400 (the Python 3 port on pandas 2)
    csv_data_broken: bool = False

    def service_name(self, bisque_name: str) -> str:
        """This generation's name for one of BisQue's services."""
        return self.renamed.get(bisque_name, bisque_name)


GENERATIONS: Mapping[str, Generation] = MappingProxyType({
    "bisque": Generation("bisque"),
    "py3": Generation("py3", csv_data_broken=True),
    "viqi": Generation(
        "viqi",
        renamed=VIQI_NAMES,
        services_as_elements=True,
        natural_session=True,
        cookie_sessions=True,
        # the version vqapi's releases carry; ViQi servers' own value is not published
        api_version="0.6",
    ),
})


def by_name(name: str) -> Generation:
    """The :class:`Generation` called ``name``; ``ValueError`` names the known ones."""
    try:
        return GENERATIONS[name]
    except (KeyError, TypeError):
        known = ", ".join(GENERATIONS)
        raise ValueError(f"unknown server generation {name!r} (known: {known})") from None
