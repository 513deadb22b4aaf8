"""Linear-probe baseline: frozen CLIP image features (``feat_extractor``) and a few-shot logistic
regression with the reference's C search (``linear_probe``). Run both as modules from the repository
root (``python -m lpclip.feat_extractor ...``, ``python -m lpclip.linear_probe ...``)."""
