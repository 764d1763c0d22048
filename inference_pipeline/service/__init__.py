"""The online inference service: FastAPI routes over the shared feature store and Triton."""

from inference_pipeline.service.app import create_app

__all__ = ["create_app"]
