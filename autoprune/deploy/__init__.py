"""Recover and ship a pruned model: fine-tuning (with distillation), export, int8 quantization, benchmarks.

One module per job (imported on use, so that building the CLI parser stays light):

- ``autoprune.deploy.finetune.finetune(model, splits, epochs, teacher=None)`` -- ``autoprune finetune``;
- ``autoprune.deploy.export.export(model, path, "onnx" | "torchscript", input_shape)`` -- ``autoprune export``;
- ``autoprune.deploy.quantize.quantize(model, splits, "model.int8.onnx", method="ptq" | "qat")`` -- ``autoprune quantize``;
- ``autoprune.deploy.bench.bench(paths, baseline=...)`` -- ``autoprune bench``;
- ``autoprune.deploy.files.evaluate_file(path, dataset)`` -- test accuracy of any model file.
"""
