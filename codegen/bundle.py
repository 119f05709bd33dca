"""Model bundles: the joblib file that the trainer writes and codegen reads.

A bundle is a dict::

    {"format": "aiflowd-model/1",
     "estimator": <fitted RandomForestClassifier on raw features,
                   LogisticRegression, or
                   Pipeline([MinMaxScaler(), LogisticRegression()])>,
     "features": ["duration", "c_to_s_pkts", "s_to_c_pkts",
                  "c_to_s_bytes", "s_to_c_bytes"],
     "threshold": 0.5,
     "training_data": {"id": "sha256:<64 hex digits>", "rows": 1234,
                       "source": "<one line of text>"},
     "versions": {"scikit-learn": "1.9.1", "numpy": "2.4.6", ...}}

Classes are 0 (not AI) and 1 (AI). Extra keys are allowed and ignored.
"""

import logging
import math
import numbers
import platform
import re
from pathlib import Path

import joblib
import numpy as np
import scipy
import sklearn
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils.validation import check_is_fitted

from codegen.models import PREPARERS

logger = logging.getLogger(__name__)

FORMAT = "aiflowd-model/1"
FEATURES = ("duration", "c_to_s_pkts", "s_to_c_pkts", "c_to_s_bytes", "s_to_c_bytes")
FEATURE_UNITS = {
    "duration": "seconds (float), first to last packet",
    "c_to_s_pkts": "packets, client to server",
    "s_to_c_pkts": "packets, server to client",
    "c_to_s_bytes": "layer-3 bytes (IP total length), client to server",
    "s_to_c_bytes": "layer-3 bytes (IP total length), server to client",
}
REQUIRED_KEYS = ("format", "estimator", "features", "threshold", "training_data", "versions")
TRAINING_DATA_KEYS = ("id", "rows", "source")
TRAINING_DATA_ID = re.compile(r"sha256:[0-9a-f]{64}")

SUPPORTED_ESTIMATORS = (
    "RandomForestClassifier, LogisticRegression, "
    "or Pipeline([MinMaxScaler(), LogisticRegression()])"
)


class InvalidBundleError(ValueError):
    """A model bundle that cannot be used. The message names the file, the key and the fix."""


def library_versions():
    """Return the versions of the libraries that fit and pickle a model."""
    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "joblib": joblib.__version__,
    }


def save_bundle(path, estimator, *, training_data, threshold=0.5):
    """Validate a fitted estimator with its metadata and save it as a bundle.

    Parameters
    ----------
    path : str or Path
        Destination joblib file. Nothing is written if validation fails.
    estimator : fitted estimator
        A RandomForestClassifier fitted on raw features, a LogisticRegression,
        or Pipeline([MinMaxScaler(), LogisticRegression()]), with classes 0
        and 1 and the five features of ``FEATURES`` in that order.
    training_data : dict
        ``{"id": "sha256:<64 hex digits>", "rows": int, "source": str}``
        describing the data the estimator was fitted on.
    threshold : float, default=0.5
        A flow is AI when its probability is strictly above this value.

    Returns
    -------
    path : Path
    """
    path = Path(path)
    bundle = {
        "format": FORMAT,
        "estimator": estimator,
        "features": list(FEATURES),
        "threshold": threshold,
        "training_data": dict(training_data),
        "versions": library_versions(),
    }
    validate_bundle(bundle, source=str(path))
    joblib.dump(bundle, path)
    logger.info("saved model bundle %s (%s)", path, type(estimator).__name__)
    return path


def load_bundle(path):
    """Load a model bundle from a joblib file and validate it.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    InvalidBundleError
        If the file does not unpickle or a key has a wrong value.
    NotImplementedError
        If the estimator type is not supported by the code generator.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model bundle {path} not found; train one with 'aiflowd train' (it writes "
            "build/train/deploy.joblib) or use the committed data/model/aiflowd-default.joblib"
        )
    try:
        bundle = joblib.load(path)
    # Unpickling can raise almost any exception type, depending on what is wrong.
    except Exception as exc:
        raise InvalidBundleError(
            f"model bundle {path} could not be loaded ({type(exc).__name__}: {exc}); "
            "it must be a joblib file written by 'aiflowd train'"
        ) from exc
    validate_bundle(bundle, source=str(path))
    return bundle


def validate_bundle(bundle, source):
    """Raise InvalidBundleError or NotImplementedError unless ``bundle`` is usable.

    ``source`` names the bundle in messages, usually its file path.
    """
    where = f"model bundle {source}"
    if not isinstance(bundle, dict):
        raise InvalidBundleError(
            f"{where} contains a {type(bundle).__name__}, expected a dict with keys "
            f"{', '.join(REQUIRED_KEYS)}; write it with codegen.bundle.save_bundle"
        )
    missing = [key for key in REQUIRED_KEYS if key not in bundle]
    if missing:
        raise InvalidBundleError(
            f"{where} is missing the key(s) {', '.join(map(repr, missing))}; "
            "write it with codegen.bundle.save_bundle"
        )

    if bundle["format"] != FORMAT:
        raise InvalidBundleError(
            f"{where} has 'format' {bundle['format']!r}, expected {FORMAT!r}; "
            "write it again with this version's codegen.bundle.save_bundle"
        )
    features = bundle["features"]
    if not isinstance(features, (list, tuple)) or tuple(features) != FEATURES:
        raise InvalidBundleError(
            f"{where} has 'features' {features!r}, expected {list(FEATURES)!r} "
            "in this order; fit the model on the columns in that order"
        )
    _validate_threshold(bundle["threshold"], where)
    _validate_training_data(bundle["training_data"], where)
    _validate_versions(bundle["versions"], where)
    _validate_estimator(bundle["estimator"], where)


def _validate_threshold(threshold, where):
    is_number = isinstance(threshold, numbers.Real) and not isinstance(threshold, bool)
    if not is_number or not math.isfinite(threshold) or not 0.0 < threshold < 1.0:
        raise InvalidBundleError(
            f"{where} has 'threshold' {threshold!r}, expected a number strictly "
            "between 0 and 1; 0.5 gives scikit-learn's predict"
        )


def _validate_training_data(training_data, where):
    if not isinstance(training_data, dict):
        raise InvalidBundleError(
            f"{where} has 'training_data' of type {type(training_data).__name__}, "
            f"expected a dict with keys {', '.join(TRAINING_DATA_KEYS)}"
        )
    missing = [key for key in TRAINING_DATA_KEYS if key not in training_data]
    if missing:
        raise InvalidBundleError(
            f"{where} has no {', '.join(map(repr, missing))} in 'training_data'; "
            f"it needs {', '.join(TRAINING_DATA_KEYS)}"
        )

    data_id = training_data["id"]
    if not isinstance(data_id, str) or not TRAINING_DATA_ID.fullmatch(data_id):
        raise InvalidBundleError(
            f"{where} has training_data['id'] {data_id!r}, expected 'sha256:' and "
            "64 lowercase hex digits of the training data's SHA-256"
        )
    rows = training_data["rows"]
    if not isinstance(rows, numbers.Integral) or isinstance(rows, bool) or rows < 1:
        raise InvalidBundleError(
            f"{where} has training_data['rows'] {rows!r}, expected the number of "
            "training rows as a positive integer"
        )
    source = training_data["source"]
    # The source goes into comments of the generated code, so one line only.
    if not isinstance(source, str) or not source or not source.isprintable():
        raise InvalidBundleError(
            f"{where} has training_data['source'] {source!r}, expected one "
            "non-empty line of printable text naming where the data came from"
        )


def _validate_versions(versions, where):
    if not isinstance(versions, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in versions.items()
    ):
        raise InvalidBundleError(
            f"{where} has 'versions' {versions!r}, expected a dict of library "
            "names to version strings"
        )
    saved = versions.get("scikit-learn")
    if saved != sklearn.__version__:
        raise InvalidBundleError(
            f"{where} was saved with scikit-learn {saved!r}, but "
            f"{sklearn.__version__} is installed; a pickled model is only "
            f"reliable in the version that wrote it, so fit it again with "
            f"scikit-learn {sklearn.__version__}"
        )


def _validate_estimator(estimator, where):
    estimator_type = type(estimator)
    if estimator_type is Pipeline:
        _validate_pipeline_steps(estimator, where)
    elif estimator_type not in PREPARERS:
        raise NotImplementedError(
            f"{where}: estimator {estimator_type.__name__} is not supported by the "
            f"code generator; save a {SUPPORTED_ESTIMATORS}"
        )

    try:
        check_is_fitted(estimator)
    except NotFittedError as exc:
        raise InvalidBundleError(
            f"{where}: estimator {estimator_type.__name__} is not fitted; fit it "
            "before saving the bundle"
        ) from exc

    classes = estimator.classes_.tolist()
    if classes != [0, 1]:
        raise InvalidBundleError(
            f"{where}: estimator classes are {classes!r}, expected [0, 1] "
            "(0 = not AI, 1 = AI); encode the labels as 0 and 1 before fitting"
        )

    first = estimator.steps[0][1] if estimator_type is Pipeline else estimator
    if first.n_features_in_ != len(FEATURES):
        raise InvalidBundleError(
            f"{where}: estimator was fitted on {first.n_features_in_} features, "
            f"expected {len(FEATURES)}: {', '.join(FEATURES)}"
        )
    names = getattr(first, "feature_names_in_", None)
    if names is not None and tuple(names) != FEATURES:
        raise InvalidBundleError(
            f"{where}: estimator was fitted on columns {list(names)!r}, expected "
            f"{list(FEATURES)!r} in this order"
        )

    final = estimator.steps[-1][1] if estimator_type is Pipeline else estimator
    if isinstance(final, LogisticRegression):
        _validate_logistic_regression(final, where)
    else:
        _validate_forest(final, where)


def _validate_pipeline_steps(pipeline, where):
    step_types = [type(step) for _, step in pipeline.steps]
    if RandomForestClassifier in step_types:
        raise InvalidBundleError(
            f"{where}: estimator is a Pipeline around a RandomForestClassifier; "
            "forests need no scaling and the generated code scores raw counters, "
            "so fit the forest on raw features and save it without the Pipeline"
        )
    if step_types != [MinMaxScaler, LogisticRegression]:
        steps = ", ".join(step_type.__name__ for step_type in step_types)
        raise NotImplementedError(
            f"{where}: estimator Pipeline({steps}) is not supported by the code "
            "generator; the only supported Pipeline is "
            "Pipeline([MinMaxScaler(), LogisticRegression()])"
        )

    scaler = pipeline.steps[0][1]
    if scaler.clip:
        raise InvalidBundleError(
            f"{where}: MinMaxScaler has clip=True, which cannot be folded into "
            "the logistic regression's coefficients; fit it with clip=False"
        )


def _validate_logistic_regression(model, where):
    if model.coef_.shape != (1, len(FEATURES)):
        raise InvalidBundleError(
            f"{where}: LogisticRegression.coef_ has shape {model.coef_.shape}, "
            f"expected (1, {len(FEATURES)}) for a binary model"
        )
    if not (np.isfinite(model.coef_).all() and np.isfinite(model.intercept_).all()):
        raise InvalidBundleError(
            f"{where}: LogisticRegression has non-finite coefficients; fit it again "
            "on finite, scaled features"
        )


def _validate_forest(forest, where):
    if forest.n_outputs_ != 1:
        raise InvalidBundleError(
            f"{where}: RandomForestClassifier has {forest.n_outputs_} outputs, "
            "expected 1; fit it on a single label column"
        )
