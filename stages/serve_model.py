"""The file MLflow runs to build the served model ("models from code"): `stages/serve.py` logs it
as the pyfunc's python_model, and MLflow executes it when the model is loaded (mlflow models serve,
mlflow.pyfunc.load_model). It only builds the scorer; nothing to run by hand.
"""
import mlflow.models

from stages.serve import scorer

mlflow.models.set_model(scorer())
