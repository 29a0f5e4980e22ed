"""The default catalog `load_catalog` installs: regions, kinds of server, global templates.

Rows are matched by slug, so the slugs here are stable identifiers: renaming a slug makes a new
row. Locations and hardware types are created in this order on an empty database, so their
integer ids (which io.net-style clients pass as `location_ids` / `hardware_id`) come out as
1, 2, 3, ... in the order listed.

NVSwitch boards (HGX H100, H200, A100: `interconnect="nvswitch"`) offer 1 or 8 GPUs per replica:
full passthrough gives a VM one GPU (its NVLinks unused) or the whole board with every NVSwitch;
2- and 4-GPU NVLink partitions need Fabric Manager's shared-NVSwitch mode (later work, see
docs/hardware.md). PCIe boxes keep every power of two up to the box.

CPU-only hardware (`cpu_only=True`) is how the tiny `hello` image runs on a node without a GPU:
a replica asks for `gpus_per_container: 0` (the only allowed count), takes one of the node's
`gpus_per_node` *slots*, gets `vcpus_per_gpu` vCPUs and `memory_gib_per_gpu` GiB, and is billed
`price_per_gpu_hour` per replica-hour.
"""

from __future__ import annotations

from decimal import Decimal

LOCATIONS = [
    {"slug": "us-east", "name": "US East (Virginia)", "country": "US"},
    {"slug": "us-west", "name": "US West (Oregon)", "country": "US"},
    {"slug": "eu-central", "name": "EU Central (Frankfurt)", "country": "DE"},
    {"slug": "ap-northeast", "name": "Asia Pacific (Tokyo)", "country": "JP"},
]

HARDWARE_TYPES = [
    {
        "slug": "h100-80gb-sxm-8x", "name": "8x H100 80GB SXM", "gpu_model": "NVIDIA H100 80GB HBM3",
        "gpu_memory_gib": 80, "gpus_per_node": 8, "allowed_gpu_counts": [1, 8],
        "vcpus_per_gpu": 16, "memory_gib_per_gpu": 200, "price_per_gpu_hour": Decimal("2.4900"), "cpu_only": False,
        "interconnect": "nvswitch",
    },
    {
        "slug": "a100-80gb-sxm-8x", "name": "8x A100 80GB SXM", "gpu_model": "NVIDIA A100-SXM4-80GB",
        "gpu_memory_gib": 80, "gpus_per_node": 8, "allowed_gpu_counts": [1, 8],
        "vcpus_per_gpu": 12, "memory_gib_per_gpu": 120, "price_per_gpu_hour": Decimal("1.5900"), "cpu_only": False,
        "interconnect": "nvswitch",
    },
    {
        "slug": "l40s-48gb-4x", "name": "4x L40S 48GB", "gpu_model": "NVIDIA L40S",
        "gpu_memory_gib": 48, "gpus_per_node": 4, "allowed_gpu_counts": [1, 2, 4],
        "vcpus_per_gpu": 8, "memory_gib_per_gpu": 64, "price_per_gpu_hour": Decimal("0.9900"), "cpu_only": False,
    },
    {
        "slug": "rtx4090-24gb-8x", "name": "8x RTX 4090 24GB", "gpu_model": "NVIDIA GeForce RTX 4090",
        "gpu_memory_gib": 24, "gpus_per_node": 8, "allowed_gpu_counts": [1, 2, 4, 8],
        "vcpus_per_gpu": 6, "memory_gib_per_gpu": 48, "price_per_gpu_hour": Decimal("0.3900"), "cpu_only": False,
    },
    {
        "slug": "cpu-small", "name": "CPU only (2 vCPU, 2 GiB)", "gpu_model": "none",
        "gpu_memory_gib": 0, "gpus_per_node": 16, "allowed_gpu_counts": [0],
        "vcpus_per_gpu": 2, "memory_gib_per_gpu": 2, "price_per_gpu_hour": Decimal("0.0200"), "cpu_only": True,
    },
    # Last, so the ids above stay what they were on an empty database.
    {
        "slug": "h200-141gb-sxm-8x", "name": "8x H200 141GB SXM", "gpu_model": "NVIDIA H200",
        "gpu_memory_gib": 141, "gpus_per_node": 8, "allowed_gpu_counts": [1, 8],
        "vcpus_per_gpu": 16, "memory_gib_per_gpu": 240, "price_per_gpu_hour": Decimal("3.4900"), "cpu_only": False,
        "interconnect": "nvswitch",
    },
]

TEMPLATES = [
    {
        "slug": "ollama", "name": "Ollama",
        "description": "Run open LLMs (Llama, Mistral, Qwen, ...) behind Ollama's HTTP API. "
                       "Pull a model with POST /api/pull after the deployment is running.",
        "image": "ollama/ollama:latest", "default_env": {"OLLAMA_HOST": "0.0.0.0:11434"},
        "entrypoint": None, "args": None, "traffic_port": 11434, "min_gpus": 1, "max_gpus": 8,
        "health_check_path": "/",
    },
    {
        "slug": "vllm", "name": "vLLM (OpenAI-compatible server)",
        "description": "High-throughput LLM serving with an OpenAI-compatible API at /v1. "
                       "Change --model in args; set HF_TOKEN as a secret for gated models.",
        "image": "vllm/vllm-openai:latest", "default_env": {},
        "entrypoint": None,
        "args": ["--model", "Qwen/Qwen2.5-1.5B-Instruct", "--host", "0.0.0.0", "--port", "8000"],
        "traffic_port": 8000, "min_gpus": 1, "max_gpus": 8, "health_check_path": "/health",
    },
    {
        "slug": "jupyter-pytorch", "name": "Jupyter Lab with PyTorch",
        "description": "JupyterLab with PyTorch and CUDA. Set JUPYTER_TOKEN as a secret env variable; "
                       "it is the password of the notebook.",
        "image": "quay.io/jupyter/pytorch-notebook:latest", "default_env": {},
        "entrypoint": None, "args": None, "traffic_port": 8888, "min_gpus": 0, "max_gpus": 8,
        "health_check_path": "/api",
    },
    {
        "slug": "hello", "name": "Hello (CPU)",
        "description": "A tiny busybox image: prints GREETING to stdout and serves it over HTTP on port 8080. "
                       "Runs on the CPU-only hardware type; handy to try the platform for cents.",
        "image": "127.0.0.1:5000/gantry/hello:latest", "default_env": {"GREETING": "Hello from Gantry"},
        "entrypoint": None, "args": None, "traffic_port": 8080, "min_gpus": 0, "max_gpus": 0,
        "health_check_path": "/",
    },
]
