# syntax=docker/dockerfile:1
# One image for every meshlet process in k8s/: `meshlet`, `meshlet-sidecar` and `python -m services.<name>`.
# The builder turns the project and its dependencies into wheels; the final stage installs only those wheels,
# so it carries no compilers, no pip cache and no source tree, and runs as an unprivileged numeric user
# (runAsNonRoot can check a number, not a name).
#
#   docker build -t meshlet:0.1.0 .          the tag k8s/base/kustomization.yaml names (the project's version)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sdk/ sdk/
COPY sidecar/ sidecar/
COPY protos/ protos/
COPY services/ services/
# grpcio, cryptography and pydantic-core publish manylinux wheels, so no compiler is needed even here.
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp
# The wheels are bind-mounted from the builder for this one step, so no layer keeps them.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels meshlet \
    && groupadd --system --gid 10001 meshlet \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent meshlet
WORKDIR /app
USER 10001:10001
# Istio's port numbers: sidecar admin, outbound, inbound mTLS.
EXPOSE 15000 15001 15006
CMD ["meshlet", "--help"]
