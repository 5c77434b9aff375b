"""Export: verified bundles from runs and architectures, in every format plugins declare.

* :mod:`zoo.exporter.write`: ``zoo export`` (:func:`~zoo.exporter.write.export`);
* :mod:`zoo.exporter.verify`: ``zoo verify`` (:func:`~zoo.exporter.verify.verify_bundle`);
* :mod:`zoo.exporter.formats`: writing and verifying any format, one path for all;
* :mod:`zoo.exporter.onnx`, :mod:`zoo.exporter.pt2`: the core plugin's two formats;
* :mod:`zoo.exporter.checks`: the inputs formats are verified on and the comparison;
* :mod:`zoo.exporter.source`: what is exported (a run's checkpoint, or a name);
* :mod:`zoo.exporter.modelcard`: the bundle's ``README.md`` and its pictures.
"""

from zoo.util.deprecation import package_getattr

__getattr__, __dir__ = package_getattr(
    __name__,
    api={"export": "zoo.exporter.write", "ExportResult": "zoo.exporter.write",
         "default_destination": "zoo.exporter.write", "verify_bundle": "zoo.exporter.verify",
         "BundleVerification": "zoo.exporter.verify"},
    moved={**dict.fromkeys(("EXPORTERS", "DEFAULT_EXPORTER", "DEFAULT_OPSET", "Exporter",
                            "check_opset", "export_onnx", "opset_range", "verify_onnx"),
                           "zoo.exporter.onnx"),
           "check_tolerances": "zoo.exporter.checks", "MAX_EXPORT_PIXELS": "zoo.exporter.source",
           "DEFAULT_ATOL": "zoo.spec.manifest", "DEFAULT_RTOL": "zoo.spec.manifest"})
