"""Running trained networks: any detector file loaded (load.py), the face and object detectors with their NMS
(detectors.py, nms.py), our .onnx files in onnxruntime (onnx_model.py)."""
