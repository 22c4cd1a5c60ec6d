"""The benchmark's peer: the same model served with LitServe, written the way its documentation
shows (a LitAPI with setup / decode_request / predict / encode_response, PIL and torchvision
transforms, LitServe's own batching, fp32). Runs only in the virtual environment
scripts/bench_serve.py makes for it (`.venv-litserve`), never in the product's.

    .venv-litserve/bin/python -m scripts.litserve_peer --model models/default --port 8100 [--tta 2]

Answers POST /api/v1/predict (multipart field `image`) with {"predictions": [{"label", "probability"}]},
the shape the load generator checks. The model is read with the project's safetensors loader
(never a pickle); TTA, when asked for, is the project's own flip-and-translate function.
"""

import argparse
import io

import litserve as ls
import torch
from PIL import Image
from torchvision import transforms

from ml.nets.modelfile import load_model_dir
from ml.nets.models import tta_logits


class ClassifierAPI(ls.LitAPI):
    def __init__(self, model_dir, tta, threads, **kwargs):
        super().__init__(**kwargs)
        self.model_dir, self.tta, self.threads = model_dir, tta, threads

    def setup(self, device):
        torch.set_num_threads(self.threads)
        self.model, card = load_model_dir(self.model_dir, device)
        self.model.eval()
        self.device, self.classes = device, card["classes"]
        self.temperature = card.get("temperature", 1.0)
        norm = card["normalization"]
        self.transform = transforms.Compose([
            transforms.Resize((card.get("input_size", 32),) * 2),
            transforms.ToTensor(),
            transforms.Normalize(norm["mean"], norm["std"]),
        ])

    def decode_request(self, request):
        upload = request["image"]
        image = Image.open(io.BytesIO(upload.file.read())).convert("RGB")
        return self.transform(image)

    def predict(self, x):
        with torch.inference_mode():
            logits = tta_logits(self.model, x.to(self.device), self.tta)
        return (logits / self.temperature).softmax(1)

    def encode_response(self, output):
        probability, index = output.max(0)
        return {"predictions": [{"label": self.classes[int(index)], "probability": float(probability)}]}


def main():
    parser = argparse.ArgumentParser(description="Serve a model folder with LitServe (benchmark peer).")
    parser.add_argument("--model", default="models/default", help="model folder")
    parser.add_argument("--port", type=int, default=8100, help="loopback port")
    parser.add_argument("--tta", type=int, default=0, choices=[0, 1, 2], help="test-time augmentation level")
    parser.add_argument("--workers", type=int, default=2, help="inference worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--max-batch-size", type=int, default=16, help="LitServe batching: images per batch")
    parser.add_argument("--batch-timeout", type=float, default=0.005, help="LitServe batching: seconds to wait")
    args = parser.parse_args()
    api = ClassifierAPI(args.model, args.tta, args.threads, max_batch_size=args.max_batch_size,
                        batch_timeout=args.batch_timeout, api_path="/api/v1/predict")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, generate_client_file=False)


if __name__ == "__main__":
    main()
