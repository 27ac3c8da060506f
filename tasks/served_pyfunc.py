"""The registered model's Python code (MLflow "models from code"): copied into every logged
model and run by ``mlflow.pyfunc.load_model`` or ``mlflow models serve``.

Nothing is unpickled to load it: MLflow executes this file, which builds
:class:`transferops.serving.ImageClassifier` from the bundle artifact (state dict read with
``weights_only=True``). ``transferops`` travels with the model as a code path, so a serving
environment needs torch, torchvision, pillow, numpy and pandas, not the project.

Request: a column ``image`` of image file bytes (base64 in a JSON request). Response, per
image: ``label``, ``probability`` and ``probabilities`` (class name -> probability).
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from transferops.serving import BUNDLE_ARTIFACT


class ServedClassifier(PythonModel):
    """The pyfunc face of :class:`transferops.serving.ImageClassifier`."""

    def load_context(self, context: PythonModelContext) -> None:
        from transferops.serving import ImageClassifier

        self.classifier = ImageClassifier.from_bundle(context.artifacts[BUNDLE_ARTIFACT])

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame, params: dict | None = None) -> list[dict]:
        """Class name, its probability and every class's probability for each image.

        ``pd.DataFrame`` is one of the hints MLflow accepts without inferring a schema from it:
        the signature comes from the logged example (a column of bytes).
        """
        images = list(model_input["image"]) if hasattr(model_input, "columns") else list(model_input)
        return [p.as_dict() for p in self.classifier.predict(images)]


mlflow.models.set_model(ServedClassifier())
