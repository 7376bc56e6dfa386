"""The data every implementation reads: the sets, their check, the one data order, the loader's stages.

- ``datasets``: COCO from a path, or the embedded synthetic COCO-format set
- ``check``: the one validating pass over a COCO split
- ``order``: one seeded order of image ids, in the same batches, for every implementation
- ``stages``: where a loader's time goes (read, decode, transform, collate), for ``--task data``
"""

__all__ = ["check", "datasets", "order", "stages"]
