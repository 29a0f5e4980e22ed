#!/usr/bin/env python3
"""The local registry and the `hello` image. Standard library only: `make registry` runs it
with the system python3, before (or without) the project's venv; the agent tests run the very
same commands, so the Makefile and the tests share one way of getting a registry.

  up          start Debian's docker-registry detached (pidfile, log and storage in the state
              dir) unless the address already answers /v2/; --htpasswd turns basic auth on
  push-hello  build gantry/hello from busybox-static as an OCI layout and push it with skopeo,
              unless the registry already holds exactly that manifest
  stop        stop an instance started by `up`
  htpasswd    print a bcrypt htpasswd line (docker-registry accepts bcrypt only)

The OCI layout is written by hand rather than with umoci: umoci repack stamps the layer with
the current time, so each build would get a new digest and be pushed again. With fixed mtimes,
sorted entries and gzip mtime=0 the digest depends on the inputs only.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
HELLO_SRC = REPO_ROOT / "images" / "hello"
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
APPLETS = (
    "sh", "ash", "cat", "echo", "env", "false", "grep", "head", "httpd", "id", "ls", "mkdir",
    "printf", "ps", "rm", "sleep", "tail", "test", "true", "uname", "wc", "wget",
)
FIXED_MTIME = 1704067200  # 2024-01-01: any constant keeps the layer digest reproducible
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def answers(addr: str) -> bool:
    """True when a Docker v2 registry answers on addr (401 counts: auth is on)."""
    try:
        with urllib.request.urlopen(f"http://{addr}/v2/", timeout=2) as resp:
            headers = resp.headers
    except urllib.error.HTTPError as exc:
        headers = exc.headers
    except OSError:
        return False
    return headers.get("Docker-Distribution-Api-Version", "").startswith("registry/2")


def cmd_up(args: argparse.Namespace) -> int:
    if answers(args.addr):
        print(f"registry already answers on {args.addr}")
        return 0
    state = Path(args.state_dir)
    data = state / args.name
    data.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["REGISTRY_HTTP_ADDR"] = args.addr
    env["REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY"] = str(data)
    if args.htpasswd:
        env["REGISTRY_AUTH_HTPASSWD_REALM"] = "gantry"
        env["REGISTRY_AUTH_HTPASSWD_PATH"] = str(Path(args.htpasswd).resolve())
    log_path = state / f"{args.name}.log"
    with open(log_path, "ab") as log:
        # Its own session: the registry outlives `make` and the test process that started it.
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(HERE / "config.yml")],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (state / f"{args.name}.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-5:]
            print(f"docker-registry exited with {proc.returncode}:", *tail, sep="\n", file=sys.stderr)
            return 1
        if answers(args.addr):
            print(f"registry started on {args.addr} (pid {proc.pid}, data {data})")
            return 0
        time.sleep(0.1)
    print(f"docker-registry did not answer on {args.addr} within 20 s; see {log_path}", file=sys.stderr)
    return 1


def cmd_stop(args: argparse.Namespace) -> int:
    pidfile = Path(args.state_dir) / f"{args.name}.pid"
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pidfile.unlink(missing_ok=True)
    return 0


def cmd_htpasswd(args: argparse.Namespace) -> int:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # libxcrypt does bcrypt; present up to Python 3.12, and we run 3.11

    # docker-registry checks the hash on every request: cost 4 keeps a test registry fast.
    hashed = crypt.crypt(args.password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << args.cost))
    if not hashed or not hashed.startswith("$2"):
        print("this libcrypt cannot make bcrypt hashes", file=sys.stderr)
        return 1
    print(f"{args.user}:{hashed}")
    return 0


def _tar_add(tar: tarfile.TarFile, name: str, *, kind: bytes, mode: int, data: bytes = b"",
             link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.linkname = link
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def hello_layer() -> bytes:
    """The hello rootfs as an uncompressed tar, byte-for-byte reproducible."""
    entries: list[tuple] = []
    for d, mode in (("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("proc", 0o555),
                    ("root", 0o700), ("run", 0o755), ("sys", 0o555), ("tmp", 0o1777)):
        entries.append((d, tarfile.DIRTYPE, mode, b"", ""))
    entries.append(("bin/busybox", tarfile.REGTYPE, 0o755, BUSYBOX.read_bytes(), ""))
    for applet in APPLETS:
        entries.append((f"bin/{applet}", tarfile.SYMTYPE, 0o777, b"", "busybox"))
    entries.append(("hello.sh", tarfile.REGTYPE, 0o755, (HELLO_SRC / "hello.sh").read_bytes(), ""))
    for name in ("passwd", "group"):
        entries.append((f"etc/{name}", tarfile.REGTYPE, 0o644, (HELLO_SRC / name).read_bytes(), ""))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, kind, mode, data, link in sorted(entries):
            _tar_add(tar, name, kind=kind, mode=mode, data=data, link=link)
    return buf.getvalue()


def _blob(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build_hello(layout: Path) -> str:
    """Write gantry/hello as an OCI layout (tag `latest`); returns the manifest digest."""
    tar = hello_layer()
    gz = gzip.compress(tar, compresslevel=9, mtime=0)
    layer_digest = _blob(layout, gz)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin", "PORT=8080", "GREETING=Hello from Gantry"],
            "Entrypoint": ["/hello.sh"],
            "Cmd": ["serve"],
            "WorkingDir": "/",
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": {"org.opencontainers.image.title": "gantry/hello"},
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
        "history": [{"created_by": "scripts/registry/registry.py from busybox-static"}],
    }
    config_bytes = _json(config)
    config_digest = _blob(layout, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer_digest, "size": len(gz)}],
    }
    manifest_bytes = _json(manifest)
    manifest_digest = _blob(layout, manifest_bytes)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest_bytes),
        "annotations": {"org.opencontainers.image.ref.name": "latest"},
    }]}
    (layout / "index.json").write_bytes(_json(index))
    return manifest_digest


def remote_digest(addr: str, repo: str, tag: str) -> str | None:
    req = urllib.request.Request(f"http://{addr}/v2/{repo}/manifests/{tag}", method="HEAD",
                                 headers={"Accept": OCI_MANIFEST})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.headers.get("Docker-Content-Digest")
    except OSError:
        return None


def cmd_push_hello(args: argparse.Namespace) -> int:
    layout = Path(args.state_dir) / "images" / "hello"
    layout.mkdir(parents=True, exist_ok=True)
    digest = build_hello(layout)
    if remote_digest(args.registry, args.repo, args.tag) == digest:
        print(f"{args.registry}/{args.repo}:{args.tag} is up to date ({digest})")
        return 0
    cmd = ["skopeo", "--insecure-policy", "copy", "--quiet", "--preserve-digests",
           "--dest-tls-verify=false"]
    if args.creds_file:
        cmd.append("--dest-creds=" + Path(args.creds_file).read_text().strip())
    cmd += [f"oci:{layout}:latest", f"docker://{args.registry}/{args.repo}:{args.tag}"]
    subprocess.run(cmd, check=True)
    print(f"pushed {args.registry}/{args.repo}:{args.tag} ({digest})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    state_default = os.environ.get("STATE_DIR", str(REPO_ROOT / ".state"))
    up = sub.add_parser("up")
    up.add_argument("--state-dir", default=state_default)
    up.add_argument("--addr", default="127.0.0.1:5000")
    up.add_argument("--name", default="registry", help="pidfile/log/data name in the state dir")
    up.add_argument("--htpasswd", help="enable basic auth with this bcrypt htpasswd file")
    up.set_defaults(func=cmd_up)
    stop = sub.add_parser("stop")
    stop.add_argument("--state-dir", default=state_default)
    stop.add_argument("--name", default="registry")
    stop.set_defaults(func=cmd_stop)
    push = sub.add_parser("push-hello")
    push.add_argument("--state-dir", default=state_default)
    push.add_argument("--registry", default="127.0.0.1:5000")
    push.add_argument("--repo", default="gantry/hello")
    push.add_argument("--tag", default="latest")
    push.add_argument("--creds-file", help="file holding USER:PASSWORD for the registry")
    push.set_defaults(func=cmd_push_hello)
    htp = sub.add_parser("htpasswd")
    htp.add_argument("user")
    htp.add_argument("password")
    htp.add_argument("--cost", type=int, default=10, help="bcrypt cost (log2 of the rounds)")
    htp.set_defaults(func=cmd_htpasswd)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
