"""Render the generated Python module and C files around m2cgen's scoring code.

m2cgen 0.10.0 interprets the model's syntax tree into one scoring function
plus vector helpers. This module renames them into the generated namespace
(``_score`` in Python, static ``aiflowd_model_*`` functions in C), respells
split thresholds for single-precision parsers, and wraps the result with a
banner, ``probability`` and ``is_ai``.

The label rule is strict: a flow is AI when its probability is above the
threshold. At 0.5 the generated code evaluates it exactly as scikit-learn's
predict does, which differs from ``probability > 0.5`` only within one ulp.
The forest compares the two class probabilities (argmax, class 0 on a tie),
and logistic regression compares the decision value with 0.
"""

import re
import sys
from dataclasses import dataclass

from m2cgen.interpreters import CInterpreter, PythonInterpreter

from codegen.float32 import float32_safe_literal
from codegen.models import CLASS_SUMS

MODULE = "aiflowd_model"
PREFIX = "aiflowd_model_"
MACRO_PREFIX = "AIFLOWD_MODEL_"
N_FEATURES = MACRO_PREFIX + "N_FEATURES"
PREDICT_THRESHOLD = 0.5

M2CGEN_VECTOR_HELPERS = ("add_vectors", "mul_vector_number")

# A comparison in m2cgen's tree code, in Python (`input[3] <= 1.5:`) and in
# C (`input[3] <= 1.5)`). Group 2 is the split threshold literal.
SPLIT_COMPARISON = re.compile(r"(input\[\d+\] <= )([^\s:)]+)")


@dataclass(frozen=True)
class ModelInfo:
    """Everything the banner and the wrapper code of the generated files state."""

    model_id: str
    summary: str
    output: str
    n_trees: int
    features: tuple
    feature_units: dict
    threshold: float
    training_data: dict
    versions: dict


def python_scoring_code(export_model):
    """Return m2cgen's Python for the model, as ``_score`` with private helpers."""
    interpreter = PythonInterpreter(indent=4, function_name="_score")
    code = _interpret(interpreter, export_model)
    code = re.sub(rf"\b({'|'.join(M2CGEN_VECTOR_HELPERS)})\b", r"_\1", code)
    for helper in M2CGEN_VECTOR_HELPERS:
        # A def ends before the next line that is not indented.
        code = _drop_if_unused(code, "_" + helper, rf"^def _{helper}\(.*?\n(?=\S)")
    return _respell_split_thresholds(code).rstrip() + "\n"


def c_scoring_code(export_model):
    """Return m2cgen's C for the model with every function static and prefixed.

    The ``#include`` lines that m2cgen adds are left out, because
    :func:`c_source` writes its own.
    """
    interpreter = CInterpreter(indent=4, function_name=PREFIX + "score")
    code = _interpret(interpreter, export_model)
    code = "\n".join(line for line in code.splitlines() if not line.startswith("#include"))

    helpers = "|".join(M2CGEN_VECTOR_HELPERS)
    code = re.sub(rf"^void ({helpers})\(", rf"static void {PREFIX}\1(", code, flags=re.MULTILINE)
    code = re.sub(rf"\b({helpers})\(", rf"{PREFIX}\1(", code)
    # Callers pass a const row, and m2cgen's code never writes to its input.
    code, count = re.subn(
        rf"^(double|void) ({PREFIX}score)\(double \* input",
        r"static \1 \2(const double * input",
        code,
        flags=re.MULTILINE,
    )
    for helper in M2CGEN_VECTOR_HELPERS:
        # -Werror rejects an unused static function. A definition ends at "}" in column 0.
        code = _drop_if_unused(code, PREFIX + helper, rf"^static void {PREFIX}{helper}\(.*?^}}\n")
    _check_m2cgen_c_shape(code, count)
    return _respell_split_thresholds(code).rstrip() + "\n"


def python_module(info, scoring_code):
    """Return the text of ``aiflowd_model.py`` for CPython and MicroPython."""
    features = ", ".join(f'"{name}"' for name in info.features)
    lines = _banner(info, "# ")
    lines.append("")
    if info.output != CLASS_SUMS:
        lines += ["import math", ""]
    lines += [
        f'MODEL_ID = "{info.model_id}"',
        f"FEATURES = ({features})",
        f"THRESHOLD = {info.threshold!r}",
        "",
        "",
        scoring_code.rstrip(),
        "",
        "",
    ]
    if info.output == CLASS_SUMS:
        lines += _python_forest_wrapper(info)
    else:
        lines += _python_logistic_wrapper(info)
    return "\n".join(lines) + "\n"


def _python_forest_wrapper(info):
    lines = [
        f"_N_TREES = {float(info.n_trees)!r}",
        "",
        "",
        "def probability(x):",
        "    return _score(x)[1] / _N_TREES",
        "",
        "",
        "def is_ai(x):",
    ]
    if info.threshold == PREDICT_THRESHOLD:
        return lines + [
            "    sums = _score(x)",
            "    # scikit-learn's predict: class 1 only when its mean probability is higher.",
            "    return 1 if sums[1] / _N_TREES > sums[0] / _N_TREES else 0",
        ]
    return lines + [
        "    # Strict: a probability equal to THRESHOLD is not AI.",
        "    return 1 if probability(x) > THRESHOLD else 0",
    ]


def _python_logistic_wrapper(info):
    lines = [
        "def _sigmoid(z):",
        "    # exp() only sees z <= 0 here, so it cannot overflow.",
        "    if z < 0.0:",
        "        e = math.exp(z)",
        "        return e / (1.0 + e)",
        "    return 1.0 / (1.0 + math.exp(-z))",
        "",
        "",
        "def probability(x):",
        "    return _sigmoid(_score(x))",
        "",
        "",
        "def is_ai(x):",
    ]
    if info.threshold == PREDICT_THRESHOLD:
        return lines + [
            "    # scikit-learn's predict: decision value (logit) above 0, the logit of 0.5.",
            "    return 1 if _score(x) > 0.0 else 0",
        ]
    return lines + [
        "    # Strict: a probability equal to THRESHOLD is not AI.",
        "    return 1 if probability(x) > THRESHOLD else 0",
    ]


def c_header(info):
    """Return the text of ``aiflowd_model.h``."""
    guard = MACRO_PREFIX + "H"
    lines = _c_comment(_banner(info, ""))
    lines += [
        "",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        f'#define {MACRO_PREFIX}ID "{info.model_id}"',
        f"#define {N_FEATURES} {len(info.features)}",
        f"#define {MACRO_PREFIX}THRESHOLD {info.threshold!r}",
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        "/* Feature names in input order: x[i] below is feature i. */",
        f"extern const char *const {PREFIX}feature_names[{N_FEATURES}];",
        "",
        "/* Probability in [0, 1] that the flow with raw features x is AI. */",
        f"double {PREFIX}probability(const double x[{N_FEATURES}]);",
        "",
        f"/* 1 when the probability is above {MACRO_PREFIX}THRESHOLD (a tie is not AI), else 0. */",
        f"int {PREFIX}is_ai(const double x[{N_FEATURES}]);",
        "",
        "#ifdef __cplusplus",
        "}",
        "#endif",
        "",
        f"#endif /* {guard} */",
    ]
    return "\n".join(lines) + "\n"


def c_source(info, scoring_code):
    """Return the text of ``aiflowd_model.c``: C99, global symbols only with the prefix."""
    names = ",\n".join(f'    "{name}"' for name in info.features)
    lines = _c_comment(_banner(info, ""))
    lines += [
        "",
        f'#include "{MODULE}.h"',
        "",
        "#include <string.h>" if info.output == CLASS_SUMS else "#include <math.h>",
        "",
        f"const char *const {PREFIX}feature_names[{N_FEATURES}] = {{",
        names,
        "};",
        "",
        scoring_code.rstrip(),
        "",
    ]
    if info.output == CLASS_SUMS:
        lines += _c_forest_wrapper(info)
    else:
        lines += _c_logistic_wrapper(info)
    return "\n".join(lines) + "\n"


def _c_forest_wrapper(info):
    lines = [
        f"static const double {PREFIX}n_trees = {float(info.n_trees)!r};",
        "",
        f"double {PREFIX}probability(const double x[{N_FEATURES}]) {{",
        "    double sums[2];",
        "",
        f"    {PREFIX}score(x, sums);",
        f"    return sums[1] / {PREFIX}n_trees;",
        "}",
        "",
        f"int {PREFIX}is_ai(const double x[{N_FEATURES}]) {{",
    ]
    if info.threshold == PREDICT_THRESHOLD:
        return lines + [
            "    double sums[2];",
            "    double p0, p1;",
            "",
            f"    {PREFIX}score(x, sums);",
            "    /* Assigned first, so that x87 excess precision cannot split a tie. */",
            f"    p0 = sums[0] / {PREFIX}n_trees;",
            f"    p1 = sums[1] / {PREFIX}n_trees;",
            "    /* scikit-learn's predict: class 1 only when its mean probability is higher. */",
            "    return p1 > p0;",
            "}",
        ]
    return lines + [
        f"    double p = {PREFIX}probability(x);",
        "",
        "    /* Strict: a probability equal to the threshold is not AI. */",
        f"    return p > {MACRO_PREFIX}THRESHOLD;",
        "}",
    ]


def _c_logistic_wrapper(info):
    lines = [
        f"static double {PREFIX}sigmoid(double z) {{",
        "    double e;",
        "",
        "    /* exp() only sees z <= 0 here, so it cannot overflow. */",
        "    if (z < 0.0) {",
        "        e = exp(z);",
        "        return e / (1.0 + e);",
        "    }",
        "    return 1.0 / (1.0 + exp(-z));",
        "}",
        "",
        f"double {PREFIX}probability(const double x[{N_FEATURES}]) {{",
        f"    return {PREFIX}sigmoid({PREFIX}score(x));",
        "}",
        "",
        f"int {PREFIX}is_ai(const double x[{N_FEATURES}]) {{",
    ]
    if info.threshold == PREDICT_THRESHOLD:
        return lines + [
            f"    double z = {PREFIX}score(x);",
            "",
            "    /* scikit-learn's predict: decision value (logit) above 0, the logit of 0.5. */",
            "    return z > 0.0;",
            "}",
        ]
    return lines + [
        f"    double p = {PREFIX}probability(x);",
        "",
        "    /* Strict: a probability equal to the threshold is not AI. */",
        f"    return p > {MACRO_PREFIX}THRESHOLD;",
        "}",
    ]


def _interpret(interpreter, export_model):
    try:
        return interpreter.interpret(export_model.model_ast)
    except RecursionError as exc:
        raise RuntimeError(
            f"m2cgen exceeded Python's recursion limit ({sys.getrecursionlimit()}) "
            f"while exporting {export_model.summary}; export fewer or shallower "
            "trees, or raise the limit with sys.setrecursionlimit"
        ) from exc


def _drop_if_unused(code, name, definition):
    # m2cgen writes both vector helpers whenever it uses one of them, so a
    # helper named only once is a definition without a call.
    if len(re.findall(rf"\b{name}\(", code)) != 1:
        return code
    code, count = re.subn(definition, "", code, count=1, flags=re.MULTILINE | re.DOTALL)
    if count != 1:
        raise RuntimeError(
            f"m2cgen's output has no definition of {name} in the shape of m2cgen "
            "0.10.0; install the m2cgen version that pyproject.toml pins"
        )
    return code


def _respell_split_thresholds(code):
    def respell(match):
        return match.group(1) + float32_safe_literal(float(match.group(2)))

    return SPLIT_COMPARISON.sub(respell, code)


def _check_m2cgen_c_shape(code, signature_count):
    # Any other top-level definition would be a global symbol outside the prefix.
    exposed = [
        line
        for line in code.splitlines()
        if re.match(r"[A-Za-z_]", line) and not line.startswith("static ")
    ]
    if signature_count != 1 or exposed:
        raise RuntimeError(
            "m2cgen's C output does not have the shape of m2cgen 0.10.0 "
            f"(score signatures found: {signature_count}, non-static top-level "
            f"lines: {exposed[:3]!r}); install the m2cgen version that "
            "pyproject.toml pins"
        )


def _banner(info, indent):
    versions = ", ".join(f"{name} {version}" for name, version in info.versions.items())
    width = max(len(name) for name in info.features)
    data = info.training_data
    lines = [
        f"{MODULE}: AI-flow scorer generated by aiflowd codegen. Do not edit:",
        "regenerate it from the model bundle.",
        "",
        f"Generator: aiflowd codegen with {versions}",
        f"Model: {info.model_id}, {info.summary}",
        f"Features, in input order x[0]..x[{len(info.features) - 1}]:",
    ]
    lines += [
        f"  x[{index}] {name:<{width}}  {info.feature_units[name]}"
        for index, name in enumerate(info.features)
    ]
    lines += _rule_lines(info)
    if info.output == CLASS_SUMS:
        lines += [
            "Probabilities are scikit-learn's: the trees' stored leaf fractions,",
            "added in tree order and divided by the number of trees.",
            "Split thresholds are float32-exact bounds: `x <= bound` takes the",
            "branch that scikit-learn's `float32(x) <= threshold` takes.",
        ]
    else:
        lines.append("Inputs are raw counters: any scaling is folded into the coefficients.")
    lines.append(f"Training data: {data['id']}, {data['rows']} rows, from {data['source']}")
    return [(indent + line).rstrip() for line in lines]


def _rule_lines(info):
    threshold = f"{info.threshold!r}"
    if info.threshold != PREDICT_THRESHOLD:
        return [
            f"Threshold: {threshold}; is_ai(x) is 1 when probability(x) > {threshold},",
            "so a probability equal to the threshold is not AI.",
        ]
    if info.output == CLASS_SUMS:
        compared = "the mean probability of class 1 is above that of class 0"
    else:
        compared = "the decision value (logit) is above 0"
    return [
        f"Threshold: {threshold}; is_ai(x) is 1 when probability(x) > {threshold}, evaluated",
        f"as scikit-learn's predict does: {compared},",
        "so a tie is not AI.",
    ]


def _c_comment(lines):
    body = [(" * " + line.replace("*/", "* /")).rstrip() for line in lines]
    return ["/*", *body, " */"]
