import logging

import numpy as np
import pytest

from slimq import testing

logging.getLogger("onnx_ir").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def conv_model():
    return testing.conv_net()


@pytest.fixture(scope="session")
def conv_calib(conv_model):
    return np.concatenate([f["input"] for f in testing.random_inputs(conv_model, 48, seed=1)])
