"""Fill a ModelLoaded from the model artifact on disk, so a server does not type metadata.

One reader per format returns ``ModelFacts`` (model type, artifact record with hash, size and
permissions, input and output schemas, training run, properties); ``ModelFacts.model_loaded``
adds the server's runtime and any overrides::

    facts = read_mlflow("/models/wine")           # the directory holding MLmodel
    event = facts.model_loaded(runtime=runtime, owner="team-wine")

    event = from_pmml("/models/wine.pmml", runtime=runtime, tags=["pmml"])

``facts.artifact.content_hash`` is also what ``ModelIdentity.content_hash`` wants. Only PMML
keeps statistics of the training data (its ``ModelStats``, read into ``facts.training_profile``);
a trainer that has the data passes its profile instead::

    event = from_mlflow("/models/wine", runtime=runtime,
                        training_profile=profile_features(training_columns))

Optional dependencies, imported only by the reader that needs them:

* ``read_mlflow`` needs PyYAML (MLflow itself is not needed);
* ``read_onnx`` needs ``onnx`` (the ``servemeta[onnx]`` extra);
* ``read_pmml`` needs only the standard library.
"""

from capture.artifacts._common import (
    ArtifactError,
    Digest,
    LoadedOverrides,
    ModelFacts,
    artifact_facts,
    content_digest,
    posix_access_mode,
)
from capture.artifacts._mlflow import from_mlflow, read_mlflow
from capture.artifacts._onnx import from_onnx, read_onnx
from capture.artifacts._pmml import from_pmml, read_pmml

__all__ = [
    "ArtifactError",
    "Digest",
    "LoadedOverrides",
    "ModelFacts",
    "artifact_facts",
    "content_digest",
    "from_mlflow",
    "from_onnx",
    "from_pmml",
    "posix_access_mode",
    "read_mlflow",
    "read_onnx",
    "read_pmml",
]
