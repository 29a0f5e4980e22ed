"""The operator CLI: `gantry-agent vm run|ls|logs|stop|rm`, `doctor`, `inventory`, `preflight`,
`gpu-kit build`, and the node's `join` and `run`.

Every command prints JSON on stdout (`vm logs` and progress events: one object per line) and
reports failures as {"error": ...} with exit code 1 (the operation failed) or 2 (bad usage),
never a traceback. The CLI is not a daemon: each command builds a MicroVmRuntime over the
data dir, lets it recover what it finds there, does its one thing and exits; the VMs keep
running, because QEMU is detached and writes its streams to files (see docs/runtime.md).

`--netns NS` moves only the VMs' network (bridge, TAPs, rules, published ports, QEMU's TAP,
the health check) into NS; the process itself stays where it runs, so image pulls and kit
downloads use the agent's own network.

`--simulate-gpus 8xH100` (or 8xH200, 4xL40S) presents that board from a fake sysfs tree in the
data dir: inventory, preflight and VFIO binding run for real against it, and its VMs boot
without passthrough (see nodes/agent/simulate.py).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodes.agent.daemon import run_daemon
from nodes.agent.errors import AgentError
from nodes.agent.guest.kit import DEFAULT_CACHE_DIR as DEFAULT_KIT_CACHE
from nodes.agent.gpu.host import GpuHost
from nodes.agent.gpu.nvml import PyNvml
from nodes.agent.guest.gpukit import ensure_gpu_kit, load_gpu_kit
from nodes.agent.inventory import collect
from nodes.agent.join import join, normalize_base, read_credential
from nodes.agent.net.tap import NETNS_RUN_DIR
from nodes.agent.runtime_build import DEFAULT_BRIDGE, DEFAULT_SUBNET, build_runtime
from nodes.agent.runtime_health import DEFAULT_HEALTH_FAILURES, DEFAULT_HEALTH_INTERVAL_S
from nodes.agent.simulate import BOARDS, SimulatedSysfs, build_tree
from nodes.agent.sysfs import Sysfs
from protocol.wire import Inventory, ReplicaSpec, VolumeMount
from protocol.vocabulary import FAILED

if TYPE_CHECKING:
    from nodes.agent.runtime import MicroVmRuntime

DEFAULT_DATA_DIR = Path("/var/lib/gantry-agent")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print usage text and exit 2
        raise UsageError(message)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _entrypoint(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--entrypoint must be a JSON list of strings: {exc}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise argparse.ArgumentTypeError("--entrypoint must be a JSON list of strings")
    return value


def _volume(text: str) -> VolumeMount:
    """`ID:SIZE_GIB:MOUNT_PATH[:ro]`, checked as the wire checks one (a mount path holds no colon)."""
    parts = text.split(":")
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] not in ("ro", "rw")) or not parts[1].isdigit():
        raise argparse.ArgumentTypeError(f"expected --volume ID:SIZE_GIB:MOUNT_PATH[:ro], got {text!r}")
    volume = VolumeMount(volume_id=parts[0], size_gib=int(parts[1]), mount_path=parts[2],
                         mode=parts[3] if len(parts) == 4 else "rw")
    try:
        volume.check()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return volume


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(text: str) -> int:
    """Bytes from `1073741824`, `512M`, `64G` or `64GiB` (binary units, as du and df print)."""
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (cleaned[:-1], cleaned[-1]) if cleaned and cleaned[-1] in "KMGT" else (cleaned, "")
    try:
        value = int(number) * _SIZE_UNITS[unit]
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a size such as 64G, 512M or a number of bytes, got {text!r}")
    return value


def _source(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address (a /32 or /128) or a prefix whose host bits are zero: a typo that would widen
    the prefix (10.0.0.5/8) is refused rather than read as 10.0.0.0/8."""
    try:
        return ipaddress.ip_network(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an IPv4/IPv6 address or prefix, got {text!r}: {exc}") from None


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 3600, got {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 100, got {text!r}")
    return int(text)


def _common(*, defaults: bool) -> argparse.ArgumentParser:
    # Subcommands take the same options, but without defaults of their own: argparse would
    # otherwise let a subparser's default overwrite a value given before the subcommand.
    def d(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    common = _Parser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=d(DEFAULT_DATA_DIR))
    common.add_argument("--kit-cache", type=Path, default=d(DEFAULT_KIT_CACHE),
                        help="host-wide guest kit cache, shared by every agent and data dir")
    common.add_argument("--netns", default=d(None),
                        help="put the VMs' network (bridge, TAPs, rules, published ports) in this namespace (ip netns)")
    common.add_argument("--bridge", default=d(DEFAULT_BRIDGE))
    common.add_argument("--subnet", type=ipaddress.IPv4Network, default=d(DEFAULT_SUBNET))
    common.add_argument("--nameserver", action="append", type=ipaddress.IPv4Address, default=d(None),
                        help="nameserver the VMs get (repeatable; default: the host's upstream resolvers)")
    common.add_argument("--block-net", action="append", type=ipaddress.IPv4Network, default=d(None), metavar="CIDR",
                        help="network VMs may not reach, beyond the special-purpose ranges always blocked "
                             "(repeatable): the control plane's, other nodes'")
    common.add_argument("--gateway-address", action="append", type=_source, default=d(None), metavar="ADDR",
                        help="the only source (IPv4/IPv6 address or CIDR prefix) that may open connections to the "
                             "VMs' published ports, refused for everyone else with a TCP reset (repeatable: the "
                             "gateways); none: published ports are open to everyone")
    common.add_argument("--simulate-gpus", choices=sorted(BOARDS), default=d(None), metavar="BOARD",
                        help=f"present this GPU board from a fake sysfs tree ({', '.join(sorted(BOARDS))}); "
                             "its VMs boot without passthrough")
    common.add_argument("--gpu-kit-suite", default=d(os.environ.get("GANTRY_GPU_KIT_SUITE") or None), metavar="RELEASE",
                        help="Debian release the GPU kit's NVIDIA driver comes from (default: this host's; trixie's "
                             "550 is the first to support the H200; $GANTRY_GPU_KIT_SUITE)")
    common.add_argument("--insecure-registry", action="append", default=d(None),
                        help="registry reached over plain HTTP (default: 127.0.0.1:5000, localhost:5000)")
    common.add_argument("--trusted-registry", action="append", default=d(None), metavar="HOST[:PORT]",
                        help="registry images may be pulled from although it is on a loopback, private or other "
                             "special address (default: $GANTRY_TRUSTED_REGISTRIES, comma-separated; else none)")
    common.add_argument("--max-unpacked-bytes", type=_size, default=d(None), metavar="SIZE",
                        help="what one image's layers may expand to on this node (64G, 512M, bytes); a pull past "
                             "it fails with that reason (default: 64G)")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common(defaults=False)
    parser = _Parser(prog="gantry-agent", parents=[_common(defaults=True)])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    vm = sub.add_parser("vm", parents=[common]).add_subparsers(dest="vm_command", required=True)

    run = vm.add_parser("run", parents=[common])
    run.add_argument("name")
    run.add_argument("--image", required=True)
    run.add_argument("--env", type=_key_value, action="append", default=[])
    run.add_argument("--secret-env", type=_key_value, action="append", default=[])
    run.add_argument("--entrypoint", type=_entrypoint)
    run.add_argument("--arg", action="append", dest="args")
    run.add_argument("--port", type=int, help="the traffic port: published, and health-checked before `running`")
    run.add_argument("--publish", type=int, action="append", default=[], metavar="PORT",
                     help="another guest port to publish beside --port (not health-checked); repeatable")
    run.add_argument("--vcpus", type=int, default=1)
    run.add_argument("--memory-mib", type=int, default=256)
    run.add_argument("--registry-user")
    run.add_argument("--registry-password-file", type=Path)
    run.add_argument("--gpu", action="append", dest="gpus", default=[], metavar="BDF",
                     help="pass this GPU (PCI address) through; repeatable")

    run.add_argument("--volume", type=_volume, action="append", dest="volumes", default=[],
                     metavar="ID:SIZE_GIB:PATH[:ro]",
                     help="a persistent volume, made (sparse, ext4) on first use and mounted at PATH; repeatable")
    vm.add_parser("ls", parents=[common])
    logs = vm.add_parser("logs", parents=[common])
    logs.add_argument("name")
    logs.add_argument("--follow", action="store_true")
    logs.add_argument("--after-seq", type=int, default=0)
    for cmd in ("stop", "rm"):
        vm.add_parser(cmd, parents=[common]).add_argument("name")
    volume = sub.add_parser("volume", parents=[common], help="the node's persistent volumes").add_subparsers(
        dest="volume_command", required=True)
    volume.add_parser("ls", parents=[common], help="every volume (GiB) and the space free for new ones")
    volume.add_parser("rm", parents=[common], help="erase a volume no VM uses").add_argument("volume_id")
    sub.add_parser("doctor", parents=[common])
    join_cmd = sub.add_parser("join", parents=[common], help="trade a join token for this node's credential")
    join_cmd.add_argument("--url", required=True, help="the control plane's base URL, e.g. http://127.0.0.1:8000")
    join_cmd.add_argument("--token", required=True)
    daemon = sub.add_parser("run", parents=[common],
                            help="the node daemon: connect to the control plane, run its replicas")
    daemon.add_argument("--health-interval", type=_positive_seconds, default=DEFAULT_HEALTH_INTERVAL_S,
                        metavar="SECONDS", help="how often each running replica with a traffic port is "
                                                f"health-checked (default {DEFAULT_HEALTH_INTERVAL_S:g})")
    daemon.add_argument("--health-failures", type=_count, default=DEFAULT_HEALTH_FAILURES, metavar="N",
                        help="failed checks in a row that report a running replica's health as failing "
                             f"(default {DEFAULT_HEALTH_FAILURES})")
    sub.add_parser("inventory", parents=[common], help="what this node is: CPUs, memory, GPUs, NVSwitches (JSON)")
    sub.add_parser("preflight", parents=[common], help="can this node pass its GPUs through, and if not, what to change")
    kit = sub.add_parser("gpu-kit", parents=[common], help="the NVIDIA driver kit for GPU VMs")
    kit.add_argument("gpu_kit_command", choices=["build", "show"])
    return parser


def _emit(obj: Any, stream=None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(obj, sort_keys=True) + "\n")
    stream.flush()


def gpu_host_from_args(args: argparse.Namespace) -> GpuHost:
    """The node's GPUs: the host's own sysfs and NVML, or a simulated board's tree (kept in the
    data dir, so its UUIDs and bindings survive restarts). Blocking: builds the tree the first time."""
    if args.simulate_gpus:
        tree = build_tree(Path(args.data_dir) / "simulated-sysfs", args.simulate_gpus)
        return GpuHost(SimulatedSysfs(tree), args.data_dir, simulated=args.simulate_gpus,
                       kit=lambda: load_gpu_kit(args.kit_cache, suite=args.gpu_kit_suite))
    return GpuHost(Sysfs("/"), args.data_dir, nvml=PyNvml(),
                   kit=lambda: load_gpu_kit(args.kit_cache, suite=args.gpu_kit_suite))


def runtime_from_args(args: argparse.Namespace, gpus: GpuHost | None = None) -> MicroVmRuntime:
    """build_runtime from the common options (every subcommand has them)."""
    return build_runtime(
        data_dir=args.data_dir, netns=args.netns, bridge=args.bridge, subnet=args.subnet,
        insecure_registries=args.insecure_registry, trusted_registries=args.trusted_registry,
        nameservers=args.nameserver, blocked_networks=args.block_net or (),
        gateway_addresses=args.gateway_address or (),
        kit_cache=args.kit_cache, gpus=gpus, max_unpacked_bytes=args.max_unpacked_bytes,
        health_interval=getattr(args, "health_interval", DEFAULT_HEALTH_INTERVAL_S),
        health_failures=getattr(args, "health_failures", DEFAULT_HEALTH_FAILURES),
    )


def _spec(args: argparse.Namespace) -> ReplicaSpec:
    password = None
    if args.registry_password_file is not None:
        if args.registry_user is None:
            raise UsageError("--registry-password-file needs --registry-user")
        try:
            password = args.registry_password_file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise UsageError(f"cannot read --registry-password-file: {exc.strerror}") from None
    return ReplicaSpec(
        name=args.name,
        image=args.image,
        registry_username=args.registry_user,
        registry_password=password if args.registry_user is not None else None,
        env=dict(args.env),
        secret_env=dict(args.secret_env),
        entrypoint=args.entrypoint,
        args=args.args,
        traffic_port=args.port,
        ports=list(args.publish),
        vcpus=args.vcpus,
        memory_mib=args.memory_mib,
        gpu_bdfs=list(args.gpus),
        volumes=list(args.volumes),
    )


async def _run(args: argparse.Namespace) -> int:
    spec = _spec(args)
    runtime = runtime_from_args(args, await asyncio.to_thread(gpu_host_from_args, args))
    queue = runtime.subscribe()

    async def progress() -> None:
        while True:
            event = await queue.get()
            if event.name == spec.name:
                _emit(event.to_dict(), sys.stderr)

    printer = asyncio.create_task(progress())
    try:
        await runtime.recover()
        info = await runtime.start(spec)
    finally:
        await asyncio.sleep(0)  # let the printer drain what start emitted last
        while not queue.empty():
            event = queue.get_nowait()
            if event.name == spec.name:
                _emit(event.to_dict(), sys.stderr)
        printer.cancel()
        await runtime.close()
    _emit(info.public())
    return 1 if info.state == FAILED else 0


async def _vm(args: argparse.Namespace) -> int:
    if args.vm_command == "run":
        return await _run(args)
    runtime = runtime_from_args(args, await asyncio.to_thread(gpu_host_from_args, args))
    try:
        if args.vm_command == "ls":
            await runtime.recover()
            _emit([info.public() for info in await runtime.list()])
        elif args.vm_command == "logs":
            async for line in runtime.logs(args.name, after_seq=args.after_seq, follow=args.follow):
                _emit(line.to_dict())
        elif args.vm_command == "stop":
            await runtime.recover()
            _emit((await runtime.stop(args.name)).public())
        elif args.vm_command == "rm":
            await runtime.recover()
            await runtime.remove(args.name)
            _emit({"removed": args.name})
    finally:
        await runtime.close()
    return 0


async def _volume_command(args: argparse.Namespace) -> int:
    runtime = runtime_from_args(args)
    try:
        await runtime.recover()
        if args.volume_command == "ls":
            usage = await runtime.volumes.usage()
            _emit({"volumes": usage.volumes, "free_volume_gib": round(usage.free_gib, 2)})
            return 0
        if not await runtime.delete_volume(args.volume_id):
            users = await runtime.volume_users(args.volume_id)
            raise AgentError(f"volume {args.volume_id} is in use by {', '.join(users) or 'a running QEMU'}: "
                             "stop and remove the VM first", permanent=True)
        _emit({"erased": args.volume_id})
        return 0
    finally:
        await runtime.close()


async def _join(args: argparse.Namespace) -> int:
    base = normalize_base(args.url)  # a mistyped URL fails before the guest kit is built
    # The inventory's accelerator is what the probe finds, and the kit and probe are then
    # ready (and cached for the host) before the daemon's first hello.
    inventory = await _inventory(args)
    cred, path = await join(base, args.token, args.data_dir, inventory)
    _emit({"node_id": cred.node_id, "hostname": inventory.hostname, "credential_file": str(path)})
    return 0


async def _inventory(args: argparse.Namespace) -> Inventory:
    """The inventory as the daemon's hello sends it; readies the guest kit and the accelerator
    probe on the way (the inventory's accelerator is the probe's answer)."""
    gpus = await asyncio.to_thread(gpu_host_from_args, args)
    runtime = runtime_from_args(args, gpus)
    try:
        _kit, accel = await runtime.host()
    finally:
        await runtime.close()
    return await asyncio.to_thread(collect, args.data_dir, accel.name, gpus=gpus, accel_reason=accel.reason)


async def _gpu_kit(args: argparse.Namespace) -> int:
    if args.simulate_gpus:
        raise UsageError("a simulated node needs no GPU kit: its VMs boot without passthrough")
    runtime = runtime_from_args(args)
    try:
        guest, _accel = await runtime.host()
    finally:
        await runtime.close()
    if args.gpu_kit_command == "build":
        kit = await ensure_gpu_kit(args.kit_cache, guest, suite=args.gpu_kit_suite)
    else:
        kit = await asyncio.to_thread(load_gpu_kit, args.kit_cache, guest.kernel_version, args.gpu_kit_suite)
        if kit is None:
            raise AgentError(f"no GPU kit built for guest kernel {guest.kernel_version} (gantry-agent gpu-kit build)")
    _emit({k: v for k, v in kit.items() if k != "supported_names"})
    return 0


async def _main(args: argparse.Namespace) -> int:
    if args.command == "join":
        return await _join(args)
    if args.command == "run":
        credential = await asyncio.to_thread(read_credential, args.data_dir)  # not joined: one line, exit 1
        gpus = await asyncio.to_thread(gpu_host_from_args, args)
        return await run_daemon(runtime_from_args(args, gpus), credential, args.data_dir, gpus=gpus,
                                kit_cache=args.kit_cache, kit_suite=args.gpu_kit_suite)
    if args.command == "inventory":
        _emit(asdict(await _inventory(args)))
        return 0
    if args.command == "preflight":
        report = (await _inventory(args)).preflight
        _emit(report)
        return 0 if report.get("passthrough") else 1
    if args.command == "gpu-kit":
        return await _gpu_kit(args)
    if args.command == "volume":
        return await _volume_command(args)
    if args.command == "doctor":
        from nodes.agent.doctor import run_doctor

        report = await run_doctor(bridge=args.bridge, kit_cache=args.kit_cache, netns=args.netns,
                                  gpus=await asyncio.to_thread(gpu_host_from_args, args))
        _emit(report)
        return 0 if report["ok"] else 1
    return await _vm(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "netns", None) and not Path(NETNS_RUN_DIR, args.netns).exists():
            raise UsageError(f"network namespace {args.netns!r} does not exist (ip netns add {args.netns})")
        return asyncio.run(_main(args))
    except UsageError as exc:
        _emit({"error": str(exc)})
        return 2
    except AgentError as exc:
        _emit({"error": exc.message, "permanent": exc.permanent})
        return 1
    except KeyboardInterrupt:
        _emit({"error": "interrupted"})
        return 130
    except Exception as exc:  # the operator gets a reason, not a traceback
        _emit({"error": f"internal error: {type(exc).__name__}: {exc}"})
        return 1
