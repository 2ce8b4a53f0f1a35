# syntax=docker/dockerfile:1
#
# The servemeta sink: `atlas-sink`, Kafka lifecycle events into Apache Atlas or the local catalog.
#
#   docker build -t servemeta-atlas-sink:0.1.0 .
#   docker run --rm -e KAFKA_BOOTSTRAP_SERVERS=kafka:9092 servemeta-atlas-sink:0.1.0     # run
#   docker run --rm -e ... servemeta-atlas-sink:0.1.0 replay --from-beginning    # a subcommand
#
# EXTRAS picks the optional dependencies installed with the wheel: `sink` (the default) for the
# sink alone; docker-compose.yml builds `sink,demo` so that one image also runs the demo model
# server (`python -m demo.server`).
#
# Configuration comes from the environment only (docs/operations.md lists every variable); secrets
# from files named by *_FILE variables (ATLAS_PASSWORD_FILE, KAFKA_SASL_PASSWORD_FILE, ...), never
# from command-line arguments. Needs BuildKit (the default builder of current Docker releases).

# -- build: the project's wheel; setuptools runs here and nowhere else ----------------------------
FROM python:3.11-slim AS build
WORKDIR /src
# .dockerignore admits only what the wheel is built from.
COPY . .
RUN PIP_DISABLE_PIP_VERSION_CHECK=1 \
    pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# -- runtime: the wheel with its extras, a non-root user, nothing else -----------------------------
FROM python:3.11-slim AS runtime
ARG EXTRAS=sink

LABEL org.opencontainers.image.title="servemeta atlas-sink" \
      org.opencontainers.image.description="Model lifecycle events from Kafka into Apache Atlas" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric uid/gid, so that Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 servemeta \
    && useradd --system --uid 10001 --gid servemeta --home-dir /home/servemeta --create-home \
        --shell /usr/sbin/nologin servemeta \
    && mkdir -p /var/lib/servemeta \
    && chown servemeta:servemeta /var/lib/servemeta

# The wheel comes in through a bind mount, so it never becomes a layer of this image.
RUN --mount=type=bind,from=build,source=/dist,target=/dist \
    set -eu; \
    set -- /dist/servemeta-*.whl; \
    PIP_DISABLE_PIP_VERSION_CHECK=1 pip install --no-cache-dir "$1[${EXTRAS}]"; \
    atlas-sink --version

# SINK_METRICS_HOST: the code's default is 127.0.0.1, which no probe outside the container can
# reach. SINK_CATALOG_PATH (SINK_TARGET=local): in /var/lib/servemeta, the user's one writable
# directory; mount a volume there to keep the catalog.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SINK_METRICS_HOST=0.0.0.0 \
    SINK_METRICS_PORT=9464 \
    SINK_CATALOG_PATH=/var/lib/servemeta/catalog.sqlite

WORKDIR /var/lib/servemeta
USER 10001:10001
EXPOSE 9464

# /healthz answers 200 while the consumer loop turns, 503 when it is stuck (urlopen raises on 503).
# Only `run` serves it: one-shot commands (replay, init-types, dlq ...) finish before it matters.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SINK_METRICS_PORT', '9464') + '/healthz', timeout=4)"]

ENTRYPOINT ["atlas-sink"]
CMD ["run"]
