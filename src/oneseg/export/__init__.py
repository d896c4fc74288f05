"""Deployment: ONNX export with post-processing in the graph, ONNX Runtime and TensorRT engines,
INT8 quantization.

- `graph`: `ExportGraph`, the traceable wrapper (uint8 images in, results out);
- `onnx_export`: tracing, checking against PyTorch, the sidecar description;
- `runtime`: `OnnxEngine`, an exported file run with ONNX Runtime, results as PyTorch's;
- `action`, `quantize`, `tensorrt`: the `export`, `quantize` and `gen_trt_engine` actions.
"""
