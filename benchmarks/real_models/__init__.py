"""Real-model end-to-end quantization benchmark (issue 12, item 1).

Pretrained models installed from packages, real photographs and real sentences from Debian
packages, calibration and held-out inputs from different sources, and every contender's
activation ranges run through the flow a user would take (ONNX Runtime ``quantize_static``,
PyTorch PT2E, the TFLite converter). Entry point: ``benchmarks/bench_real_models.py``; setup:
``benchmarks/real_models/setup.sh``.
"""
