# MLflow tracking server and model registry: PostgreSQL backend store (psycopg2), artifacts
# proxied to an S3-compatible object store (boto3). Clients reach artifacts through the server
# (--serve-artifacts), so only this container holds object-store credentials.
#   docker build -f deploy/docker/mlflow.Dockerfile -t fti/mlflow .
FROM python:3.11-slim AS build
ARG MLFLOW_VERSION=3.17.2
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "mlflow==${MLFLOW_VERSION}" \
        "psycopg2-binary>=2.9" "boto3>=1.34"

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 mlflow
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=2)"]
# The backend store URI holds the database password: it comes from the environment
# (MLFLOW_BACKEND_STORE_URI, an env file or a Secret), never from this image.
ENTRYPOINT ["mlflow", "server"]
CMD ["--host", "0.0.0.0", "--port", "5000"]
