# Batch scoring and monitoring jobs: the offline store, the registry and an external Triton.
# Same dependencies as the online service (the 'serving' extra: no PyTorch, no Triton binary),
# so --in-process scoring is not available in this image; score through Triton.
#   docker build -f deploy/docker/batch.Dockerfile -t fti/inference .
FROM python:3.11-slim AS build
# Extras of pyproject.toml to install; add hopsworks for FTI_BACKEND=hopsworks:
#   --build-arg EXTRAS=serving,hopsworks
ARG EXTRAS=serving
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY shared ./shared
COPY inference_pipeline ./inference_pipeline
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir --constraint constraints.txt "numpy<2" ".[${EXTRAS}]"

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 fti
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FTI_DATA_ROOT=/data \
    FTI_TRITON_MODE=external \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
USER fti
WORKDIR /home/fti
# Jobs: their health is their exit code (batch: 0 success, 1 failure, 2 usage; monitoring:
# 0 healthy, 3 drift detected, 1 failure, 2 usage). The monitoring job overrides the entrypoint
# with `python -m inference_pipeline monitor`.
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m", "inference_pipeline.batch"]
CMD ["--help"]
