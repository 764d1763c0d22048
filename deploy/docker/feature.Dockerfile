# Feature pipeline job: Polars + deltalake + pandera, no PyTorch, no MLflow.
#   docker build -f deploy/docker/feature.Dockerfile -t fti/feature-pipeline .
FROM python:3.11-slim AS build
# Extras of pyproject.toml to install; add hopsworks for FTI_BACKEND=hopsworks:
#   --build-arg EXTRAS=feature,hopsworks
ARG EXTRAS=feature
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY shared ./shared
COPY feature_pipeline ./feature_pipeline
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir --constraint constraints.txt "numpy<2" ".[${EXTRAS}]"

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 fti
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FTI_DATA_ROOT=/data
USER fti
WORKDIR /home/fti
# A job, not a server: its health is its exit code (0 success, 3 partial, 1 failure, 2 usage).
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m", "feature_pipeline"]
CMD ["--help"]
