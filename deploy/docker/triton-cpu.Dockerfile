# Triton on CPU (compose profile "cpu", laptops and CI): the tritonserver binary of the
# nvidia-pytriton wheel with its Python backend running the model's TorchScript file on a CPU
# build of PyTorch. GPU hosts run the official container (nvcr.io/nvidia/tritonserver) instead,
# with the same flags and the same model repository; only the model's config.pbtxt differs.
#   docker build -f deploy/docker/triton-cpu.Dockerfile -t fti/triton-cpu .
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY shared ./shared
COPY inference_pipeline ./inference_pipeline
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        "torch==2.13.0" \
    && /opt/venv/bin/pip install --no-cache-dir --constraint constraints.txt "numpy<2" ".[inference]"

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 fti
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FTI_TRITON_MODEL_REPOSITORY=/models \
    FTI_TRITON_RUNTIME_DIR=/tmp/triton
USER fti
WORKDIR /home/fti
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
# `triton` becomes tritonserver (exec): explicit model control on /models, which the online
# service and the batch job publish into.
ENTRYPOINT ["python", "-m", "inference_pipeline", "triton"]
CMD ["--http-port", "8000", "--grpc-port", "8001", "--metrics-port", "8002"]
