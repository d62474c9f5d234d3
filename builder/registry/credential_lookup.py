"""Where the credentials for a registry are found: the files ``docker login`` and ``podman login`` write.

Credentials are looked up the way containers/image and then the docker CLI do, so that whatever
login the user already did works unchanged: ``$REGISTRY_AUTH_FILE`` (else
``$XDG_RUNTIME_DIR/containers/auth.json``, or ``/run/containers/UID/auth.json`` without it, and
``$XDG_CONFIG_HOME/containers/auth.json``), then ``$DOCKER_CONFIG/config.json`` (else
``~/.docker/config.json``). The first file with something for the registry wins. In each file a
``credHelpers`` entry for the registry decides alone, then a non-empty ``auths`` entry, then the
``credsStore`` helper (docker leaves empty ``auths`` placeholders for registries whose secret is in
the store; helpers are run by ``credential_helpers.py``). Keys are matched as docker does:
``host``, ``https://host``, ``host/v1/``, ... and for Docker Hub also ``https://index.docker.io/v1/``
and ``registry-1.docker.io``.

A credentials file is read up to :data:`MAX_AUTH_FILE` bytes and its JSON goes through
``json_value``'s depth and size checks; messages about a malformed file name the file and the
key, never a value.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from builder.errors import InputError
from builder.oci.canonical import json_value
from builder.oci.reference import DOCKER_HUB, DOCKER_HUB_API, LEGACY_DOCKER_HUB
from builder.registry.credential_helpers import helper_credentials
from builder.registry.credentials import Credentials, decode_auth
from builder.registry.wire import MiB, size_text

#: Bytes of a credentials file (config.json, auth.json); real ones are a few KiB.
MAX_AUTH_FILE = 4 * MiB
#: The server address ``docker login`` uses for Docker Hub (its key in config.json, and for helpers).
HUB_SERVER = "https://index.docker.io/v1/"
_HUB_HOSTS = (DOCKER_HUB, LEGACY_DOCKER_HUB, DOCKER_HUB_API)


def auth_files(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The credential files to read, in order (containers/image's list, then docker's)."""
    return [path for path, _ in _auth_files(os.environ if environ is None else environ)]


def _auth_files(env: Mapping[str, str]) -> list[tuple[Path, bool]]:
    """(path, named by the environment): a file the user named must be readable; a default one need not."""
    home = Path(env.get("HOME") or Path.home())
    paths: list[tuple[Path, bool]] = []
    if env.get("REGISTRY_AUTH_FILE"):
        paths.append((Path(env["REGISTRY_AUTH_FILE"]), True))
    else:
        runtime = env.get("XDG_RUNTIME_DIR")
        runtime_file = Path(runtime, "containers") if runtime else Path("/run/containers", str(os.getuid()))
        paths.append((runtime_file / "auth.json", False))
        paths.append((Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "containers" / "auth.json", False))
    docker = env.get("DOCKER_CONFIG")
    paths.append((Path(docker) / "config.json", True) if docker else (home / ".docker" / "config.json", False))
    return paths


def find_credentials(registry: str, environ: Mapping[str, str] | None = None, *,
                     authfile: Path | None = None) -> Credentials | None:
    """The credentials stored for ``registry`` (``host[:port]`` as in a Reference), or None.

    ``environ`` replaces ``os.environ`` for locating files, finding helpers on ``PATH`` and running
    them; ``authfile`` (``--authfile``) takes the place of ``$REGISTRY_AUTH_FILE`` and the default
    auth.json files, docker's config.json still read after it, as containers/image does. A malformed
    file is an InputError; a helper that is missing or fails is a RegistryError.
    """
    env = os.environ if environ is None else environ
    if authfile is not None:
        env = {**env, "REGISTRY_AUTH_FILE": str(authfile)}
    registry = registry.lower()
    for path, named in _auth_files(env):
        config = read_auth_file(path, named=named)
        if config is None:
            continue
        found = _from_config(config, path, registry, env)
        if found is not None:
            return found
    return None


def read_auth_file(path: Path, *, named: bool = True) -> dict[str, Any] | None:
    """A credentials file's JSON object (for the lookup, and for a login that rewrites it); None if it
    is missing or empty.

    An unreadable default file (not ``named`` by the environment) is skipped, as docker does (a
    ``~/.docker/config.json`` left root-owned by ``sudo docker login`` must not break anonymous
    pulls); one the environment names is an error.
    """
    try:
        with path.open("rb") as file:
            data = file.read(MAX_AUTH_FILE + 1)
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        if not named:
            return None
        raise InputError(f"{path}: cannot read credentials file ({exc.strerror})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read credentials file ({exc.strerror})") from None
    if len(data) > MAX_AUTH_FILE:
        raise InputError(f"{path}: credentials file is larger than {size_text(MAX_AUTH_FILE)}")
    if not data.strip():
        return None
    try:
        value = json_value(data)
    except json.JSONDecodeError as exc:
        # the decoder's message names a position, never the content
        raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except ValueError as exc:  # not UTF-8, too deeply nested: json_value's messages quote nothing either
        raise InputError(f"{path}: cannot read credentials file ({exc})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object")
    return value


def _section(config: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = config.get(key) or {}
    if not isinstance(value, dict):
        raise InputError(f"{path}: {key!r} must be an object")
    return value


def _from_config(config: dict[str, Any], path: Path, registry: str, env: Mapping[str, str]) -> Credentials | None:
    hub = registry in _HUB_HOSTS
    helpers = _section(config, "credHelpers", path)
    match = _match_key(helpers, registry)
    if match is not None:
        helper = helpers[match]
        if not isinstance(helper, str):
            raise InputError(f"{path}: credHelpers[{match!r}] must be a string")
        return helper_credentials(helper, HUB_SERVER if hub else registry, env)

    auths = _section(config, "auths", path)
    match = _match_key(auths, registry)
    if match is not None:
        found = _from_entry(auths[match], f"{path}: auths[{match!r}]")
        if found is not None:
            return found

    store = config.get("credsStore")
    if store:
        if not isinstance(store, str):
            raise InputError(f"{path}: 'credsStore' must be a string")
        # the store knows the server under the address docker logged in with: the auths key
        return helper_credentials(store, match if match is not None else (HUB_SERVER if hub else registry), env)
    return None


def _from_entry(entry: Any, where: str) -> Credentials | None:
    """One ``auths`` entry: ``auth`` (base64 ``user:password``), or ``username``/``password``, and ``identitytoken``."""
    if not isinstance(entry, dict):
        raise InputError(f"{where} must be an object")
    for key in ("auth", "username", "password", "identitytoken"):
        if not isinstance(entry.get(key, ""), str):
            raise InputError(f"{where}: {key!r} must be a string")
    username, password = entry.get("username", ""), entry.get("password", "")
    if entry.get("auth"):
        try:
            username, password = decode_auth(entry["auth"])
        except ValueError as exc:
            raise InputError(f"{where}: 'auth' is {exc}") from None
    token = entry.get("identitytoken", "")
    if not (username or password or token):
        return None
    return Credentials(username, password, token)


def _key_host(key: str) -> str | None:
    """The host a config key names, if it names a whole registry (``host``, ``https://host/v1/``, ...)."""
    text = key.strip().lower()
    for scheme in ("https://", "http://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
            break
    host, _, rest = text.partition("/")
    # namespaced keys (``quay.io/org/repo``) hold credentials for one repository, not the registry
    return host if rest.strip("/") in ("", "v1", "v2") else None


def _match_key(mapping: Mapping[str, Any], registry: str) -> str | None:
    """The key of ``mapping`` that stands for ``registry``: exact spellings first, then any variant."""
    hosts = _HUB_HOSTS if registry in _HUB_HOSTS else (registry,)
    preferred = [HUB_SERVER] if registry in _HUB_HOSTS else []
    preferred += [h for host in hosts for h in (host, f"https://{host}", f"http://{host}")]
    for key in preferred:
        if key in mapping:
            return key
    for key in mapping:
        if _key_host(key) in hosts:
            return key
    return None
