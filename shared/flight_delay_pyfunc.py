"""The file MLflow runs to load a model version's pyfunc ("models from code").

Copied into every version by :func:`shared.mlflow_model.save_pyfunc` and named in its
``MLmodel``; importing it anywhere else has no use.
"""

from mlflow.models import set_model

from shared.mlflow_model import FlightDelayModel

set_model(FlightDelayModel())
