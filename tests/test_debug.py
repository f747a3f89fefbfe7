import onnx.numpy_helper as nh

from slimq.core.config import StaticConfig
from slimq.graph.passes import preprocess
from slimq.report.agreement import format_errors, tensor_errors
from slimq.static.method import quantize_static


def test_tensor_errors_point_at_the_damaged_layer(conv_model, conv_calib):
    fp32 = preprocess(conv_model)
    good = quantize_static(conv_model, conv_calib, StaticConfig(algo="min_max", show_progress=False)).model
    errs = {e.tensor: e for e in tensor_errors(fp32, good, [{"input": conv_calib[:8]}])}
    assert errs and all(e.sqnr_db > 15 for e in errs.values())
    # damage one layer: scale its weights' dequantization scale by 1.5
    bad = good.__class__()
    bad.CopyFrom(good)
    conv3 = [n for n in bad.graph.node if n.op_type == "Conv"][2]
    dq = next(n for n in bad.graph.node if n.output[0] == conv3.input[1])
    init = next(i for i in bad.graph.initializer if i.name == dq.input[1])
    init.CopyFrom(nh.from_array(nh.to_array(init) * 1.5, init.name))
    errs_bad = tensor_errors(fp32, bad, [{"input": conv_calib[:8]}])
    worst = min(errs_bad, key=lambda e: e.sqnr_db)
    assert worst.sqnr_db < 10
    by_name = {e.tensor: e for e in errs_bad}
    assert by_name[conv3.output[0]].sqnr_db < 10  # the damaged conv's own output collapses
    first_conv = [n for n in bad.graph.node if n.op_type == "Conv"][0]
    assert by_name[first_conv.output[0]].sqnr_db > 15  # layers before it are fine
    assert conv3.output[0] in format_errors(errs_bad)
