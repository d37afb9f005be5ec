# rnnserve's images. Each installs rnnserve's wheel (never the source tree), so build the wheel first:
#
#   python -m build --wheel --outdir dist
#   docker build --target serve -t rnnserve/serve .          # CPU serving: no torch, no onnx
#   docker build --target train -t rnnserve/train .
#   docker build --target serve-cuda -t rnnserve/serve-cuda .
#
# Each image's environment is made in a stage of its own and copied into the final one, so the wheels copied in
# to install it take no room in the image. The stages are in the order the classic builder (DOCKER_BUILDKIT=0)
# needs: it builds every stage before the target, so serve-cuda, whose base comes from NVIDIA's registry, is last.
#
# BASE is any Debian-like image with python3 (3.11 or newer) and its venv module; where no registry is reachable,
# make one with deploy/debootstrap-base.sh. Without a package index, put the dependencies' wheels in dist/ too
# (pip download --dest dist "$(ls dist/rnnserve-*.whl)[store]" async-timeout: async-timeout is what redis needs on
# Pythons before 3.11.3, bookworm's among them) and pass --build-arg PIP_INSTALL_OPTIONS="--no-index --find-links /tmp/dist".
ARG BASE=python:3.11-slim-bookworm
ARG CUDA_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# rnnserve's wheel with its dependencies and the state store's client (the store extra: --state-store), but tokenizers
# without its own (huggingface_hub and friends, ~40 MB, which download from the Hugging Face hub: the server reads
# tokenizers from model files and never downloads one), and without onnxruntime's Python tools for converting,
# optimising and quantising models (~9 MB), which serving never imports.
FROM ${BASE} AS serve-environment
ARG PIP_INSTALL_OPTIONS=""
COPY dist/ /tmp/dist/
RUN python3 -m venv /opt/rnnserve \
    && /opt/rnnserve/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps ${PIP_INSTALL_OPTIONS} /tmp/dist/rnnserve-*.whl "tokenizers>=0.20" \
    && /opt/rnnserve/bin/python -c "from importlib.metadata import requires; print('\n'.join(r.split(';')[0] for r in requires('rnnserve') if ('extra ==' not in r or 'store' in r.split(';')[1]) and not r.startswith('tokenizers')))" > /tmp/requirements.txt \
    && /opt/rnnserve/bin/pip install --no-cache-dir --disable-pip-version-check ${PIP_INSTALL_OPTIONS} -r /tmp/requirements.txt \
    && /opt/rnnserve/bin/pip uninstall -y --disable-pip-version-check pip setuptools \
    && find /opt/rnnserve -depth -type d -name tests -path '*/site-packages/numpy/*' -exec rm -rf {} + \
    && rm -rf /opt/rnnserve/lib/python3*/site-packages/onnxruntime/transformers /opt/rnnserve/lib/python3*/site-packages/onnxruntime/tools \
        /opt/rnnserve/lib/python3*/site-packages/onnxruntime/quantization

# CPU serving: the models are mounted at /models; gRPC on 50051 (both APIs, health, reflection), metrics on 8002.
FROM ${BASE} AS serve
COPY --from=serve-environment /opt/rnnserve /opt/rnnserve
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin rnnserve
# Settings as environment variables (every `rnnserve serve` flag has one: RNNSERVE_<FLAG>); a flag given to
# `docker run … rnnserve/serve serve --max-batch 32` overrides them. The grace period ends before docker stop's 10 s.
ENV PATH=/opt/rnnserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RNNSERVE_REPOSITORY=/models \
    RNNSERVE_HOST=0.0.0.0 \
    RNNSERVE_PORT=50051 \
    RNNSERVE_METRICS_HOST=0.0.0.0 \
    RNNSERVE_METRICS_PORT=8002 \
    RNNSERVE_GRACE_S=8
USER rnnserve
WORKDIR /models
EXPOSE 50051 8002
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD rnnserve health --target "127.0.0.1:${RNNSERVE_PORT}" --timeout-s 4
ENTRYPOINT ["rnnserve"]
CMD ["serve"]

FROM ${BASE} AS train-environment
ARG PIP_INSTALL_OPTIONS=""
ARG TORCH="torch>=2.4 --extra-index-url https://download.pytorch.org/whl/cpu"
COPY dist/ /tmp/dist/
RUN python3 -m venv /opt/rnnserve \
    && /opt/rnnserve/bin/pip install --no-cache-dir --disable-pip-version-check ${PIP_INSTALL_OPTIONS} ${TORCH} \
    && /opt/rnnserve/bin/pip install --no-cache-dir --disable-pip-version-check ${PIP_INSTALL_OPTIONS} "$(ls /tmp/dist/rnnserve-*.whl)[train]"

# Training and export, torch's CPU build: docker run -v "$PWD/runs:/work" rnnserve/train train --minutes 3 --out /work/lm.pt
FROM ${BASE} AS train
COPY --from=train-environment /opt/rnnserve /opt/rnnserve
RUN useradd --system --uid 10001 --create-home --shell /usr/sbin/nologin rnnserve
ENV PATH=/opt/rnnserve/bin:$PATH PYTHONUNBUFFERED=1
USER rnnserve
WORKDIR /work
ENTRYPOINT ["rnnserve"]
CMD ["--help"]

FROM ${CUDA_BASE} AS serve-cuda-environment
ARG PIP_INSTALL_OPTIONS=""
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && rm -rf /var/lib/apt/lists/*
COPY dist/ /tmp/dist/
RUN python3 -m venv /opt/rnnserve \
    && /opt/rnnserve/bin/pip install --no-cache-dir --disable-pip-version-check ${PIP_INSTALL_OPTIONS} /tmp/dist/rnnserve-*.whl \
    && /opt/rnnserve/bin/pip uninstall -y --disable-pip-version-check onnxruntime \
    && /opt/rnnserve/bin/pip install --no-cache-dir --disable-pip-version-check ${PIP_INSTALL_OPTIONS} "onnxruntime-gpu>=1.20"

# CUDA serving: the same server with onnxruntime-gpu on NVIDIA's CUDA runtime (docker run --gpus all …).
FROM ${CUDA_BASE} AS serve-cuda
RUN apt-get update && apt-get install -y --no-install-recommends python3 && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin rnnserve
COPY --from=serve-cuda-environment /opt/rnnserve /opt/rnnserve
ENV PATH=/opt/rnnserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RNNSERVE_REPOSITORY=/models \
    RNNSERVE_DEVICE=cuda \
    RNNSERVE_HOST=0.0.0.0 \
    RNNSERVE_PORT=50051 \
    RNNSERVE_METRICS_HOST=0.0.0.0 \
    RNNSERVE_METRICS_PORT=8002 \
    RNNSERVE_GRACE_S=8
USER rnnserve
WORKDIR /models
EXPOSE 50051 8002
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD rnnserve health --target "127.0.0.1:${RNNSERVE_PORT}" --timeout-s 4
ENTRYPOINT ["rnnserve"]
CMD ["serve"]
