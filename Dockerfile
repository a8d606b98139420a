# syntax=docker/dockerfile:1
# One container per Salesforce org. Configuration comes from the environment (SFSIGN_*), the rules
# file and keys are mounted (ConfigMap/Secret); /data holds the SQLite outbox and artifacts.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sfsign ./sfsign
COPY salesforce-metadata ./salesforce-metadata
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /data sfsign && mkdir -p /data /config && chown sfsign /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY salesforce-metadata /opt/sfsign/salesforce-metadata
COPY config/rules.yaml /config/rules.yaml
ENV SFSIGN_DATA_DIR=/data \
    SFSIGN_RULES_FILE=/config/rules.yaml \
    SFSIGN_METADATA_DIR=/opt/sfsign/salesforce-metadata \
    SFSIGN_LOG_FORMAT=json
USER sfsign
VOLUME ["/data"]
HEALTHCHECK --interval=30s --timeout=5s CMD ["sfsign", "version"]
ENTRYPOINT ["sfsign"]
CMD ["run"]
