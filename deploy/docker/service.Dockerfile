# Online inference service: FastAPI + uvicorn workers calling an external Triton.
# No PyTorch and no Triton binary in this image (the 'serving' extra): the model runs in Triton.
#   docker build -f deploy/docker/service.Dockerfile -t fti/online-service .
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
    FTI_HOST=0.0.0.0 \
    FTI_PORT=8000 \
    FTI_TRITON_MODE=external \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
USER fti
WORKDIR /home/fti
EXPOSE 8000
# Liveness: the process answers. Readiness (/readyz: store, registry, Triton, model) is for the
# load balancer and the orchestrator's readiness probe, not a reason to restart the container.
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["python", "-m", "inference_pipeline"]
CMD ["serve"]
