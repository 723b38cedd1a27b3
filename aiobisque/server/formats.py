"""BisQue's table exporters: what ``info`` and data requests print in each ``format:``.

Layouts follow BisQue's ``exporters/to_json.py``, ``to_csv.py``, ``to_xml.py`` and
``to_hdf5.py`` (see ``bisque-protocol.md`` section 4):

- ``json`` data: a list of per-column objects for 1-D, for 2-D with at most 5 columns (or
  headers not starting ``0,1,2``) and for tables; one nested object otherwise; ``offset``
  is the first dimension's start;
- ``extjs`` data: one object with row lists, ``headers``, ``types`` and ``sizes``;
- ``csv``: 1-D arrays and tables only (400 otherwise); ``xml``: ``<tag name="table">``;
- ``hdf``: an image with one ``/array`` (:func:`~aiobisque.server.export.hdf_body`); tables
  go through ``DataFrame.values``, so a string column cannot be exported (500).

Content types are exactly BisQue's (no charset). NaN is ``null`` in JSON. Byte strings are
served as text.
"""

from __future__ import annotations

import csv
import io
import json
import math
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np

from aiobisque.server.engine import Internal, Result
from aiobisque.server.export import Body, hdf_body

__all__ = ["CONTENT_TYPES", "FORMATS", "BadRequest", "export_data", "export_info"]

CONTENT_TYPES = {
    "json": "application/json",
    "extjs": "application/json",
    "csv": "text/csv",
    "xml": "text/xml",
    "hdf": "application/octet-stream",
}
FORMATS = tuple(CONTENT_TYPES)
# BisQue's HDF exporter sets no content type for info, so the framework's default applies
INFO_HDF_CONTENT_TYPE = "text/html; charset=utf-8"


class BadRequest(Exception):
    """A 400 the exporters answer (e.g. CSV of a 2-D array)."""


def _tostring(root: ET.Element) -> str:
    """XML as lxml writes it (BisQue's serialiser): empty elements as ``<tag .../>``."""
    # ElementTree writes " />"; a ">" inside an attribute value is always escaped
    return ET.tostring(root, encoding="unicode").replace(" />", "/>")


def _body(text: str, fmt: str) -> Body:
    return Body((text.encode("utf-8"),), CONTENT_TYPES[fmt])


def _plain(value: Any) -> Any:
    """JSON-ready values: numpy scalars and arrays as Python, bytes as text, NaN as null."""
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, complex):
        raise Internal("complex numbers have no JSON form")
    return value


def _dumps(doc: Any) -> str:
    try:
        return json.dumps(_plain(doc), allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise Internal(f"not JSON serialisable: {exc}") from None


def _matrix(result: Result) -> np.ndarray[Any, Any]:
    """``table.as_array()``: the selected array, or the frame's values."""
    if result.array is not None:
        return result.array
    if result.frame is not None:
        return result.frame.values()
    # nothing was selected: BisQue hands the exporter the PyTables node itself and fails
    raise Internal("a data request needs a range")


# -- info ------------------------------------------------------------------------------


def _info_doc(result: Result) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if result.headers:
        doc["headers"] = result.headers
        doc["types"] = result.types
        doc["sizes"] = result.sizes
    doc["group"] = result.tables
    if result.meta:
        doc["meta"] = result.meta
    return doc


def export_info(result: Result, fmt: str, url: str) -> Body:
    """``info/format:F``."""
    if fmt in ("json", "extjs"):
        return _body(_dumps(_info_doc(result)), fmt)
    if fmt == "hdf":
        return Body((), INFO_HDF_CONTENT_TYPE)
    if fmt == "csv":
        if result.headers:
            parts = [
                "headers," + ",".join(str(h) for h in result.headers),
                "types," + ",".join(str(t) for t in result.types),
                "sizes," + ",".join(str(s) for s in result.sizes),
            ]
        else:
            listing = ",".join(f"{t['path']};{t['type']}" for t in result.tables)
            parts = ["group," + listing]
        return _body(";".join(parts), fmt)
    root = ET.Element("resource", uri=url)
    if result.headers:
        # BisQue says "table" only for a DataFrame: a table nothing was selected from is
        # still its PyTables node, which it calls a matrix
        kind = "table" if result.frame is not None else "matrix"
        ET.SubElement(root, "tag", name="type", value=kind)
        ET.SubElement(root, "tag", name="headers", value=",".join(map(str, result.headers)))
        ET.SubElement(root, "tag", name="types", value=",".join(map(str, result.types)))
        ET.SubElement(root, "tag", name="sizes", value=",".join(map(str, result.sizes)))
    else:
        ET.SubElement(root, "tag", name="type", value="group")
        group = ET.SubElement(root, "tag", name="group")
        for entry in result.tables:
            ET.SubElement(group, "tag", name=entry["path"], type=entry["type"])
    for name, value in result.meta.items():
        ET.SubElement(root, "tag", name=str(name), value=_text(value))
    return _body(_tostring(root), "xml")


# -- data ------------------------------------------------------------------------------


def export_data(
    result: Result, fmt: str, url: str, layout: str = "contiguous", whole: Any = None
) -> Body:
    """``{range}[/op...]/format:F``.

    ``whole``: for csv and xml, all of a node nothing was selected from
    (:func:`~aiobisque.server.engine.whole_node`): those two exporters can read it.
    """
    if fmt == "hdf":
        matrix = _matrix(result)
        if matrix.dtype.hasobject:
            raise Internal("PyTables cannot store an object array (a string column)")
        return Body(hdf_body(matrix, layout).parts, CONTENT_TYPES["hdf"])
    if fmt == "json":
        return _body(_dumps(_json(result, _matrix(result))), fmt)
    if fmt == "extjs":
        data: Any = _matrix(result).tolist()
        if not isinstance(data, list):
            data = [data]
        doc = {
            "offset": result.offset,
            "data": data,
            "headers": result.headers,
            "types": result.types,
            "sizes": result.sizes,
        }
        return _body(_dumps(doc), fmt)
    if fmt == "csv":
        return _body(_csv(result, whole), fmt)
    if whole is not None:
        return _body(_xml(result, whole, url), fmt)
    return _body(_xml(result, _matrix(result), url), fmt)


def _json(result: Result, m: np.ndarray[Any, Any]) -> Any:
    headers = result.headers
    rank = m.ndim
    per_column = len(headers) <= 5 or headers[:3] != ["0", "1", "2"]
    if rank < 3 and per_column:
        columns = []
        for i, header in enumerate(headers):
            columns.append(
                {
                    "offset": result.offset,
                    "header": header,
                    "type": result.types[i],
                    "data": m[:, i] if rank > 1 else m,
                    "size": result.sizes[0],
                }
            )
        return columns
    return {
        "offset": result.offset,
        "type": result.types[0],
        "data": m,
        "size": result.sizes,
    }


def _csv(result: Result, whole: Any = None) -> str:
    headers = ",".join(str(h) for h in result.headers)
    if whole is not None and whole.dtype.names:
        # pandas makes a DataFrame of a PyTables table node with rows but no columns
        return headers + "\n" + "\n" * len(whole)
    if whole is not None and whole.ndim == 1:
        columns, nrows = [whole], len(whole)
    elif result.frame is not None:
        columns = result.frame.columns
        nrows = result.frame.nrows
    elif result.array is not None and result.array.ndim == 1:
        columns, nrows = [result.array], len(result.array)
    else:
        raise BadRequest("Data cannot be converted to CSV")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    cells = [[_csv_cell(v) for v in column] for column in columns]
    for row in range(nrows):
        writer.writerow([column[row] for column in cells])
    return headers + "\n" + out.getvalue()


def _csv_cell(value: Any) -> str:
    """A cell as pandas' ``to_csv`` writes it: NaN empty, numbers in their own precision."""
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, float | np.floating) and math.isnan(value):
        return ""
    return str(value)


def _text(value: Any) -> str:
    """``str()`` of a cell or attribute as Python 2 BisQue printed it (bytes as text)."""
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.dtype.kind == "S":
        return str(np.char.decode(value, "utf-8", errors="replace"))
    return str(value)


def _row_text(row: Any) -> str:
    if isinstance(row, np.ndarray) and row.ndim > 0:
        return ",".join(_row_text(cell) for cell in row)
    if isinstance(row, np.void) and row.dtype.names:
        # a table row is not iterable for BisQue's exporter: it prints the record
        cells = [_plain(row[name]) for name in row.dtype.names]
        return "(" + ", ".join(repr(c) for c in cells) + ")"
    return _text(row)


def _xml(result: Result, m: np.ndarray[Any, Any], url: str) -> str:
    if m.ndim > 0:
        rows = [_row_text(m[i]) for i in range(m.shape[0])]
    elif result.node is not None and result.array is None:
        # a scalar node: BisQue prints the PyTables node itself
        rows = [f"{result.node.name} (Array()) ''"]
    else:
        rows = [_text(m)]
    root = ET.Element("resource", uri=url)
    table = ET.SubElement(root, "tag", name="table", value=";".join(rows))
    ET.SubElement(table, "tag", name="offset", value=str(result.offset))
    ET.SubElement(table, "tag", name="headers", value=",".join(map(str, result.headers)))
    ET.SubElement(table, "tag", name="types", value=",".join(map(str, result.types)))
    ET.SubElement(table, "tag", name="sizes", value=",".join(map(str, result.sizes)))
    return _tostring(root)
