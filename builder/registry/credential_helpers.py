"""``docker-credential-*`` helpers: the docker credential-helper protocol, run with bounds.

A docker config can name a helper program for a registry (``credHelpers``) or for all of them
(``credsStore``); the secret then lives in a keychain or a cloud's token service, and the helper
is asked for it: ``docker-credential-NAME get`` with the server's address on stdin, the answer
``{"ServerURL", "Username", "Secret"}`` on stdout (docker/docker-credential-helpers). Which
helper is asked for which registry is the lookup's business (``credential_lookup.py``).

This is the one module of the registry package that starts processes. A helper may take
:data:`HELPER_TIMEOUT` seconds and write :data:`MAX_HELPER_OUTPUT` bytes to each of stdout and
stderr; it is killed past either, and its answer goes through ``json_value``'s depth and size
checks. Its output is never quoted in an error when it could be the answer itself.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import subprocess
import time
from collections.abc import Mapping
from typing import Any

from builder.errors import RegistryError
from builder.oci.canonical import json_value
from builder.registry.credentials import MAX_QUOTED, Credentials
from builder.registry.wire import KiB, MiB, size_text

#: Seconds a credential helper may take (it may have to unlock a keychain).
HELPER_TIMEOUT = 60
#: Bytes of a credential helper's output (stdout and stderr each).
MAX_HELPER_OUTPUT = MiB
_NOT_FOUND = "credentials not found"
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def helper_credentials(helper: str, server: str, env: Mapping[str, str]) -> Credentials | None:
    """What helper ``docker-credential-HELPER`` has for ``server``: None if it has nothing."""
    answer = run_credential_helper(helper, server, env)
    if not answer:
        return None
    username, secret = answer.get("Username", ""), answer.get("Secret", "")
    if not isinstance(username, str) or not isinstance(secret, str):
        raise RegistryError(f"credential helper docker-credential-{helper} gave a malformed answer for {server}")
    if not secret:
        return None
    if username == "<token>":  # the helper protocol's marker for an identity token
        return Credentials(identity_token=secret)
    return Credentials(username, secret)


def run_credential_helper(name: str, server: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``docker-credential-NAME get`` with ``server`` on stdin: its JSON answer, or {} if it has none.

    This is the docker credential-helper protocol (docker/docker-credential-helpers): the answer is
    ``{"ServerURL", "Username", "Secret"}``, and "credentials not found" on a non-zero exit means
    the helper simply has nothing for that server. The helper's output is never quoted in an error
    when it could be the answer itself.
    """
    if not _HELPER_NAME.fullmatch(name):
        raise RegistryError(f"invalid credential helper name {name!r} in the docker config")
    program = f"docker-credential-{name}"
    env = os.environ if environ is None else environ
    exe = shutil.which(program, path=env.get("PATH", os.defpath))
    if exe is None:
        raise RegistryError(f"credential helper {program} not found on PATH (it is named in the docker config)")
    try:
        returncode, stdout, stderr = _run_bounded([exe, "get"], server.encode(), environ)
    except subprocess.TimeoutExpired:
        raise RegistryError(f"credential helper {program} did not answer within {HELPER_TIMEOUT} s") from None
    except OSError as exc:
        raise RegistryError(f"credential helper {program} could not be run: {exc.strerror}") from None
    if returncode is None:
        raise RegistryError(f"credential helper {program} wrote more than {size_text(MAX_HELPER_OUTPUT)} for {server}")
    out = stdout.decode(errors="replace").strip()
    if returncode != 0:
        said = out or stderr.decode(errors="replace").strip()
        if _NOT_FOUND in said.lower():
            return {}
        line = said.splitlines()[0][:MAX_QUOTED] if said and not said.lstrip().startswith("{") else ""
        raise RegistryError(
            f"credential helper {program} failed for {server} (exit status {returncode})" + (f": {line}" if line else "")
        )
    try:
        answer = json_value(stdout)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise RegistryError(f"credential helper {program} gave a malformed answer for {server}")
    return answer


def _run_bounded(argv: list[str], stdin: bytes, environ: Mapping[str, str] | None) -> tuple[int | None, bytes, bytes]:
    """Run a helper: (exit status, stdout, stderr), or (None, ...) if it wrote more than MAX_HELPER_OUTPUT.

    ``subprocess.run`` would keep everything a helper writes; this reads both pipes as they fill
    and kills the helper at the cap or at HELPER_TIMEOUT (``subprocess.TimeoutExpired``).
    """
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=None if environ is None else dict(environ)) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        try:
            proc.stdin.write(stdin)  # a server name: far below a pipe's capacity, so this cannot block
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the helper did not read it; its exit status says the rest
        until = time.monotonic() + HELPER_TIMEOUT
        output = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        with selectors.DefaultSelector() as selector:
            for fd in output:
                selector.register(fd, selectors.EVENT_READ)
            while selector.get_map():
                left = until - time.monotonic()
                if left <= 0:
                    proc.kill()
                    raise subprocess.TimeoutExpired(argv, HELPER_TIMEOUT)
                for key, _ in selector.select(left):
                    chunk = os.read(key.fd, 64 * KiB)
                    if not chunk:
                        selector.unregister(key.fd)
                        continue
                    output[key.fd] += chunk
                    if len(output[key.fd]) > MAX_HELPER_OUTPUT:
                        proc.kill()
                        return None, b"", b""
        try:
            returncode = proc.wait(max(0.0, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        return returncode, bytes(output[proc.stdout.fileno()]), bytes(output[proc.stderr.fileno()])
