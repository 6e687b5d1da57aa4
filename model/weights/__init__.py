"""The DPN shipped with blurset: ``pretrained.pt`` (load it by the name ``pretrained``; how it was
made, what it scored and how to rebuild it: docs/pretrained.md, ``make pretrained``)."""
