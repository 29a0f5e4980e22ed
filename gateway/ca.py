"""`python -m gateway ca`: a local CA and a wildcard certificate for the endpoint domain.

For `make up` and tests, where no public certificate exists for `gantry.localhost`. Made with
Debian's `openssl` CLI from a config of our own (the system's openssl.cnf plays no part), once:
a later run keeps what is there while it is still valid for more than 30 days and still for the
same domain, so a CA a user has told their curl about keeps working.

The CA is name-constrained to the domain (`nameConstraints = permitted;DNS:<domain>`): even
trusted by mistake, it cannot vouch for any other name. Its key never leaves DIR (0600).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gateway.table import LABEL, MAX_DNS_NAME

CA_DAYS = 3650
LEAF_DAYS = 397  # what browsers accept for a server certificate (398 at most)
RENEW_BEFORE_S = 30 * 24 * 3600


class CaError(RuntimeError):
    pass


@dataclass(frozen=True)
class CaFiles:
    ca_cert: Path
    ca_key: Path
    gateway_pem: Path  # the wildcard certificate, then its key: what HAProxy's `crt` takes


def ca_subject(domain: str) -> str:
    return f"CN = Gantry local CA for {domain}"


def _config(domain: str) -> str:
    return f"""[req]
distinguished_name = dn
prompt = no
[dn]
CN = Gantry local CA for {domain}
[ca_ext]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
nameConstraints = critical, permitted;DNS:{domain}
[leaf_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:*.{domain}, DNS:{domain}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def ensure_ca(directory: Path, domain: str, *, openssl: str = "openssl") -> CaFiles:
    if len(domain) > MAX_DNS_NAME - 2 or not all(LABEL.fullmatch(part) for part in domain.split(".")):
        raise CaError(f"{domain!r} is not a lowercase DNS name")
    directory.mkdir(parents=True, exist_ok=True)
    files = CaFiles(ca_cert=directory / "ca.crt", ca_key=directory / "ca.key", gateway_pem=directory / "gateway.pem")
    tool = _OpenSSL(openssl)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".ca-") as work:
        work_dir = Path(work)
        config = work_dir / "openssl.cnf"
        config.write_text(_config(domain))
        if not _ca_usable(tool, files, domain):
            tool.run("req", "-x509", "-new", "-config", str(config), "-extensions", "ca_ext", "-newkey", "ec",
                     "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-sha256", "-days", str(CA_DAYS),
                     "-set_serial", _serial(), "-keyout", str(work_dir / "ca.key"), "-out", str(work_dir / "ca.crt"))
            _install(work_dir / "ca.key", files.ca_key, 0o600)
            _install(work_dir / "ca.crt", files.ca_cert, 0o644)
        if not _leaf_usable(tool, files, domain):
            tool.run("req", "-new", "-config", str(config), "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                     "-nodes", "-subj", f"/CN=*.{domain}", "-keyout", str(work_dir / "leaf.key"),
                     "-out", str(work_dir / "leaf.csr"))
            tool.run("x509", "-req", "-in", str(work_dir / "leaf.csr"), "-CA", str(files.ca_cert),
                     "-CAkey", str(files.ca_key), "-set_serial", _serial(), "-sha256", "-days", str(LEAF_DAYS),
                     "-extfile", str(config), "-extensions", "leaf_ext", "-out", str(work_dir / "leaf.crt"))
            pem = work_dir / "gateway.pem"
            pem.write_bytes((work_dir / "leaf.crt").read_bytes() + (work_dir / "leaf.key").read_bytes())
            _install(pem, files.gateway_pem, 0o600)
    return files


class _OpenSSL:
    def __init__(self, executable: str):
        self.executable = executable

    def run(self, *argv: str) -> str:
        result = subprocess.run([self.executable, *argv], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise CaError(f"openssl {argv[0]} failed: {result.stderr.strip()}")
        return result.stdout

    def ok(self, *argv: str) -> str | None:
        result = subprocess.run([self.executable, *argv], capture_output=True, text=True, timeout=60)
        return result.stdout if result.returncode == 0 else None


def _ca_usable(tool: _OpenSSL, files: CaFiles, domain: str) -> bool:
    if not (files.ca_cert.is_file() and files.ca_key.is_file()):
        return False
    subject = tool.ok("x509", "-in", str(files.ca_cert), "-noout", "-subject", "-nameopt", "oneline")
    return (subject is not None and subject.strip() == f"subject={ca_subject(domain)}"
            and tool.ok("x509", "-in", str(files.ca_cert), "-noout", "-checkend", str(RENEW_BEFORE_S)) is not None
            and _same_key(tool, files.ca_cert, files.ca_key))


def _leaf_usable(tool: _OpenSSL, files: CaFiles, domain: str) -> bool:
    pem = str(files.gateway_pem)
    if not files.gateway_pem.is_file():
        return False
    names = tool.ok("x509", "-in", pem, "-noout", "-ext", "subjectAltName")
    return (names is not None and names.split(None, 4)[-1].strip() == f"DNS:*.{domain}, DNS:{domain}"
            and tool.ok("x509", "-in", pem, "-noout", "-checkend", str(RENEW_BEFORE_S)) is not None
            and tool.ok("verify", "-CAfile", str(files.ca_cert), pem) is not None
            and _same_key(tool, files.gateway_pem, files.gateway_pem))


def _same_key(tool: _OpenSSL, cert: Path, key: Path) -> bool:
    public = tool.ok("x509", "-in", str(cert), "-noout", "-pubkey")
    return public is not None and public == tool.ok("pkey", "-in", str(key), "-pubout")


def _install(source: Path, target: Path, mode: int) -> None:
    os.chmod(source, mode)
    os.replace(source, target)


def _serial() -> str:
    return "0x" + secrets.token_hex(16)
