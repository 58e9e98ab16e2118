"""``--use_aimet_quantizer``: calibrate with aimet-onnx instead of opendlc's engine.

aimet-onnx's ``QuantizationSimModel`` is built on the float model, calibrated on the same samples, and
its encodings are exported (AIMET format 1.0.0) and read back as ours.  Only the options aimet-onnx has
an equivalent for are accepted; any other non-default option is a one-line error naming it, so nothing
is silently dropped.  aimet-onnx is optional: ``pip install torch==2.13.0 aimet-onnx``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from opendlc.container import Container
from opendlc.encodings import EncodingSet
from opendlc.errors import OpendlcError, UsageError
from opendlc.progress import track
from opendlc.quant.options import QuantizerOptions

log = logging.getLogger("opendlc.quantize.aimet")

# our calibration method -> aimet-onnx's quant scheme (one scheme serves weights and activations)
SCHEMES = {"min-max": "min_max", "enhanced": "tf_enhanced"}
# options aimet-onnx's quantization simulation has no setting for, with the value that means "not used"
_UNSUPPORTED = {
    "act_quantizer_schema": "asymmetric",
    "param_quantizer_schema": "asymmetric",
    "use_per_row_quantization": False,
    "enable_per_row_quantized_bias": False,
    "restrict_quantization_steps": None,
    "keep_weights_quantized": False,
    "adjust_bias_encoding": False,
    "enable_float_fallback": False,
    "apply_algorithms": [],
    "udo_package_path": [],
    "op_package_lib": [],
    "float_bias_bitwidth": 0,
}


def check_aimet_options(options: QuantizerOptions) -> str:
    """The aimet-onnx quant scheme for ``options``, or a one-line error naming what it cannot do."""
    for name, unused in _UNSUPPORTED.items():
        if getattr(options, name) != unused:
            raise UsageError(
                f"--use_aimet_quantizer cannot be used with --{name}: aimet-onnx has no such setting"
            )
    if options.act_quantizer_calibration != options.param_quantizer_calibration:
        raise UsageError(
            "--use_aimet_quantizer uses one calibration method for weights and activations: give the same "
            "--act_quantizer_calibration and --param_quantizer_calibration"
        )
    scheme = SCHEMES.get(options.act_quantizer_calibration)
    if scheme is None:
        raise UsageError(
            f"--use_aimet_quantizer: calibration method '{options.act_quantizer_calibration}' has no "
            f"aimet-onnx equivalent (choose {', '.join(SCHEMES)})"
        )
    if options.bias_bitwidth != 8 and options.bias_bitwidth != 32:
        raise UsageError(f"--bias_bitwidth {options.bias_bitwidth} is not supported")
    return scheme


def _config_file(per_channel: bool) -> str:
    from aimet_onnx.common.quantsim_config import quantsim_config

    folder = Path(quantsim_config.__file__).parent
    return str(folder / ("default_config_per_channel.json" if per_channel else "default_config.json"))


def quantize_with_aimet(
    container: Container,
    samples: Iterable[Mapping[str, np.ndarray]] | None,
    options: QuantizerOptions,
    *,
    extra_outputs: list[str] | None = None,
    progress: bool = True,
) -> Container:
    """Like :func:`opendlc.quant.api.quantize`, with aimet-onnx choosing the encodings."""
    if samples is None:
        raise UsageError("--use_aimet_quantizer needs --input_list (aimet-onnx calibrates on data)")
    scheme = check_aimet_options(options)
    if container.overrides is not None and not options.ignore_quantization_overrides:
        raise UsageError(
            "--use_aimet_quantizer does not apply the encodings stored in the container; "
            "add --ignore_quantization_overrides"
        )
    try:
        from aimet_onnx.quantsim import QuantizationSimModel
    except ImportError as e:
        raise OpendlcError(
            f"--use_aimet_quantizer: aimet-onnx cannot be imported ({e}); "
            "pip install torch==2.13.0 aimet-onnx"
        ) from None
    from opendlc.quant.calibrate import with_outputs

    model = with_outputs(container.model, extra_outputs) if extra_outputs else container.model
    with tempfile.TemporaryDirectory(prefix="opendlc-aimet-") as work:
        try:
            sim = QuantizationSimModel(
                model,
                param_type=f"int{options.weights_bitwidth}",
                activation_type=f"int{options.act_bitwidth}",
                quant_scheme=scheme,
                config_file=_config_file(options.use_per_channel_quantization),
                providers=["CPUExecutionProvider"],
                path=work,
            )
            sim.compute_encodings(track(samples, "calibrating (aimet-onnx)", enabled=progress))
            sim.export(work, "model", export_model=False, encoding_version="1.0.0")
        except (ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OpendlcError(f"aimet-onnx failed: {first}") from None
        data = json.loads(Path(work, "model.encodings").read_text())
    encodings = EncodingSet.from_aimet(data, source="aimet", where="aimet-onnx encodings")
    encodings.meta = {
        "quantizer": options.to_dict(),
        "aimet_quant_scheme": scheme,
        "preserve_io_datatype": options.preserve_io_datatype,
    }
    log.info("aimet-onnx: %d encodings", len(encodings))
    return Container(
        model=model,
        encodings=encodings,
        overrides=container.overrides,
        meta={**container.meta, "quantized_from": str(container.path) if container.path else None},
    )
