# syntax=docker/dockerfile:1
# sfsign: one container per Salesforce org (docs/operations.md).
#
# The install steps are the same as scripts/wheel-check.sh, which CI runs (Docker does not run there):
# build the wheel and its dependencies' wheels, install them into a clean virtual environment, run
# `sfsign check` against the emulator. Change one, change the other.
#
# Configuration: SFSIGN_* environment variables; the rules file (and custom templates) mounted at /config;
# keys, passphrases and PINs as files in /run/secrets (Docker/Kubernetes secrets; SFSIGN_SECRETS_DIR
# defaults to it). Nothing secret is copied into the image: .dockerignore admits only the package sources.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY salesforce-metadata ./salesforce-metadata
COPY sfsign ./sfsign
# The wheel carries salesforce-metadata/ as sfsign/salesforce_metadata (setup.py), so the runtime image
# needs no SFSIGN_METADATA_DIR. Dependencies are built here too: the runtime stage installs offline.
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# SoftHSM2 only for trying PKCS#11 keys without a real HSM: `--build-arg WITH_SOFTHSM=1`. A real HSM
# vendor's PKCS#11 library is mounted (or added in a derived image) and named in the rules file.
ARG WITH_SOFTHSM=0
# poppler-utils: pdftocairo and pdfinfo draw the document's pages for the signing pages (customer signing).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends poppler-utils \
    && if [ "$WITH_SOFTHSM" = "1" ]; then apt-get install -y --no-install-recommends softhsm2; fi \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 sfsign \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin sfsign \
    && mkdir -p /data /config \
    && chown 10001:10001 /data \
    && python -m venv /opt/sfsign
# The wheels are bind-mounted from the build stage, never copied: no layer keeps them.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    /opt/sfsign/bin/pip install --no-cache-dir --disable-pip-version-check --no-index \
        --find-links /wheels sfsign
ENV PATH=/opt/sfsign/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SFSIGN_DATA_DIR=/data \
    SFSIGN_RULES_FILE=/config/rules.yaml \
    SFSIGN_LOG_FORMAT=json \
    SFSIGN_OPS_HOST=0.0.0.0 \
    SFSIGN_OPS_PORT=8787 \
    SFSIGN_SIGNING_HOST=0.0.0.0 \
    SFSIGN_SIGNING_PORT=8788
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# 8787: /healthz, /readyz, /metrics (never public); 8788: the signing pages (behind the TLS proxy).
EXPOSE 8787 8788
# /healthz answers while the process and its event loop do; slim images have no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SFSIGN_OPS_PORT', '8787') + '/healthz', timeout=4)"]
# SIGTERM drains in-flight jobs for up to SFSIGN_SHUTDOWN_GRACE_S (20 s): give `docker stop` -t 30.
STOPSIGNAL SIGTERM
ENTRYPOINT ["sfsign"]
CMD ["run"]
