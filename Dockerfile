# syntax=docker/dockerfile:1
# One image for every meshlet process in k8s/: `meshlet`, `meshlet-sidecar`, `meshlet-edge` and
# `python -m meshlet_shop.<name>`.
# The builder turns the dependencies pinned in requirements.lock (every version with its hashes: pip refuses any
# other file) and then the project into wheels; the final stage installs only those wheels, so it carries no
# compilers, no pip cache and no source tree, and runs as an unprivileged numeric user (runAsNonRoot can check a
# number, not a name). Two builds of one commit install the same files.
#
#   make image        docker build tagged meshlet:<version>-g<commit>, labelled with both (docs/kubernetes.md)
#   make lock         requirements.lock again, after changing [project] dependencies in pyproject.toml

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements.lock ./
# --require-hashes: a file whose hash the lock does not list (another version, a tampered mirror) fails the build.
RUN pip wheel --require-hashes --wheel-dir /wheels -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY sdk/ sdk/
COPY sidecar/ sidecar/
COPY protos/ protos/
COPY services/ services/
# The project alone: its dependencies are the locked wheels above. grpcio, cryptography and pydantic-core publish
# manylinux wheels, so no compiler is needed even here.
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ARG MESHLET_VERSION=unknown
ARG MESHLET_REVISION=unknown
LABEL org.opencontainers.image.title=meshlet \
      org.opencontainers.image.version=${MESHLET_VERSION} \
      org.opencontainers.image.revision=${MESHLET_REVISION}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HOME=/tmp
# The wheels are bind-mounted from the builder for this one step, so no layer keeps them. The shop-redis and
# edge-redis extras (the redis client) let the sample shop keep its state, and meshlet-edge its rate limits and
# cache, in Redis, as the prod overlay does (SHOP_STORE, edge-redis.yaml). The shop's
# descriptor set (`make protos` writes it; the wheel ships it) goes to a path that does not move with Python's
# version: meshlet-edge's edge.descriptor_sets names it (k8s/base/shop/edge/meshlet.yaml).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels "meshlet[shop-redis,edge-redis]" \
    && install -D -m 0444 \
        "$(python -c 'import meshlet_shop_api as m, pathlib; print(pathlib.Path(m.__file__).with_name("descriptors.binpb"))')" \
        /usr/share/meshlet/shop.binpb \
    && groupadd --system --gid 10001 meshlet \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent meshlet
WORKDIR /app
USER 10001:10001
# Istio's port numbers: sidecar admin, outbound, inbound mTLS; and meshlet-edge's HTTP listener.
EXPOSE 8080 15000 15001 15006
CMD ["meshlet", "--help"]
