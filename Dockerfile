# syntax=docker/dockerfile:1
# jit-sidecar image: `docker build -t jit-sidecar:0.1.0 .`
# The base is pinned to an exact tag; pin its digest too for reproducible builds:
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm   # prints sha256:...
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:... .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: build the wheel, install it (dependencies pinned in pyproject.toml) into a venv
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
RUN python -m venv /opt/jit-sidecar \
    && /opt/jit-sidecar/bin/pip wheel --no-deps --wheel-dir /dist . \
    && /opt/jit-sidecar/bin/pip install /dist/jit_sidecar-*.whl \
    && /opt/jit-sidecar/bin/python -m compileall -q /opt/jit-sidecar/lib

# ---- runtime: the venv only; no compiler, no build tools, runs as a non-root user
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="jit-sidecar" \
      org.opencontainers.image.description="Just-in-time, scoped, short-lived credentials for AI agents" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /opt/jit-sidecar /opt/jit-sidecar
# State, audit log and sockets live in volumes mounted here; owned by the runtime user so that a
# fresh named volume inherits the ownership. (The base image's shell is used at build time only.)
RUN install -d -m 0750 -o 65532 -g 65532 /var/lib/jit-sidecar /run/jit-sidecar
ENV PATH=/opt/jit-sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /var/lib/jit-sidecar
EXPOSE 9464
# Exec form throughout: nothing at runtime needs a shell.
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=2)"]
ENTRYPOINT ["jit-sidecar"]
CMD ["--help"]
