# The daily DAG's orchestrator: the Dagster webserver (UI) and daemon (schedule, run queue,
# backfills) with our code location (orchestration/). No pipeline code or dependency runs here:
# each task starts its pipeline's own image with `docker compose run`, so the image holds
# Dagster, the orchestration package and the Docker CLI with its compose plugin.
#   docker build -f deploy/docker/orchestration.Dockerfile -t fti/orchestration .
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY orchestration ./orchestration
COPY deploy/dagster ./dagster
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir --constraint constraints.txt ".[orchestration]"

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 fti \
    && mkdir -p /opt/dagster/home \
    && chown fti /opt/dagster/home
COPY --from=build /opt/venv /opt/venv
# The Docker CLI and compose plugin, from their official images (static binaries).
COPY --from=docker:27-cli /usr/local/bin/docker /usr/local/bin/docker
COPY --from=docker/compose-bin:v2.29.7 /docker-compose /usr/local/lib/docker/cli-plugins/docker-compose
# The instance (storage, run queue) and the code location to load.
COPY --from=build /src/dagster/dagster.yaml /opt/dagster/home/dagster.yaml
COPY --from=build /src/dagster/workspace.yaml /opt/dagster/workspace.yaml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAGSTER_HOME=/opt/dagster/home
USER fti
WORKDIR /opt/dagster
# Two roles from one image (webserver, daemon): each compose service declares its own check.
HEALTHCHECK NONE
ENTRYPOINT ["dagster-daemon"]
CMD ["run", "--workspace", "/opt/dagster/workspace.yaml"]
