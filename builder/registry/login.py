"""``pybuild login``/``logout``: credentials proven against a registry and kept where podman keeps them.

The file is the one the lookup in :mod:`builder.registry.credential_lookup` reads first: ``--authfile``, else
``$REGISTRY_AUTH_FILE``, else ``$XDG_RUNTIME_DIR/containers/auth.json`` (or
``/run/containers/UID/auth.json``) — the file ``podman login`` and ``skopeo login`` write, so a login
made by any of the three serves all of them. Its format is docker's ``config.json``: an ``auths``
object keyed by registry host, each entry ``{"auth": base64("user:password")}``; every other key
and entry in the file is kept as it was. The file is replaced atomically and is mode 0600 in a
directory of mode 0700 when pybuild creates it.

A login is checked first, as ``docker login`` does: ``GET /v2/`` with the credentials, answering a
Bearer challenge with a token request for no repository. Credentials a registry refuses are never
written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from builder.errors import InputError, OutputError
from builder.fs.atomic import write_file
from builder.oci.reference import Reference
from builder.registry.client import RegistryClient
from builder.registry.credential_lookup import auth_files, read_auth_file
from builder.registry.credentials import Credentials, encode_auth
from builder.registry.options import RegistryOptions


def auth_file(authfile: Path | None = None) -> Path:
    """Where a login is written: ``authfile``, else the first file of the lookup order."""
    return authfile if authfile is not None else auth_files()[0]


def registry_host(text: str) -> str:
    """``HOST[:PORT]`` of a registry named alone or as a reference (``docker.io`` for Docker Hub)."""
    candidate = text.removeprefix("https://").removeprefix("http://").rstrip("/")
    try:
        return Reference.parse(f"{candidate}/x" if "/" not in candidate else candidate).registry
    except ValueError as exc:
        raise InputError(f"not a registry: {text!r} ({exc})") from None


def check_login(registry: str, credentials: Credentials, options: RegistryOptions | None = None) -> None:
    """Raise RegistryError unless ``registry`` accepts ``credentials`` for ``GET /v2/``."""
    with RegistryClient(Reference.parse(f"{registry}/x"), options, credentials) as client:
        client.transport.request("GET", "/v2/", scopes=())


def save_login(registry: str, credentials: Credentials, authfile: Path | None = None) -> Path:
    """Record ``credentials`` for ``registry``; returns the file written."""
    path = auth_file(authfile)
    doc = read_auth_file(path) or {}
    auths = doc.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise InputError(f"{path}: 'auths' is not a JSON object")
    auths[registry] = {"auth": encode_auth(credentials.username, credentials.password)}
    _write(path, doc)
    return path


def remove_login(registry: str | None, authfile: Path | None = None) -> tuple[Path, bool]:
    """Forget ``registry`` (None: every registry); returns the file and whether anything was there."""
    path = auth_file(authfile)
    doc = read_auth_file(path) or {}
    auths = doc.get("auths")
    if not isinstance(auths, dict) or not auths:
        return path, False
    if registry is None:
        doc["auths"] = {}
    else:
        keys = [k for k in auths if registry_host(k) == registry]
        if not keys:
            return path, False
        for key in keys:
            del auths[key]
    _write(path, doc)
    return path, True


def _write(path: Path, doc: dict[str, Any]) -> None:
    try:
        if not path.parent.is_dir():
            path.parent.mkdir(mode=0o700, parents=True)
    except OSError as exc:
        raise OutputError(f"cannot write {str(path)!r}: {exc.strerror}") from None
    write_file(path, (json.dumps(doc, indent="\t") + "\n").encode("utf-8"), 0o600)
