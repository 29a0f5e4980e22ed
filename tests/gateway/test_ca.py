"""`python -m gateway ca`: a local CA and wildcard certificate, made once, good only for the domain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def ca(directory: Path, domain: str = "gantry.localhost") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "ca", "--dir", str(directory), f"--domain={domain}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def openssl(*argv) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *map(str, argv)], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ca") / "gateway"
    result = ca(directory)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(directory / name) for name in ("ca.crt", "ca.key", "gateway.pem")]
    return directory


def test_it_makes_a_ca_and_a_wildcard_certificate_it_signed(made):
    assert openssl("verify", "-CAfile", made / "ca.crt", made / "gateway.pem").returncode == 0
    names = openssl("x509", "-in", made / "gateway.pem", "-noout", "-ext", "subjectAltName").stdout
    assert "DNS:*.gantry.localhost, DNS:gantry.localhost" in names


def test_the_keys_are_readable_by_their_owner_only(made):
    assert (made / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (made / "gateway.pem").stat().st_mode & 0o777 == 0o600
    assert (made / "ca.crt").stat().st_mode & 0o777 == 0o644


def test_the_ca_cannot_vouch_for_another_domain(made, tmp_path):
    """Name-constrained: a certificate its key signs for any other name fails verification."""
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", "/CN=bank.example", "-addext", "subjectAltName=DNS:bank.example",
            "-keyout", tmp_path / "k.pem", "-out", tmp_path / "r.csr")
    (tmp_path / "ext").write_text("subjectAltName = DNS:bank.example\n")
    signed = openssl("x509", "-req", "-in", tmp_path / "r.csr", "-CA", made / "ca.crt", "-CAkey", made / "ca.key",
                     "-set_serial", "7", "-days", "2", "-extfile", tmp_path / "ext", "-out", tmp_path / "c.pem")
    assert signed.returncode == 0, signed.stderr
    verify = openssl("verify", "-CAfile", made / "ca.crt", tmp_path / "c.pem")
    assert verify.returncode != 0
    assert "permitted subtree violation" in verify.stdout + verify.stderr


def test_a_second_run_keeps_everything(made):
    before = {name: (made / name).read_bytes() for name in ("ca.crt", "ca.key", "gateway.pem")}
    assert ca(made).returncode == 0
    assert {name: (made / name).read_bytes() for name in before} == before


def test_a_certificate_close_to_its_end_is_replaced_by_one_from_the_same_ca(tmp_path):
    directory = tmp_path / "gw"
    assert ca(directory).returncode == 0
    ca_cert = (directory / "ca.crt").read_bytes()
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", "/CN=*.gantry.localhost", "-keyout", tmp_path / "k.pem", "-out", tmp_path / "r.csr")
    (tmp_path / "ext").write_text("subjectAltName = DNS:*.gantry.localhost, DNS:gantry.localhost\n")
    openssl("x509", "-req", "-in", tmp_path / "r.csr", "-CA", directory / "ca.crt", "-CAkey", directory / "ca.key",
            "-set_serial", "9", "-days", "10", "-extfile", tmp_path / "ext", "-out", tmp_path / "c.pem")
    short = (tmp_path / "c.pem").read_bytes() + (tmp_path / "k.pem").read_bytes()
    (directory / "gateway.pem").write_bytes(short)
    assert ca(directory).returncode == 0
    assert (directory / "ca.crt").read_bytes() == ca_cert
    assert (directory / "gateway.pem").read_bytes() != short
    assert openssl("x509", "-in", directory / "gateway.pem", "-noout", "-checkend", 30 * 86400).returncode == 0


def test_another_domain_gets_a_new_ca(tmp_path):
    directory = tmp_path / "gw"
    assert ca(directory).returncode == 0
    first = (directory / "ca.crt").read_bytes()
    assert ca(directory, "example.test").returncode == 0
    assert (directory / "ca.crt").read_bytes() != first
    names = openssl("x509", "-in", directory / "gateway.pem", "-noout", "-ext", "subjectAltName").stdout
    assert "DNS:*.example.test, DNS:example.test" in names


@pytest.mark.parametrize("domain", ["Gantry.localhost", "gantry.localhost\n", "-x.localhost", "a b", ""])
def test_a_domain_that_is_no_dns_name_is_refused(tmp_path, domain):
    result = ca(tmp_path / "gw", domain)
    assert result.returncode == 1
    assert "not a lowercase DNS name" in result.stderr
    assert not (tmp_path / "gw").exists()
