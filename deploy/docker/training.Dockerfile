# Training job on a CUDA base: PyTorch (CUDA build), scikit-learn, MLflow client.
#   docker build -f deploy/docker/training.Dockerfile -t fti/training .
# PyTorch's Linux wheels on PyPI are CUDA builds that bring their own CUDA libraries; the CUDA
# base supplies the rest of the user-space stack (cuDNN) and the NVIDIA container runtime
# conventions. Python 3.11 comes from uv's standalone builds (Ubuntu 24.04 ships 3.12).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
# Extras of pyproject.toml to install; add hopsworks for FTI_BACKEND=hopsworks:
#   --build-arg EXTRAS=training,hopsworks
ARG EXTRAS=training
COPY --from=ghcr.io/astral-sh/uv:0.8 /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_LINK_MODE=copy UV_NO_CACHE=1
RUN uv venv --python 3.11 /opt/venv
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY shared ./shared
COPY training_pipeline ./training_pipeline
RUN uv pip install --python /opt/venv/bin/python --constraint constraints.txt "torch==2.13.0" "numpy<2" ".[${EXTRAS}]"

FROM ${CUDA_IMAGE}
RUN useradd --create-home --uid 10001 fti
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FTI_DATA_ROOT=/data \
    FTI_DEVICE=auto \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
USER fti
WORKDIR /home/fti
# A job: exit 0 registered (and promoted when the gates pass), 3 refused by the gates,
# 2 bad configuration, 1 failure. Several GPUs: override the command with
#   torchrun --nproc-per-node=4 -m training_pipeline train ...
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m", "training_pipeline"]
CMD ["--help"]
