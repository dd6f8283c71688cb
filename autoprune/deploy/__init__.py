"""Ship a pruned model: export, int8 quantization, benchmarks (recovery fine-tuning is ``autoprune.recovery``).

One module per job (imported on use, so that building the CLI parser stays light):

- ``autoprune.recovery.finetune(model, splits, FinetuneRecipe(...), teacher=None)`` -- ``autoprune finetune``;
- ``autoprune.deploy.export.export(model, path, "onnx" | "torchscript", input_shape)`` -- ``autoprune export``;
- ``autoprune.deploy.quantize.quantize(model, splits, "model.int8.onnx", method="ptq" | "qat")`` -- ``autoprune quantize``;
- ``autoprune.deploy.bench.bench(paths, baseline=...)`` -- ``autoprune bench``;
- ``autoprune.deploy.files.evaluate_file(path, dataset)`` -- test accuracy of any model file.
"""
