"""Read a JSON object from a file, with errors of the caller's kind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flq_audit.errors import FlqAuditError


def read_json_object(
    path: str | Path, what: str, *, missing: type[FlqAuditError], invalid: type[FlqAuditError]
) -> dict[str, Any]:
    """The JSON object in ``path``; ``missing`` if the file is absent, ``invalid`` otherwise.

    ``what`` names the file in messages, e.g. ``"model spec"`` or ``"--fl-lr file"``.
    """
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise missing(f"{what} {str(path)!r} does not exist", path=path) from err
    except ValueError as err:
        raise invalid(f"{what} {str(path)!r} is not valid JSON ({err})", path=path) from err
    if not isinstance(data, dict):
        raise invalid(f"{what} {str(path)!r} must be a JSON object", path=path)
    return data
