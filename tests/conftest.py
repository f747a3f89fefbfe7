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


@pytest.fixture(scope="session")
def conv_int8_files(tmp_path_factory):
    """conv_net saved as FP32 ONNX and its static-PTQ INT8 model: (fp32 path, int8 path)."""
    import onnx

    from slimq.core.config import StaticConfig
    from slimq.static.method import quantize_static

    d = tmp_path_factory.mktemp("conv_pair")
    fp32, int8 = d / "conv.onnx", d / "conv.int8.onnx"
    model = testing.conv_net()
    onnx.save(model, fp32)
    quantize_static(fp32, testing.random_inputs(model, 24), StaticConfig(show_progress=False), output=int8)
    return fp32, int8
