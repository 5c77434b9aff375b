"""Ground helpers every part of the zoo may use; they import no other part of it but errors.

Files written atomically (:mod:`~zoo.util.fsutil`), downloads (:mod:`~zoo.util.download`),
images (:mod:`~zoo.util.imaging`, :mod:`~zoo.util.imagefiles`), figures
(:mod:`~zoo.util.figures`), thread counts (:mod:`~zoo.util.threads`), cache folders
(:mod:`~zoo.util.paths`), machine-independent records (:mod:`~zoo.util.portable`),
name hints (:mod:`~zoo.util.suggest`), the moved module paths
(:mod:`~zoo.util.deprecation`) and the version (:mod:`~zoo.util.version`). No torch.
"""
