"""Turn a validated bundle estimator into the m2cgen syntax tree that gets exported.

Each supported estimator type has a preparer in ``PREPARERS``. A preparer
never changes its input. It returns an :class:`ExportModel` whose syntax tree
scores raw flow features, takes scikit-learn's branches on float64 inputs, and
for forests adds up the same float64 values in the same order as scikit-learn.
"""

import copy
import logging
from dataclasses import dataclass

import numpy as np
from m2cgen import ast
from m2cgen.assemblers import TreeModelAssembler, get_assembler_cls
from m2cgen.assemblers.utils import apply_op_to_expressions
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler

from codegen.float32 import split_bounds

logger = logging.getLogger(__name__)

TREE_LEAF = -1

CLASS_SUMS = "class_sums"
DECISION_VALUE = "decision_value"


@dataclass(frozen=True)
class ExportModel:
    """A model ready for m2cgen's interpreters, with what its code returns.

    ``output`` is ``CLASS_SUMS`` when the code returns ``[s0, s1]``, the
    per-class sums of the trees' leaf fractions, which the caller divides by
    ``n_trees``. It is ``DECISION_VALUE`` when the code returns the logit of
    class 1. ``estimator`` is the scikit-learn model that ``model_ast``
    spells out: the rewritten forest or the folded logistic regression.
    """

    kind: str
    summary: str
    estimator: object
    model_ast: object
    output: str
    n_trees: int = 0


def prepare(estimator):
    """Return the :class:`ExportModel` for a supported, fitted estimator."""
    return PREPARERS[type(estimator)](estimator)


def prepare_forest(forest):
    depth = max(tree.tree_.max_depth for tree in forest.estimators_)
    n_trees = len(forest.estimators_)
    exact = with_float32_exact_thresholds(forest)
    return ExportModel(
        kind="random_forest",
        summary=f"RandomForestClassifier, {n_trees} trees, max depth {depth}",
        estimator=exact,
        model_ast=forest_class_sums_ast(exact),
        output=CLASS_SUMS,
        n_trees=n_trees,
    )


def prepare_logistic_regression(model):
    return ExportModel(
        kind="logistic_regression",
        summary="LogisticRegression (binary)",
        estimator=model,
        model_ast=get_assembler_cls(model)(model).assemble(),
        output=DECISION_VALUE,
    )


def prepare_scaled_logistic_regression(pipeline):
    scaler, model = (step for _, step in pipeline.steps)
    folded = fold_min_max_scaler(scaler, model)
    return ExportModel(
        kind="logistic_regression",
        summary="LogisticRegression (binary), MinMaxScaler folded into its coefficients",
        estimator=folded,
        model_ast=get_assembler_cls(folded)(folded).assemble(),
        output=DECISION_VALUE,
    )


PREPARERS = {
    RandomForestClassifier: prepare_forest,
    LogisticRegression: prepare_logistic_regression,
    Pipeline: prepare_scaled_logistic_regression,
}


class StoredLeafTreeAssembler(TreeModelAssembler):
    """m2cgen's tree assembler with each leaf's class fractions as scikit-learn stores them.

    m2cgen 0.10.0 divides every leaf by its sum once more. scikit-learn 1.9.1
    stores fractions and its predict_proba uses them as they are, so that
    second division could move a leaf value by one ulp.
    """

    def _assemble_leaf(self, node_id):
        return ast.VectorVal([ast.NumVal(value) for value in self._tree.value[node_id][0]])


def forest_class_sums_ast(forest):
    """Return the syntax tree of the per-class sums of a forest's leaf fractions.

    The trees are added left to right, as scikit-learn's predict_proba adds
    them (with n_jobs=None). Unlike m2cgen's own forest, which multiplies the
    sum by ``1 / n_trees``, the generated caller divides by ``n_trees`` as
    scikit-learn does. The product can differ by one ulp, which decides
    votes that land on the threshold. With m2cgen, 7 of 10 trees give
    0.7000000000000001, which is above a threshold of 0.7, where
    scikit-learn gives 0.7. And 49 of 98 trees give 0.49999999999999994
    instead of 0.5.
    """
    # NOTE: a NaN feature always takes the right branch here, because NaN <= m
    # is false, while scikit-learn routes it by the node's missing_go_to_left.
    # Flow counters are never NaN, so callers must reject NaN before scoring.
    trees = [StoredLeafTreeAssembler(tree).assemble() for tree in forest.estimators_]
    return apply_op_to_expressions(ast.BinNumOpType.ADD, *trees)


def with_float32_exact_thresholds(forest):
    """Return a deep copy of a forest whose thresholds compare float64 inputs exactly.

    Every split threshold ``t`` becomes the bound ``m`` from
    :func:`codegen.float32.split_bounds`, so the generated ``x <= m`` takes
    the branch that scikit-learn's ``float32(x) <= t`` takes. scikit-learn's
    own predictions do not change either, because a float32 is ``<= t``
    exactly when it is ``<= m``. Leaf nodes keep their placeholder threshold.
    """
    forest = copy.deepcopy(forest)
    changed = 0
    total = 0
    for tree in forest.estimators_:
        nodes = tree.tree_
        internal = np.flatnonzero(nodes.children_left != TREE_LEAF)
        thresholds = nodes.threshold
        original = thresholds[internal]
        bounds = split_bounds(original)

        # Tree.threshold is a writable view of the node array in
        # scikit-learn 1.9.1. Read back to catch a version that returns a copy.
        thresholds[internal] = bounds
        if not np.array_equal(nodes.threshold[internal], bounds):
            raise RuntimeError(
                "writing Tree.threshold in place had no effect in this "
                "scikit-learn version; the float32-exact rewrite must rebuild "
                "the tree through Tree.__setstate__ instead"
            )
        changed += int(np.count_nonzero(bounds != original))
        total += internal.size

    logger.debug("rewrote %d of %d split thresholds to float32-exact bounds", changed, total)
    return forest


def fold_min_max_scaler(scaler, model):
    """Return a LogisticRegression on raw features equal to ``model(scaler(x))``.

    MinMaxScaler computes ``x * scale_ + min_``, so the decision value
    ``coef . (x * scale_ + min_) + b`` equals ``(coef * scale_) . x +
    (coef . min_ + b)``. The folded model differs from the pipeline only by
    float64 rounding: by less than 1e-12 in probability on the test flows.
    """
    coef = model.coef_[0]
    folded = LogisticRegression(**model.get_params())
    folded.classes_ = model.classes_.copy()
    folded.coef_ = (coef * scaler.scale_)[np.newaxis, :]
    folded.intercept_ = np.array([model.intercept_[0] + np.dot(coef, scaler.min_)])
    folded.n_features_in_ = scaler.n_features_in_
    if hasattr(scaler, "feature_names_in_"):
        folded.feature_names_in_ = scaler.feature_names_in_.copy()
    return folded
