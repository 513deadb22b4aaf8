"""Mini-Beyond: LAION-Beyond in miniature, with a CLIP we pre-train ourselves on rendered emoji.

The point of the miniature is a *provable* out-of-pre-training (OOP) property: the OOP concept
names never occur, as a phrase, in any caption the mini CLIP was pre-trained on (and their images
are not in the pre-training set either), so FSNL's claim can be demonstrated end to end on a CPU.

One module per job (each a sub-command of ``python -m tools.mini_beyond``, see ``__main__``):

``common``    constants, the five domains, names, captions, the OOP/IP split, the shipped assets.
``views``     batched augmentation and the benchmark views (shared by build, eval and pretrain).
``render``    ``render`` / ``split``: emoji-test.txt + Noto Color Emoji -> ``emoji_rgba64.npz`` /
              ``emoji_meta.json`` and the split (needs the Debian packages named there).
``pretrain``  pre-train the ``mini-clip`` OpenCLIP model on the pre-training corpus and write
              fp16 safetensors plus ``pretrain_log.json`` (loss curve and zero-shot numbers).
``evaluate``  ``eval``: zero-shot IP/OOP accuracy (and k-means clustering accuracy) of a weights file.
``build``     write the benchmark in the exact LAION-Beyond directory / split-JSON layout, plus a
              manifest of what it wrote per folder (a rebuild replaces nothing else).
``demo``      the README's main job: build, zero-shot + FSNL at 4 shots on five domains, table +
              plot; the Mini-Beyond recipe (configs, FSNL's BS/LR rule) lives there, in one place.
``golden``    re-measure the numbers recorded for tests/test_golden_mini_beyond.py.

Dependencies run one way: common <- views <- build / evaluate <- pretrain; demo -> build; golden ->
demo; ``__main__`` imports them all.

Pixel convention: the shipped RGBA is premultiplied (see :mod:`tools.mini_beyond.render`).
"""
