"""Generate dependency-free Python and C scorers from a model bundle.

``generate(bundle_path, out_dir)`` writes three files:

- ``aiflowd_model.py`` runs under CPython and the MicroPython unix port and
  imports nothing but ``math`` (logistic regression only). It defines
  ``MODEL_ID``, ``FEATURES``, ``THRESHOLD``, ``probability(x)`` and ``is_ai(x)``.
- ``aiflowd_model.h`` and ``aiflowd_model.c`` are C99 with every symbol
  prefixed ``aiflowd_model_``: ``aiflowd_model_probability`` and
  ``aiflowd_model_is_ai`` on ``const double x[5]``.

The output is byte-for-byte deterministic for a given bundle and library
versions, so CI can regenerate it and compare with the committed files.
"""

import argparse
import hashlib
import logging
import os
import sys
from pathlib import Path

import m2cgen
import numpy as np
import sklearn

from codegen import render
from codegen.bundle import FEATURE_UNITS, FEATURES, InvalidBundleError, load_bundle
from codegen.models import prepare

logger = logging.getLogger(__name__)

OUTPUT_FILES = {
    "python": render.MODULE + ".py",
    "c_header": render.MODULE + ".h",
    "c_source": render.MODULE + ".c",
}


def generate(bundle_path, out_dir):
    """Write the Python and C scorers for a model bundle into ``out_dir``.

    Parameters
    ----------
    bundle_path : str or Path
        Model bundle (joblib) as written by :func:`codegen.bundle.save_bundle`.
    out_dir : str or Path
        Output directory, created if missing. Existing files of the same
        names are replaced.

    Returns
    -------
    paths : dict of str to Path
        ``{"python": ..., "c_header": ..., "c_source": ...}``.
    """
    bundle = load_bundle(bundle_path)
    export_model = prepare(bundle["estimator"])
    python_scoring = render.python_scoring_code(export_model)
    c_scoring = render.c_scoring_code(export_model)

    info = render.ModelInfo(
        model_id=model_id(export_model, python_scoring, bundle["threshold"]),
        summary=export_model.summary,
        output=export_model.output,
        n_trees=export_model.n_trees,
        features=FEATURES,
        feature_units=FEATURE_UNITS,
        threshold=float(bundle["threshold"]),
        training_data=bundle["training_data"],
        versions=generator_versions(),
    )
    texts = {
        "python": render.python_module(info, python_scoring),
        "c_header": render.c_header(info),
        "c_source": render.c_source(info, c_scoring),
    }

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, name in OUTPUT_FILES.items():
        paths[key] = _write_text(out_dir / name, texts[key])
    logger.info(
        "generated model %s (%s) from %s into %s",
        info.model_id,
        export_model.summary,
        bundle_path,
        out_dir,
    )
    return paths


def model_id(export_model, python_scoring, threshold):
    """Return 12 hex digits of a SHA-256 over what decides the scores and labels.

    The hash covers the model kind and output, the number of trees, the
    feature order, the threshold and m2cgen's Python scoring code, which
    spells out every coefficient, split and leaf value.
    """
    parts = (
        export_model.kind,
        export_model.output,
        str(export_model.n_trees),
        ",".join(FEATURES),
        repr(float(threshold)),
        python_scoring,
    )
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def generator_versions():
    """Return the versions that shape the generated text, in banner order."""
    return {
        "m2cgen": m2cgen.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
    }


def main(argv=None):
    """Run ``aiflowd codegen --model PATH --out DIR`` and return the exit status."""
    parser = argparse.ArgumentParser(
        prog="aiflowd codegen",
        description="Generate dependency-free Python and C scorers from a model bundle.",
    )
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        help="model bundle (joblib) written by the trainer",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help=f"output directory for {', '.join(OUTPUT_FILES.values())}, created if missing",
    )
    args = parser.parse_args(argv)

    try:
        paths = generate(args.model, args.out)
    except (FileNotFoundError, InvalidBundleError, NotImplementedError) as exc:
        print(f"aiflowd codegen: error: {exc}", file=sys.stderr)
        return 1
    for path in paths.values():
        print(path)
    return 0


def _write_text(path, text):
    # Write beside the target and rename, so a failed run leaves no half file.
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)
    os.replace(partial, path)
    logger.debug("wrote %s (%d bytes)", path, len(text.encode("utf-8")))
    return path


if __name__ == "__main__":
    sys.exit(main())
