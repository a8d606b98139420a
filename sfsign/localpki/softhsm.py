"""Provision a SoftHSM2 token from key and certificate files, for the tests and `sfsign demo`.

Why it works this way:
- SoftHSM2 reads `SOFTHSM2_CONF` once, when the PKCS#11 module is loaded, and a process loads a
  module only once. So this module never loads libsofthsm2 itself: token initialisation runs
  `softhsm2-util` and the key import runs a child Python process, each with `SOFTHSM2_CONF`
  pointing at the new configuration. The calling process stays free to load the module later,
  after it has set `SOFTHSM2_CONF` to `SoftHsmToken.conf_path` (tests: in a session-scoped
  fixture, before the first signature; nothing in one process can switch to another token dir).
- PINs and the key passphrase never go on a command line (world-readable in /proc): the PINs
  reach `softhsm2-util` through a pseudo-terminal with echo off (it reads PINs only from a
  terminal), and the child importer reads every secret as JSON on stdin. Tool output is scrubbed
  of the secrets before it can appear in an error.
- The key is read with `cryptography` (PKCS#8 PEM as `pki.create_demo_pki` writes it, encrypted
  or not; signing-notes pitfall 10) and stored as a sensitive, non-extractable signing key whose
  label and CKA_ID equal the certificate's, the convention every PKCS#11 tool understands.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import termios
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

MODULE_CANDIDATES = (
    Path("/usr/lib/softhsm/libsofthsm2.so"),
    Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"),
)
_TIMEOUT_SECONDS = 60.0
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class SoftHsmError(RuntimeError):
    """Provisioning failed; the message never contains a PIN or passphrase."""


@dataclass(frozen=True)
class SoftHsmToken:
    """A provisioned token. Set `SOFTHSM2_CONF` to `conf_path` before the process loads `module_path`."""

    conf_path: Path
    module_path: Path
    token_label: str
    label: str  # of the private key and of its certificate

    def environment(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf_path)}


def find_softhsm_module() -> Path | None:
    """The SoftHSM2 PKCS#11 module of a Debian/Ubuntu install, or None."""
    return next((path for path in MODULE_CANDIDATES if path.is_file()), None)


def _secret(value: str | SecretStr) -> SecretStr:
    return value if isinstance(value, SecretStr) else SecretStr(value)


def _scrub(text: str, secrets: tuple[SecretStr | None, ...]) -> str:
    for secret in secrets:
        if secret is not None and secret.get_secret_value():
            text = text.replace(secret.get_secret_value(), "***")
    return text.strip()


def write_softhsm_conf(directory: Path) -> Path:
    """`directory/softhsm2.conf` with its token store in `directory/tokens` (kept if already there)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    tokens = directory / "tokens"
    tokens.mkdir(exist_ok=True, mode=0o700)
    conf = directory / "softhsm2.conf"
    if not conf.exists():
        conf.write_text(
            f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
        )
    return conf


def _env(conf: Path) -> dict[str, str]:
    return {**os.environ, "SOFTHSM2_CONF": str(conf)}


def token_labels(conf: Path) -> list[str]:
    """Labels of the initialised tokens of this configuration (asks `softhsm2-util`, no PIN needed)."""
    out = subprocess.run(
        ["softhsm2-util", "--show-slots"], env=_env(conf), capture_output=True, text=True, timeout=_TIMEOUT_SECONDS
    ).stdout
    labels = re.findall(r"^\s*Label:[ \t]*(.*?)\s*$", out, re.M)
    return [label for label in labels if label]


def _run_on_pty(argv: list[str], conf: Path, answers: list[SecretStr]) -> tuple[int, str]:
    """Run `argv` with a pseudo-terminal as stdin/stdout and type `answers`, echo off."""
    master, slave = os.openpty()
    try:
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO  # lflag: the typed PINs are never echoed into the output
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=_env(conf), start_new_session=True, close_fds=True
        )
    finally:
        os.close(slave)
    output = bytearray()
    try:
        os.write(master, "".join(f"{a.get_secret_value()}\n" for a in answers).encode())
        while True:
            ready, _, _ = select.select([master], [], [], _TIMEOUT_SECONDS)
            if not ready:
                process.kill()
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        return process.wait(timeout=_TIMEOUT_SECONDS), output.decode(errors="replace")
    finally:
        os.close(master)


def init_softhsm_token(conf: Path, token_label: str, *, pin: str | SecretStr, so_pin: str | SecretStr) -> None:
    """Initialise a free slot as `token_label` with the given SO and user PINs (no-op if it exists)."""
    if shutil.which("softhsm2-util") is None:
        raise SoftHsmError("softhsm2-util not found (Debian: apt-get install softhsm2)")
    if token_label in token_labels(conf):
        return
    user, so = _secret(pin), _secret(so_pin)
    for name, value in (("PIN", user), ("SO PIN", so)):
        if not 4 <= len(value.get_secret_value()) <= 255 or "\n" in value.get_secret_value():
            raise SoftHsmError(f"SoftHSM2 needs a {name} of 4 to 255 characters on one line")
    rc, output = _run_on_pty(
        ["softhsm2-util", "--init-token", "--free", "--label", token_label], conf, [so, so, user, user]
    )
    if rc != 0 or token_label not in token_labels(conf):
        raise SoftHsmError(f"softhsm2-util could not initialise token {token_label!r}: {_scrub(output, (user, so))}")


def import_key_and_certificate(
    conf: Path,
    module_path: Path,
    token_label: str,
    *,
    pin: str | SecretStr,
    key_pem_path: Path,
    key_passphrase: str | SecretStr | None,
    cert_path: Path,
    label: str,
    chain_paths: tuple[Path, ...] = (),
) -> None:
    """Store the key and its certificate under `label` (plus CA certificates) via a child process."""
    user = _secret(pin)
    passphrase = _secret(key_passphrase) if key_passphrase is not None else None
    request = {
        "module": str(module_path),
        "token_label": token_label,
        "pin": user.get_secret_value(),
        "key_path": str(key_pem_path),
        "passphrase": passphrase.get_secret_value() if passphrase else None,
        "cert_path": str(cert_path),
        "label": label,
        "chain_paths": [str(p) for p in chain_paths],
    }
    env = _env(conf)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(_PACKAGE_ROOT), env.get("PYTHONPATH"))))
    done = subprocess.run(
        [sys.executable, "-m", "sfsign.localpki.softhsm"],
        input=json.dumps(request),
        env=env,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_SECONDS,
    )
    if done.returncode != 0:
        detail = _scrub(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "", (user, passphrase))
        raise SoftHsmError(f"could not import {key_pem_path.name} into token {token_label!r}: {detail}")


def provision_softhsm_token(
    directory: Path,
    *,
    token_label: str,
    pin: str | SecretStr,
    so_pin: str | SecretStr,
    key_pem_path: Path,
    key_passphrase: str | SecretStr | None,
    cert_path: Path,
    label: str,
    chain_paths: tuple[Path, ...] = (),
    module_path: Path | None = None,
) -> SoftHsmToken:
    """Write `directory/softhsm2.conf`, initialise `token_label` there (unless it exists) and import
    the key and certificate under `label` (and `chain_paths` as CA certificates).

    Calling it again with the same directory and token adds another key to the same token. The
    caller sets `SOFTHSM2_CONF` (see `SoftHsmToken.environment`) before its process first loads
    the module: SoftHSM2 reads it only then.
    """
    module = module_path or find_softhsm_module()
    if module is None:
        raise SoftHsmError("SoftHSM2 is not installed (Debian: apt-get install softhsm2)")
    conf = write_softhsm_conf(directory)
    init_softhsm_token(conf, token_label, pin=pin, so_pin=so_pin)
    import_key_and_certificate(
        conf,
        module,
        token_label,
        pin=pin,
        key_pem_path=key_pem_path,
        key_passphrase=key_passphrase,
        cert_path=cert_path,
        label=label,
        chain_paths=chain_paths,
    )
    return SoftHsmToken(conf_path=conf, module_path=module, token_label=token_label, label=label)


# ---------------------------------------------------------------------------------------------
# Child process: the only place this module loads a PKCS#11 library.
# ---------------------------------------------------------------------------------------------


def _pem_certs(path: Path) -> list[Any]:
    from cryptography import x509

    data = path.read_bytes()
    return x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data else [x509.load_der_x509_certificate(data)]


def _import_in_child(request: dict[str, Any]) -> None:
    import pkcs11
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from pkcs11 import Attribute, MechanismFlag, ObjectClass
    from pkcs11.util.ec import decode_ec_private_key
    from pkcs11.util.rsa import decode_rsa_private_key
    from pkcs11.util.x509 import decode_x509_certificate

    password = request["passphrase"].encode() if request["passphrase"] else None
    key = serialization.load_pem_private_key(Path(request["key_path"]).read_bytes(), password)
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    if isinstance(key, rsa.RSAPrivateKey):
        attrs = decode_rsa_private_key(der, capabilities=MechanismFlag.SIGN)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        attrs = decode_ec_private_key(der)
    else:
        raise SystemExit("only RSA and EC keys are supported")
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    object_id = hashlib.sha1(public).digest()  # CKA_ID links key and certificate (not a security use)
    label = request["label"]
    attrs.update(
        {
            Attribute.LABEL: label,
            Attribute.ID: object_id,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
        }
    )
    token = pkcs11.lib(request["module"]).get_token(token_label=request["token_label"])
    with token.open(rw=True, user_pin=request["pin"]) as session:
        session.create_object(attrs)
        from cryptography.hazmat.primitives.serialization import Encoding

        cert = _pem_certs(Path(request["cert_path"]))[0]
        cert_attrs = decode_x509_certificate(cert.public_bytes(Encoding.DER))
        cert_attrs.update({Attribute.LABEL: label, Attribute.ID: object_id, Attribute.TOKEN: True})
        session.create_object(cert_attrs)
        for chain_path in request["chain_paths"]:
            for ca in _pem_certs(Path(chain_path)):
                ca_attrs = decode_x509_certificate(ca.public_bytes(Encoding.DER))
                ca_label = ca.subject.rfc4514_string()[:64]
                existing = list(
                    session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.LABEL: ca_label})
                )
                if not existing:
                    ca_attrs.update({Attribute.LABEL: ca_label, Attribute.TOKEN: True})
                    session.create_object(ca_attrs)


def _child_main() -> int:
    request = json.loads(sys.stdin.read())
    try:
        _import_in_child(request)
    except Exception as exc:  # reported to the parent as one line; never includes the request
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_child_main())
