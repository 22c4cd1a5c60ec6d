"""Client code the docs show and the tests import (examples/onnx_client.py: docs/export.md)."""
