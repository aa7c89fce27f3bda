"""One isolated patch for litert-torch's PT2E quantizer in QAT mode.

litert-torch (checked: 0.10.0 with torchao 0.18.0) passes a bare pattern *function* to torchao's
``_get_aten_graph_module_for_pattern`` when annotating conv+BN for QAT; torchao now calls
``torch.export.export`` on it, which needs an ``nn.Module`` ("Expected 'mod' to be an instance of
'torch.nn.Module', got <class 'function'>"). Wrapping the function in torchao's ``WrapperModule``
fixes it. PTQ mode does not reach this code. The patch is applied once, only to litert's module
attribute, and only when the installed litert-torch still passes bare functions.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch

from alnett_edge.runtime.litert_backend import quiet_native_stderr  # noqa: F401 - re-exported

log = logging.getLogger(__name__)
_APPLIED = False


def patch_litert_qat() -> None:
    global _APPLIED
    if _APPLIED:
        return
    from litert_torch.quantize import pt2e_quantizer_utils as utils
    from torchao.quantization.pt2e import WrapperModule

    original = utils._get_aten_graph_module_for_pattern

    @functools.wraps(original)
    def wrapped(pattern: Any, example_inputs: Any, is_cuda: bool = False, **kwargs: Any) -> Any:
        if not isinstance(pattern, torch.nn.Module):
            pattern = WrapperModule(pattern)
        return original(pattern, example_inputs, is_cuda, **kwargs)

    utils._get_aten_graph_module_for_pattern = wrapped
    _APPLIED = True
    log.debug("patched litert_torch pt2e_quantizer_utils._get_aten_graph_module_for_pattern (QAT pattern wrap)")


