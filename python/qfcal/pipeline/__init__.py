"""The seed's system end to end, in TensorFlow: quantization-friendly MobileNets trained in
float, calibrated with qfcal, exported through FakeQuant to an int8 ``.tflite`` and measured.

This sub-package is one audience's bulk (the ``qfcal run`` pipeline, ``pip install "qfcal[tf]"``);
the core API (``qfcal.Histogram``, ``qfcal.search``) and the adapters for flows people already
have (``qfcal.tflite``, ``qfcal.onnxruntime``, ``qfcal.torch``) live above it and never import it.

=====================  =======================================================================
module                 what it holds
=====================  =======================================================================
:mod:`.steps`          :class:`RunConfig` and the steps over a run folder (train, calibrate,
                       export, evaluate, compare) that the ``qfcal`` command runs; :func:`run`
:mod:`.data`           datasets: IDX files (Fashion-MNIST, MNIST) read offline, image folders
:mod:`.models`         MobileNet V1/V2 builders, standard and quantization-friendly
:mod:`.train`          float training (tf.data input, schedules, resumable checkpoints,
                       ``tf.distribute``)
:mod:`.fold`           batch norm folded into the convolutions, as TFLite does
:mod:`.taps`           the tensors an int8 model holds, and their histograms (collect phase)
:mod:`.export`         the FakeQuant graph and the int8 / float ``.tflite``
:mod:`.evaluate`       top-1 and latency of the Keras model and the ``.tflite`` files
:mod:`.report`         ``report.md`` / ``report.json`` and the run's plots
:mod:`.compare`        the calibration shoot-out (every range method on the same tensors);
                       :mod:`.compare_report` writes it, :mod:`.peers` runs other toolkits'
                       calibrators on the same activations
:mod:`.plots`          plotting helpers shared by the two reports
:mod:`.dask_keras`     calibration of a Keras model file on Dask workers
=====================  =======================================================================

Importing this package (or :mod:`.data`, :mod:`.compare`) needs numpy only; the modules that
build or run models import TensorFlow when they are imported.
"""

from __future__ import annotations

from qfcal.pipeline.steps import RunConfig, default_folder, read_run, run

__all__ = ["RunConfig", "default_folder", "read_run", "run"]
