"""Shared fixtures: the committed capture and model, and root-only tests."""

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
CAPTURE = REPO / "data" / "capture-1"
COMMITTED_MODEL = REPO / "data" / "model" / "aiflowd-default.joblib"
GENERATED = REPO / "firmware" / "generated"


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root for network namespaces, captures and conntrack")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def capture_flows():
    from trainer.train import load_flows
    flows, _ = load_flows([CAPTURE / "flows.csv"])
    return flows


@pytest.fixture(scope="session")
def committed_test_rows(capture_flows):
    """Feature rows the committed model never saw in training.

    The finished flows of its test split, and every poll view of those
    flows that the router runtime would score.
    """
    from trainer.flows import feature_matrix
    from trainer.train import deployment_split, runtime_views
    _, test = deployment_split(capture_flows, seed=1)
    views = runtime_views(capture_flows)
    test_views = views[views["flow"].isin(test)]
    return np.vstack([feature_matrix(capture_flows.iloc[test]), feature_matrix(test_views)])
